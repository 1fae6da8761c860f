"""Many threads sharing one client: every stream gets exactly its own run's events."""

from __future__ import annotations

import threading
from typing import Callable, List

import pytest
from conftest import fake

from meerkat_sync import Event, MeerkatClient, RunCompleted, RunStarted, TextDelta


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    errors: List[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread was left hanging"
    assert not errors, errors[0]


def _assert_exact_run(events: List[Event], chunks: List[str], session_id: str) -> None:
    """The stream holds one whole run, in order, with exactly these deltas."""
    assert isinstance(events[0], RunStarted) and events[0].session_id == session_id
    assert isinstance(events[-1], RunCompleted) and events[-1].session_id == session_id
    assert [e.delta for e in events if isinstance(e, TextDelta)] == chunks
    kinds = [e.type for e in events]
    assert kinds.count("run_started") == 1 and kinds.count("run_completed") == 1


def test_32_threads_mix_turns_and_streams_on_one_client(client: MeerkatClient) -> None:
    def worker(i: int) -> None:
        session = client.create_session(f"thread {i}")
        for turn in range(3):
            chunks = [f"t{i}-{turn}-{k} " for k in range(20)]
            prompt = fake(chunks=chunks, delay_ms=1)
            if (i + turn) % 2:
                with session.stream(prompt) as stream:
                    events = list(stream)
                _assert_exact_run(events, chunks, session.id)
                assert stream.result.text == "".join(chunks)
            else:
                assert session.turn(prompt).text == "".join(chunks)
            assert session.text == "".join(chunks)

    _run_threads(32, worker)


def test_concurrent_streaming_creates_are_attributed_live(client: MeerkatClient) -> None:
    def worker(i: int) -> None:
        chunks = [f"create{i}-{k} " for k in range(30)]
        stream = client.create_session_streaming(fake(chunks=chunks, delay_ms=2))
        with stream:
            events = list(stream)
        result = stream.result
        _assert_exact_run(events, chunks, result.session_id)
        assert result.text == "".join(chunks)

    _run_threads(16, worker)


def test_concurrent_creates_with_identical_prompts_stay_correct(client: MeerkatClient) -> None:
    """Identical prompts cannot be told apart live; the events wait for the response instead."""
    prompt = fake(chunks=["same ", "prompt"], delay_ms=5)

    def worker(i: int) -> None:
        if i % 2:
            assert client.create_session(prompt).text == "same prompt"
            return
        stream = client.create_session_streaming(prompt)
        with stream:
            events = list(stream)
        _assert_exact_run(events, ["same ", "prompt"], stream.result.session_id)

    _run_threads(12, worker)


def test_two_streams_on_one_session_get_their_own_runs(client: MeerkatClient) -> None:
    session = client.create_session("shared")
    chunks_a = [f"a{k} " for k in range(40)]
    chunks_b = [f"b{k} " for k in range(40)]
    results = {}

    def consume(name: str, chunks: List[str]) -> None:
        with session.stream(fake(chunks=chunks, delay_ms=2)) as stream:
            results[name] = list(stream)

    threads = [
        threading.Thread(target=consume, args=("a", chunks_a)),
        threading.Thread(target=consume, args=("b", chunks_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    _assert_exact_run(results["a"], chunks_a, session.id)
    _assert_exact_run(results["b"], chunks_b, session.id)


@pytest.mark.parametrize("identical", [False, True])
def test_queued_turns_on_one_session_from_many_threads(client: MeerkatClient, identical: bool) -> None:
    session = client.create_session("queue")

    def worker(i: int) -> None:
        chunks = ["same"] if identical else [f"q{i}"]
        with session.stream(fake(chunks=chunks, delay_ms=1)) as stream:
            events = list(stream)
        _assert_exact_run(events, chunks, session.id)

    _run_threads(8, worker)
