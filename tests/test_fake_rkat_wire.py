"""Raw wire tests of the scripted runtime (``meerkat_sync.testing.fake_rkat``).

Every test talks JSON lines to a real child process and checks the shapes, messages,
codes and ordering PROTOCOL.md prescribes. Most tests share one server process (each
uses its own request ids and sessions); tests that end or reconfigure the process
start their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

MODULE = "meerkat_sync.testing.fake_rkat"
TIMEOUT = 10.0
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
REALM = "wiretest"

CAPABILITY_IDS = [
    "sessions",
    "streaming",
    "structured_output",
    "hooks",
    "builtins",
    "shell",
    "comms",
    "memory_store",
    "session_store",
    "session_compaction",
    "skills",
    "mcp_live",
]
OVERRIDE_MESSAGE = (
    "Cannot override max_tokens, system_prompt, output_schema, or structured_output_retries"
    " on a runtime-routed turn; set these at session/create time or use a deferred session"
)
_MISSING = object()
_ids = iter(range(1000, 10**9))


def cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", MODULE, *args]


def fake(payload: Dict[str, Any], rest: str = "") -> str:
    """An inline ``fake:`` directive prompt."""
    return "fake:" + json.dumps(payload) + rest


class Wire:
    """A fake-rkat child plus an append-only log of everything it wrote on stdout."""

    def __init__(self, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        full_env = dict(os.environ)
        full_env.pop("MEERKAT_FAKE_SCRIPT", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            cmd(*args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self.raw: List[str] = []
        self.log: List[Any] = []  # parsed JSON, or None for a non-JSON line
        self.stderr = bytearray()
        self.eof = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode("utf-8").rstrip("\n")
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = None
            with self._cond:
                self.raw.append(text)
                self.log.append(parsed)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            chunk = self.proc.stderr.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            with self._cond:
                self.stderr.extend(chunk)

    # -- sending --------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: Dict[str, Any]) -> None:
        self.send_raw((json.dumps(message) + "\n").encode())

    def request(self, method: str, params: Any = _MISSING, req_id: Any = None) -> Any:
        req_id = next(_ids) if req_id is None else req_id
        message: Dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not _MISSING:
            message["params"] = params
        self.send(message)
        return req_id

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    # -- receiving ------------------------------------------------------------------------

    def wait(self, pred: Callable[[Any], bool], start: int = 0, timeout: float = TIMEOUT) -> int:
        """Index of the first logged message at or after ``start`` matching ``pred``."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.log):
                    if pred(self.log[index]):
                        return index
                    index += 1
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    raise AssertionError(
                        f"no matching message (eof={self.eof}); log tail: {self.raw[-5:]!r}; "
                        f"stderr: {bytes(self.stderr[-500:])!r}"
                    )
                self._cond.wait(remaining)

    def response_index(self, req_id: Any, timeout: float = TIMEOUT) -> int:
        return self.wait(lambda m: is_response(m, req_id), timeout=timeout)

    def response(self, req_id: Any, timeout: float = TIMEOUT) -> Dict[str, Any]:
        message: Dict[str, Any] = self.log[self.response_index(req_id, timeout)]
        return message

    def result(self, method: str, params: Any = _MISSING) -> Any:
        message = self.response(self.request(method, params))
        assert "result" in message, message
        return message["result"]

    def error(self, method: str, params: Any = _MISSING) -> Tuple[int, str]:
        message = self.response(self.request(method, params))
        assert set(message) == {"jsonrpc", "id", "error"}, message
        return message["error"]["code"], message["error"]["message"]

    def events(self, session_id: str, start: int = 0, end: Optional[int] = None) -> List[Any]:
        """Envelopes of ``session/event`` notifications for one session, in log order."""
        with self._cond:
            window = self.log[start:end]
        return [
            m["params"]["event"]
            for m in window
            if isinstance(m, dict)
            and m.get("method") == "session/event"
            and m["params"]["session_id"] == session_id
        ]

    def event_index(self, session_id: str, kind: str, start: int = 0) -> int:
        return self.wait(
            lambda m: (
                isinstance(m, dict)
                and m.get("method") == "session/event"
                and m["params"]["session_id"] == session_id
                and m["params"]["event"]["payload"]["type"] == kind
            ),
            start=start,
        )

    def mark(self) -> int:
        with self._cond:
            return len(self.log)

    def barrier(self) -> int:
        """Round-trip a cheap request; everything written before its answer is logged."""
        return self.response_index(self.request("session/list", {"labels": {"x": "barrier"}}))

    def close(self, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def is_response(message: Any, req_id: Any) -> bool:
    return (
        isinstance(message, dict)
        and "method" not in message
        and type(message.get("id")) is type(req_id)
        and message.get("id") == req_id
        and ("result" in message or "error" in message)
    )


def types(events: List[Any]) -> List[str]:
    return [e["payload"]["type"] for e in events]


@pytest.fixture(scope="module")
def shared() -> Iterator[Wire]:
    wire = Wire("--realm", REALM)
    try:
        yield wire
    finally:
        wire.kill()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Wire]]:
    started: List[Wire] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None) -> Wire:
        wire = Wire(*args, env=env)
        started.append(wire)
        return wire

    yield start
    for wire in started:
        wire.kill()


def create(wire: Wire, prompt: Any = "hello", **params: Any) -> Tuple[Dict[str, Any], int]:
    """Immediate session/create; returns (result, index of the response)."""
    req_id = wire.request("session/create", {"prompt": prompt, **params})
    index = wire.response_index(req_id)
    message = wire.log[index]
    assert "result" in message, message
    return message["result"], index


