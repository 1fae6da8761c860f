"""Handshake, lifecycle and every client/session method against the scripted runtime."""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from typing import List

import pytest
from conftest import busy_threads, fake, hang_in_background

from meerkat_sync import (
    CONTRACT_VERSION,
    BlockAssistantMessage,
    CapabilityUnavailableError,
    DeferredSession,
    MeerkatClient,
    MeerkatError,
    RunResult,
    Session,
    SessionNotFoundError,
    SkillKey,
    TextDelta,
    UserMessage,
)
from meerkat_sync.testing import scripted_client


def test_handshake_reads_version_and_capabilities(client: MeerkatClient) -> None:
    assert client.server_version == "0.5.0"
    ids = [c.id for c in client.capabilities]
    assert ids[:2] == ["sessions", "streaming"]
    assert client.has_capability("sessions")
    builtins = next(c for c in client.capabilities if c.id == "builtins")
    assert builtins.status == "DisabledByPolicy" and not builtins.available
    assert not client.has_capability("builtins")
    assert client.has_capability("mob")  # mob methods are advertised by initialize
    client.require_capability("sessions")
    with pytest.raises(CapabilityUnavailableError) as info:
        client.require_capability("builtins")
    assert info.value.code == "CAPABILITY_UNAVAILABLE" and "DisabledByPolicy" in info.value.message


def test_version_mismatch_is_refused_and_the_child_is_stopped() -> None:
    c = scripted_client(args=["--contract-version", "0.6.0"])
    with pytest.raises(MeerkatError) as info:
        c.connect()
    assert info.value.code == "VERSION_MISMATCH"
    assert "0.6.0" in info.value.message and CONTRACT_VERSION in info.value.message
    assert c.closed and c.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(c.pid, 0)


@pytest.mark.parametrize("version", ["0.5.7", "0.5.0"])
def test_same_minor_is_compatible(version: str) -> None:
    with scripted_client(args=["--contract-version", version]) as c:
        assert c.create_session("hi").text == "Echo: hi"


def test_realm_with_isolated_is_rejected_before_spawning() -> None:
    c = scripted_client()
    with pytest.raises(MeerkatError) as info:
        c.connect(realm_id="team", isolated=True)
    assert info.value.code == "INVALID_ARGS"
    assert c.pid is None  # nothing was spawned


def test_realm_id_is_passed_and_shows_in_session_ref() -> None:
    with scripted_client().connect(realm_id="team-alpha") as c:
        session = c.create_session("hi")
        assert session.ref == f"team-alpha:{session.id}"


def test_not_connected_and_closed_states() -> None:
    c = scripted_client()
    with pytest.raises(MeerkatError) as info:
        c.list_sessions()
    assert info.value.code == "NOT_CONNECTED"
    c.connect()
    pid = c.pid
    assert pid is not None
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(MeerkatError) as info:
        c.list_sessions()
    assert info.value.code == "CLIENT_CLOSED"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_call_after_close_says_the_client_is_closed() -> None:
    c = scripted_client().connect()
    session = c.create_session("hi")
    c.close()
    calls = {
        "list_sessions": c.list_sessions,
        "read_session": lambda: c.read_session(session.id),
        "turn": lambda: session.turn("again"),
        "stream": lambda: session.stream("again").collect(),
        "create_session": lambda: c.create_session("new"),
    }
    for name, call in calls.items():
        with pytest.raises(MeerkatError) as info:
            call()
        assert info.value.code == "CLIENT_CLOSED", name
        assert "this client was closed; create a new MeerkatClient" in info.value.message, name
        assert "waiting" not in info.value.message, name


def test_close_wakes_a_waiting_turn_with_client_closed() -> None:
    c = scripted_client().connect()
    session = c.create_session("hi")
    t, errors = hang_in_background(session)
    started = time.monotonic()
    c.close()
    t.join(5)
    assert [e.code for e in errors] == ["CLIENT_CLOSED"]
    assert "closed while this call was waiting" in errors[0].message
    assert time.monotonic() - started < 5


