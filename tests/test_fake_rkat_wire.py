"""Raw wire tests of the scripted runtime (``meerkat_sync.testing.fake_rkat``).

Every test talks JSON lines to a real child process and checks what the real rkat-rpc
0.5.0 was observed to send (docs/scripted-runtime.rst): shapes, messages, codes, event
order, usage, transcripts, and the runtime's queue with its replays. Most tests share
one server process (each uses its own request ids and sessions); tests that end or
reconfigure the process, or leave a session replaying, start their own.
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
GHOST = "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11"
ABANDONED = "turn abandoned: apply failed: Apply failed: "
CANCELLED = ABANDONED + "agent error: Run was cancelled"
UNREGISTERED = "runtime terminated: runtime session unregistered"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
SKILL_DIAGNOSTICS = {
    "source_health": {
        "state": "healthy",
        "invalid_ratio": 0.0,
        "invalid_count": 0,
        "total_count": 0,
        "failure_streak": 0,
        "handshake_failed": False,
    },
    "quarantined": [],
}
# The exact capabilities/get line of the real binary (its 11 entries; no memory_store).
REAL_CAPABILITIES = json.loads(
    '[{"id":"sessions","description":"Agent loop and session lifecycle","status":"Available"},'
    '{"id":"streaming","description":"Event streaming during agent execution","status":"Available"},'
    '{"id":"structured_output","description":"Schema-validated JSON output extraction","status":"Available"},'
    '{"id":"hooks","description":"7 hook points, 3 runtimes (in-process/command/HTTP), deny/allow/rewrite '
    'semantics","status":"Available"},{"id":"builtins","description":"Built-in tools: task_list, '
    "task_create, "
    'task_get, task_update, wait, datetime, apply_patch","status":{"DisabledByPolicy":{"description":'
    '"tools.builtins_enabled = false"}}},{"id":"shell","description":"Shell tool with job management: shell, '
    'shell_jobs, shell_job_status, shell_job_cancel","status":{"DisabledByPolicy":{"description":'
    '"tools.shell_enabled = false"}}},{"id":"comms","description":"Inter-agent communication: send, request, '
    'response, list peers + keep-alive","status":"Available"},{"id":"session_store","description":'
    '"PersistentSessionService, RedbEventStore, SessionProjector","status":"Available"},'
    '{"id":"session_compaction","description":"DefaultCompactor: auto-compact at token threshold, '
    "LLM summary, "
    'history rebuild","status":"Available"},{"id":"skills","description":"Skill loading, resolution, and '
    'injection","status":"Available"},{"id":"mcp_live","description":"Live MCP server mutation '
    '(add/remove/reload on running sessions)","status":"Available"}]'
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


def run_turn(wire: Wire, sid: str, prompt: Any, **params: Any) -> Tuple[Dict[str, Any], List[Any]]:
    """One turn/start: its response message and the session's events up to it."""
    mark = wire.mark()
    index = wire.response_index(wire.request("turn/start", {"session_id": sid, "prompt": prompt, **params}))
    return wire.log[index], wire.events(sid.rsplit(":", 1)[-1], mark, index)


def payloads(events: List[Any]) -> List[Dict[str, Any]]:
    return [e["payload"] for e in events]


def roles(wire: Wire, sid: str) -> List[str]:
    return [m["role"] for m in wire.result("session/history", {"session_id": sid})["messages"]]


def user_texts(wire: Wire, sid: str) -> List[Any]:
    messages = wire.result("session/history", {"session_id": sid})["messages"]
    return [m["content"] for m in messages if m["role"] == "user"]


def count_events(wire: Wire, sid: str, kind: str, start: int = 0) -> int:
    return sum(1 for e in wire.events(sid, start) if e["payload"]["type"] == kind)


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def state(wire: Wire, sid: str) -> str:
    result: str = wire.result("runtime/state", {"session_id": sid})["state"]
    return result


def hang(wire: Wire, sid: str) -> Tuple[Any, int]:
    """Start a turn that runs until interrupted; returns (request id, event mark) once it runs."""
    mark = wire.mark()
    req_id = wire.request("turn/start", {"session_id": sid, "prompt": fake({"hang": True})})
    wire.event_index(sid, "turn_started", mark)
    return req_id, mark


def start_hanging_turn(wire: Wire) -> Tuple[str, int, Any]:
    """A new session with a turn that runs until stopped: (session id, event mark, request id)."""
    result, _ = create(wire, fake({"text": "ready"}))
    sid = result["session_id"]
    req_id, mark = hang(wire, sid)
    return sid, mark, req_id


def scripted(spawn: Callable[..., Wire], tmp_path: Path, script: Dict[str, Any], *args: str) -> Wire:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return spawn("--script", str(path), *args)


# -- handshake ---------------------------------------------------------------------------


def test_initialize_shape(shared: Wire) -> None:
    req_id = shared.request("initialize", {})
    message = shared.response(req_id)
    assert set(message) == {"jsonrpc", "id", "result"} and message["jsonrpc"] == "2.0"
    result = message["result"]
    assert set(result) == {"server_info", "contract_version", "methods"}
    assert result["server_info"] == {"name": "meerkat-rpc", "version": "0.5.0"}
    assert result["contract_version"] == "0.5.0"
    methods = result["methods"]
    # 60 entries, the notification name first, blob/get listed; cancel, tool/execute and
    # mob/wait_kickoff routed or sent but never listed.
    assert len(methods) == 60 and len(set(methods)) == 60
    assert methods[:4] == ["initialized", "initialize", "session/create", "session/list"]
    assert methods[-2:] == ["comms/send", "comms/peers"]
    assert "blob/get" in methods and "turn/start" in methods and "runtime/accept" in methods
    assert not {"cancel", "tool/execute", "mob/wait_kickoff"} & set(methods)
    assert sum(m.startswith("mob/") for m in methods) == 27
    # params may be omitted; `initialized` notification gets no reply.
    shared.notify("initialized", None)
    assert shared.result("initialize")["contract_version"] == "0.5.0"


def test_capabilities_are_the_real_eleven(shared: Wire) -> None:
    result = shared.result("capabilities/get", {})
    assert result == {
        "contract_version": {"major": 0, "minor": 5, "patch": 0},
        "capabilities": REAL_CAPABILITIES,
    }


def test_no_answer_initialize(spawn: Callable[..., Wire]) -> None:
    wire = spawn("--no-answer-initialize")
    init_id = wire.request("initialize", {})
    # Other methods are still served; initialize never is.
    wire.response(wire.request("capabilities/get"))
    time.sleep(0.3)
    assert not any(is_response(m, init_id) for m in wire.log)
    assert wire.close() == 0


# -- a plain run -------------------------------------------------------------------------


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
        "skill_diagnostics": SKILL_DIAGNOSTICS,
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
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for envelope in events:
        assert set(envelope) == {"event_id", "source_id", "seq", "timestamp_ms", "payload"}
        assert UUID_RE.match(envelope["event_id"])
        assert envelope["source_id"] == f"session:{sid}"
        assert isinstance(envelope["timestamp_ms"], int) and envelope["timestamp_ms"] > 1.6e12
    assert len({e["event_id"] for e in events}) == len(events)
    body = payloads(events)
    assert body[0] == {"type": "run_started", "session_id": sid, "prompt": "hello there world"}
    assert body[1] == {"type": "turn_started", "turn_number": 0}
    assert "".join(p["delta"] for p in body if p["type"] == "text_delta") == result["text"]
    assert body[6] == {"type": "text_complete", "content": result["text"]}
    usage = {"input_tokens": 3, "output_tokens": 4, "cache_creation_tokens": None, "cache_read_tokens": None}
    assert body[7] == {"type": "turn_completed", "stop_reason": "end_turn", "usage": usage}
    assert body[8] == {"type": "run_completed", "session_id": sid, "result": result["text"], "usage": usage}
    # Notification framing: keys in alphabetical order, as the real server writes them.
    raw = next(r for r, m in zip(shared.raw[start:index], shared.log[start:index]) if m and "method" in m)
    assert raw.startswith('{"jsonrpc":"2.0","method":"session/event","params":{"event":{"event_id":')
    assert '"payload":{"prompt":"hello there world","session_id":' in raw