# -- handshake ---------------------------------------------------------------------------


def test_initialize_shape(shared: Wire) -> None:
    req_id = shared.request("initialize", {})
    message = shared.response(req_id)
    assert set(message) == {"jsonrpc", "id", "result"} and message["jsonrpc"] == "2.0"
    result = message["result"]
    assert set(result) == {"server_info", "contract_version", "methods"}
    assert result["server_info"] == {"name": "meerkat-rpc", "version": "0.5.0"}
    assert result["contract_version"] == "0.5.0"
    assert len(result["methods"]) == 60
    methods = result["methods"]
    # PROTOCOL.md §2.1: 60 entries, the notification name first, blob/get listed; cancel,
    # tool/execute and mob/wait_kickoff routed or sent but never listed.
    assert len(methods) == 60 and len(set(methods)) == 60
    assert methods[:4] == ["initialized", "initialize", "session/create", "session/list"]
    assert methods[-2:] == ["comms/send", "comms/peers"]
    assert "blob/get" in methods and "turn/start" in methods and "runtime/accept" in methods
    assert not {"cancel", "tool/execute", "mob/wait_kickoff"} & set(methods)
    assert sum(m.startswith("mob/") for m in methods) == 27  # the 28 routed, less wait_kickoff
    # params may be omitted; `initialized` notification gets no reply.
    shared.notify("initialized", None)
    assert shared.result("initialize")["contract_version"] == "0.5.0"


def test_capabilities_shape(shared: Wire) -> None:
    result = shared.result("capabilities/get", {})
    assert result["contract_version"] == {"major": 0, "minor": 5, "patch": 0}
    caps = result["capabilities"]
    assert [c["id"] for c in caps] == CAPABILITY_IDS
    for cap in caps:
        assert set(cap) == {"id", "description", "status"}
        assert isinstance(cap["description"], str) and cap["description"]
    status = {c["id"]: c["status"] for c in caps}
    assert status["builtins"] == {"DisabledByPolicy": {"description": "tools.builtins_enabled = false"}}
    assert status["shell"] == {"DisabledByPolicy": {"description": "tools.shell_enabled = false"}}
    assert all(status[c] == "Available" for c in CAPABILITY_IDS if c not in ("builtins", "shell"))


def test_no_answer_initialize(spawn: Callable[..., Wire]) -> None:
    wire = spawn("--no-answer-initialize")
    init_id = wire.request("initialize", {})
    # Other methods are still served; initialize never is.
    wire.response(wire.request("capabilities/get"))
    time.sleep(0.3)
    assert not any(is_response(m, init_id) for m in wire.log)
    assert wire.close() == 0


# -- session/create ----------------------------------------------------------------------


def test_immediate_create_events_and_run_result(shared: Wire) -> None:
    start = shared.mark()
    result, index = create(shared, "hello there world", labels={"t": "immediate"})
    sid = result["session_id"]
    assert UUID_RE.match(sid)
    assert result == {
        "session_id": sid,
        "session_ref": f"{REALM}:{sid}",
        "text": "Echo: hello there world",
        "turns": 1,
        "tool_calls": 0,
        "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
    }
    events = shared.events(sid, start, index)
    assert types(events) == [
        "run_started",
        "turn_started",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_complete",
        "turn_completed",
        "run_completed",
    ]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    for envelope in events:
        assert set(envelope) == {"event_id", "source_id", "seq", "timestamp_ms", "payload"}
        assert UUID_RE.match(envelope["event_id"])
        assert envelope["source_id"] == f"session:{sid}"
        assert isinstance(envelope["timestamp_ms"], int) and envelope["timestamp_ms"] > 1.6e12
    assert len({e["event_id"] for e in events}) == len(events)
    payloads = [e["payload"] for e in events]
    assert payloads[0] == {"type": "run_started", "session_id": sid, "prompt": "hello there world"}
    assert payloads[1] == {"type": "turn_started", "turn_number": 0}
    deltas = [p["delta"] for p in payloads if p["type"] == "text_delta"]
    assert "".join(deltas) == result["text"]
    assert payloads[6] == {"type": "text_complete", "content": result["text"]}
    event_usage = {
        "input_tokens": 3,
        "output_tokens": 4,
        "cache_creation_tokens": None,
        "cache_read_tokens": None,
    }
    assert payloads[7] == {"type": "turn_completed", "stop_reason": "end_turn", "usage": event_usage}
    assert payloads[8] == {
        "type": "run_completed",
        "session_id": sid,
        "result": result["text"],
        "usage": event_usage,
    }
    # Notification framing.
    note = next(
        m for m in shared.log[start:index] if isinstance(m, dict) and m.get("method") == "session/event"
    )
    assert set(note) == {"jsonrpc", "method", "params"}
    assert set(note["params"]) == {"session_id", "event"}


def test_block_prompt_and_image_validation(shared: Wire) -> None:
    blocks = [
        {"type": "text", "text": "first"},
        {"type": "image", "media_type": "image/png", "source": "inline", "data": "aGk="},
        {"type": "text", "text": "second"},
    ]
    start = shared.mark()
    result, index = create(shared, blocks)
    assert result["text"] == "Echo: first\nsecond"
    assert shared.events(result["session_id"], start, index)[0]["payload"]["prompt"] == ("first\nsecond")
    bad = [{"type": "image", "media_type": "image/png", "data": "aGk="}]
    code, message = shared.error("session/create", {"prompt": bad})
    assert code == -32602
    assert message.startswith("Invalid params: ") and "did not match any variant" in message