def test_close_settles_every_waiting_turn_before_it_cancels_them() -> None:
    # close() also cancels the turns on the server; the cancel's answer
    # (REQUEST_CANCELLED) must never reach a waiter first, even when busy threads delay
    # close() between the two. (When the cancels went first, most rounds here failed.)
    with busy_threads():
        for _ in range(3):
            c = scripted_client().connect()
            codes: List[str] = []

            def wait(session: Session, codes: List[str]) -> None:
                try:
                    session.turn(fake(hang=True))
                except MeerkatError as exc:
                    codes.append(exc.code)

            waiters = [
                threading.Thread(target=wait, args=(c.create_session("hi"), codes)) for _ in range(32)
            ]
            for thread in waiters:
                thread.start()
            time.sleep(0.5)  # every turn has been sent
            c.close()
            for thread in waiters:
                thread.join(10)
            assert codes == ["CLIENT_CLOSED"] * 32


def test_create_session_turn_and_session_state(client: MeerkatClient) -> None:
    session = client.create_session(fake(text="first answer", usage={"input_tokens": 7, "output_tokens": 3}))
    assert isinstance(session, Session)
    assert session.text == "first answer"
    assert session.usage.input_tokens == 7 and session.usage.total_tokens == 10
    assert session.turns == 1 and session.tool_calls == 0
    assert session.ref is not None and session.ref.endswith(session.id)
    result = session.turn("Follow up")
    assert isinstance(result, RunResult)
    assert result.text == "Echo: Follow up" and result.session_id == session.id
    assert session.last_result == result and session.text == "Echo: Follow up"


def test_tool_calls_and_structured_output(client: MeerkatClient) -> None:
    session = client.create_session(
        fake(
            text="done",
            tool_calls=[{"name": "calc", "args": {"expr": "2+2"}, "result": "4"}],
            structured_output={"answer": 4},
        ),
        output_schema={"type": "object", "properties": {"answer": {"type": "integer"}}},
    )
    assert session.tool_calls == 1 and session.turns == 3  # tools, answer, JSON extraction
    assert session.structured_output == {"answer": 4}