def test_usage_is_cumulative_over_the_session(shared: Wire) -> None:
    first = {"text": "one", "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_tokens": 3}}
    result, _ = create(shared, fake(first), labels={"t": "usage"})
    sid = result["session_id"]
    assert result["usage"] == {
        "input_tokens": 5,
        "output_tokens": 7,
        "total_tokens": 12,
        "cache_read_tokens": 3,
    }
    second = {"text": "two", "usage": {"input_tokens": 11, "output_tokens": 13, "cache_creation_tokens": 2}}
    message, events = run_turn(shared, sid, fake(second))
    assert message["result"]["usage"] == {
        "input_tokens": 16,
        "output_tokens": 20,
        "total_tokens": 36,
        "cache_creation_tokens": 2,
        "cache_read_tokens": 3,
    }
    assert message["result"]["turns"] == 1
    by_type = {p["type"]: p for p in payloads(events)}
    assert by_type["turn_completed"]["usage"] == {  # this model call only
        "cache_creation_tokens": 2,
        "cache_read_tokens": None,
        "input_tokens": 11,
        "output_tokens": 13,
    }
    assert by_type["run_completed"]["usage"] == {  # the session so far
        "cache_creation_tokens": 2,
        "cache_read_tokens": 3,
        "input_tokens": 16,
        "output_tokens": 20,
    }
    (listed,) = shared.result("session/list", {"labels": {"t": "usage"}})["sessions"]
    assert listed["total_tokens"] == 36


def test_history_starts_with_the_system_message(shared: Wire) -> None:
    result, _ = create(shared, "alpha")
    sid = result["session_id"]
    history = shared.result("session/history", {"session_id": sid})
    assert history["message_count"] == 3 and roles(shared, sid) == ["system", "user", "block_assistant"]
    system = history["messages"][0]
    assert system["role"] == "system" and isinstance(system["content"], str) and system["content"]
    assert shared.result("session/read", {"session_id": sid})["message_count"] == 3
    custom, _ = create(shared, "beta", system_prompt="You are terse.")
    first = shared.result("session/history", {"session_id": custom["session_id"]})["messages"][0]
    assert first == {"role": "system", "content": "You are terse."}


def test_list_read_history_shapes(shared: Wire) -> None:
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
    assert len(shared.result("session/list", {"labels": labels, "limit": 1, "offset": 1})["sessions"]) == 1
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
    assert shared.result("session/history", {"session_id": sid}) == {
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


def test_read_while_a_turn_runs(shared: Wire) -> None:
    result, _ = create(shared, fake({"text": "ready"}))
    sid = result["session_id"]
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"chunks": ["a", "b", "c"], "delay_ms": 150})}
    )
    shared.event_index(sid, "text_delta", mark)
    info = shared.result("session/read", {"session_id": sid})
    assert info["is_active"] is True and "last_assistant_text" not in info
    assert info["message_count"] == 3  # the transcript as of the last finished run
    assert state(shared, sid) == "running"
    assert len(shared.result("input/list", {"session_id": sid})["input_ids"]) == 1
    assert shared.response(req_id)["result"]["text"] == "abc"
    info = shared.result("session/read", {"session_id": sid})
    assert (info["message_count"], info["is_active"], info["last_assistant_text"]) == (5, False, "abc")
    # While the first run of a session is on, nothing of it is published yet.
    slow = fake({"chunks": ["x", "y"], "delay_ms": 200})
    req_id = shared.request("session/create", {"prompt": slow})
    index = shared.wait(
        lambda m: (
            isinstance(m, dict)
            and m.get("method") == "session/event"
            and m["params"]["event"]["payload"].get("prompt") == slow
        )
    )
    other = shared.log[index]["params"]["session_id"]
    info = shared.result("session/read", {"session_id": other})
    assert (info["message_count"], info["is_active"]) == (0, True)
    assert shared.result("session/history", {"session_id": other})["message_count"] == 1  # system only
    shared.response(req_id)


# -- prompts -----------------------------------------------------------------------------