def test_create_param_errors(shared: Wire) -> None:
    assert shared.error("session/create") == (-32602, "Missing params")
    assert shared.error("session/create", None) == (-32602, "Missing params")
    assert shared.error("session/create", {}) == (
        -32602,
        "Invalid params: missing field `prompt`",
    )
    code, message = shared.error("session/create", {"prompt": "x", "keep_alive": None})
    assert code == -32602 and message.startswith("Invalid params: ")
    code, message = shared.error("session/create", {"prompt": "x", "initial_turn": "later"})
    assert code == -32602 and "later" in message


def test_deferred_create_and_merged_prompt(shared: Wire) -> None:
    start = shared.mark()
    req_id = shared.request("session/create", {"prompt": "Define meerkat", "initial_turn": "deferred"})
    index = shared.response_index(req_id)
    result = shared.log[index]["result"]
    sid = result["session_id"]
    assert result == {"session_id": sid, "session_ref": f"{REALM}:{sid}"}
    info = shared.result("session/read", {"session_id": sid})
    assert info["message_count"] == 0 and info["is_active"] is False
    assert "last_assistant_text" not in info
    history = shared.result("session/history", {"session_id": sid})
    assert history["messages"] == [] and history["message_count"] == 0
    assert shared.events(sid, start) == []  # deferred creation emits nothing

    mark = shared.mark()
    turn_id = shared.request("turn/start", {"session_id": f"{REALM}:{sid}", "prompt": "Be brief."})
    turn_index = shared.response_index(turn_id)
    turn = shared.log[turn_index]["result"]
    merged = "Define meerkat\n\nBe brief."
    assert turn["text"] == "Echo: " + merged
    events = shared.events(sid, mark, turn_index)
    assert events[0]["seq"] == 1
    assert events[0]["payload"] == {"type": "run_started", "session_id": sid, "prompt": merged}
    history = shared.result("session/history", {"session_id": sid})
    assert history["messages"][0] == {"role": "user", "content": merged}

    # Non-string prompts are merged as block lists, create blocks first.
    req_id = shared.request(
        "session/create", {"prompt": [{"type": "text", "text": "A"}], "initial_turn": "deferred"}
    )
    sid2 = shared.response(req_id)["result"]["session_id"]
    shared.result("turn/start", {"session_id": sid2, "prompt": "B"})
    user = shared.result("session/history", {"session_id": sid2})["messages"][0]
    assert user == {
        "role": "user",
        "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
    }


def test_keep_alive_create(shared: Wire) -> None:
    empty_usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    mark = shared.mark()
    req_id = shared.request("session/create", {"prompt": "hi", "keep_alive": True})
    index = shared.response_index(req_id)
    result = shared.log[index]["result"]
    assert (result["text"], result["turns"], result["tool_calls"]) == ("", 0, 0)
    assert result["usage"] == empty_usage and len(result) == 6
    # Without comms_name the background turn fails: only an error log line on stdout.
    logs = [raw for raw, m in zip(shared.raw[mark:index], shared.log[mark:index]) if m is None]
    assert any("ERROR" in line and "keep_alive requires comms_name" in line for line in logs)

    mark = shared.mark()
    req_id = shared.request("session/create", {"prompt": "hi", "keep_alive": True, "comms_name": "agent-a"})
    result = shared.response(req_id)["result"]
    sid = result["session_id"]
    assert result["text"] == "" and result["usage"] == empty_usage
    end = shared.event_index(sid, "run_completed", mark)
    assert shared.log[end]["params"]["event"]["payload"]["result"] == "Echo: hi"
    assert shared.result("turn/start", {"session_id": sid, "prompt": "x", "keep_alive": True})

    req_id = shared.request("session/create", {"prompt": "p", "initial_turn": "deferred"})
    deferred = shared.response(req_id)["result"]["session_id"]
    assert shared.error("turn/start", {"session_id": deferred, "prompt": "x", "keep_alive": True}) == (
        -32602,
        "keep_alive requires a session created with comms_name",
    )


# -- turn/start --------------------------------------------------------------------------


def test_turns_queue_on_one_session(shared: Wire) -> None:
    result, _ = create(shared, "setup")
    sid = result["session_id"]
    mark = shared.mark()
    first = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"text": "one two", "delay_ms": 30})}
    )
    second = shared.request("turn/start", {"session_id": sid, "prompt": fake({"text": "three"})})
    first_index = shared.response_index(first)
    second_index = shared.response_index(second)
    assert first_index < second_index
    assert shared.log[first_index]["result"]["text"] == "one two"
    assert shared.log[second_index]["result"]["text"] == "three"
    run1 = types(shared.events(sid, mark, first_index))
    run2 = types(shared.events(sid, first_index, second_index))
    assert run1[0] == "run_started" and run1[-1] == "run_completed"
    assert run2[0] == "run_started" and run2[-1] == "run_completed"
    assert run1.count("run_started") == 1 and run2.count("run_started") == 1
    # seq keeps counting across runs of the session.
    seqs = [e["seq"] for e in shared.events(sid)]
    assert seqs == list(range(1, len(seqs) + 1))
    history = shared.result("session/history", {"session_id": sid})
    assert [m["role"] for m in history["messages"]] == ["user", "block_assistant"] * 3


