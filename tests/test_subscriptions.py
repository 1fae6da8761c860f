"""EventSubscription end to end: session streams on both runtimes, and the wire's corner cases.

Most tests run on the scripted runtime and, with MEERKAT_BIN_PATH set, on the real rkat-rpc
(``backend`` fixture). Wire-level facts (per-stream ``sequence``, the duplicate plain
``session/event``, the order of ``stream_end`` and responses) are read from a transcript
recorded by ``_wire_tap.py`` between the client and the runtime. Orders the runtimes never
produce on their own (events and ends before the open or close response, mob streams)
come from a small stand-in server over a real pipe.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from conftest import REAL_BIN, Backend, fake

from meerkat_sync import (
    CapabilityUnavailableError,
    EventSubscription,
    MeerkatClient,
    MeerkatError,
    MeerkatTimeoutError,
    RunCompleted,
    RunStarted,
    SessionNotFoundError,
    StreamTruncated,
    TextDelta,
)
from meerkat_sync.testing import fake_rkat_command, real_client, scripted_client

TAP = Path(__file__).parent / "_wire_tap.py"
TIMEOUTS: Dict[str, Any] = {"request_timeout": 20.0, "turn_timeout": 60.0}


@contextlib.contextmanager
def tapped(backend: Backend, path: Path, **options: Any) -> Iterator[MeerkatClient]:
    """A connected client whose every wire line is recorded in ``path``."""
    opts = {**TIMEOUTS, **options}
    if backend.real:
        command = [sys.executable, str(TAP), str(path), "--", REAL_BIN]
        client: MeerkatClient = real_client(command=command, **opts)
    else:
        command = [sys.executable, str(TAP), str(path), "--", *fake_rkat_command()]
        client = MeerkatClient(command=command, **opts).connect()
    with contextlib.closing(client):
        yield client


def wire(path: Path) -> List[Dict[str, Any]]:
    """The transcript so far: each message with ``dir`` (">" to the server, "<" back)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        with contextlib.suppress(ValueError):
            message = json.loads(entry["line"])
            if isinstance(message, dict):
                message["dir"] = entry["dir"]
                out.append(message)
    return out


def until_completed(sub: EventSubscription) -> List[Any]:
    """Envelopes up to and including the next run_completed."""
    seen = []
    for envelope in sub.envelopes():
        seen.append(envelope)
        if isinstance(envelope.payload, RunCompleted):
            return seen
    raise AssertionError(f"the stream ended ({sub.outcome}) before a run completed: {seen}")


def stream_events(messages: List[Dict[str, Any]], stream_id: str) -> List[Dict[str, Any]]:
    return [
        m["params"]
        for m in messages
        if m.get("method") == "session/stream_event" and m["params"]["stream_id"] == stream_id
    ]


# --- session streams, both runtimes ---------------------------------------------------------