def test_block_prompts_images_and_blobs(shared: Wire) -> None:
    blocks = [
        {"type": "text", "text": "first"},
        {"type": "image", "media_type": "image/png", "source": "inline", "data": PIXEL},
        {"type": "text", "text": "second"},
    ]
    start = shared.mark()
    result, index = create(shared, blocks)
    sid = result["session_id"]
    assert result["text"] == "Echo: first\nsecond"
    rendered = shared.events(sid, start, index)[0]["payload"]["prompt"]
    assert rendered == "first\n[image: image/png]\nsecond"
    user = shared.result("session/history", {"session_id": sid})["messages"][1]
    blob_id = "sha256:0a42994f7d798bd0c48fe3d29147ccf3add56711c1fc61834362d94bff1e9472"  # as the real one
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "first"},
            {"type": "image", "media_type": "image/png", "source": "blob", "blob_id": blob_id},
            {"type": "text", "text": "second"},
        ],
    }
    blob = shared.result("blob/get", {"blob_id": blob_id})
    assert blob == {"blob_id": blob_id, "media_type": "image/png", "data": PIXEL}
    assert shared.error("blob/get", {"blob_id": "sha256:nope"}) == (-32602, "blob not found: sha256:nope")
    # A text-only block list is one string.
    text_only, _ = create(shared, [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert user_texts(shared, text_only["session_id"]) == ["a\nb"]


def test_deferred_create_and_merged_prompts(shared: Wire) -> None:
    start = shared.mark()
    req_id = shared.request(
        "session/create", {"prompt": "Define meerkat", "initial_turn": "deferred", "labels": {"t": "defer"}}
    )
    index = shared.response_index(req_id)
    result = shared.log[index]["result"]
    sid = result["session_id"]
    assert result == {"session_id": sid, "session_ref": f"{REALM}:{sid}"}
    info = shared.result("session/read", {"session_id": sid})
    assert info["message_count"] == 0 and info["is_active"] is False and "last_assistant_text" not in info
    history = shared.result("session/history", {"session_id": sid})
    assert history["messages"] == [] and history["message_count"] == 0
    (listed,) = shared.result("session/list", {"labels": {"t": "defer"}})["sessions"]
    assert (listed["message_count"], listed["total_tokens"], listed["is_active"]) == (0, 0, False)
    assert shared.events(sid, start) == []  # deferred creation emits nothing
    assert state(shared, sid) == "attached"

    message, events = run_turn(shared, f"{REALM}:{sid}", "Be brief.")
    merged = "Define meerkat\n\nBe brief."
    assert message["result"]["text"] == "Echo: " + merged
    assert events[0]["seq"] == 1
    assert events[0]["payload"] == {"type": "run_started", "session_id": sid, "prompt": merged}
    assert user_texts(shared, sid) == [merged]

    def merge(create_prompt: Any, turn_prompt: Any) -> Tuple[str, Any]:
        req = shared.request("session/create", {"prompt": create_prompt, "initial_turn": "deferred"})
        other = shared.response(req)["result"]["session_id"]
        _message, seen = run_turn(shared, other, turn_prompt)
        return seen[0]["payload"]["prompt"], user_texts(shared, other)[0]

    assert merge([{"type": "text", "text": "A"}], "B") == ("A\nB", "A\nB")
    assert merge("A", [{"type": "text", "text": "B1"}, {"type": "text", "text": "B2"}]) == (
        "A\n\nB1\nB2",
        "A\n\nB1\nB2",
    )
    image = {"type": "image", "media_type": "image/png", "source": "inline", "data": PIXEL}
    shown, content = merge("img", [{"type": "text", "text": "look"}, image])
    assert shown == "img\nlook\n[image: image/png]"
    assert [b["type"] for b in content] == ["text", "text", "image"] and content[2]["source"] == "blob"


def test_additional_instructions_prefix_the_turn_prompt(shared: Wire) -> None:
    result, _ = create(shared, "hi")
    sid = result["session_id"]
    message, events = run_turn(shared, sid, "x", additional_instructions=["I1", "I2"])
    prompt = "[SYSTEM NOTICE: I1]\n\n[SYSTEM NOTICE: I2]\n\nx"
    assert events[0]["payload"]["prompt"] == prompt and message["result"]["text"] == "Echo: " + prompt
    image = {"type": "image", "media_type": "image/png", "source": "inline", "data": "AAAA"}
    _message, events = run_turn(
        shared, sid, [{"type": "text", "text": "y"}, image], additional_instructions=["I"]
    )
    assert events[0]["payload"]["prompt"] == "[SYSTEM NOTICE: I]\n\n\ny\n[image: image/png]"


# -- tools -------------------------------------------------------------------------------


def test_tool_runs_have_no_turn_completed_for_the_tool_call(shared: Wire) -> None:
    result, _ = create(shared, "setup")
    sid = result["session_id"]
    spec = {
        "text": "done",
        "tool_calls": [
            {"name": "calc", "args": {"expr": "2+2"}, "result": "4", "id": "toolu_1"},
            {"name": "calc", "args": {"expr": "3"}, "result": "3", "id": "toolu_2"},
        ],
        "usage": {"input_tokens": 100, "output_tokens": 50},
    }
    message, events = run_turn(shared, sid, fake(spec))
    run = message["result"]
    assert (run["turns"], run["tool_calls"], run["text"]) == (2, 2, "done")
    assert types(events) == [
        "run_started",
        "turn_started",
        "tool_call_requested",
        "tool_call_requested",
        "tool_execution_started",
        "tool_execution_started",
        "tool_execution_completed",
        "tool_result_received",
        "tool_execution_completed",
        "tool_result_received",
        "turn_started",
        "text_delta",
        "text_complete",
        "turn_completed",
        "run_completed",
    ]
    body = payloads(events)
    assert body[2] == {
        "type": "tool_call_requested",
        "id": "toolu_1",
        "name": "calc",
        "args": {"expr": "2+2"},
    }
    completed = body[6]
    assert (completed["id"], completed["result"], completed["is_error"], completed["has_images"]) == (
        "toolu_1",
        "4",
        False,
        False,
    )
    assert isinstance(completed["duration_ms"], int)
    assert body[10] == {"type": "turn_started", "turn_number": 1}
    # Usage as the model endpoint reports it: input on the tool call, output on the answer.
    assert body[13]["usage"] == {
        "input_tokens": 0,
        "output_tokens": 50,
        "cache_creation_tokens": None,
        "cache_read_tokens": None,
    }
    assert body[14]["usage"]["input_tokens"] == 100 + 1 and body[14]["usage"]["output_tokens"] == 50 + 2
    history = shared.result("session/history", {"session_id": sid, "offset": 3})["messages"]
    assert history == [
        {"role": "user", "content": fake(spec)},
        {
            "role": "block_assistant",
            "blocks": [
                {
                    "block_type": "tool_use",
                    "data": {"id": "toolu_1", "name": "calc", "args": {"expr": "2+2"}},
                },
                {"block_type": "tool_use", "data": {"id": "toolu_2", "name": "calc", "args": {"expr": "3"}}},
            ],
            "stop_reason": "tool_use",
        },
        {
            "role": "tool_results",
            "results": [
                {"tool_use_id": "toolu_1", "content": "4", "is_error": False},
                {"tool_use_id": "toolu_2", "content": "3", "is_error": False},
            ],
        },
        {
            "role": "block_assistant",
            "blocks": [{"block_type": "text", "data": {"text": "done"}}],
            "stop_reason": "end_turn",
        },
    ]


def test_builtin_tools_without_a_scripted_result(shared: Wire) -> None:
    calls = [{"name": "datetime"}, {"name": "task_list"}, {"name": "no_such_tool", "args": {"x": 1}}]
    result, index = create(shared, fake({"tool_calls": calls, "text": "ok"}), enable_shell=False)
    completed = [
        e["payload"]
        for e in shared.events(result["session_id"], 0, index)
        if e["payload"]["type"] == "tool_execution_completed"
    ]
    now = json.loads(completed[0]["result"])
    assert set(now) == {
        "date",
        "day",
        "iso8601",
        "month",
        "time",
        "timezone",
        "unix_timestamp",
        "weekday",
        "year",
    }
    assert now["timezone"] == "UTC" and not completed[0]["is_error"]
    assert (completed[1]["result"], completed[1]["is_error"]) == ("[]", False)
    missing = '{"error":"tool_not_found","message":"Tool not found: no_such_tool"}'
    assert (completed[2]["result"], completed[2]["is_error"]) == (missing, True)
    # Without builtins a session has no tools at all.
    quiet, index = create(shared, fake({"tool_calls": [{"name": "datetime"}]}), enable_builtins=False)
    (done,) = [
        e
        for e in shared.events(quiet["session_id"], 0, index)
        if e["payload"]["type"] == "tool_result_received"
    ]
    assert done["payload"]["is_error"] is True


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
            {"method": "tool/execute", "params": {"tool_use_id": "tu_b", "name": "fail"}},
        ],
    }
    mark = wire.mark()
    req_id = wire.request("turn/start", {"session_id": sid, "prompt": fake(spec)})
    first = wire.wait(lambda m: isinstance(m, dict) and m.get("id") == "srv-0", mark)
    second = wire.wait(lambda m: isinstance(m, dict) and m.get("id") == "srv-1", mark)
    assert wire.log[first] == {
        "jsonrpc": "2.0",
        "id": "srv-0",
        "method": "tool/execute",
        "params": {"tool_use_id": "tu_a", "name": "lookup", "arguments": {"q": "x"}},
    }
    assert wire.log[second]["params"] == {"tool_use_id": "tu_b", "name": "fail", "arguments": {}}
    # The requests come right after turn_started, before tool_call_requested.
    assert types(wire.events(sid, mark, second)) == ["run_started", "turn_started"]
    wire.event_index(sid, "tool_execution_started", mark)
    wire.send({"jsonrpc": "2.0", "id": "srv-1", "error": {"code": -32000, "message": "boom"}})
    wire.send({"jsonrpc": "2.0", "id": "srv-0", "result": {"content": "found", "is_error": False}})
    index = wire.response_index(req_id)
    run = wire.log[index]["result"]
    assert (run["turns"], run["tool_calls"], run["text"]) == (2, 2, "ok")
    completed = [
        p for p in payloads(wire.events(sid, mark, index)) if p["type"] == "tool_execution_completed"
    ]
    failed = '{"error":"execution_failed","message":"Tool execution failed: boom"}'
    assert [(c["id"], c["result"], c["is_error"]) for c in completed] == [
        ("tu_a", "found", False),
        ("tu_b", failed, True),
    ]
    assert wire.close() == 0