def test_turn_overrides_rejected(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    for key, value in [
        ("max_tokens", 10),
        ("system_prompt", "x"),
        ("output_schema", {"type": "object"}),
        ("structured_output_retries", 1),
    ]:
        assert shared.error("turn/start", {"session_id": sid, "prompt": "p", key: value}) == (
            -32602,
            OVERRIDE_MESSAGE,
        )


def test_model_override_switches_session_model(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    assert shared.result("session/read", {"session_id": sid})["model"] == "claude-opus-4-6"
    shared.result("turn/start", {"session_id": sid, "prompt": "p", "model": "gemini-2.5-pro"})
    info = shared.result("session/read", {"session_id": sid})
    assert (info["model"], info["provider"]) == ("gemini-2.5-pro", "gemini")


def test_provider_without_model_fails_turn(shared: Wire) -> None:
    result, _ = create(shared)
    code, message = shared.error(
        "turn/start", {"session_id": result["session_id"], "prompt": "p", "provider": "openai"}
    )
    assert code == -32603
    assert message.startswith("turn abandoned: apply failed: Apply failed: ")


def start_hanging_turn(wire: Wire) -> Tuple[str, int, Any]:
    """A new session with a turn that runs until stopped: (session id, event mark, request id)."""
    result, _ = create(wire)
    sid = result["session_id"]
    mark = wire.mark()
    turn_id = wire.request("turn/start", {"session_id": sid, "prompt": fake({"hang": True})})
    wire.event_index(sid, "turn_started", mark)
    return sid, mark, turn_id


def test_interrupt_hanging_turn(shared: Wire) -> None:
    sid, mark, turn_id = start_hanging_turn(shared)
    assert shared.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}
    message = shared.response(turn_id)
    assert message["error"]["code"] == -32603
    assert message["error"]["message"].endswith("Run was cancelled")
    failed = shared.events(sid, mark)[-1]["payload"]
    assert failed == {"type": "run_failed", "session_id": sid, "error": "Run was cancelled"}
    # Idle session: still {"interrupted": true}.
    assert shared.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}


def test_cancel_before_start_and_while_running(shared: Wire) -> None:
    sid, mark, running = start_hanging_turn(shared)
    queued = shared.request("turn/start", {"session_id": sid, "prompt": "queued"})
    # A cancel whose request_id has the wrong JSON type matches nothing.
    shared.notify("cancel", {"request_id": str(queued)})
    shared.barrier()
    assert not any(is_response(m, queued) for m in shared.log)
    shared.notify("cancel", {"request_id": queued})
    assert shared.response(queued)["error"] == {
        "code": -32005,
        "message": "request cancelled before start",
    }
    shared.notify("cancel", {"request_id": running})
    assert shared.response(running)["error"] == {
        "code": -32005,
        "message": "request cancelled before response publish",
    }
    assert types(shared.events(sid, mark))[-1] == "run_failed"
    # The session stays usable.
    assert shared.result("turn/start", {"session_id": sid, "prompt": "again"})["text"] == ("Echo: again")


def test_cancel_running_create_archives_session(shared: Wire) -> None:
    mark = shared.mark()
    req_id = shared.request(
        "session/create", {"prompt": fake({"hang": True}), "labels": {"t": "cancel-create"}}
    )
    index = shared.wait(
        lambda m: (
            isinstance(m, dict)
            and m.get("method") == "session/event"
            and m["params"]["event"]["payload"]["type"] == "turn_started"
        ),
        start=mark,
    )
    sid = shared.log[index]["params"]["session_id"]
    shared.notify("cancel", {"request_id": req_id})
    assert shared.response(req_id)["error"]["code"] == -32005
    listed = shared.result("session/list", {"labels": {"t": "cancel-create"}})
    assert listed == {"sessions": []}
    assert shared.error("session/read", {"session_id": sid}) == (
        -32001,
        f"Session not found: {sid}",
    )


def test_failed_run_and_failed_create(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"text": "partial", "error": "boom"})}
    )
    index = shared.response_index(req_id)
    assert shared.log[index]["error"] == {
        "code": -32603,
        "message": "turn abandoned: apply failed: Apply failed: boom",
    }
    assert types(shared.events(sid, mark, index)) == [
        "run_started",
        "turn_started",
        "text_delta",
        "run_failed",
    ]
    assert shared.events(sid, mark, index)[-1]["payload"]["error"] == "boom"
    # A failed immediate create archives its session.
    req_id = shared.request(
        "session/create", {"prompt": fake({"error": "nope"}), "labels": {"t": "failed-create"}}
    )
    assert shared.response(req_id)["error"]["code"] == -32603
    assert shared.result("session/list", {"labels": {"t": "failed-create"}}) == {"sessions": []}


# -- reading sessions --------------------------------------------------------------------


