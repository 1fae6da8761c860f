"""Start-up failures, a child that closes stdout but lives on, and Ctrl+C during a wait."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import fake

from meerkat_sync import MeerkatError, MeerkatTimeoutError
from meerkat_sync.testing import scripted_client


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_child_exiting_during_connect() -> None:
    client = scripted_client(args=["--exit-before-initialize", "3"])
    started = time.monotonic()
    with pytest.raises(MeerkatError) as info:
        client.connect()
    assert info.value.code == "CONNECTION_CLOSED" and "exit code 3" in info.value.message
    assert info.value.details["stderr_tail"]
    assert time.monotonic() - started < 5 and client.closed


def test_child_never_answering_initialize_times_out() -> None:
    client = scripted_client(args=["--no-answer-initialize"], connect_timeout=0.5)
    with pytest.raises(MeerkatTimeoutError):
        client.connect()
    assert client.closed and client.pid is not None
    deadline = time.monotonic() + 5
    while not _gone(client.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(client.pid)


def test_a_missing_executable_is_binary_not_found() -> None:
    from meerkat_sync import MeerkatClient

    with pytest.raises(MeerkatError) as info:
        MeerkatClient(command=["/nonexistent/rkat-rpc"]).connect()
    assert info.value.code == "BINARY_NOT_FOUND"


def test_child_closing_stdout_but_staying_alive() -> None:
    client = scripted_client().connect()
    session = client.create_session("hi")
    with pytest.raises(MeerkatError) as info:
        session.turn(fake(chunks=["a", "b", "c"], close_stdout_after_events=2), timeout=10)
    assert info.value.code == "CONNECTION_CLOSED" and "still running" in info.value.message
    assert client.closed
    pid = client.pid
    assert pid is not None
    client.close()  # closes stdin, so the child exits (or is terminated)
    assert _gone(pid)


@pytest.mark.parametrize("how", ["turn", "stream"])
def test_ctrl_c_during_a_wait_is_prompt_and_interrupts_the_turn(how: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, threading, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
        from meerkat_sync.testing import scripted_client
        with scripted_client() as client:
            session = client.create_session("hi")
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            started = time.monotonic()
            try:
                if {how!r} == "turn":
                    session.turn('fake:{{"hang": true}}')
                else:
                    for _ in session.stream('fake:{{"hang": true}}'):
                        pass
            except KeyboardInterrupt:
                print("interrupted after", round(time.monotonic() - started - 0.5, 3), flush=True)
            print("next turn:", session.turn("after", timeout=5).text, flush=True)
            print("busy:", client.read_session(session.id).is_active, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    delay = float(lines[0].split()[-1])
    assert delay < 0.5, f"KeyboardInterrupt took {delay:.3f} s to surface"
    assert lines[1] == "next turn: Echo: after"
    assert lines[2] == "busy: False"  # the hanging turn was cancelled on the server