def test_reasoning_and_extra_events(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    spec = {
        "reasoning": ["thinking ", "hard"],
        "text": "ans",
        "extra_events": [{"type": "brand_new_event", "x": 1}],
    }
    message, events = run_turn(shared, sid, fake(spec))
    assert types(events) == [
        "run_started",
        "turn_started",
        "brand_new_event",
        "reasoning_delta",
        "reasoning_delta",
        "reasoning_complete",
        "text_delta",
        "text_complete",
        "turn_completed",
        "run_completed",
    ]
    assert payloads(events)[2] == {"type": "brand_new_event", "x": 1}
    assert payloads(events)[5] == {"type": "reasoning_complete", "content": "thinking hard"}
    assert message["result"]["text"] == "ans"
    answer = shared.result("session/history", {"session_id": sid})["messages"][-1]
    reasoning, text = answer["blocks"]
    assert reasoning["block_type"] == "reasoning" and reasoning["data"]["text"] == "thinking hard"
    assert reasoning["data"]["meta"]["provider"] == "anthropic"
    assert reasoning["data"]["meta"]["signature"].startswith("sig-")
    assert text == {"block_type": "text", "data": {"text": "ans"}}


# -- structured output -------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_structured_output_is_a_second_llm_turn(shared: Wire) -> None:
    spec = {
        "text": "the answer is 42",
        "structured_output": {"answer": 42},
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }
    start = shared.mark()
    result, index = create(shared, fake(spec), output_schema=SCHEMA)
    sid = result["session_id"]
    assert result == {
        "session_id": sid,
        "session_ref": f"{REALM}:{sid}",
        "text": '{"answer":42}',
        "turns": 2,
        "tool_calls": 0,
        "usage": {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9},
        "structured_output": {"answer": 42},
    }
    body = payloads(shared.events(sid, start, index))
    assert [p["type"] for p in body] == [
        "run_started",
        "turn_started",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_complete",
        "turn_completed",
        "turn_started",
        "text_delta",
        "text_complete",
        "turn_completed",
        "run_completed",
    ]
    assert body[8] == {"type": "turn_started", "turn_number": 1}
    assert body[10] == {"type": "text_complete", "content": '{"answer":42}'}
    assert body[11]["usage"]["input_tokens"] == 0 and body[11]["usage"]["output_tokens"] == 0
    assert body[12]["result"] == '{"answer":42}'
    assert roles(shared, sid) == ["system", "user", "block_assistant", "user", "block_assistant"]
    assert user_texts(shared, sid)[1].startswith("Provide the final output as valid JSON matching")


def test_structured_output_from_the_last_text_and_its_failures(shared: Wire) -> None:
    fenced, _ = create(shared, fake({"text": '```json\n{"answer": 7}\n```'}), output_schema=SCHEMA)
    assert fenced["structured_output"] == {"answer": 7} and fenced["text"].startswith("```json")
    with_tools, _ = create(
        shared,
        fake(
            {"tool_calls": [{"name": "calc", "result": "1"}], "text": "t", "structured_output": {"answer": 3}}
        ),
        output_schema=SCHEMA,
    )
    assert (with_tools["turns"], with_tools["tool_calls"], with_tools["text"]) == (3, 1, '{"answer":3}')

    def failure(spec: Dict[str, Any], **params: Any) -> Tuple[str, List[str]]:
        start = shared.mark()
        req_id = shared.request("session/create", {"prompt": fake(spec), "output_schema": SCHEMA, **params})
        index = shared.response_index(req_id)
        error = shared.log[index]["error"]
        assert error["code"] == -32603 and error["message"].startswith(ABANDONED + "agent error: ")
        seen = [m for m in shared.log[start:] if isinstance(m, dict) and m.get("method") == "session/event"]
        return error["message"][len(ABANDONED + "agent error: ") :], types(
            [m["params"]["event"] for m in seen]
        )

    reason, seen = failure({"text": "nope"})
    assert (
        reason == "Structured output validation failed after 2 attempts: Invalid JSON: "
        "expected ident at line 1 column 2"
    )
    assert seen.count("turn_started") == 3 and seen[-1] == "run_failed"
    reason, _ = failure({"structured_output": {"answer": "x"}}, structured_output_retries=1)
    assert (
        reason == "Structured output validation failed after 1 attempts: Schema validation failed: "
        '"x" is not of type "integer"'
    )
    reason, _ = failure({"structured_output": {"answer": 1, "extra": 2}})
    assert reason.endswith(
        "Schema validation failed: Additional properties are not allowed ('extra' was unexpected)"
    )
    reason, _ = failure({"structured_output": {}})
    assert reason.endswith('Schema validation failed: "answer" is a required property')


# -- errors ------------------------------------------------------------------------------

# (method, params, message) exactly as the real server answered them (its column numbers too).
PARAM_ERRORS: List[Tuple[str, Dict[str, Any], str]] = [
    ("turn/start", {"session_id": "S"}, "Invalid params: missing field `prompt` at line 1 column 53"),
    ("turn/start", {"prompt": "x"}, "Invalid params: missing field `session_id` at line 1 column 14"),
    (
        "session/create",
        {"enable_builtins": False, "enable_shell": False},
        "Invalid params: missing field `prompt` at line 1 column 46",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": [{"type": "audio", "data": "x"}]},
        "Invalid params: data did not match any variant of untagged enum ContentInput at line 1 column 39",
    ),
    (
        "session/create",
        {"prompt": [{"type": "audio", "data": "x"}], "enable_builtins": False, "enable_shell": False},
        "Invalid params: data did not match any variant of untagged enum ContentInput at line 1 column 85",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": [{"type": "image", "media_type": "image/png", "data": "AAAA"}]},
        "Invalid params: data did not match any variant of untagged enum ContentInput at line 1 column 67",
    ),
    (
        "session/create",
        {"prompt": "x", "initial_turn": "later", "enable_builtins": False, "enable_shell": False},
        "Invalid params: unknown variant `later`, expected `run_immediately` or `deferred` "
        "at line 1 column 68",
    ),
    (
        "session/create",
        {"prompt": "x", "keep_alive": None, "enable_builtins": False, "enable_shell": False},
        "Invalid params: invalid type: null, expected a boolean at line 1 column 63",
    ),
    (
        "session/create",
        {
            "prompt": "x",
            "budget_limits": {"max_duration": {"secs": 1}},
            "enable_builtins": False,
            "enable_shell": False,
        },
        "Invalid params: missing field `nanos` at line 1 column 43",
    ),
    (
        "session/create",
        {
            "prompt": "x",
            "hooks_override": {"entries": "nope"},
            "enable_builtins": False,
            "enable_shell": False,
        },
        'Invalid params: invalid type: string "nope", expected a sequence at line 1 column 80',
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "flow_tool_overlay": {"allowed_tools": "datetime"}},
        'Invalid params: invalid type: string "datetime", expected a sequence at line 1 column 48',
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "flow_tool_overlay": "x"},
        'Invalid params: invalid type: string "x", expected struct TurnToolOverlay at line 1 column 24',
    ),
    (
        "session/create",
        {"prompt": "x", "external_tools": [{"name": "t"}], "enable_builtins": False, "enable_shell": False},
        "Invalid params: missing field `description` at line 1 column 76",
    ),
    (
        "session/create",
        {
            "prompt": 'fake:{"text": "x"}',
            "skill_refs": [{"source_uuid": "abc123", "skill_name": "x"}],
            "enable_builtins": False,
            "enable_shell": False,
        },
        "Invalid params: data did not match any variant of untagged enum SkillRef at line 1 column 136",
    ),
    (
        "turn/start",
        {
            "session_id": "S",
            "prompt": 'fake:{"text": "x"}',
            "skill_refs": [{"source_uuid": "abc123", "skill_name": "x"}],
        },
        "Invalid params: data did not match any variant of untagged enum SkillRef at line 1 column 143",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "skill_refs": ["not-a-ref"]},
        "Invalid skill_refs: unknown skill alias 'not-a-ref'",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "skill_references": ["not-a-ref"]},
        "Invalid skill_refs: unknown skill alias 'not-a-ref'",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "max_tokens": 5},
        "Cannot override max_tokens on a runtime-routed turn; set these at session/create time "
        "or use a deferred session",
    ),
    (
        "turn/start",
        {"session_id": "S", "prompt": "x", "system_prompt": "s", "output_schema": {"type": "object"}},
        "Cannot override system_prompt, output_schema on a runtime-routed turn; "
        "set these at session/create time or use a deferred session",
    ),
    (
        "session/create",
        {
            "prompt": "x",
            "peer_meta": {"labels": {"role": "a"}},
            "enable_builtins": False,
            "enable_shell": False,
        },
        "peer_meta label 'role' is reserved for mob-managed sessions",
    ),
]


@pytest.fixture(scope="module")
def live_session(shared: Wire) -> str:
    """A session id whose text is exactly 36 characters, like the probe's."""
    result, _ = create(shared, "live")
    sid: str = result["session_id"]
    return sid


@pytest.mark.parametrize("case", range(len(PARAM_ERRORS)))
def test_param_errors_match_the_real_server(shared: Wire, live_session: str, case: int) -> None:
    method, params, message = PARAM_ERRORS[case]
    if params.get("session_id") == "S":
        params = {**params, "session_id": live_session}
    assert shared.error(method, params) == (-32602, message)