def test_list_read_history_archive(shared: Wire) -> None:
    labels = {"suite": "lrha"}
    first, _ = create(shared, "alpha beta", labels=labels, system_prompt="You are terse.", model="gpt-5")
    second, _ = create(shared, "gamma", labels=labels)
    listed = shared.result("session/list", {"labels": labels})["sessions"]
    assert {s["session_id"] for s in listed} == {first["session_id"], second["session_id"]}
    for summary in listed:
        assert set(summary) == {
            "session_id",
            "session_ref",
            "created_at",
            "updated_at",
            "message_count",
            "total_tokens",
            "is_active",
            "labels",
        }
        assert isinstance(summary["created_at"], int) and summary["created_at"] > 1.6e9
        assert summary["labels"] == labels and summary["is_active"] is False
    one = shared.result("session/list", {"labels": labels, "limit": 1, "offset": 1})["sessions"]
    assert len(one) == 1
    sid = first["session_id"]
    info = shared.result("session/read", {"session_id": sid})
    assert info == {
        "session_id": sid,
        "session_ref": f"{REALM}:{sid}",
        "created_at": info["created_at"],
        "updated_at": info["updated_at"],
        "message_count": 3,
        "is_active": False,
        "model": "gpt-5",
        "provider": "openai",
        "last_assistant_text": "Echo: alpha beta",
        "labels": labels,
    }
    history = shared.result("session/history", {"session_id": sid})
    assert history == {
        "session_id": sid,
        "session_ref": f"{REALM}:{sid}",
        "message_count": 3,
        "offset": 0,
        "has_more": False,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "alpha beta"},
            {
                "role": "block_assistant",
                "blocks": [{"block_type": "text", "data": {"text": "Echo: alpha beta"}}],
                "stop_reason": "end_turn",
            },
        ],
    }
    page = shared.result("session/history", {"session_id": sid, "offset": 1, "limit": 1})
    assert page["offset"] == 1 and page["limit"] == 1 and page["has_more"] is True
    assert [m["role"] for m in page["messages"]] == ["user"]
    clamped = shared.result("session/history", {"session_id": sid, "offset": 99})
    assert clamped["offset"] == 3 and clamped["messages"] == [] and clamped["has_more"] is False

    assert shared.result("session/archive", {"session_id": f"{REALM}:{sid}"}) == {"archived": True}
    assert shared.error("session/read", {"session_id": sid}) == (
        -32001,
        f"Session not found: {sid}",
    )
    remaining = shared.result("session/list", {"labels": labels})["sessions"]
    assert [s["session_id"] for s in remaining] == [second["session_id"]]


def test_unknown_session_and_bad_ids(shared: Wire) -> None:
    ghost = str(uuid.uuid4())
    for method in ("session/read", "session/history", "session/archive", "turn/interrupt"):
        assert shared.error(method, {"session_id": ghost}) == (-32001, f"Session not found: {ghost}")
    code, message = shared.error("turn/start", {"session_id": ghost, "prompt": "x"})
    assert code == -32603 and message.startswith("turn abandoned: ")
    assert shared.error("session/read", {"session_id": f"other:{ghost}"}) == (
        -32602,
        f"Session locator realm 'other' does not match active runtime realm '{REALM}'",
    )
    code, message = shared.error("session/read", {"session_id": "not-a-uuid"})
    assert code == -32602 and message.startswith("Invalid session_id 'not-a-uuid': ")
    assert shared.error("session/read", {}) == (-32602, "Invalid params: missing field `session_id`")
    assert shared.error("session/read") == (-32602, "Missing params")


# -- framing and errors ------------------------------------------------------------------


def test_unknown_methods(shared: Wire) -> None:
    assert shared.error("foo/bar", {}) == (-32601, "Method not found: foo/bar")
    assert shared.error("cancel", {"request_id": 1}) == (-32601, "Method not found: cancel")
    assert shared.error("config/get") == (-32601, "Method not found: config/get")


@pytest.mark.parametrize(
    "line",
    [
        b"this is not json",
        b"[]",
        b'[{"jsonrpc":"2.0","id":1,"method":"initialize"}]',
        b"123",
        b'"text"',
        b'{"id":1,"method":"initialize"}',
        b'{"jsonrpc":2,"id":1,"method":"initialize"}',
        b'{"jsonrpc":"2.0","id":1,"method":5}',
        b'{"jsonrpc":"2.0","id":1.5,"method":"initialize"}',
        b'{"jsonrpc":"2.0","id":{"a":1},"method":"initialize"}',
        b'{"jsonrpc":"2.0","id":true,"method":"initialize"}',
        b'{"jsonrpc":"2.0","id":NaN,"method":"initialize"}',
        b'{"jsonrpc":"2.0","id":"x","method":"initialize","params":{"p":"\\ud800"}}',
        b'{"id":"srv-0","result":{}}',
        b'{"jsonrpc":"2.0","id":"srv-0","error":{"message":"no code"}}',
    ],
)
def test_parse_errors_have_null_id(shared: Wire, line: bytes) -> None:
    mark = shared.mark()
    shared.send_raw(line + b"\n")
    index = shared.wait(lambda m: isinstance(m, dict) and "error" in m and m["id"] is None, mark)
    message = shared.log[index]
    assert set(message) == {"jsonrpc", "id", "error"}
    assert message["error"]["code"] == -32700
    assert message["error"]["message"].startswith("Parse error: ")


def test_blank_lines_whitespace_and_notifications(shared: Wire) -> None:
    mark = shared.mark()
    shared.send_raw(b"\n   \n\t\r\n")
    shared.send_raw(b'  {"jsonrpc":"2.0","id":"ws-1","method":"session/list"}  \r\n')
    assert "result" in shared.response("ws-1")
    # Real methods sent as notifications (no id, or id null) are ignored.
    shared.send_raw(b'{"jsonrpc":"2.0","method":"session/list"}\n')
    shared.send_raw(b'{"jsonrpc":"2.0","id":null,"method":"session/list"}\n')
    # A response to a server request nobody made is dropped silently.
    shared.send_raw(b'{"jsonrpc":"2.0","id":"srv-999999","result":{"content":""}}\n')
    end = shared.barrier()
    assert [m for m in shared.log[mark:end] if m is not None and m.get("id") != "ws-1"] == []


