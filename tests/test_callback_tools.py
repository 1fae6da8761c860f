"""Callback tools (``tool/execute``, PROTOCOL.md §7): declared, registered, answered.

Every round trip runs on both backends (``backend``): the scripted runtime, and a real
rkat-rpc 0.5.0 whose model is the scripted endpoint (``client.model.requests`` shows the
tool results the runtime sent back to the model). The model's tool calls are scripted with
``tool_calls`` in a ``fake:`` prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from conftest import REAL_BIN, Backend, fake, requires_real

from meerkat_sync import (
    CapabilityUnavailableError,
    MeerkatClient,
    MeerkatError,
    ToolCallRequested,
    ToolExecutionCompleted,
    ToolExecutionStarted,
    ToolResultReceived,
    ToolResultsMessage,
)
from meerkat_sync._tools import make_tool
from meerkat_sync.testing import RealRuntimeClient, fake_rkat_command, real_client, scripted_client

TAP = Path(__file__).parent / "_wire_tap.py"
OPTIONS: Dict[str, Any] = {"request_timeout": 20.0, "turn_timeout": 60.0}
LOOKUP_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def calls(*names: str, **args: Any) -> List[Dict[str, Any]]:
    return [{"name": name, "args": args} for name in names]


def completed(events: List[Any]) -> List[ToolExecutionCompleted]:
    return [e for e in events if isinstance(e, ToolExecutionCompleted)]


def lookup(arguments: Dict[str, Any]) -> Dict[str, Any]:
    return {"answer": f"found {arguments['q']}"}


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (something another thread does), or fail."""
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def logged(caplog: pytest.LogCaptureFixture, text: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def crash(client: MeerkatClient) -> int:
    """SIGKILL the child and wait until the client noticed; returns the dead pid."""
    pid = client.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: client.closed, "the client to notice the crash")
    return pid


@contextlib.contextmanager
def declared_first(backend: Backend, declare: Any, **options: Any) -> Iterator[MeerkatClient]:
    """A client whose tools are declared *before* ``connect()``, on either backend."""
    if not backend.real:
        client = scripted_client(**OPTIONS, **options)
        declare(client)
        with contextlib.closing(client.connect()):
            yield client
        return
    # real_client() connects at once: a second rkat-rpc joins its realm (and model endpoint).
    with real_client(**OPTIONS) as base:
        backend.model = base.model
        client = MeerkatClient(REAL_BIN, env=base._env, **OPTIONS, **options)
        declare(client)
        root = os.path.dirname(os.path.abspath(base.state_root))
        client.connect(
            realm_id=base.realm_id,
            state_root=base.state_root,
            context_root=os.path.join(root, "context"),
            user_config_root=os.path.join(root, "user-config"),
        )
        with contextlib.closing(client):
            yield client


# --- the round trip -----------------------------------------------------------------------


def test_a_tool_declared_before_connect_round_trips_to_the_model(backend: Backend) -> None:
    seen: List[Any] = []

    def declare(client: MeerkatClient) -> None:
        @client.tool("lookup", description="Look a word up", input_schema=LOOKUP_SCHEMA)
        def handle(arguments: Dict[str, Any]) -> Dict[str, Any]:
            seen.append((arguments, threading.current_thread().name))
            return lookup(arguments)

        assert handle({"q": "x"}) == {"answer": "found x"}  # the decorator returns the function
        seen.clear()

    with declared_first(backend, declare) as client:
        session = client.create_session("hi")
        events = list(session.stream(fake(text="done", tool_calls=calls("lookup", q="meerkat"))))
        kinds = [type(e) for e in events]
        order = [ToolCallRequested, ToolExecutionStarted, ToolExecutionCompleted, ToolResultReceived]
        assert [k for k in kinds if k in order] == order
        requested = next(e for e in events if isinstance(e, ToolCallRequested))
        assert (requested.name, requested.args) == ("lookup", {"q": "meerkat"})
        (done,) = completed(events)
        assert (done.name, done.result, done.is_error) == ("lookup", '{"answer":"found meerkat"}', False)
        assert done.id == requested.id
        result = session.last_result
        assert result is not None and (result.text, result.turns, result.tool_calls) == ("done", 2, 1)
        assert seen == [({"q": "meerkat"}, seen[0][1])] and seen[0][1].startswith("meerkat-callback")
        # The result reached the model's next call, and the transcript.
        results = [m for m in session.history().messages if isinstance(m, ToolResultsMessage)]
        assert [(r.tool_use_id, r.content, r.is_error) for r in results[-1].results] == [
            (done.id, '{"answer":"found meerkat"}', False)
        ]
        if backend.real:
            assert backend.model is not None
            first, last = backend.model.requests[-2], backend.model.requests[-1]
            assert "lookup" in first.tool_names
            (offered,) = [t for t in first.tools if t.get("name") == "lookup"]
            assert offered["description"] == "Look a word up"
            assert offered["input_schema"] == LOOKUP_SCHEMA
            assert last.tool_results == [
                {
                    "content": '{"answer":"found meerkat"}',
                    "is_error": False,
                    "tool_use_id": done.id,
                    "type": "tool_result",
                }
            ]