def test_missing_params_and_other_param_checks(shared: Wire) -> None:
    assert shared.error("session/create") == (-32602, "Missing params")
    assert shared.error("session/create", None) == (-32602, "Missing params")
    assert shared.error("turn/start") == (-32602, "Missing params")
    code, message = shared.error(
        "session/create", {"prompt": "x", "budget_limits": {"max_duration": {"secs": 1, "nanos": 0, "ms": 3}}}
    )
    assert code == -32602 and message.startswith(
        "Invalid params: unknown field `ms`, expected `secs` or `nanos` at "
    )
    code, message = shared.error("session/create", {"prompt": "x", "budget_limits": {"max_tokens": -1}})
    assert message.startswith("Invalid params: invalid value: integer `-1`, expected u64 at line 1 column ")
    code, message = shared.error(
        "session/create", {"prompt": "x", "hooks_override": {"entries": [{"point": "foo"}]}}
    )
    assert message.startswith("Invalid params: unknown variant `foo`, expected one of `run_started`, ")
    code, message = shared.error(
        "session/create", {"prompt": "x", "hooks_override": {"entries": [{"runtime": {}}]}}
    )
    assert message.startswith("Invalid params: hook runtime missing required field 'type' at ")
    # Accepted shapes: an entry with defaults, well-formed unknown skill refs, a duration as [secs, nanos].
    ok, _ = create(
        shared, "x", hooks_override={"entries": [{"id": "h"}]}, budget_limits={"max_duration": [60, 0]}
    )
    assert ok["text"] == "Echo: x"
    key = {"source_uuid": GHOST, "skill_name": "some-skill"}
    assert create(shared, "y", skill_refs=[key, f"{GHOST}/some-skill"])[0]["text"] == "Echo: y"


def test_unknown_sessions_and_bad_ids(shared: Wire) -> None:
    for method in (
        "session/read",
        "session/history",
        "session/archive",
        "runtime/state",
        "runtime/reset",
        "input/list",
    ):
        assert shared.error(method, {"session_id": GHOST}) == (-32001, f"Session not found: {GHOST}")
    assert shared.error("turn/interrupt", {"session_id": GHOST}) == (-32001, f"session not found: {GHOST}")
    assert shared.error("turn/start", {"session_id": GHOST, "prompt": "x"}) == (
        -32603,
        f"{ABANDONED}session not found: {GHOST}",
    )
    assert shared.error("session/read", {"session_id": f"other:{GHOST}"}) == (
        -32602,
        f"Session locator realm 'other' does not match active runtime realm '{REALM}'",
    )
    assert shared.error("turn/start", {"session_id": "not-a-uuid", "prompt": "x"}) == (
        -32602,
        "Invalid session_id 'not-a-uuid': invalid session id in session locator: not-a-uuid",
    )
    assert shared.error("session/read", {}) == (
        -32602,
        "Invalid params: missing field `session_id` at line 1 column 2",
    )
    assert shared.error("session/read") == (-32602, "Missing params")


def test_archived_sessions_stay_readable(shared: Wire) -> None:
    result, _ = create(shared, fake({"text": "bye"}), labels={"t": "archived"})
    sid = result["session_id"]
    assert shared.result("session/archive", {"session_id": f"{REALM}:{sid}"}) == {"archived": True}
    info = shared.result("session/read", {"session_id": sid})
    assert (info["message_count"], info["is_active"], info["last_assistant_text"]) == (3, False, "bye")
    assert shared.result("session/history", {"session_id": sid})["message_count"] == 3
    assert shared.result("session/list", {"labels": {"t": "archived"}}) == {"sessions": []}
    assert shared.result("session/archive", {"session_id": sid}) == {"archived": True}
    assert shared.error("turn/start", {"session_id": sid, "prompt": "x"}) == (
        -32603,
        f"{ABANDONED}session not found: {sid}",
    )
    assert shared.error("turn/interrupt", {"session_id": sid}) == (-32001, f"session not found: {sid}")
    assert shared.error("runtime/state", {"session_id": sid}) == (-32001, f"Session not found: {sid}")
    req_id = shared.request("session/create", {"prompt": "p", "initial_turn": "deferred"})
    pending = shared.response(req_id)["result"]["session_id"]
    shared.result("session/archive", {"session_id": pending})
    assert shared.error("turn/start", {"session_id": pending, "prompt": "x"}) == (
        -32603,
        f"{ABANDONED}session not found: {pending}",
    )


def test_turn_options_that_fail_the_run(shared: Wire) -> None:
    result, _ = create(shared, "x", enable_shell=False)
    sid = result["session_id"]
    message, events = run_turn(
        shared, sid, "p", flow_tool_overlay={"allowed_tools": ["zzz", "aaa", "datetime"]}
    )
    assert message["error"] == {
        "code": -32603,
        "message": ABANDONED + 'agent error: Configuration error: Unknown tool(s) in filter: ["aaa", "zzz"]',
    }
    assert events == []  # it fails before the run starts
    assert shared.result("runtime/reset", {"session_id": sid}) == {"inputs_abandoned": 1}
    message, events = run_turn(shared, sid, "p", provider="openai")
    assert message["error"] == {
        "code": -32603,
        "message": ABANDONED + "provider override requires model on an existing session",
    }
    shared.result("runtime/reset", {"session_id": sid})
    message, _ = run_turn(
        shared, sid, "p", model="gemini-2.5-pro", flow_tool_overlay={"allowed_tools": ["datetime"]}
    )
    assert message["result"]["text"] == "Echo: p"
    info = shared.result("session/read", {"session_id": sid})
    assert (info["model"], info["provider"]) == ("gemini-2.5-pro", "gemini")


def test_unknown_methods(shared: Wire) -> None:
    assert shared.error("foo/bar", {}) == (-32601, "Method not found: foo/bar")
    assert shared.error("cancel", {"request_id": 1}) == (-32601, "Method not found: cancel")
    assert shared.error("config/reset") == (-32601, "Method not found: config/reset")


# -- the runtime's queue: interrupts, cancels, replays -----------------------------------


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
    assert run1[0] == "run_started" and run1[-1] == "run_completed" and run1.count("run_started") == 1
    assert run2[0] == "run_started" and run2[-1] == "run_completed" and run2.count("run_started") == 1
    seqs = [e["seq"] for e in shared.events(sid)]
    assert seqs == list(range(1, len(seqs) + 1))  # seq keeps counting across runs
    assert roles(shared, sid) == ["system"] + ["user", "block_assistant"] * 3


def test_an_interrupted_turn_is_queued_again_and_reset_drops_it(shared: Wire) -> None:
    sid, mark, turn_id = start_hanging_turn(shared)
    assert shared.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}
    assert shared.response(turn_id)["error"] == {"code": -32603, "message": CANCELLED}
    assert types(shared.events(sid, mark)) == ["run_started", "turn_started"]  # no terminal event
    assert state(shared, sid) == "attached"
    assert len(shared.result("input/list", {"session_id": sid})["input_ids"]) == 1
    # The live transcript keeps the interrupted prompt; the stored history does not yet.
    assert shared.result("session/read", {"session_id": sid})["message_count"] == 4
    assert shared.result("session/history", {"session_id": sid})["message_count"] == 3
    assert shared.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}  # idle: no-op
    assert shared.result("runtime/reset", {"session_id": sid}) == {"inputs_abandoned": 1}
    assert state(shared, sid) == "idle" and shared.result("input/list", {"session_id": sid}) == {
        "input_ids": []
    }
    message, events = run_turn(shared, sid, fake({"text": "after reset"}))
    assert message["result"]["text"] == "after reset"
    assert [p["prompt"] for p in payloads(events) if p["type"] == "run_started"] == [
        fake({"text": "after reset"})
    ]
    assert user_texts(shared, sid) == [
        fake({"text": "ready"}),
        fake({"hang": True}),
        fake({"text": "after reset"}),
    ]
    assert state(shared, sid) == "idle"


def hang_on(wire: Wire, sid: str, prompt: str) -> Tuple[Any, int]:
    """A turn whose scripted reply hangs; returns (request id, event mark) once it runs."""
    mark = wire.mark()
    req_id = wire.request("turn/start", {"session_id": sid, "prompt": prompt})
    wire.event_index(sid, "turn_started", mark)
    return req_id, mark