def test_tools_register_without_id_is_answered(shared: Wire) -> None:
    mark = shared.mark()
    shared.send(
        {
            "jsonrpc": "2.0",
            "method": "tools/register",
            "params": {"tools": [{"name": "t", "description": "d", "input_schema": {}}]},
        }
    )
    index = shared.wait(lambda m: isinstance(m, dict) and m.get("result") == {"registered": 1}, mark)
    assert shared.log[index]["id"] is None


def test_trailing_events_follow_response(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"text": "late", "trailing": 2})}
    )
    index = shared.response_index(req_id)
    shared.event_index(sid, "run_completed", index)
    assert types(shared.events(sid, mark, index))[-1] == "text_complete"
    assert types(shared.events(sid, index)) == ["turn_completed", "run_completed"]


def test_noise_lines_on_stdout(shared: Wire) -> None:
    result, _ = create(shared)
    noise = "\x1b[2m2026-03-26T12:00:00Z\x1b[0m \x1b[31mERROR\x1b[0m meerkat: something broke"
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": result["session_id"], "prompt": fake({"noise": [noise]})}
    )
    index = shared.response_index(req_id)
    assert noise in shared.raw[mark:index]
    assert shared.log[mark + shared.raw[mark:index].index(noise)] is None


def test_reasoning_extra_events_and_structured_output(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    spec = {
        "reasoning": ["thinking ", "hard"],
        "structured_output": {"answer": 42},
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 7},
        "schema_warnings": [{"provider": "gemini", "path": "/x", "message": "m"}],
        "extra_events": [{"type": "brand_new_event", "x": 1}],
    }
    req_id = shared.request("turn/start", {"session_id": sid, "prompt": fake(spec)})
    index = shared.response_index(req_id)
    run = shared.log[index]["result"]
    assert run["text"] == '{"answer":42}'
    assert run["structured_output"] == {"answer": 42}
    assert run["schema_warnings"] == spec["schema_warnings"]
    assert run["usage"] == {
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "cache_read_tokens": 7,
    }
    payloads = [e["payload"] for e in shared.events(sid, mark, index)]
    assert [p["type"] for p in payloads][:6] == [
        "run_started",
        "turn_started",
        "brand_new_event",
        "reasoning_delta",
        "reasoning_delta",
        "reasoning_complete",
    ]
    assert payloads[2] == {"type": "brand_new_event", "x": 1}
    assert payloads[5]["content"] == "thinking hard"
    assert payloads[-1]["usage"]["cache_read_tokens"] == 7
    assert payloads[-1]["usage"]["cache_creation_tokens"] is None