def test_stream_collect_and_collect_text(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    text, result = session.stream(fake(chunks=["a", "b", "c"])).collect_text()
    assert text == "abc" and result.text == "abc"
    result = session.stream(fake(chunks=["x", "y"])).collect()
    assert result.text == "xy" and session.text == "xy"


def test_stream_result_before_consumption_is_an_error(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    stream = session.stream("again")
    with pytest.raises(MeerkatError) as info:
        _ = stream.result
    assert info.value.code == "STREAM_NOT_CONSUMED"
    with stream:
        first = next(iter(stream))
        assert first.type == "run_started"
        with pytest.raises(MeerkatError):
            _ = stream.result


def test_envelopes_carry_delivery_metadata(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    stream = session.stream(fake(chunks=["a", "b"]))
    with stream:
        envelopes = list(stream.envelopes())
    seqs = [e.seq for e in envelopes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.source_id == f"session:{session.id}" and e.event_id for e in envelopes)
    assert [e.payload.delta for e in envelopes if isinstance(e.payload, TextDelta)] == ["a", "b"]
    assert stream.result.text == "ab"


def test_streaming_create_exposes_the_new_session(client: MeerkatClient) -> None:
    stream = client.create_session_streaming(fake(chunks=["new ", "session"]))
    assert stream.session is None
    text, result = stream.collect_text()
    assert text == "new session"
    assert stream.session_id == result.session_id
    assert stream.session is not None and stream.session.id == result.session_id
    assert stream.session.turn("more").text == "Echo: more"


def test_deferred_session_merges_the_create_prompt(client: MeerkatClient) -> None:
    deferred = client.create_deferred_session("Define 'meerkat'")
    assert isinstance(deferred, DeferredSession)
    info = client.read_session(deferred.id)
    assert info.message_count == 0 and not info.is_active
    assert deferred.history().messages == []
    result = deferred.start_turn("Be brief.")
    assert result.text == "Echo: Define 'meerkat'\n\nBe brief."
    assert deferred.text == result.text
    assert deferred.turn("again").text == "Echo: again"


def test_deferred_first_turn_can_stream(client: MeerkatClient) -> None:
    deferred = client.create_deferred_session("Part one")
    events = list(deferred.stream("part two"))
    assert events[0].type == "run_started" and events[-1].type == "run_completed"


def test_list_read_history_archive(client: MeerkatClient) -> None:
    a = client.create_session("alpha", labels={"team": "red"})
    b = client.create_session("beta", labels={"team": "blue"})
    ids = {s.session_id for s in client.list_sessions()}
    assert {a.id, b.id} <= ids
    red = client.list_sessions(labels={"team": "red"})
    assert [s.session_id for s in red] == [a.id] and red[0].labels == {"team": "red"}
    info = client.read_session(a.id)
    assert info.session_id == a.id and info.last_assistant_text == "Echo: alpha"
    assert isinstance(info.created_at, int) and info.model
    history = a.history()
    assert history.message_count == 3 and not history.has_more  # the system message comes first
    assert isinstance(history.messages[1], UserMessage) and history.messages[1].content == "alpha"
    assert isinstance(history.messages[2], BlockAssistantMessage)
    assert history.messages[2].text == "Echo: alpha"
    page = a.history(offset=1, limit=1)
    assert page.offset == 1 and page.limit == 1 and len(page.messages) == 1
    a.archive()
    # An archived session stays readable but is no longer listed.
    assert client.read_session(a.id).last_assistant_text == "Echo: alpha"
    assert client.list_sessions(labels={"team": "red"}) == []
    with pytest.raises(SessionNotFoundError) as info_err:
        client.read_session(str(uuid.uuid4()))
    assert info_err.value.code == "SESSION_NOT_FOUND" and info_err.value.rpc_code == -32001
    # A turn on an archived session fails inside the run: -32603 "turn abandoned".
    with pytest.raises(MeerkatError) as turn_err:
        a.turn("still there?")
    assert turn_err.value.rpc_code == -32603 and "session not found" in turn_err.value.message.lower()


def test_attach_to_an_existing_session_by_id(client: MeerkatClient) -> None:
    original = client.create_session("remember me")
    again = client.session(original.id)
    assert again.text == ""  # nothing ran through this handle yet
    assert again.turn("hello again").text == "Echo: hello again"
    assert client.session(original.ref or "").turn("by ref").session_id == original.id


def test_interrupt_stops_a_running_turn(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    t, errors = hang_in_background(session)
    session.interrupt()
    t.join(5)
    assert not t.is_alive()
    assert errors and errors[0].code == "INTERRUPTED" and "cancelled" in errors[0].message.lower()
    assert session.turn("after").text == "Echo: after"


def test_skill_refs_structured_and_legacy(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    key = SkillKey(source_uuid="dc256086-0d2f-4f61-a307-0b0c1b5f1a2e", skill_name="code-review")
    assert session.invoke_skill(key, "review this").text == "Echo: review this"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.turn("legacy", skill_refs=["dc256086-0d2f-4f61-a307-0b0c1b5f1a2e/code-review"])
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_image_blocks_get_the_source_the_server_requires(client: MeerkatClient) -> None:
    session = client.create_session(
        [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image", "media_type": "image/png", "data": "iVBORw0KGgo="},
        ]
    )
    assert "What is in this picture?" in session.text
    history = session.history()
    blocks = history.messages[1].content  # type: ignore[attr-defined]
    assert blocks[1]["source"] == "blob" and blocks[1]["blob_id"].startswith("sha256:")