def test_a_tool_added_after_connect_reaches_only_sessions_created_afterwards(backend: Backend) -> None:
    seen: List[Any] = []
    with backend.connect(**OPTIONS) as client:
        before = client.create_session("created before the tool")

        def late(arguments: Dict[str, Any]) -> str:
            seen.append(arguments)
            return "late result"

        client.register_tool("late", late, description="Late tool")
        after = client.create_session("created after the tool")
        prompt = fake(text="ok", tool_calls=calls("late", n=1))
        (missed,) = completed(list(before.stream(prompt)))
        # rkat-rpc bound the session's tools at its creation: it never asks the client.
        assert missed.is_error and json.loads(missed.result) == {
            "error": "tool_not_found",
            "message": "Tool not found: late",
        }
        assert seen == []
        (hit,) = completed(list(after.stream(prompt)))
        assert (hit.result, hit.is_error) == ("late result", False)
        assert seen == [{"n": 1}]


def test_results_as_str_dict_list_and_none(backend: Backend) -> None:
    with backend.connect(**OPTIONS) as client:
        client.register_tool("text", lambda a: "plain ünïcode")
        client.register_tool("mapping", lambda a: {"b": [1, 2], "a": "é"})
        client.register_tool("listing", lambda a: [1, "two"])
        client.register_tool("nothing", lambda a: None)
        session = client.create_session("hi")
        prompt = fake(text="ok", tool_calls=calls("text", "mapping", "listing", "nothing"))
        events = list(session.stream(prompt))
        assert [(c.name, c.result, c.is_error) for c in completed(events)] == [
            ("text", "plain ünïcode", False),
            ("mapping", '{"b":[1,2],"a":"é"}', False),
            ("listing", '[1,"two"]', False),
            ("nothing", "", False),
        ]


# --- failures become error results ---------------------------------------------------------


