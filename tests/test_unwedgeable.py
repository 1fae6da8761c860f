"""Frozen children, terminal Ctrl+C, abandoned streams, forks and hostile lines: nothing hangs.

Every test drives a real child process through the public API (the scripted runtime or
the raw-line peer) and bounds the time it may take; none of them can pass by waiting.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Iterator, List

import pytest
from conftest import fake

from meerkat_sync import MeerkatClient, MeerkatError, TextDelta
from meerkat_sync.testing import scripted_client

PEER = os.path.join(os.path.dirname(__file__), "_replay_peer.py")


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our own child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return False


def run_script(source: str, timeout: float = 60, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.fixture
def frozen() -> Iterator[MeerkatClient]:
    """A connected client whose child has been stopped with SIGSTOP."""
    client = scripted_client(request_timeout=5, close_timeout=1).connect()
    assert client.pid is not None
    os.kill(client.pid, signal.SIGSTOP)
    try:
        yield client
    finally:
        with_pid = client.pid
        if with_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(with_pid, signal.SIGCONT)
        client.close(timeout=1)


# --- 1. a frozen child ------------------------------------------------------------------

SOME_SESSION = "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11"

#: One call of each 0.5.0 method family, each with its own ``timeout=``.
FAMILY_CALLS = {
    "config": lambda c: c.get_config(timeout=0.5),
    "models": lambda c: c.get_models_catalog(timeout=0.5),
    "skills": lambda c: c.list_skills(timeout=0.5),
    "mcp": lambda c: c.mcp_reload(SOME_SESSION, timeout=0.5),
    "inputs": lambda c: c.inject_context(SOME_SESSION, "text", timeout=0.5),
    "external events": lambda c: c.send_external_event(SOME_SESSION, {"kind": "x"}, timeout=0.5),
    "runtime": lambda c: c.runtime_state(SOME_SESSION, timeout=0.5),
    "comms": lambda c: c.peers(SOME_SESSION, timeout=0.5),
    "blobs": lambda c: c.get_blob("sha256:00", timeout=0.5),
    "mobs": lambda c: c.list_mobs(timeout=0.5),
    "mob handle": lambda c: c.mob("crew").status(timeout=0.5),
    "subscriptions": lambda c: c.subscribe_session_events(SOME_SESSION, timeout=0.5),
    "callback tools": lambda c: c.register_tool("lookup", lambda args: "x", timeout=0.5),
}


@pytest.mark.parametrize("family", list(FAMILY_CALLS))
def test_every_method_family_times_out_when_the_child_is_frozen(frozen: MeerkatClient, family: str) -> None:
    started = time.monotonic()
    with pytest.raises(MeerkatError) as info:
        FAMILY_CALLS[family](frozen)
    assert info.value.code == "TIMEOUT" and time.monotonic() - started < 3


def test_a_subscription_waits_and_closes_within_its_bounds_when_the_child_freezes() -> None:
    with scripted_client(request_timeout=5, close_timeout=1) as client:
        session = client.create_session("hi")
        subscription = session.subscribe_events(idle_timeout=0.5)
        assert client.pid is not None
        os.kill(client.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(MeerkatError) as info:
                next(iter(subscription))
            assert info.value.code == "TIMEOUT" and time.monotonic() - started < 3
            started = time.monotonic()
            with pytest.raises(MeerkatError) as closing:
                subscription.close(timeout=0.5)
            assert closing.value.code == "TIMEOUT" and time.monotonic() - started < 3
        finally:
            os.kill(client.pid, signal.SIGCONT)



def test_a_request_too_big_for_the_pipe_times_out_when_the_child_is_frozen(frozen: MeerkatClient) -> None:
    session = frozen.session("0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11")
    started = time.monotonic()
    with pytest.raises(MeerkatError) as info:
        session.turn("x" * 1_000_000, timeout=1.5)
    assert info.value.code == "TIMEOUT"
    assert time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(MeerkatError) as later:
        frozen.list_sessions(timeout=0.5)  # the half-written request does not block this one
    assert later.value.code == "TIMEOUT" and time.monotonic() - started < 2


def test_many_threads_with_short_timeouts_all_return_and_close_is_bounded(frozen: MeerkatClient) -> None:
    outcomes: List[str] = []
    lock = threading.Lock()

    def caller() -> None:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                frozen.list_sessions(timeout=0.1)
            except MeerkatError as exc:
                with lock:
                    outcomes.append(exc.code)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(8)
    assert not any(t.is_alive() for t in threads), "a caller ignored its timeout"
    assert outcomes and set(outcomes) <= {"TIMEOUT"}
    started = time.monotonic()
    frozen.close(timeout=1)
    assert time.monotonic() - started < 1 + 3, "close() must kill a frozen child"
    assert frozen.pid is not None and gone(frozen.pid, within=2)


# --- 2. Ctrl+C in a terminal ------------------------------------------------------------


def test_ctrl_c_sent_to_the_whole_process_group_spares_the_runtime() -> None:
    script = """
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
        from meerkat_sync.testing import scripted_client
        with scripted_client() as client:
            session = client.create_session("hi")
            print("ready", flush=True)
            try:
                session.turn('fake:{"hang": true}')
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print("next:", session.turn("after", timeout=10).text, flush=True)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl+C
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # never leave the script behind
    assert out.split("\n")[:2] == ["interrupted", "next: Echo: after"], out + err