def test_a_subscription_gets_every_later_event_once_with_its_own_sequence(
    backend: Backend, tmp_path: Path
) -> None:
    path = tmp_path / "wire.jsonl"
    with tapped(backend, path) as client:
        session = client.create_session(fake(text="before the subscription"))
        with session.subscribe_events() as sub:
            assert sub.session_id == session.id and sub.outcome is None and not sub.closed
            uuid.UUID(sub.stream_id)
            result = session.turn(fake(text="abc", chunks=["a", "b", "c"]))
            seen = until_completed(sub)
        assert result.text == "abc"  # the turn is unaffected by the second copy of its events
        kinds = [type(e.payload).__name__ for e in seen]
        assert kinds == [
            "RunStarted", "TurnStarted", "TextDelta", "TextDelta", "TextDelta",
            "TextComplete", "TurnCompleted", "RunCompleted",
        ]  # fmt: skip
        assert isinstance(seen[0].payload, RunStarted) and "abc" in seen[0].payload.prompt  # no replay
        seqs = [e.seq for e in seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert all(e.source_id == f"session:{session.id}" for e in seen)
        assert sub.outcome == "explicit_close"

        messages = wire(path)
        copies = stream_events(messages, sub.stream_id)
        assert [c["sequence"] for c in copies] == list(range(1, len(copies) + 1))
        assert all(c["session_id"] == session.id for c in copies)
        assert [c["event"]["event_id"] for c in copies] == [e.event_id for e in seen]
        plain = {
            m["params"]["event"]["event_id"]: m["params"]["event"]
            for m in messages
            if m.get("method") == "session/event"
        }
        for copy in copies:  # every event went out twice: plain and on the stream, alike
            assert plain[copy["event"]["event_id"]] == copy["event"]


def test_a_streamed_turn_is_unaffected_by_an_open_subscription(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        with session.subscribe_events() as sub:
            with session.stream(fake(text="hey", chunks=["h", "ey"])) as stream:
                streamed = list(stream.envelopes())
            assert stream.result.text == "hey"
            subscribed = until_completed(sub)
        assert [e.event_id for e in streamed] == [e.event_id for e in subscribed]


def test_each_of_many_subscriptions_gets_exactly_its_own_sessions_events(backend: Backend) -> None:
    with backend.connect() as client:
        first = client.create_session(fake(text="one"))
        second = client.create_session(fake(text="two"))
        a1, a2 = first.subscribe_events(), client.subscribe_session_events(first.id)
        b1 = second.subscribe_events()
        assert len({a1.stream_id, a2.stream_id, b1.stream_id}) == 3
        threads = [
            threading.Thread(target=first.turn, args=(fake(text="first again"),)),
            threading.Thread(target=second.turn, args=(fake(text="second again"),)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got = {name: until_completed(sub) for name, sub in (("a1", a1), ("a2", a2), ("b1", b1))}
        assert [e.event_id for e in got["a1"]] == [e.event_id for e in got["a2"]]
        assert {e.source_id for e in got["a1"]} == {f"session:{first.id}"}
        assert {e.source_id for e in got["b1"]} == {f"session:{second.id}"}
        # The stream stays open across runs; the next run arrives on each stream.
        first.turn(fake(text="third run"))
        assert "third run" in until_completed(a1)[0].payload.prompt
        assert "third run" in until_completed(a2)[0].payload.prompt
        for sub in (a1, a2, b1):
            sub.close()
            assert sub.outcome == "explicit_close"
            assert list(sub) == []


def test_close_is_sent_once_and_ends_the_iteration(backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    with tapped(backend, path) as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        sub.close()
        sub.close()
        assert sub.closed and sub.outcome == "explicit_close"
        assert sub.terminal_outcome == {
            "ended": True, "outcome": "explicit_close", "session_id": session.id, "stream_id": sub.stream_id,
        }  # fmt: skip
        session.turn(fake(text="after the close"))
        assert list(sub) == []
        messages = wire(path)
        closes = [m for m in messages if m.get("method") == "session/stream_close"]
        assert len(closes) == 1
        answer = next(m for m in messages if m.get("id") == closes[0]["id"] and m["dir"] == "<")
        assert answer["result"] == {"already_closed": False, "closed": True, "stream_id": sub.stream_id}
        assert not stream_events(messages, sub.stream_id)  # nothing after the close


def test_server_side_close_rules(backend: Backend) -> None:
    """The raw close results the scripted runtime must reproduce (PROTOCOL.md §4.10, probe §2)."""
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        sub.close()

        def close(stream_id: str) -> Any:
            return client._call("session/stream_close", {"stream_id": stream_id}, 10.0)

        assert close(sub.stream_id)["already_closed"] is True  # ended: recognised once
        assert close(sub.stream_id)["already_closed"] is False
        never = str(uuid.uuid4())
        assert close(never) == {"already_closed": False, "closed": True, "stream_id": never}
        with pytest.raises(MeerkatError) as bad:
            close("not-a-uuid")
        assert bad.value.rpc_code == -32602 and bad.value.message == "Invalid stream_id: not-a-uuid"
        opened = client._call("session/stream_open", {"session_id": session.id}, 10.0)
        assert sorted(opened) == ["opened", "session_id", "stream_id"] and opened["opened"] is True
        close(opened["stream_id"])


def test_leaving_the_with_block_closes(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        with session.subscribe_events() as sub:
            pass
        assert sub.outcome == "explicit_close"
        with pytest.raises(KeyError), session.subscribe_events() as other:
            raise KeyError("the block's own error wins")
        assert other.outcome == "explicit_close"


def test_archive_ends_the_stream_with_remote_end_before_its_response(
    backend: Backend, tmp_path: Path
) -> None:
    path = tmp_path / "wire.jsonl"
    with tapped(backend, path) as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        session.archive()
        assert list(sub) == []
        assert sub.outcome == "remote_end" and sub.error is None
        sub.close()  # nothing left to close
        messages = wire(path)
        archive = next(m for m in messages if m.get("method") == "session/archive")
        ends = [i for i, m in enumerate(messages) if m.get("method") == "session/stream_end"]
        answer = next(i for i, m in enumerate(messages) if m.get("id") == archive["id"] and m["dir"] == "<")
        assert len(ends) == 1 and ends[0] < answer
        assert messages[ends[0]]["params"]["outcome"] == "remote_end"
        assert not [m for m in messages if m.get("method") == "session/stream_close"]
        with pytest.raises(MeerkatError) as again:
            session.subscribe_events()
        assert again.value.code == "SESSION_NOT_LIVE"


def test_sessions_without_a_live_runtime_cannot_be_subscribed(backend: Backend) -> None:
    with backend.connect() as client:
        deferred = client.create_deferred_session(fake(text="later"))
        with pytest.raises(MeerkatError) as not_live:
            deferred.subscribe_events()
        assert not_live.value.code == "SESSION_NOT_LIVE" and not_live.value.rpc_code == -32602
        assert "run a turn on it first" in not_live.value.message
        assert "stream not found" in not_live.value.details["rpc_message"]
        with pytest.raises(SessionNotFoundError) as unknown:
            client.subscribe_session_events(str(uuid.uuid4()))
        assert unknown.value.rpc_code == -32001
        deferred.start_turn(fake(text="now"))
        deferred.subscribe_events().close()  # live now


def test_a_burst_overflows_the_servers_stream_queue(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        result = session.turn(fake(bulk={"count": 3000, "delta": "x"}))
        assert result.text == "x" * 3000  # the run is unaffected
        events = list(sub)
        assert 0 < len(events) < 3000
        assert sub.outcome == "terminal_error"
        assert sub.error is not None and sub.error.code == "stream_queue_overflow"
        assert sub.error.details == {
            "code": "stream_queue_overflow",
            "message": "transport stream notification queue overflow",
        }
        assert "subscribe again" in sub.error.message
        sub.close()  # already ended: nothing sent, nothing raised
        with session.subscribe_events() as fresh:  # a new subscription gets the next run
            session.turn(fake(text="calm"))
            assert until_completed(fresh)[-1].payload.result == "calm"


def test_a_slow_consumer_loses_newest_deltas_then_sees_how_many(backend: Backend) -> None:
    with backend.connect(stream_buffer=5) as client:
        session = client.create_session(fake(text="x"))
        with session.subscribe_events() as sub:
            chunks = [f"{i} " for i in range(40)]
            session.turn(fake(text="".join(chunks), chunks=chunks))  # nothing read meanwhile
            events = []
            for event in sub:
                events.append(event)
                if isinstance(event, RunCompleted):
                    break
        deltas = [e for e in events if isinstance(e, TextDelta)]
        cuts = [e for e in events if isinstance(e, StreamTruncated)]
        assert len(cuts) == 1 and cuts[0].dropped > 0
        assert len(deltas) + cuts[0].dropped == 40
        assert [d.delta for d in deltas] == chunks[: len(deltas)]  # the newest were dropped
        assert type(events[-1]).__name__ == "RunCompleted"  # lifecycle events always pass


def test_waiting_for_an_event_is_bounded_and_the_subscription_survives(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        with session.subscribe_events(idle_timeout=0.3) as sub:
            started = time.monotonic()
            with pytest.raises(MeerkatTimeoutError, match="idle_timeout"):
                next(sub)
            assert time.monotonic() - started < 5
            session.turn(fake(text="y"))
            assert isinstance(next(sub), RunStarted)


def test_close_from_another_thread_ends_a_waiting_iteration(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        seen: List[Any] = []
        reader = threading.Thread(target=lambda: seen.extend(sub))
        reader.start()
        time.sleep(0.2)  # let it block in the wait
        sub.close()
        reader.join(5)
        assert not reader.is_alive() and seen == []


# --- scripted runtime only ------------------------------------------------------------------


def test_the_childs_death_ends_iteration_with_its_error() -> None:
    with scripted_client(**TIMEOUTS) as client:
        session = client.create_session(fake(text="x"))
        sub = session.subscribe_events()
        other = session.subscribe_events()
        with pytest.raises(MeerkatError):
            session.turn(fake(text="boom", exit_after_events=2))
        events: List[Any] = []
        with pytest.raises(MeerkatError) as died:
            for event in sub:
                events.append(event)
        assert died.value.code == "CONNECTION_CLOSED"
        assert events and isinstance(events[0], RunStarted)  # what arrived first is kept
        assert list(sub) == []
        other.close()  # the connection is gone: nothing to close, nothing raised


def test_closing_the_client_ends_every_subscription() -> None:
    client = scripted_client(**TIMEOUTS).connect()
    session = client.create_session(fake(text="x"))
    sub = session.subscribe_events()
    errors: List[MeerkatError] = []

    def read() -> None:
        try:
            list(sub)
        except MeerkatError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    client.close()
    reader.join(5)
    assert not reader.is_alive() and [e.code for e in errors] == ["CLIENT_CLOSED"]


def test_bad_input_and_missing_method_fail_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    with tapped(Backend("scripted", scripted_client), path) as client:
        for bad in (None, 42, "", "   "):
            with pytest.raises(MeerkatError) as caught:
                client.subscribe_session_events(bad)  # type: ignore[arg-type]
            assert caught.value.code == "INVALID_ARGS"
        session = client.create_session(fake(text="x"))
        with pytest.raises(MeerkatError) as caught:
            session.subscribe_events(idle_timeout=-1)
        assert caught.value.code == "INVALID_ARGS"
        assert not [m for m in wire(path) if m.get("method") == "session/stream_open"]
    with scripted_client(args=["--without-method", "session/stream_open"], **TIMEOUTS) as client:
        session = client.create_session(fake(text="x"))
        with pytest.raises(CapabilityUnavailableError):
            session.subscribe_events()


def test_an_abandoned_subscription_is_closed_on_the_server(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    with tapped(Backend("scripted", scripted_client), path) as client:
        session = client.create_session(fake(text="x"))
        stream_id = session.subscribe_events().stream_id  # dropped at once
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            closes = [m for m in wire(path) if m.get("method") == "session/stream_close"]
            if closes:
                break
            time.sleep(0.05)
        assert [c["params"]["stream_id"] for c in closes] == [stream_id]


# --- orders the runtimes do not produce on their own: a stand-in server -------------------

STAND_IN = r"""
import json, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

def event(stream_id, n, method="session/stream_event", attributed=False):
    envelope = {"event_id": f"e{n}", "seq": n, "source_id": "session:s", "timestamp_ms": 1,
                "payload": {"type": "text_delta", "delta": f"d{n}"}}
    body = {"source": "w-1", "profile": "w", "envelope": envelope} if attributed else envelope
    send({"jsonrpc": "2.0", "method": method,
          "params": {"stream_id": stream_id, "sequence": n, "event": body}})

def end(stream_id, outcome, method="session/stream_end"):
    send({"jsonrpc": "2.0", "method": method,
          "params": {"stream_id": stream_id, "ended": True, "outcome": outcome}})

METHODS = ["session/stream_open", "session/stream_close", "mob/stream_open", "mob/stream_close"]
for raw in sys.stdin:
    message = json.loads(raw)
    rid, method, params = message.get("id"), message.get("method"), message.get("params") or {}
    if rid is None:
        continue
    result = None
    if method == "initialize":
        result = {"server_info": {"name": "meerkat-rpc", "version": "0.5.0"},
                  "contract_version": "0.5.0", "methods": METHODS}
    elif method == "capabilities/get":
        result = {"contract_version": {"major": 0, "minor": 5, "patch": 0}, "capabilities": []}
    elif method == "session/stream_open":
        sid = "stream-" + params["session_id"]
        event("unknown-stream", 99)                 # nobody's: dropped
        if params["session_id"] == "early":
            event(sid, 1)
            event(sid, 2)                           # both before the response
        elif params["session_id"] == "ended":
            end(sid, "remote_end")                  # over before it was opened
        opened = {"opened": True, "session_id": params["session_id"], "stream_id": sid}
        send({"jsonrpc": "2.0", "id": rid, "result": opened})
        if params["session_id"] == "early":
            event(sid, 3)
        continue
    elif method == "session/stream_close":
        end(params["stream_id"], "explicit_close")  # the end before the close response
        result = {"already_closed": False, "closed": True, "stream_id": params["stream_id"]}
    elif method == "mob/stream_open":
        sid = "mob-stream"
        send({"jsonrpc": "2.0", "id": rid, "result": {"opened": True, "stream_id": sid}})
        event(sid, 1, "mob/stream_event", attributed=True)
        event(sid, 2, "mob/stream_event")
        end(sid, "remote_end", "mob/stream_end")
        continue
    send({"jsonrpc": "2.0", "id": rid, "result": result})
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[MeerkatClient]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN, encoding="utf-8")
    with MeerkatClient(command=[sys.executable, str(script)], **TIMEOUTS) as client:
        yield client


def test_events_before_the_open_response_belong_to_the_stream(stand_in: MeerkatClient) -> None:
    with stand_in.subscribe_session_events("early", idle_timeout=5) as sub:
        assert sub.stream_id == "stream-early"
        got = [next(sub), next(sub), next(sub)]
        assert [e.delta for e in got if isinstance(e, TextDelta)] == ["d1", "d2", "d3"]
    assert sub.outcome == "explicit_close"  # its end came before the close response


def test_an_end_before_the_open_response_is_kept(stand_in: MeerkatClient) -> None:
    sub = stand_in.subscribe_session_events("ended", idle_timeout=5)
    assert list(sub) == [] and sub.outcome == "remote_end" and sub.closed


def test_mob_streams_yield_attributed_events(stand_in: MeerkatClient) -> None:
    sub = stand_in._open_subscription(
        "mob/stream_open", {"mob_id": "m"}, close_method="mob/stream_close", idle_timeout=5
    )
    assert sub.session_id is None
    first, second = list(sub.attributed())
    assert (first.source, first.profile, first.envelope.seq) == ("w-1", "w", 1)
    assert isinstance(first.event, TextDelta) and first.event.delta == "d1"
    assert (second.source, second.profile, second.envelope.event_id) == ("", "", "e2")
    assert sub.outcome == "remote_end"