def test_a_handler_that_raises_gives_an_error_result_and_logs_the_traceback(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(arguments: Dict[str, Any]) -> str:
        raise ValueError(f"no entry for {arguments['q']!r}")

    with backend.connect(**OPTIONS) as client:
        client.register_tool("broken", broken)
        session = client.create_session("hi")
        with caplog.at_level(logging.ERROR, logger="meerkat_sync"):
            events = list(session.stream(fake(text="recovered", tool_calls=calls("broken", q="zebra"))))
        (done,) = completed(events)
        assert done.is_error and done.result == "Tool error: ValueError: no entry for 'zebra'"
        assert session.text == "recovered"  # a failed tool never fails the turn
        (record,) = [r for r in caplog.records if "callback tool 'broken' failed" in r.getMessage()]
        assert record.exc_info is not None and record.exc_info[0] is ValueError
        if backend.real:
            assert backend.model is not None
            (sent,) = backend.model.requests[-1].tool_results
            assert (sent["content"], sent["is_error"]) == (done.result, True)
        # The pool and the reader survived: the tool still works.
        client.register_tool("fine", lambda a: "fine")
        (again,) = completed(list(client.create_session("x").stream(fake(tool_calls=calls("fine")))))
        assert (again.result, again.is_error) == ("fine", False)


def test_an_unknown_tool_gets_the_protocol_error_result(backend: Backend) -> None:
    """rkat-rpc only forwards tools a session declares: here one passed inline, with no handler."""
    ghost = {"name": "ghost", "description": "Nobody serves it", "input_schema": {"type": "object"}}
    with backend.connect(**OPTIONS) as client:
        session = client.create_session("hi", external_tools=[ghost])
        (done,) = completed(list(session.stream(fake(text="ok", tool_calls=calls("ghost")))))
        assert (done.result, done.is_error) == ("Unknown tool: ghost", True)


def test_a_handler_past_its_timeout_gets_an_error_result_and_its_late_result_is_discarded(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    returned = threading.Event()

    def slow(arguments: Dict[str, Any]) -> str:
        release.wait(30)
        returned.set()
        return "too late"

    with backend.connect(**OPTIONS) as client, caplog.at_level(logging.WARNING, logger="meerkat_sync"):
        client.register_tool("slow", slow, handler_timeout=0.3)
        session = client.create_session("hi")
        try:
            events = list(session.stream(fake(text="gave up", tool_calls=calls("slow"))))
        finally:
            release.set()
        (done,) = completed(events)
        assert done.is_error and done.result == "Tool timed out: slow did not return within 0.3s"
        assert session.text == "gave up"
        assert returned.wait(10)
        # The late return is only logged, never sent: the next turn is unaffected.
        wait_for(lambda: logged(caplog, "this result is discarded"), "the late result to be discarded")
        assert session.turn(fake(text="next")).text == "next"
        assert len(logged(caplog, "this result is discarded")) == 1


# --- concurrency ---------------------------------------------------------------------------


def test_the_calls_of_one_reply_run_at_once_on_different_threads(backend: Backend) -> None:
    together = threading.Barrier(3, timeout=20)  # only passes if all three run at the same time
    threads: List[str] = []

    def meet(arguments: Dict[str, Any]) -> str:
        threads.append(threading.current_thread().name)
        together.wait()
        return f"met {arguments['i']}"

    with backend.connect(**OPTIONS) as client:
        client.register_tool("meet", meet)
        session = client.create_session("hi")
        tools = [{"name": "meet", "args": {"i": i}} for i in range(3)]
        done = completed(list(session.stream(fake(text="ok", tool_calls=tools))))
        assert [(c.result, c.is_error) for c in done] == [(f"met {i}", False) for i in range(3)]
        assert len(set(threads)) == 3


def test_a_handler_may_run_a_nested_turn_with_its_own_tool_call(backend: Backend) -> None:
    with backend.connect(**OPTIONS) as client:
        client.register_tool("inner", lambda a: "deep value")

        def outer(arguments: Dict[str, Any]) -> str:
            # Another session, whose model calls another tool: all while this call is pending.
            nested = client.create_session(fake(text="inner done", tool_calls=calls("inner")))
            (inner,) = [m for m in nested.history().messages if isinstance(m, ToolResultsMessage)]
            return f"{nested.text} / {inner.results[0].content}"

        client.register_tool("outer", outer)
        session = client.create_session("hi")
        (done,) = completed(list(session.stream(fake(text="ok", tool_calls=calls("outer")))))
        assert (done.result, done.is_error) == ("inner done / deep value", False)


def test_with_every_worker_busy_a_call_times_out_unrun(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    ran: List[int] = []

    def hold(arguments: Dict[str, Any]) -> str:
        ran.append(arguments["i"])
        release.wait(30)
        return "held"

    tools = [{"name": "hold", "args": {"i": i}} for i in (0, 1)]
    with scripted_client(tool_workers=1, **OPTIONS) as client, caplog.at_level(logging.WARNING):
        client.register_tool("hold", hold, handler_timeout=0.3)
        session = client.create_session("hi")
        try:
            done = completed(list(session.stream(fake(tool_calls=tools))))
        finally:
            release.set()
        wait_for(lambda: logged(caplog, "its handler was not run"), "the queued call to be skipped")
        assert [c.is_error for c in done] == [True, True]
        messages = sorted(c.result for c in done)
        assert messages == [
            "Tool timed out: hold did not return within 0.3s",
            "Tool timed out: hold waited 0.3s for a free worker (all tool_workers were busy)",
        ]
        assert len(ran) == 1  # the queued call was answered at its limit and never run


# --- registration --------------------------------------------------------------------------


def test_tools_are_registered_again_after_a_restart(backend: Backend) -> None:
    with backend.connect(restart=True, **OPTIONS) as client:
        client.register_tool("survivor", lambda a: "still here")
        pid = crash(client)
        session = client.create_session("after the crash")  # respawned, tools registered again
        assert client.pid != pid
        (done,) = completed(list(session.stream(fake(text="ok", tool_calls=calls("survivor")))))
        assert (done.result, done.is_error) == ("still here", False)


def test_registration_fails_loudly_when_the_server_has_no_tools_register() -> None:
    client = scripted_client(args=["--without-method", "tools/register"], **OPTIONS)
    client.register_tool("early", lambda a: "x")
    with pytest.raises(CapabilityUnavailableError, match="tools/register"):
        client.connect()
    assert client.closed  # a failed connect leaves nothing running
    with scripted_client(args=["--without-method", "tools/register"], **OPTIONS) as bare:
        with pytest.raises(CapabilityUnavailableError, match="tools/register"):
            bare.register_tool("late", lambda a: "x")
        # Not kept: a session's call of it goes unanswered by the client.
        ghost = {"name": "late", "description": "d", "input_schema": {"type": "object"}}
        session = bare.create_session("hi", external_tools=[ghost])
        (done,) = completed(list(session.stream(fake(tool_calls=calls("late")))))
        assert (done.result, done.is_error) == ("Unknown tool: late", True)


def test_a_failed_registration_raises_and_keeps_the_tool_it_would_replace() -> None:
    with scripted_client(args=["--without-method", "tools/register"], **OPTIONS) as client:
        client._tool_registry.add(make_tool("dual", lambda a: "old", "", None, None))
        client._methods = client._methods | {"tools/register"}  # listed after all: the call is sent
        with pytest.raises(MeerkatError) as caught:  # and answered -32601
            client.register_tool("dual", lambda a: "new")
        assert caught.value.rpc_code == -32601
        declared = {"name": "dual", "description": "d", "input_schema": {"type": "object"}}
        session = client.create_session("hi", external_tools=[declared])
        (done,) = completed(list(session.stream(fake(tool_calls=calls("dual")))))
        assert done.result == "old"


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (("bad name", str), {}, "tool name"),
        (("", str), {}, "tool name"),
        (("x" * 65, str), {}, "tool name"),
        ((3, str), {}, "tool name"),
        (("t", "not callable"), {}, "must be a function"),
        (("t", str), {"input_schema": {"type": "string"}}, '"type": "object"'),
        (("t", str), {"input_schema": "{}"}, "input_schema"),
        (("t", str), {"input_schema": {"type": "object", "default": float("nan")}}, "cannot be sent as JSON"),
        (("t", str), {"description": 5}, "description"),
        (("t", str), {"handler_timeout": 0}, "handler_timeout"),
        (("t", str), {"handler_timeout": "5"}, "handler_timeout"),
        (("t", str), {"timeout": -1}, "timeout"),
    ],
)
def test_bad_tool_definitions_raise_invalid_args_before_anything_is_sent(
    args: Any, kwargs: Dict[str, Any], problem: str
) -> None:
    with tapped_client() as (client, transcript):
        with pytest.raises(MeerkatError) as caught:
            client.register_tool(*args, **kwargs)
        assert caught.value.code == "INVALID_ARGS" and problem in caught.value.message
        client.list_sessions()  # a marker: everything before it has been written
        sent = [m.get("method") for m in wire(transcript, ">")]
        assert "session/list" in sent and "tools/register" not in sent


def test_async_handlers_are_refused() -> None:
    async def handler(arguments: Dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return "x"

    client = scripted_client()
    with pytest.raises(MeerkatError, match="async def") as caught:
        client.tool("t")(handler)
    assert caught.value.code == "INVALID_ARGS"


@pytest.mark.parametrize(
    ("option", "value"), [("tool_workers", 0), ("tool_workers", 1.5), ("tool_timeout", -1)]
)
def test_bad_client_tool_options_raise_invalid_args(option: str, value: Any) -> None:
    with pytest.raises(MeerkatError) as caught:
        MeerkatClient(command=fake_rkat_command(), **{option: value})
    assert caught.value.code == "INVALID_ARGS" and option in caught.value.message


@contextlib.contextmanager
def tapped_client(**options: Any) -> Iterator[Any]:
    """A scripted client whose wire is recorded to a transcript (JSON lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        transcript = Path(tmp) / "wire.jsonl"
        command = [sys.executable, str(TAP), str(transcript), "--", *fake_rkat_command()]
        with MeerkatClient(command=command, **OPTIONS, **options) as client:
            yield client, transcript


def wire(transcript: Path, direction: str = "") -> List[Dict[str, Any]]:
    """The messages of a transcript (only those sent to the server with ``">"``)."""
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    return [json.loads(e["line"]) for e in entries if direction in ("", e["dir"])]


def test_answers_on_the_wire_are_well_formed_and_echo_the_string_id() -> None:
    with tapped_client() as (client, transcript):
        client.register_tool("ok", lambda a: "fine")
        client.register_tool("bad", lambda a: 1 / 0)
        client.register_tool("odd", lambda a: {"when": object()})  # not JSON: an error result
        client.register_tool("surrogate", lambda a: "broken \udcff text")
        session = client.create_session("hi")
        done = completed(list(session.stream(fake(tool_calls=calls("ok", "bad", "odd", "surrogate")))))
        lines = wire(transcript)
    asked = {m["id"]: m["params"]["name"] for m in lines if m.get("method") == "tool/execute"}
    answers = {m["id"]: m for m in lines if m.get("id") in asked and "method" not in m}
    assert sorted(asked.values()) == ["bad", "odd", "ok", "surrogate"] and set(answers) == set(asked)
    for request_id, answer in answers.items():
        assert isinstance(request_id, str) and request_id.startswith("srv-")
        assert answer["jsonrpc"] == "2.0" and set(answer) == {"jsonrpc", "id", "result"}
        assert set(answer["result"]) == {"content", "is_error"}
    by_name = {c.name: c for c in done}
    assert by_name["bad"].result == "Tool error: ZeroDivisionError: division by zero"
    assert by_name["odd"].is_error and "cannot be sent as JSON" in by_name["odd"].result
    assert (by_name["surrogate"].result, by_name["surrogate"].is_error) == ("broken ? text", False)


# --- what rkat-rpc makes of an answer (the scripted runtime must agree) ------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"content": "it failed", "is_error": True}, ("it failed", True)),
        ({}, ("", False)),
        (
            {"content": {"x": 1}},
            (
                '{"error":"execution_failed","message":"Tool execution failed: Failed to parse callback '
                'result: invalid type: map, expected a string at line 1 column 11"}',
                True,
            ),
        ),
        (
            {"content": [{"type": "text", "text": "blocks"}]},
            (
                '{"error":"execution_failed","message":"Tool execution failed: Failed to parse callback '
                'result: invalid type: sequence, expected a string at line 1 column 11"}',
                True,
            ),
        ),
    ],
)
def test_raw_answers_are_read_as_rkat_rpc_reads_them(backend: Backend, answer: Any, expected: Any) -> None:
    with backend.connect(**OPTIONS) as client:
        client.register_tool("raw", lambda a: "unused")
        assert client._endpoint is not None
        client._endpoint.register_handler("tool/execute", lambda params: answer)  # bypass the registry
        session = client.create_session("hi")
        (done,) = completed(list(session.stream(fake(tool_calls=calls("raw")))))
        assert (done.result, done.is_error) == expected


@requires_real
@pytest.mark.real_binary
def test_a_session_resumed_by_a_new_child_has_no_callback_tools() -> None:
    """A real rkat-rpc 0.5.0 fact (no scripted counterpart: its sessions die with it).

    After a restart the new child loads the session from the realm, but binds none of its
    callback tools, inline ``external_tools`` or registered (again, by the handshake) alike.
    """
    inline = {"name": "inline", "description": "d", "input_schema": {"type": "object"}}
    with real_client(restart=True, **OPTIONS) as client:
        assert isinstance(client, RealRuntimeClient)
        client.register_tool("kept", lambda a: "kept result")
        session = client.create_session("before the crash", external_tools=[inline])
        crash(client)
        prompt = fake(text="ok", tool_calls=calls("inline", "kept"))
        done = completed(list(session.stream(prompt)))
        assert [(c.result, c.is_error) for c in done] == [
            ('{"error":"tool_not_found","message":"Tool not found: inline"}', True),
            ('{"error":"tool_not_found","message":"Tool not found: kept"}', True),
        ]
        fresh = client.create_session("after the crash")  # a new session gets the tool again
        (again,) = completed(list(fresh.stream(fake(text="ok", tool_calls=calls("kept")))))
        assert (again.result, again.is_error) == ("kept result", False)


def test_the_scripted_runtime_gives_up_on_a_callback_as_rkat_rpc_does() -> None:
    """rkat-rpc's own limit (30 s; the fake-only ``timeout_ms`` here): its text; a late answer is dropped."""
    release = threading.Event()
    with scripted_client(tool_timeout=None, **OPTIONS) as client:
        client.register_tool("slowpoke", lambda a: release.wait(30) and "late")
        session = client.create_session("hi")
        callback = {"method": "tool/execute", "params": {"name": "slowpoke"}, "timeout_ms": 200}
        try:
            (done,) = completed(list(session.stream(fake(text="moved on", callbacks=[callback]))))
        finally:
            release.set()
        assert done.is_error and json.loads(done.result) == {
            "error": "execution_failed",
            "message": "Tool execution failed: Callback tool 'slowpoke' timed out after 0.2s",
        }
        assert session.text == "moved on"
        assert session.turn(fake(text="still fine")).text == "still fine"