def test_scripted_tool_calls(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    spec = {
        "text": "done",
        "tool_calls": [{"name": "calc", "args": {"expr": "2+2"}, "result": "4", "id": "toolu_1"}],
    }
    req_id = shared.request("turn/start", {"session_id": sid, "prompt": fake(spec)})
    index = shared.response_index(req_id)
    run = shared.log[index]["result"]
    assert run["turns"] == 2 and run["tool_calls"] == 1 and run["text"] == "done"
    assert types(shared.events(sid, mark, index)) == [
        "run_started",
        "turn_started",
        "tool_call_requested",
        "tool_execution_started",
        "tool_execution_completed",
        "tool_result_received",
        "turn_completed",
        "turn_started",
        "text_delta",
        "text_complete",
        "turn_completed",
        "run_completed",
    ]
    payloads = [e["payload"] for e in shared.events(sid, mark, index)]
    completed = payloads[4]
    assert completed["result"] == "4" and completed["is_error"] is False
    assert completed["has_images"] is False and isinstance(completed["duration_ms"], int)
    assert payloads[6]["stop_reason"] == "tool_use"
    assert payloads[7] == {"type": "turn_started", "turn_number": 1}
    history = shared.result("session/history", {"session_id": sid, "offset": 2})["messages"]
    assert history[1:] == [
        {
            "role": "block_assistant",
            "blocks": [
                {"block_type": "tool_use", "data": {"id": "toolu_1", "name": "calc", "args": {"expr": "2+2"}}}
            ],
            "stop_reason": "tool_use",
        },
        {"role": "tool_results", "results": [{"tool_use_id": "toolu_1", "content": "4", "is_error": False}]},
        {
            "role": "block_assistant",
            "blocks": [{"block_type": "text", "data": {"text": "done"}}],
            "stop_reason": "end_turn",
        },
    ]


def test_callbacks_round_trip(spawn: Callable[..., Wire]) -> None:
    wire = spawn()  # own process: srv-N numbering starts at 0
    result, _ = create(wire)
    sid = result["session_id"]
    spec = {
        "text": "ok",
        "callbacks": [
            {
                "method": "tool/execute",
                "params": {"tool_use_id": "tu_a", "name": "lookup", "arguments": {"q": "x"}},
            },
            {"method": "tool/execute", "params": {"tool_use_id": "tu_b", "name": "fail", "arguments": {}}},
        ],
    }
    mark = wire.mark()
    req_id = wire.request("turn/start", {"session_id": sid, "prompt": fake(spec)})
    first = wire.log[wire.wait(lambda m: isinstance(m, dict) and m.get("id") == "srv-0", mark)]
    second = wire.log[wire.wait(lambda m: isinstance(m, dict) and m.get("id") == "srv-1", mark)]
    assert first == {
        "jsonrpc": "2.0",
        "id": "srv-0",
        "method": "tool/execute",
        "params": {"tool_use_id": "tu_a", "name": "lookup", "arguments": {"q": "x"}},
    }
    assert second["params"]["name"] == "fail"
    wire.send({"jsonrpc": "2.0", "id": "srv-1", "error": {"code": -32000, "message": "boom"}})
    wire.send({"jsonrpc": "2.0", "id": "srv-0", "result": {"content": "found", "is_error": False}})
    index = wire.response_index(req_id)
    run = wire.log[index]["result"]
    assert run["turns"] == 2 and run["tool_calls"] == 2 and run["text"] == "ok"
    completed = [
        e["payload"]
        for e in wire.events(sid, mark, index)
        if e["payload"]["type"] == "tool_execution_completed"
    ]
    assert [(c["id"], c["result"], c["is_error"]) for c in completed] == [
        ("tu_a", "found", False),
        ("tu_b", "boom", True),
    ]
    assert wire.close() == 0


def test_unsolicited_run_after_response(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    req_id = shared.request(
        "turn/start",
        {"session_id": sid, "prompt": fake({"text": "mine", "unsolicited": {"text": "theirs"}})},
    )
    index = shared.response_index(req_id)
    end = shared.event_index(sid, "run_completed", index)
    after = shared.events(sid, index, end + 1)
    assert types(after)[0] == "run_started" and types(after)[-1] == "run_completed"
    assert after[-1]["payload"]["result"] == "theirs"


def test_stderr_bytes(shared: Wire) -> None:
    before = len(shared.stderr)
    result, _ = create(shared, fake({"stderr_bytes": 5000}))
    assert result["text"].startswith("Echo: fake:")
    deadline = time.monotonic() + TIMEOUT
    while len(shared.stderr) < before + 5000 and time.monotonic() < deadline:
        time.sleep(0.01)
    written = bytes(shared.stderr[before:])
    assert len(written) == 5000 and written.endswith(b"\n")
    assert all(len(line) <= 100 for line in written.split(b"\n"))


def test_bulk_and_big_delta(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"bulk": {"count": 3000, "delta": "ab"}})}
    )
    index = shared.response_index(req_id)
    assert shared.log[index]["result"]["text"] == "ab" * 3000
    assert shared.log[index]["result"]["usage"]["output_tokens"] == 3000
    events = shared.events(sid, mark, index)
    deltas = [e for e in events if e["payload"]["type"] == "text_delta"]
    assert len(deltas) == 3000
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    size = 3 * 1024 * 1024
    req_id = shared.request("turn/start", {"session_id": sid, "prompt": fake({"big_delta_bytes": size})})
    mark = shared.mark()
    index = shared.response_index(req_id)
    assert len(shared.log[index]["result"]["text"]) == size
    delta_events = [e for e in shared.events(sid, mark, index) if e["payload"]["type"] == "text_delta"]
    assert [len(e["payload"]["delta"]) for e in delta_events] == [size]


