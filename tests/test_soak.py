"""Load held: many threads streaming through one client with early breaks and interrupts.

64 threads x 50 streamed turns (about 10 s here, so CI runs it whole); ``MEERKAT_SOAK=short``
runs 32 x 10. Deselect with ``-m "not soak"``.
"""

from __future__ import annotations

import collections
import gc
import os
import random
import threading
import time
from typing import Counter, List

import pytest
from conftest import fake

from meerkat_sync import MeerkatError, RunCompleted, RunStarted, TextDelta
from meerkat_sync.testing import scripted_client

THREADS, TURNS = (32, 10) if os.environ.get("MEERKAT_SOAK") == "short" else (64, 50)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.soak
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors and RSS")
def test_soak_threads_streams_breaks_and_interrupts() -> None:
    gc.collect()
    threads_before = set(threading.enumerate())
    fds_before, rss_before = _fds(), _rss_mb()
    outcomes: Counter[str] = collections.Counter()
    problems: List[str] = []
    lock = threading.Lock()

    with scripted_client(request_timeout=30, turn_timeout=60) as client:

        def worker(i: int) -> None:
            rng = random.Random(i)
            session = client.create_session(f"soak {i}")
            for turn in range(TURNS):
                chunks = [f"{i}.{turn}.{k} " for k in range(rng.randint(5, 40))]
                mode = rng.choices(["full", "break", "interrupt"], weights=[6, 2, 1])[0]
                try:
                    if mode == "full":
                        with session.stream(fake(chunks=chunks, delay_ms=rng.choice([0, 1]))) as stream:
                            events = list(stream)
                        deltas = [e.delta for e in events if isinstance(e, TextDelta)]
                        ok = (
                            deltas == chunks
                            and isinstance(events[0], RunStarted)
                            and isinstance(events[-1], RunCompleted)
                            and stream.result.text == "".join(chunks)
                        )
                        outcome = "complete" if ok else f"wrong events in {i}.{turn}"
                    elif mode == "break":
                        with session.stream(fake(chunks=chunks, delay_ms=1)) as stream:
                            for event in stream:
                                if isinstance(event, TextDelta):
                                    break
                        outcome = "broken early"
                    else:
                        with session.stream(fake(hang=True)) as stream:
                            for event in stream:
                                if event.type == "turn_started":
                                    session.interrupt()
                        outcome = "interrupt not reported"
                except MeerkatError as exc:
                    outcome = "interrupted" if mode == "interrupt" else f"{mode} failed: {exc}"
                with lock:
                    outcomes[outcome] += 1

        pool = [threading.Thread(target=worker, args=(i,), name=f"soak-{i}") for i in range(THREADS)]
        started = time.monotonic()
        for t in pool:
            t.start()
        for t in pool:
            t.join(120)
        assert not [t.name for t in pool if t.is_alive()], "soak threads left hanging"
        elapsed = time.monotonic() - started

    expected = {"complete", "broken early", "interrupted"}
    problems = [f"{k}: {v}" for k, v in outcomes.items() if k not in expected]
    assert not problems, problems
    assert sum(outcomes.values()) == THREADS * TURNS  # every turn accounted for
    # No thread, descriptor or (much) memory left behind once the client is closed.
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - threads_before
    gc.collect()
    assert _fds() <= fds_before
    assert _rss_mb() - rss_before < 100, f"RSS grew by {_rss_mb() - rss_before:.0f} MB"
    print(f"\nsoak: {THREADS}x{TURNS} turns in {elapsed:.1f}s: {dict(outcomes)}")
