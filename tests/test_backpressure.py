"""A slow consumer costs bounded memory, learns what it lost, and delays nobody else."""

from __future__ import annotations

import time

from conftest import fake

from meerkat_sync import StreamTruncated, TextDelta
from meerkat_sync._routing import RUN_END, RunSink
from meerkat_sync.testing import scripted_client


def test_overflow_drops_newest_and_reports_the_count_then_delivers_the_result() -> None:
    with scripted_client(stream_buffer=50) as client:
        session = client.create_session("hi")
        other = client.create_session("other")
        chunks = [f"{k} " for k in range(400)]
        stream = session.stream(fake(chunks=chunks))
        with stream:
            first = next(iter(stream))
            assert first.type == "run_started"
            # Stall while the whole run arrives; another session is served meanwhile.
            assert other.turn(fake(chunks=["unaffected"])).text == "unaffected"
            # No public signal says the run has been routed, and a sleep is not enough on a
            # loaded machine: wait for the stream's sink to take the run's terminal event.
            sink = stream._handle.sink  # type: ignore[union-attr]
            deadline = time.monotonic() + 60
            while not sink.run_ended:
                assert time.monotonic() < deadline, "the scripted run never ended"
                time.sleep(0.02)
            events = list(stream)
        truncated = [e for e in events if isinstance(e, StreamTruncated)]
        received = [e for e in events if not isinstance(e, StreamTruncated)]
        deltas = [e.delta for e in received if isinstance(e, TextDelta)]
        # Every one of the run's 405 events is either received or counted as dropped.
        assert truncated and 1 + len(received) + sum(t.dropped for t in truncated) == 405
        assert len(deltas) < 400
        # Only deltas are ever dropped: the run's structure always arrives.
        kinds = [e.type for e in received]
        assert kinds[-3:] == ["text_complete", "turn_completed", "run_completed"]
        positions = [chunks.index(d) for d in deltas]
        assert positions == sorted(positions)  # what arrives is in order; the newest were dropped
        for before, after in zip(received, received[1:]):  # each gap sits behind a StreamTruncated
            if isinstance(before, TextDelta) and isinstance(after, TextDelta):
                gap = chunks.index(after.delta) - chunks.index(before.delta)
                assert gap == 1 or events.index(after) - events.index(before) == 2
        assert stream.result.text == "".join(chunks)  # the result is complete regardless


def test_a_whole_run_in_one_read_is_bounded_too() -> None:
    # On a loaded machine a run can reach the reader in a single read; the bound holds
    # within it, not only across reads (it used to let a whole read through).
    sink = RunSink(prompt_key=None, deliver=True, session_id=None, limit=50)
    sink.push({"payload": {"type": "run_started"}}, "run_started", False)
    for k in range(400):
        sink.push({"payload": {"type": "text_delta", "delta": f"{k} "}}, "text_delta", False)
    sink.push({"payload": {"type": "run_completed"}}, "run_completed", True)
    sink.hand_over()
    batch = sink.items.get_nowait()
    kept = [item for item in batch if isinstance(item, dict) and item["payload"]["type"] == "text_delta"]
    notes = [item["payload"] for item in batch if isinstance(item, dict)
             and item["payload"]["type"] == "stream_truncated"]
    assert len(kept) == 49 and [n["dropped"] for n in notes] == [351]
    assert batch[-1] is RUN_END and len(batch) == 1 + 49 + 1 + 1 + 1  # started, kept, note, end


def test_the_default_buffer_holds_a_normal_burst() -> None:
    with scripted_client() as client:
        session = client.create_session("hi")
        chunks = [f"{k}" for k in range(3000)]
        events = list(session.stream(fake(chunks=chunks)))
        assert not any(isinstance(e, StreamTruncated) for e in events)
        assert [e.delta for e in events if isinstance(e, TextDelta)] == chunks


def test_a_seq_gap_from_the_server_is_surfaced() -> None:
    # Scripted: the envelope seq jumps, as when the server drops notifications (§5.5).
    with scripted_client() as client:
        session = client.create_session("hi")
        events = list(session.stream(fake(chunks=["a", "b"], drop_events={"after": 3, "count": 5})))
        gaps = [e for e in events if isinstance(e, StreamTruncated)]
        assert [g.dropped for g in gaps] == [5] and "seq gap" in gaps[0].reason
        assert [e.delta for e in events if isinstance(e, TextDelta)] == ["a", "b"]


def test_a_tool_config_change_inside_a_run_is_not_taken_for_a_gap() -> None:
    # In a run, tool_config_changed is numbered by the session's own counter (PROTOCOL.md §5.1).
    change = {
        "type": "tool_config_changed",
        "payload": {"operation": "reload", "target": "tool_scope", "status": "applied", "persisted": False},
    }
    with scripted_client() as client:
        session = client.create_session("hi")
        events = list(session.stream(fake(extra_events=[change, change], chunks=["a", "b"])))
        assert [e.type for e in events].count("tool_config_changed") == 2
        assert not any(isinstance(e, StreamTruncated) for e in events)


def test_many_slow_streams_do_not_block_the_reader() -> None:
    with scripted_client(stream_buffer=20) as client:
        sessions = [client.create_session(f"s{i}") for i in range(4)]
        streams = [s.stream(fake(chunks=[str(k) for k in range(200)])) for s in sessions]
        for st in streams:
            st.__enter__()
        # Nobody consumes; a control call must still be answered promptly.
        started = time.monotonic()
        assert len(client.list_sessions()) >= 4
        assert time.monotonic() - started < 2
        for st in streams:
            assert st.collect().text == "".join(str(k) for k in range(200))


def test_events_the_runtime_drops_for_a_slow_reader_show_as_truncation() -> None:
    # The real rkat-rpc drops session/events when its 256-slot queue is full (§5.5); the
    # scripted runtime does the same with --notification-queue.
    with scripted_client(args=["--notification-queue", "64"]) as client:
        session = client.create_session("hi")
        stream = session.stream(fake(bulk={"count": 5000, "delta": "x"}))
        with stream:
            first = next(iter(stream))
            time.sleep(1.0)  # a reader that stalls: the runtime's queue overflows meanwhile
            events = [first, *stream]
        deltas = sum(1 for e in events if isinstance(e, TextDelta))
        marks = [e for e in events if isinstance(e, StreamTruncated)]
        assert stream.result.text == "x" * 5000  # the result is never lost
        assert deltas < 5000 and marks, "dropped events must be reported, never lost silently"
        # The run emits 5,005 events. Gaps between received events are counted; a lost tail
        # (run_completed included) has no later event to count it by, so the stream says
        # so at its end instead.
        received = len(events) - len(marks)
        tail_lost = marks[-1] is events[-1] and "last events" in marks[-1].reason
        assert tail_lost or received + sum(m.dropped for m in marks) == 5005
