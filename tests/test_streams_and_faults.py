"""Early exits, stragglers, unsolicited runs, timeouts, dead children, huge lines, noise."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List

import pytest
from conftest import fake, hang_in_background

from meerkat_sync import MeerkatClient, MeerkatError, MeerkatTimeoutError, RunCompleted, TextDelta
from meerkat_sync.testing import scripted_client


def _deltas(events: List[object]) -> List[str]:
    return [e.delta for e in events if isinstance(e, TextDelta)]


def test_breaking_out_early_leaves_the_client_healthy(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    chunks = [f"c{k} " for k in range(50)]
    with session.stream(fake(chunks=chunks, delay_ms=2)) as stream:
        for event in stream:
            if isinstance(event, TextDelta):
                break
    # The rest of that run is discarded, never leaked into the next stream...
    events = list(session.stream(fake(chunks=["next"])))
    assert _deltas(events) == ["next"]
    assert [e.type for e in events].count("run_started") == 1
    # ...and the abandoned run's response still settled the session.
    assert session.text == "next"


def test_an_exception_inside_the_with_block_is_not_swallowed(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    with pytest.raises(ZeroDivisionError), session.stream(fake(chunks=["a", "b"], delay_ms=5)) as stream:
        for _ in stream:
            raise ZeroDivisionError
    assert session.turn("later").text == "Echo: later"


def test_trailing_events_after_the_response_stay_with_their_run(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    events = list(session.stream(fake(chunks=["x", "y"], trailing=2)))
    assert [e.type for e in events][-2:] == ["turn_completed", "run_completed"]
    nxt = list(session.stream(fake(chunks=["z"], trailing=2)))
    assert _deltas(nxt) == ["z"] and nxt[0].type == "run_started"


def test_unsolicited_runs_never_reach_a_stream(client: MeerkatClient) -> None:
    session = client.create_session(fake(chunks=["mine"], unsolicited={"chunks": ["server-initiated"]}))
    time.sleep(0.3)  # let the server-initiated run go by
    events = list(session.stream(fake(chunks=["second"])))
    assert _deltas(events) == ["second"]
    stream = client.create_session_streaming(fake(chunks=["c1"], unsolicited={"chunks": ["noise"]}))
    assert _deltas(list(stream)) == ["c1"]


def test_failed_run_raises_after_its_events(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    seen: List[str] = []
    with (
        pytest.raises(MeerkatError) as info,
        session.stream(fake(chunks=["partial"], error="provider exploded")) as s,
    ):
        for event in s:
            seen.append(event.type)
    assert info.value.code == "AGENT_ERROR" and info.value.rpc_code == -32603
    assert info.value.details["rpc_message"].startswith("turn abandoned: ")
    assert info.value.message.startswith("provider exploded")
    assert "text_delta" in seen and seen[-1] == "run_failed"
    with pytest.raises(MeerkatError):
        session.turn(fake(error="again"))
    assert session.turn("fine").text == "Echo: fine"


def test_turn_timeout_cancels_on_the_server(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    started = time.monotonic()
    with pytest.raises(MeerkatTimeoutError) as info:
        session.turn(fake(hang=True), timeout=0.5)
    assert isinstance(info.value, TimeoutError) and info.value.code == "TIMEOUT"
    assert time.monotonic() - started < 3
    # The cancel notification stopped the hanging run: the session is not left busy.
    assert session.turn("after the timeout", timeout=5).text == "Echo: after the timeout"
    assert not client.read_session(session.id).is_active


def test_stream_timeout(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    with pytest.raises(MeerkatTimeoutError), session.stream(fake(hang=True), timeout=0.5) as stream:
        list(stream)
    assert session.turn("ok", timeout=5).text == "Echo: ok"


def test_child_killed_mid_turn_fails_every_waiter_promptly() -> None:
    client = scripted_client().connect()
    session = client.create_session("hi")
    outcomes: List[str] = []

    def wait_turn() -> None:
        try:
            session.turn(fake(hang=True))
        except MeerkatError as exc:
            outcomes.append(exc.code)

    def wait_stream() -> None:
        try:
            list(session.stream(fake(hang=True)))
        except MeerkatError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=wait_turn) for _ in range(16)]
    threads += [threading.Thread(target=wait_stream) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert client.pid is not None
    killed_at = time.monotonic()
    os.kill(client.pid, signal.SIGKILL)
    for t in threads:
        t.join(5)
    assert time.monotonic() - killed_at < 1.0
    assert outcomes == ["CONNECTION_CLOSED"] * 24
    assert client.closed
    with pytest.raises(MeerkatError) as info:
        client.list_sessions()
    assert info.value.code == "CONNECTION_CLOSED" and "-9" in info.value.message
    client.close()
    with scripted_client() as fresh:  # a new client works
        assert fresh.create_session("again").text == "Echo: again"


def test_child_exit_message_carries_exit_code_and_stderr_tail() -> None:
    with scripted_client() as client:
        session = client.create_session("hi")
        with pytest.raises(MeerkatError) as info:
            session.turn(fake(chunks=["a", "b", "c"], exit_after_events=2))
        error = info.value
        assert error.code == "CONNECTION_CLOSED"
        assert "exit code 3" in error.message
        assert error.details["returncode"] == 3 and error.details["stderr_tail"]


def test_multi_megabyte_line(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    text, result = session.stream(fake(big_delta_bytes=5_000_000)).collect_text()
    assert len(text) == 5_000_000 and result.text == text


def test_stderr_flood_during_a_turn_does_not_stall(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    result = session.turn(fake(chunks=["still", " here"], stderr_bytes=50_000_000), timeout=60)
    assert result.text == "still here"


def test_log_noise_on_stdout_is_skipped(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    noise = ["\x1b[31mERROR\x1b[0m meerkat_rpc: something happened", "not json {", "[1, 2]", "42"]
    events = list(session.stream(fake(chunks=["clean"], noise=noise)))
    assert _deltas(events) == ["clean"] and isinstance(events[-1], RunCompleted)
    assert session.turn("next").text == "Echo: next"


def test_unsupported_server_request_gets_method_not_found(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    params = {"tool_use_id": "toolu_1", "name": "lookup", "arguments": {"word": "meerkat"}}
    events = list(session.stream(fake(text="ok", callbacks=[{"method": "x/unknown", "params": params}])))
    completed = [e for e in events if e.type == "tool_execution_completed"]
    assert completed and completed[0].is_error  # type: ignore[attr-defined]
    assert "Method not found" in completed[0].result  # type: ignore[attr-defined]


def test_restart_respawns_after_a_crash_but_never_retries_a_turn() -> None:
    with scripted_client(restart=True) as client:
        session = client.create_session("hi")
        first_pid = client.pid
        assert first_pid is not None
        t, failures = hang_in_background(session)
        os.kill(first_pid, signal.SIGKILL)
        t.join(5)
        assert [e.code for e in failures] == ["CONNECTION_CLOSED"]  # failed in flight, not retried
        assert client.closed  # until the next call
        results: List[str] = []

        def call_after_crash() -> None:  # several threads notice the crash; one respawn serves all
            results.append(client.create_session("after").text)

        workers = [threading.Thread(target=call_after_crash) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert results == ["Echo: after"] * 4
        assert client.pid not in (None, first_pid) and not client.closed
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)  # the dead child was reaped, not left as a zombie