def test_max_sessions(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    ids = [wire.request("session/create", {"prompt": "p", "initial_turn": "deferred"}) for _ in range(64)]
    for req_id in ids:
        assert "result" in wire.response(req_id)
    assert wire.error("session/create", {"prompt": "p", "initial_turn": "deferred"}) == (
        -32603,
        "Max sessions reached (64/64)",
    )
    assert len(wire.result("session/list")["sessions"]) == 64
    assert wire.close() == 0


# -- scripts -----------------------------------------------------------------------------


def test_script_file_rules_replies_default(spawn: Callable[..., Wire], tmp_path: Path) -> None:
    script = {
        "rules": [{"match": "weather", "reply": {"text": "Sunny"}}],
        "replies": [{"text": "first reply"}, {"chunks": ["sec", "ond"]}],
        "default": {"text": "fallback"},
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    wire = spawn("--script", str(path))
    result, _ = create(wire, "hi")
    sid = result["session_id"]
    assert result["text"] == "first reply"
    texts = [
        wire.result("turn/start", {"session_id": sid, "prompt": p})["text"]
        for p in ("what is the weather", "x", "y", fake({"text": "inline wins"}))
    ]
    assert texts == ["Sunny", "second", "fallback", "inline wins"]
    assert wire.close() == 0


# -- process lifecycle -------------------------------------------------------------------


def test_stdin_eof_exits_zero_and_writes_nothing_more(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    result, _ = create(wire)
    sid = result["session_id"]
    mark = wire.mark()
    req_id = wire.request("turn/start", {"session_id": sid, "prompt": fake({"hang": True})})
    wire.event_index(sid, "turn_started", mark)
    assert wire.close() == 0
    assert not any(is_response(m, req_id) for m in wire.log)
    assert types(wire.events(sid, mark)) == ["run_started", "turn_started"]
    assert wire.stderr == b""


def test_exit_after_events(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    mark = wire.mark()
    wire.request("session/create", {"prompt": fake({"exit_after_events": 3})})
    assert wire.proc.wait(TIMEOUT) == 3
    wire.close()
    assert len([m for m in wire.log[mark:] if m and m.get("method") == "session/event"]) == 3
    assert b"panicked" in wire.stderr


def test_close_stdout_keeps_running_until_eof(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    wire.request("session/create", {"prompt": fake({"close_stdout_after_events": 2})})
    deadline = time.monotonic() + TIMEOUT
    while not wire.eof and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wire.eof and wire.proc.poll() is None
    assert len(wire.log) == 2
    assert wire.close() == 0


def test_invalid_utf8_is_fatal(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    wire.response(wire.request("initialize"))
    wire.send_raw(b'{"jsonrpc":"2.0","id":2,"method":"\xff\xfe"}\n')
    assert wire.proc.wait(TIMEOUT) == 1
    wire.close()
    assert wire.stderr.startswith(b"Error: ")


PROCESS_FLAG_CASES: List[Tuple[List[str], int, str, bytes]] = [
    (["--realm", "_bad"], 1, "stderr", b"Error: "),
    (["--bogus-flag"], 2, "stderr", b"usage:"),
    (["--exit-before-initialize", "7"], 7, "stderr", b"Error: "),
    (["--version"], 0, "stdout", b"rkat-rpc 0.5.0"),
]


@pytest.fixture(scope="module")
def flag_runs() -> Iterator[List[Tuple[int, bytes, bytes]]]:
    """The process-level cases, started together (start-up time dominates)."""
    procs = [
        subprocess.Popen(cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args, _, _, _ in PROCESS_FLAG_CASES
    ]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, out, err))
        yield results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("case", range(len(PROCESS_FLAG_CASES)))
def test_flag_exit_status(flag_runs: List[Tuple[int, bytes, bytes]], case: int) -> None:
    _args, status, stream, needle = PROCESS_FLAG_CASES[case]
    returncode, out, err = flag_runs[case]
    assert returncode == status
    assert needle in (out if stream == "stdout" else err)
    if status != 0:
        assert out == b""  # failures never write to stdout


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["--realm", "has:colon"], 1, b"Error: invalid realm id"),
        (["--realm", "has space"], 1, b"Error: invalid realm id"),
        (["--realm", str(uuid.UUID(int=5))], 1, b"Error: invalid realm id"),
        (["--realm", "x" * 65], 1, b"Error: invalid realm id"),
        (["--realm", "ok", "--isolated"], 1, b"Error: "),
        (["--script", "/nonexistent/script.json"], 1, b"Error: cannot read script"),
        (["--realm-backend", "mysql"], 2, b"usage:"),
        (["--capability-status", "nonsense"], 2, b"usage:"),
        (["--exit-before-initialize", "x"], 2, b"usage:"),
    ],
)
def test_flag_validation_in_process(
    capsysbinary: pytest.CaptureFixture[bytes], args: List[str], status: int, needle: bytes
) -> None:
    from meerkat_sync.testing.fake_rkat import main

    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsysbinary.readouterr()
    assert code == status
    assert needle in captured.err and captured.out == b""


def test_valid_realm_ids_accepted() -> None:
    from meerkat_sync.testing import fake_rkat

    parser = fake_rkat._parser()
    for realm in ("demo", "team-alpha", "A_1", "9" * 64):
        args = parser.parse_args(["--realm", realm])
        assert fake_rkat._build_config(args, parser).realm == realm
    default = fake_rkat._build_config(parser.parse_args([]), parser).realm
    assert re.match(r"^realm-[0-9a-f]{8}-[0-9a-f]{4}-7", default)


def test_invalid_script_is_startup_error(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from meerkat_sync.testing.fake_rkat import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"replies": [{"txt": "typo"}]}))
    assert main(["--script", str(path)]) == 1
    assert b"unknown field(s) in reply spec: txt" in capsysbinary.readouterr().err


def test_script_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meerkat_sync.testing import fake_rkat

    path = tmp_path / "env.json"
    path.write_text(json.dumps({"default": {"text": "from env"}}))
    monkeypatch.setenv("MEERKAT_FAKE_SCRIPT", str(path))
    parser = fake_rkat._parser()
    config = fake_rkat._build_config(parser.parse_args([]), parser)
    assert config.script.select("anything").text == "from env"


def test_startup_flags_and_fake_handshake_overrides(spawn: Callable[..., Wire], tmp_path: Path) -> None:
    wire = spawn(
        "--isolated",
        "--instance",
        "i1",
        "--realm-backend",
        "sqlite",
        "--state-root",
        str(tmp_path),
        "--context-root",
        str(tmp_path),
        "--user-config-root",
        str(tmp_path),
        "--contract-version",
        "0.6.0",
        "--capability-status",
        "builtins=Available",
        "--capability-status",
        "shell=Absent",
        "--capability-status",
        "skills=NotCompiled",
        "--capability-status",
        "future_cap=Experimental",
    )
    assert wire.result("initialize")["contract_version"] == "0.6.0"
    result = wire.result("capabilities/get")
    assert result["contract_version"] == {"major": 0, "minor": 6, "patch": 0}
    status = {c["id"]: c["status"] for c in result["capabilities"]}
    assert "shell" not in status
    assert status["builtins"] == "Available"
    assert status["skills"] == {"NotCompiled": {"feature": "skills"}}
    assert status["future_cap"] == "Experimental"
    created, _ = create(wire)
    assert re.match(r"^realm-[0-9a-f-]{36}:", created["session_ref"])
    assert wire.close() == 0


def test_fake_rkat_command_helper() -> None:
    from meerkat_sync.testing.fake_rkat import fake_rkat_command

    assert fake_rkat_command("--realm", "r") == [sys.executable, "-m", MODULE, "--realm", "r"]