def test_the_next_turn_replays_an_interrupted_one_first(spawn: Callable[..., Wire], tmp_path: Path) -> None:
    wire = scripted(
        spawn,
        tmp_path,
        {"replies": [{"text": "ready"}, {"hang": True}, {"text": "replayed"}, {"text": "after-reply"}]},
    )
    result, _ = create(wire, "P0")
    sid = result["session_id"]
    hung, _ = hang_on(wire, sid, "P1")
    wire.result("turn/interrupt", {"session_id": sid})
    assert wire.response(hung)["error"]["message"] == CANCELLED
    message, events = run_turn(wire, sid, "P2")
    assert message["result"]["text"] == "after-reply"
    assert [p["prompt"] for p in payloads(events) if p["type"] == "run_started"] == ["P1", "P2"]
    assert [p["result"] for p in payloads(events) if p["type"] == "run_completed"] == [
        "replayed",
        "after-reply",
    ]
    assert user_texts(wire, sid) == ["P0", "P1", "P1", "P2"]  # the replay repeats the prompt
    assert wire.result("session/read", {"session_id": sid})["message_count"] == 8


def test_a_queued_turn_waits_behind_a_replay_that_hangs_again(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    sid, _mark, running = start_hanging_turn(wire)
    queued = wire.request("turn/start", {"session_id": sid, "prompt": fake({"text": "B"})})
    time.sleep(0.2)
    mark = wire.mark()
    wire.result("turn/interrupt", {"session_id": sid})
    assert wire.response(running)["error"]["message"] == CANCELLED
    wire.event_index(sid, "turn_started", mark)  # the replay hangs again
    assert state(wire, sid) == "running"
    assert wire.error("runtime/reset", {"session_id": sid}) == (-32602, "Runtime not ready: running")
    assert not any(is_response(m, queued) for m in wire.log)
    assert wire.result("session/archive", {"session_id": sid}) == {"archived": True}
    assert wire.response(queued)["error"] == {"code": -32603, "message": UNREGISTERED}


def test_a_deterministic_failure_replays_while_another_turn_waits(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    result, _ = create(wire, fake({"text": "ready"}))
    sid = result["session_id"]
    failing = fake({"provider_error": {"status": 401}})
    message, events = run_turn(wire, sid, failing)
    assert message["error"]["code"] == -32603 and types(events) == [
        "run_started",
        "turn_started",
        "run_failed",
    ]
    assert state(wire, sid) == "attached"  # nothing else queued: no replay yet
    mark = wire.mark()
    stuck = wire.request("turn/start", {"session_id": sid, "prompt": fake({"text": "never"})})
    wait_until(lambda: count_events(wire, sid, "run_failed", mark) >= 3)
    started = time.monotonic()
    loops = count_events(wire, sid, "run_started", mark)
    time.sleep(0.5)
    pace = (count_events(wire, sid, "run_started", mark) - loops) / (time.monotonic() - started)
    assert 1 < pace < 60  # it loops, but with a pause between replays
    prompts = {p["prompt"] for p in payloads(wire.events(sid, mark)) if p["type"] == "run_started"}
    assert prompts == {failing}
    info = wire.result("session/read", {"session_id": sid})
    assert info["is_active"] is True and info["message_count"] > 5
    assert wire.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}
    assert wire.error("runtime/reset", {"session_id": sid}) == (-32602, "Runtime not ready: running")
    assert not any(is_response(m, stuck) for m in wire.log)
    wire.result("session/archive", {"session_id": sid})
    assert wire.response(stuck)["error"] == {"code": -32603, "message": UNREGISTERED}
    settled = count_events(wire, sid, "run_started")
    time.sleep(0.3)
    assert count_events(wire, sid, "run_started") == settled


def test_cancel_of_a_running_turn(shared: Wire) -> None:
    sid, mark, running = start_hanging_turn(shared)
    # A cancel whose request_id has the wrong JSON type matches nothing.
    shared.notify("cancel", {"request_id": str(running)})
    shared.barrier()
    assert not any(is_response(m, running) for m in shared.log)
    shared.notify("cancel", {"request_id": running})
    assert shared.response(running)["error"] == {
        "code": -32005,
        "message": "request cancelled before response publish",
    }
    assert types(shared.events(sid, mark)) == ["run_started", "turn_started"]
    assert len(shared.result("input/list", {"session_id": sid})["input_ids"]) == 1  # queued again
    shared.result("runtime/reset", {"session_id": sid})
    assert run_turn(shared, sid, "again")[0]["result"]["text"] == "Echo: again"


def test_cancel_sent_with_the_turn_drops_it(shared: Wire) -> None:
    result, _ = create(shared, fake({"text": "ready"}))
    sid = result["session_id"]
    mark = shared.mark()
    req_id = next(_ids)
    turn = {
        "jsonrpc": "2.0",
        "id": req_id,
        "method": "turn/start",
        "params": {"session_id": sid, "prompt": "x1"},
    }
    cancel = {"jsonrpc": "2.0", "method": "cancel", "params": {"request_id": req_id}}
    shared.send_raw((json.dumps(turn) + "\n" + json.dumps(cancel) + "\n").encode())
    assert shared.response(req_id)["error"] == {
        "code": -32005,
        "message": "request cancelled before response publish",
    }
    assert shared.events(sid, mark) == []
    assert shared.result("input/list", {"session_id": sid}) == {"input_ids": []}
    assert shared.result("session/read", {"session_id": sid})["message_count"] == 3
    message, events = run_turn(shared, sid, "x2")
    assert message["result"]["text"] == "Echo: x2" and types(events).count("run_started") == 1


def test_cancel_of_a_queued_turn_interrupts_the_running_one(
    spawn: Callable[..., Wire], tmp_path: Path
) -> None:
    wire = scripted(
        spawn,
        tmp_path,
        {"replies": [{"text": "ready"}, {"hang": True}, {"text": "A replayed"}, {"text": "B-reply"}]},
    )
    result, _ = create(wire, "P0")
    sid = result["session_id"]
    running, _ = hang_on(wire, sid, "A")
    queued = wire.request("turn/start", {"session_id": sid, "prompt": "B"})
    time.sleep(0.2)
    wire.notify("cancel", {"request_id": queued})
    assert wire.response(running)["error"] == {"code": -32603, "message": CANCELLED}
    assert wire.response(queued)["result"]["text"] == "B-reply"  # it ran after A's replay
    assert user_texts(wire, sid) == ["P0", "A", "A", "B"]


def test_a_failed_or_cancelled_create_leaves_a_readable_half_session(shared: Wire) -> None:
    req_id = shared.request(
        "session/create", {"prompt": fake({"provider_error": {"status": 401}}), "labels": {"t": "half"}}
    )
    index = shared.response_index(req_id)
    assert shared.log[index]["error"]["message"].startswith(
        ABANDONED + "agent error: LLM error (anthropic): "
    )
    sid = next(m for m in reversed(shared.log[:index]) if m and m.get("method") == "session/event")["params"][
        "session_id"
    ]
    assert shared.result("session/list", {"labels": {"t": "half"}}) == {"sessions": []}
    info = shared.result("session/read", {"session_id": sid})
    assert (info["message_count"], info["labels"]) == (2, {"t": "half"})
    assert roles(shared, sid) == ["system", "user"]
    assert shared.error("runtime/state", {"session_id": sid}) == (-32001, f"Session not found: {sid}")
    assert shared.error("turn/interrupt", {"session_id": sid}) == (-32001, f"session not found: {sid}")
    stuck = shared.request("turn/start", {"session_id": sid, "prompt": "hello?"})
    time.sleep(0.3)
    assert not any(is_response(m, stuck) for m in shared.log)
    assert shared.result("session/archive", {"session_id": sid}) == {"archived": True}
    assert shared.response(stuck)["error"] == {"code": -32603, "message": UNREGISTERED}
    # A cancelled create is the same.
    mark = shared.mark()
    req_id = shared.request("session/create", {"prompt": fake({"hang": True}), "labels": {"t": "half"}})
    index = shared.wait(
        lambda m: (
            isinstance(m, dict)
            and m.get("method") == "session/event"
            and m["params"]["event"]["payload"]["type"] == "turn_started"
        ),
        mark,
    )
    sid = shared.log[index]["params"]["session_id"]
    shared.notify("cancel", {"request_id": req_id})
    assert shared.response(req_id)["error"] == {
        "code": -32005,
        "message": "request cancelled before response publish",
    }
    assert shared.result("session/list", {"labels": {"t": "half"}}) == {"sessions": []}
    assert shared.result("session/read", {"session_id": sid})["message_count"] == 2


def test_runtime_state_of_a_deferred_session(shared: Wire) -> None:
    req_id = shared.request("session/create", {"prompt": "x", "initial_turn": "deferred"})
    sid = shared.response(req_id)["result"]["session_id"]
    assert state(shared, sid) == "attached"
    assert shared.result("input/list", {"session_id": sid}) == {"input_ids": []}
    assert shared.result("turn/interrupt", {"session_id": sid}) == {"interrupted": True}
    assert shared.result("runtime/reset", {"session_id": sid}) == {"inputs_abandoned": 0}
    assert state(shared, sid) == "idle"


# -- provider errors and budgets ---------------------------------------------------------


def body(kind: str, message: str) -> str:
    """The error body the scripted model endpoint sends, as Python's json.dumps writes it."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}})


PROVIDER_ERRORS: List[Tuple[Dict[str, Any], str]] = [
    ({"status": 401}, "Authentication failed: " + body("authentication_error", "invalid x-api-key")),
    ({"status": 400}, "Invalid request: " + body("invalid_request_error", "invalid request")),
    ({"status": 403}, "Invalid API key"),
    (
        {"status": 404, "message": "no such model"},
        "Model not found: " + body("not_found_error", "no such model"),
    ),
    ({"status": 500}, "Server error: 500 - " + body("api_error", "internal server error")),
    ({"status": 529}, "Server error: 529 - " + body("overloaded_error", "Overloaded")),
    ({"status": 503}, "Server overloaded (503)"),
    ({"status": 429, "retry_after": 1}, "Rate limited, retry after 1000ms"),
    ({"status": 500, "times": 4}, "Server error: 500 - " + body("api_error", "internal server error")),
]


@pytest.mark.parametrize("case", range(len(PROVIDER_ERRORS)))
def test_provider_errors(shared: Wire, case: int) -> None:
    error, detail = PROVIDER_ERRORS[case]
    result, _ = create(shared, "ready")
    sid = result["session_id"]
    message, events = run_turn(shared, sid, fake({"provider_error": error}))
    assert message["error"] == {
        "code": -32603,
        "message": f"{ABANDONED}agent error: LLM error (anthropic): {detail}",
    }
    assert types(events) == ["run_started", "turn_started", "run_failed"]
    assert payloads(events)[2] == {
        "type": "run_failed",
        "session_id": sid,
        "error": f"LLM error (anthropic): {detail}",
    }
    shared.result("session/archive", {"session_id": sid})


def test_retryable_provider_errors_recover_within_four_attempts(shared: Wire) -> None:
    result, _ = create(shared, "ready")
    sid = result["session_id"]
    for status in (503, 529, 500, 502, 429):
        spec = {
            "provider_error": {"status": status, "times": 3, "retry_after": 0},
            "text": f"ok after {status}",
        }
        message, events = run_turn(shared, sid, fake(spec))
        assert message["result"]["text"] == f"ok after {status}"
        assert types(events).count("turn_started") == 1  # retries emit nothing
    message, _ = run_turn(shared, sid, fake({"provider_error": {"status": 401, "times": 1}, "text": "x"}))
    assert "Authentication failed" in message["error"]["message"]  # not retried


def test_token_and_tool_call_budgets_end_the_run_early(shared: Wire) -> None:
    tool = {"name": "datetime"}
    spec = {"tool_calls": [tool], "text": "never", "usage": {"input_tokens": 10, "output_tokens": 10}}
    start = shared.mark()
    result, index = create(shared, fake(spec), budget_limits={"max_tokens": 1}, enable_shell=False)
    sid = result["session_id"]
    assert (result["text"], result["turns"], result["tool_calls"]) == ("", 1, 1)
    assert result["usage"] == {"input_tokens": 10, "output_tokens": 0, "total_tokens": 10}
    body_ = payloads(shared.events(sid, start, index))
    assert [p["type"] for p in body_][-2:] == ["budget_warning", "run_completed"]
    assert body_[-2] == {
        "type": "budget_warning",
        "budget_type": "tokens",
        "used": 10,
        "limit": 1,
        "percent": 1.0,
    }
    assert body_[-1]["result"] == ""
    message, events = run_turn(shared, sid, fake({"text": "later"}))
    assert (message["result"]["text"], message["result"]["turns"]) == ("", 0)
    assert types(events) == ["run_started", "budget_warning", "run_completed"]

    start = shared.mark()
    result, index = create(shared, fake(spec), budget_limits={"max_tool_calls": 0}, enable_shell=False)
    sid = result["session_id"]
    assert (result["text"], result["turns"], result["tool_calls"]) == ("", 0, 0)
    assert result["usage"] == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    assert types(shared.events(sid, start, index)) == ["run_started", "budget_warning", "run_completed"]
    assert payloads(shared.events(sid, start, index))[1] == {
        "type": "budget_warning",
        "budget_type": "tool_calls",
        "used": 0,
        "limit": 0,
        "percent": 1.0,
    }
    assert roles(shared, sid) == ["system", "user"]

    two = {"tool_calls": [tool, tool], "text": "never"}
    result, index = create(shared, fake(two), budget_limits={"max_tool_calls": 1}, enable_shell=False)
    assert (result["text"], result["turns"], result["tool_calls"]) == ("", 1, 2)
    # A plain run within budget answers; the next turn finds the budget spent and repeats the last text.
    plain = {"text": "first", "usage": {"input_tokens": 5, "output_tokens": 5}}
    result, _ = create(shared, fake(plain), budget_limits={"max_tokens": 1})
    assert result["text"] == "first"
    message, _ = run_turn(shared, result["session_id"], fake({"text": "second"}))
    assert (message["result"]["text"], message["result"]["turns"]) == ("first", 0)


def test_a_time_budget_fails_the_run(shared: Wire) -> None:
    start = shared.mark()
    req_id = shared.request(
        "session/create",
        {"prompt": fake({"text": "x"}), "budget_limits": {"max_duration": {"secs": 0, "nanos": 1}}},
    )
    index = shared.response_index(req_id)
    assert shared.log[index]["error"] == {
        "code": -32603,
        "message": ABANDONED + "agent error: Time budget exceeded: 0s > 0s",
    }
    seen = [
        m["params"]["event"]
        for m in shared.log[start:index]
        if isinstance(m, dict) and m.get("method") == "session/event"
    ]
    assert types(seen) == ["run_started", "budget_warning", "run_failed"]
    assert (
        seen[1]["payload"]["budget_type"] == "time"
        and seen[2]["payload"]["error"] == "Time budget exceeded: 0s > 0s"
    )
    # A turn that outlasts its budget fails when the budget runs out.
    result, _ = create(shared, "x", budget_limits={"max_duration": {"secs": 1, "nanos": 0}})
    started = time.monotonic()
    message, events = run_turn(shared, result["session_id"], fake({"hang": True}))
    assert message["error"]["message"] == ABANDONED + "agent error: Time budget exceeded: 1s > 1s"
    assert time.monotonic() - started < 5 and types(events)[-2:] == ["budget_warning", "run_failed"]


# -- keep_alive --------------------------------------------------------------------------


def test_keep_alive_create(shared: Wire) -> None:
    empty = {
        "text": "",
        "turns": 0,
        "tool_calls": 0,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }
    started = time.monotonic()
    mark = shared.mark()
    req_id = shared.request(
        "session/create", {"prompt": fake({"text": "kept", "delay_ms": 400}), "keep_alive": True}
    )
    index = shared.response_index(req_id)
    assert time.monotonic() - started >= 0.25
    result = shared.log[index]["result"]
    sid = result["session_id"]
    assert result == {"session_id": sid, "session_ref": f"{REALM}:{sid}", **empty}  # no skill_diagnostics
    assert types(shared.events(sid, mark, index))[:2] == ["run_started", "turn_started"]
    end = shared.event_index(sid, "run_completed", index)
    assert shared.log[end]["params"]["event"]["payload"]["result"] == "kept"
    wait_until(
        lambda: shared.result("session/read", {"session_id": sid}).get("last_assistant_text") == "kept"
    )
    assert run_turn(shared, sid, "later")[0]["result"]["text"] == "Echo: later"
    assert shared.error("turn/start", {"session_id": sid, "prompt": "x", "keep_alive": True}) == (
        -32602,
        "keep_alive requires a session created with comms_name",
    )
    # With comms_name the empty result comes as soon as the turn runs.
    mark = shared.mark()
    req_id = shared.request(
        "session/create",
        {"prompt": fake({"text": "comms", "delay_ms": 300}), "keep_alive": True, "comms_name": "agent-a"},
    )
    index = shared.response_index(req_id)
    sid = shared.log[index]["result"]["session_id"]
    assert types(shared.events(sid, mark, index)) == ["run_started", "turn_started"]
    shared.event_index(sid, "run_completed", index)
    assert run_turn(shared, sid, "x", keep_alive=True)[0]["result"]["text"] == "Echo: x"
    req_id = shared.request("session/create", {"prompt": "p", "initial_turn": "deferred", "comms_name": "b"})
    deferred = shared.response(req_id)["result"]["session_id"]
    assert shared.error("turn/start", {"session_id": deferred, "prompt": "x", "keep_alive": True}) == (
        -32602,
        "keep_alive requires a session created with comms_name",
    )


def test_a_failed_keep_alive_turn_logs_an_error_line(shared: Wire) -> None:
    mark = shared.mark()
    req_id = shared.request(
        "session/create", {"prompt": fake({"provider_error": {"status": 401}}), "keep_alive": True}
    )
    index = shared.response_index(req_id)
    sid = shared.log[index]["result"]["session_id"]
    assert types(shared.events(sid, mark, index)) == ["run_started", "turn_started", "run_failed"]
    lines = [raw for raw, m in zip(shared.raw[mark:index], shared.log[mark:index]) if m is None]
    (line,) = [raw for raw in lines if "Host-mode session start failed" in raw]
    assert "\x1b[31mERROR\x1b[0m" in line and "meerkat_rpc::handlers::session" in line
    assert f"{ABANDONED}agent error: LLM error (anthropic): Authentication failed" in line
    assert line.endswith(
        f"\x1b[3msession_id\x1b[0m\x1b[2m=\x1b[0m{sid} \x1b[3merror\x1b[0m\x1b[2m=\x1b[0m-32603"
    )
    shared.result("session/archive", {"session_id": sid})


# -- capacity ----------------------------------------------------------------------------


def test_max_sessions(spawn: Callable[..., Wire]) -> None:
    wire = spawn()
    ids = [wire.request("session/create", {"prompt": "p", "initial_turn": "deferred"}) for _ in range(63)]
    sessions = [wire.response(req_id)["result"]["session_id"] for req_id in ids]
    failed = wire.request("session/create", {"prompt": fake({"provider_error": {"status": 400}})})
    assert wire.response(failed)["error"]["code"] == -32603  # a failed create holds no slot
    last, _ = create(wire, "64th")
    over = ("session/create", {"prompt": "p", "initial_turn": "deferred"})
    assert wire.error(*over) == (-32603, "Max sessions reached (64/64)")
    assert len(wire.result("session/list")["sessions"]) == 64
    wire.result("session/archive", {"session_id": sessions[0]})
    assert "result" in wire.response(wire.request(*over))
    assert wire.error(*over) == (-32603, "Max sessions reached (64/64)")
    assert last["text"] == "Echo: 64th"
    assert wire.close() == 0


# -- notification queue ------------------------------------------------------------------


def test_notification_queue_drops_what_does_not_fit(spawn: Callable[..., Wire]) -> None:
    wire = spawn("--notification-queue", "64")
    req_id = wire.request("session/create", {"prompt": fake({"bulk": {"count": 5000, "delta": "x"}})})
    result = wire.response(req_id)["result"]  # responses are never dropped
    assert result["text"] == "x" * 5000
    sid = result["session_id"]
    wire.barrier()
    time.sleep(0.3)
    seqs = [e["seq"] for e in wire.events(sid)]
    assert 0 < len(seqs) < 5005 and seqs == sorted(seqs)
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:]))  # silent gaps, no marker
    # Paced events go through.
    message, _events = run_turn(wire, sid, fake({"chunks": ["a", "b", "c"], "delay_ms": 5}))
    time.sleep(0.2)
    assert message["result"]["text"] == "abc"
    assert wire.close() == 0


def test_by_default_no_event_is_dropped(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    message, events = run_turn(shared, sid, fake({"bulk": {"count": 3000, "delta": "ab"}}))
    assert message["result"]["text"] == "ab" * 3000
    deltas = [e for e in events if e["payload"]["type"] == "text_delta"]
    assert len(deltas) == 3000
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    size = 3 * 1024 * 1024
    message, events = run_turn(shared, sid, fake({"big_delta_bytes": size}))
    assert len(message["result"]["text"]) == size
    assert [len(e["payload"]["delta"]) for e in events if e["payload"]["type"] == "text_delta"] == [size]


# -- fake-only reply fields --------------------------------------------------------------


def test_a_scripted_agent_error_fails_the_run(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    message, events = run_turn(shared, sid, fake({"text": "partial", "error": "boom"}))
    assert message["error"] == {"code": -32603, "message": ABANDONED + "agent error: boom"}
    assert types(events) == ["run_started", "turn_started", "text_delta", "run_failed"]
    assert payloads(events)[-1] == {"type": "run_failed", "session_id": sid, "error": "boom"}
    assert shared.result("runtime/reset", {"session_id": sid}) == {"inputs_abandoned": 1}


def test_an_invalid_directive_fails_like_the_model_endpoint_refusing_it(shared: Wire) -> None:
    result, _ = create(shared)
    message, events = run_turn(shared, result["session_id"], 'fake:{"txt": "typo"}')
    assert message["error"]["message"].startswith(
        ABANDONED + 'agent error: LLM error (anthropic): Invalid request: {"type": "error", "error": '
        '{"type": "invalid_request_error", "message": "invalid fake directive: '
        'unknown field(s) in reply spec: txt"'
    )
    assert types(events) == ["run_started", "turn_started", "run_failed"]


def test_start_delay_comes_after_turn_started(shared: Wire) -> None:
    result, _ = create(shared)
    sid = result["session_id"]
    mark = shared.mark()
    req_id = shared.request(
        "turn/start", {"session_id": sid, "prompt": fake({"start_delay_ms": 300, "text": "t"})}
    )
    shared.event_index(sid, "turn_started", mark)
    started = time.monotonic()
    shared.response(req_id)
    assert time.monotonic() - started > 0.2


def test_tools_register_params(shared: Wire) -> None:
    assert shared.error("tools/register", {"tools": [{"name": "t"}]}) == (
        -32602,
        "Invalid params: missing field `description` at line 1 column 22",
    )
    assert shared.result(
        "tools/register", {"tools": [{"name": "reg", "description": "d", "input_schema": {}}]}
    ) == {"registered": 1}
    # Registered tools count as known tools for a turn's flow_tool_overlay.
    result, _ = create(shared, "x", enable_builtins=False)
    message, _ = run_turn(shared, result["session_id"], "y", flow_tool_overlay={"allowed_tools": ["reg"]})
    assert message["result"]["text"] == "Echo: y"


# -- framing and errors ------------------------------------------------------------------


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
        (["--notification-queue", "0"], 2, b"usage:"),
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


def test_fake_rkat_command_helper_starts_the_runtime_without_the_client() -> None:
    from meerkat_sync.testing.fake_rkat import fake_rkat_command

    command = fake_rkat_command("--realm", "r")
    assert command[0] == sys.executable and command[-2:] == ["--realm", "r"]
    # The same runtime as the module form, which imports the whole client first.
    timed = [sys.executable, "-X", "importtime", *command[1:-2], "--version"]
    boot = subprocess.run(timed, capture_output=True, text=True, timeout=60)
    as_module = [*timed[:3], "-m", MODULE, "--version"]
    module = subprocess.run(as_module, capture_output=True, text=True, timeout=60)
    assert boot.returncode == module.returncode == 0 and boot.stdout == module.stdout == "rkat-rpc 0.5.0\n"
    assert "meerkat_sync._client" in module.stderr
    assert "meerkat_sync._client" not in boot.stderr and "meerkat_sync.testing._fake_server" in boot.stderr