def test_the_runtime_does_not_outlive_a_parent_killed_with_sigkill() -> None:
    script = """
        import os, time
        from meerkat_sync.testing import scripted_client
        client = scripted_client().connect()
        print(client.pid, flush=True)
        time.sleep(60)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert gone(child, within=8), "rkat-rpc must exit when its parent dies (stdin EOF)"


# --- 3. a child that exits at once ------------------------------------------------------


def test_a_child_that_exits_at_once_always_reports_its_reason() -> None:
    command = ["/bin/sh", "-c", "echo 'broken: no config' >&2; exit 1"]
    for _ in range(20):
        with pytest.raises(MeerkatError) as info:
            MeerkatClient(command=command, connect_timeout=10).connect()
        assert info.value.code == "CONNECTION_CLOSED"
        assert "exit code 1" in info.value.message and "broken: no config" in info.value.message


# --- 4. abandoned streams ---------------------------------------------------------------


def test_a_stream_dropped_without_close_releases_its_buffer_and_stops_its_run(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    router = client._router
    assert router is not None
    for _ in range(10):
        for event in session.stream(fake(bulk={"count": 20000, "delta": "x"}, delay_ms=0)):
            if isinstance(event, TextDelta):
                break
    gc.collect()
    assert not router._live, "garbage-collected streams must release their sinks"
    # The runs were called off: the session is free at once.
    assert session.turn("after", timeout=10).text == "Echo: after"


def test_leaving_a_stream_early_interrupts_its_run_unless_asked_to_keep_it(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    with session.stream(fake(hang=True)) as stream:
        next(iter(stream))
    started = time.monotonic()
    assert session.turn("next", timeout=10).text == "Echo: next"
    assert time.monotonic() - started < 3  # the hanging run was stopped, not waited for

    kept = session.stream(fake(chunks=["a", "b"], delay_ms=300))
    next(iter(kept))
    kept.close(cancel=False)
    assert session.turn("after", timeout=10).text == "Echo: after"
    assert session.history().messages[-3].text == "ab"  # type: ignore[attr-defined]


# --- 5. fork ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_neither_keeps_the_runtime_alive_nor_slows_close() -> None:
    script = """
        import os, sys, time
        from meerkat_sync.testing import scripted_client
        client = scripted_client().connect()
        print(client.pid, flush=True)
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # let the test read the parent's output to its end
            time.sleep(30)
            os._exit(0)
        if sys.argv[1] == "close":
            started = time.monotonic()
            client.close()
            print(round(time.monotonic() - started, 3), flush=True)
        os._exit(0)  # no exit handlers: only the pipe tells rkat-rpc its parent is gone
    """
    for mode in ("exit", "close"):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), mode], stdout=subprocess.PIPE, text=True
        )
        out, _ = proc.communicate(timeout=30)
        lines = out.split()
        assert gone(int(lines[0]), within=8), f"rkat-rpc outlived its parent ({mode})"
        if mode == "close":
            assert float(lines[1]) < 2.5, f"close() took {lines[1]} s with a forked child alive"


# --- 6. stdout closed, child alive ------------------------------------------------------


def test_a_child_that_closes_stdout_is_stopped_without_waiting_for_close() -> None:
    client = scripted_client().connect()
    try:
        session = client.create_session("hi")
        with pytest.raises(MeerkatError) as info:
            session.turn(fake(chunks=["a", "b", "c"], close_stdout_after_events=2), timeout=10)
        assert info.value.code == "CONNECTION_CLOSED"
        assert client.pid is not None and gone(client.pid, within=3)
    finally:
        client.close()


# --- 7. exit with a non-daemon thread in a turn -----------------------------------------


def test_interpreter_exit_fails_a_turn_waiting_in_a_non_daemon_thread() -> None:
    script = """
        import threading
        from meerkat_sync import MeerkatError
        from meerkat_sync.testing import scripted_client
        client = scripted_client().connect()
        session = client.create_session("hi")

        def wait():
            try:
                session.turn('fake:{"hang": true}')
            except MeerkatError as exc:
                print("turn ended:", exc.code, flush=True)

        threading.Thread(target=wait).start()
        print("main done", flush=True)
    """
    started = time.monotonic()
    out = run_script(script, timeout=60)
    assert time.monotonic() - started < 8, "exit waited for the turn"
    assert out.stdout.split("\n")[:2] == ["main done", "turn ended: CLIENT_CLOSED"], out.stdout + out.stderr


# --- 8, 9. hostile lines ----------------------------------------------------------------


@pytest.fixture
def peer() -> Iterator[MeerkatClient]:
    with MeerkatClient(command=[sys.executable, PEER], request_timeout=20, max_message_bytes=8 << 20) as c:
        yield c


def test_a_line_that_breaks_the_decoder_is_skipped(peer: MeerkatClient) -> None:
    import base64
    import json

    junk = json.dumps([base64.b64encode(b"[" * 100_000).decode()])
    assert peer.list_sessions(labels={"junk": junk}) == []
    assert peer.list_sessions() == []


def test_an_oversized_line_is_dropped_while_it_is_read(peer: MeerkatClient) -> None:
    assert peer.list_sessions(labels={"noise": str(64 << 20)}) == []  # 64 MiB of noise, cap 8 MiB
    assert peer.list_sessions() == []


def test_memory_stays_within_about_twice_the_cap_whatever_the_line() -> None:
    script = f"""
        import resource, sys
        from meerkat_sync import MeerkatClient
        client = MeerkatClient(command=[sys.executable, {PEER!r}], max_message_bytes=16 << 20).connect()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        client.list_sessions(labels={{"noise": str(300 << 20)}})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """
    out = run_script(script)
    grown_mib = int(out.stdout.split()[-1])
    assert grown_mib < 2 * 16 + 8, f"RSS grew by {grown_mib} MiB for a 300 MiB line, cap 16 MiB"


def test_an_oversized_response_fails_its_call_with_a_clear_code(peer: MeerkatClient) -> None:
    with pytest.raises(MeerkatError) as info:
        peer.list_sessions(labels={"pad": str(16 << 20)})
    assert info.value.code == "MESSAGE_TOO_LARGE" and "max_message_bytes" in info.value.message
    assert peer.list_sessions() == []


# --- 10. bad arguments ------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda c: c.create_session("hi", provider_params={"x": _deep(5000)}), "provider_params"),
        (lambda c: c.create_session("hi", app_context=_deep(5000)), "app_context"),
        (
            lambda c: c.create_session([{"type": "image", "media_type": "image/png", "data": "not base64!"}]),
            "base64",
        ),
        (
            lambda c: c.create_session([{"type": "image", "media_type": "text/plain", "data": "aGk="}]),
            "media_type",
        ),
        (lambda c: c.create_session("hi", max_tokens=2**32), "max_tokens"),
        (lambda c: c.create_session("hi", structured_output_retries=2**32), "structured_output_retries"),
        (lambda c: c.list_sessions(limit=2**64), "limit"),
        (lambda c: c.session("x").history(offset=2**64), "offset"),
    ],
)
def test_bad_arguments_are_invalid_args_and_nothing_is_sent(
    client: MeerkatClient, call: Any, needle: str
) -> None:
    before = len(client.list_sessions())
    with pytest.raises(MeerkatError) as info:
        call(client)
    assert info.value.code == "INVALID_ARGS" and needle in info.value.message
    assert len(client.list_sessions()) == before


def test_extra_args_must_be_a_list_of_strings() -> None:
    for bad in (None, "--realm x", [1]):
        with pytest.raises(MeerkatError) as info:
            MeerkatClient(extra_args=bad)  # type: ignore[arg-type]
        assert info.value.code == "INVALID_ARGS" and "extra_args" in info.value.message
