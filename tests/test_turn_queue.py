"""Turns of one session: sent one at a time, and a failed one never runs again.

Each test runs on the scripted runtime and, when ``MEERKAT_BIN_PATH`` names one, on the
real rkat-rpc 0.5.0, whose own queue replays failed turns and lets ``cancel`` of a queued
turn interrupt the running one (docs/real-runtime.rst).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, List

import pytest
from conftest import Backend

from meerkat_sync import MeerkatError, Session, TurnStarted

QUIET = {"enable_builtins": False}


def fake(**spec: Any) -> str:
    return "fake:" + json.dumps(spec, sort_keys=True)


def user_prompts(session: Session) -> List[Any]:
    return [m.content for m in session.history().messages if m.role == "user"]  # type: ignore[attr-defined]


def start_hanging(session: Session) -> Any:
    """A streamed turn that runs until interrupted, entered and past its first turn."""
    stream = session.stream(fake(hang=True))
    for event in stream:
        if isinstance(event, TurnStarted):
            return stream
    raise AssertionError("the hanging turn ended early")


def test_a_turn_waits_for_the_one_before_it_and_a_timed_out_wait_sends_nothing(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="ready"), **QUIET)
        stream = start_hanging(session)
        with pytest.raises(MeerkatError) as info:
            session.turn(fake(text="never sent"), timeout=0.5)
        assert info.value.code == "TIMEOUT" and "earlier turn on this session" in info.value.message
        session.interrupt()
        with pytest.raises(MeerkatError):
            list(stream)
        assert session.turn(fake(text="after")).text == "after"
        assert fake(text="never sent") not in user_prompts(session)


def test_an_interrupted_turn_is_not_run_again_before_the_next(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="ready"), **QUIET)
        stream = start_hanging(session)
        session.interrupt()
        with pytest.raises(MeerkatError) as info:
            list(stream)
        assert info.value.code == "INTERRUPTED" and info.value.details["rpc_code"] == -32603
        started = time.monotonic()
        assert session.turn(fake(text="next"), timeout=10).text == "next"
        assert time.monotonic() - started < 5  # not stuck behind a replay of the hanging prompt
        assert user_prompts(session).count(fake(hang=True)) == 1


def test_a_queued_turn_runs_after_the_one_before_it_is_interrupted(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="ready"), **QUIET)
        stream = start_hanging(session)
        results: List[Any] = []
        queued = threading.Thread(target=lambda: results.append(session.turn(fake(text="queued"))))
        queued.start()
        time.sleep(0.3)
        session.interrupt()
        with pytest.raises(MeerkatError):
            list(stream)
        queued.join(20)
        assert [r.text for r in results] == ["queued"]


def test_a_failed_turn_is_not_retried_and_the_session_goes_on(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="ready"), **QUIET)
        failing = fake(provider_error={"status": 401})
        with pytest.raises(MeerkatError) as info:
            session.turn(failing)
        assert info.value.code == "PROVIDER_ERROR"
        assert session.turn(fake(text="fine"), timeout=10).text == "fine"
        assert user_prompts(session).count(failing) == 1


def test_a_timed_out_running_turn_is_cancelled_and_the_next_one_runs(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="ready"), **QUIET)
        with pytest.raises(MeerkatError) as info:
            session.turn(fake(hang=True), timeout=1)
        assert info.value.code == "TIMEOUT"
        assert session.turn(fake(text="next"), timeout=10).text == "next"
        assert user_prompts(session).count(fake(hang=True)) == 1


def test_turns_of_different_sessions_do_not_wait_for_each_other(backend: Backend) -> None:
    with backend.connect() as client:
        busy = client.create_session(fake(text="ready"), **QUIET)
        stream = start_hanging(busy)
        other = client.create_session(fake(text="free"), **QUIET)
        assert other.turn(fake(text="not blocked"), timeout=5).text == "not blocked"
        busy.interrupt()
        with pytest.raises(MeerkatError):
            list(stream)
