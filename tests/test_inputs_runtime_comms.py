"""Session inputs, runtime, comms and blobs: inject_context, external events, runtime/*, input/*,
comms/* and blob/get, end to end on the scripted runtime and (``backend``) the real rkat-rpc.

A run started by an external event or ``runtime_accept`` answers nobody; a ``turn`` sent
after it queues behind it (one input at a time, in order), so when that turn returns the
earlier run has finished: that is how these tests wait, without polling.
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from typing import Any, Dict, List

import pytest
from conftest import Backend

from meerkat_sync import (
    BlobPayload,
    CapabilityUnavailableError,
    InjectContextResult,
    MeerkatClient,
    MeerkatError,
    RuntimeAcceptResult,
    RuntimeResetResult,
    RuntimeRetireResult,
    RuntimeStateResult,
    SessionNotFoundError,
    UserMessage,
)
from meerkat_sync.testing import scripted_client

UNKNOWN = "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
CONTEXT_HEADING = "\n\n---\n\n[Runtime System Context]\n"
SLOW = 'fake:{"delay_ms":3000,"text":"slow"}'  # long enough to be still running on a loaded machine


def prompt_input(text: str, input_id: str = "") -> Dict[str, Any]:
    """A minimal runtime Input for ``runtime_accept`` (PROTOCOL.md §4.15)."""
    return {
        "input_type": "prompt",
        "text": text,
        "header": {
            "id": input_id or str(uuid.uuid4()),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": {"type": "operator"},
            "durability": "durable",
            "visibility": {"transcript_eligible": True, "operator_eligible": True},
        },
    }


def user_texts(client: MeerkatClient, session_id: str) -> List[Any]:
    return [m.content for m in client.read_session_history(session_id).messages if isinstance(m, UserMessage)]


# --- inject_context ---------------------------------------------------------------------------


def test_inject_context_stages_dedupes_and_conflicts(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        first = session.inject_context("CTX-ONE", source="probe", idempotency_key="k1")
        assert first == InjectContextResult(status="staged") and not first.duplicate
        again = client.inject_context(session.id, "CTX-ONE", source="probe", idempotency_key="k1")
        assert again.status == "duplicate" and again.duplicate
        with pytest.raises(MeerkatError) as info:
            session.inject_context("CTX-TWO", source="probe", idempotency_key="k1")
        assert info.value.code == "IDEMPOTENCY_CONFLICT" and info.value.rpc_code == -32602
        assert "'k1'" in info.value.message
        with pytest.raises(MeerkatError) as info:  # another source is a conflict too
            session.inject_context("CTX-ONE", source="other", idempotency_key="k1")
        assert info.value.code == "IDEMPOTENCY_CONFLICT"
        assert session.inject_context("CTX-NOSRC").status == "staged"
        before = len(backend.model.requests) if backend.model else 0
        session.turn('fake:{"tool_calls":[{"name":"datetime","args":{}}],"text":"done"}')
        after = session.turn("next").text
        assert after == "Echo: next"
        if backend.model is not None:  # the real runtime shows it to the next run's first call only
            first_call, second_call, next_run = backend.model.requests[before : before + 3]
            assert first_call.system.endswith(
                f"{CONTEXT_HEADING}source: probe\n\nCTX-ONE{CONTEXT_HEADING}\nCTX-NOSRC"
            )
            assert CONTEXT_HEADING not in second_call.system and CONTEXT_HEADING not in next_run.system
        # The system message of the transcript is not changed, and the key stays used.
        system = client.read_session_history(session.id).messages[0]
        assert "CTX-ONE" not in str(system)
        assert session.inject_context("CTX-ONE", source="probe", idempotency_key="k1").duplicate


def test_inject_context_on_pending_and_unknown_sessions(backend: Backend) -> None:
    with backend.connect() as client:
        pending = client.create_deferred_session("later")
        assert pending.inject_context("PENDING-CTX").status == "staged"
        with pytest.raises(SessionNotFoundError) as info:
            client.inject_context(UNKNOWN, "x")
        assert info.value.rpc_code == -32001 and UNKNOWN in info.value.message


def test_blank_context_text_is_refused_by_both_the_client_and_the_server(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        with pytest.raises(MeerkatError) as info:
            session.inject_context("  ")
        assert info.value.code == "INVALID_ARGS"
        # The server's own answer, for clients that skip the check (the scripted runtime matches).
        with pytest.raises(MeerkatError) as info:
            client._call("session/inject_context", {"session_id": session.id, "text": "  "}, 10)
        assert (info.value.rpc_code, info.value.message) == (-32602, "system context text must not be empty")


# --- external events --------------------------------------------------------------------------


def test_external_event_runs_with_the_event_name_not_its_payload(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        before = len(backend.model.requests) if backend.model else 0
        result = client.send_external_event(session.id, {"kind": "ping", "n": 1}, source="webhook-x")
        assert isinstance(result, RuntimeAcceptResult) and result.accepted
        assert result.policy is not None and result.policy["wake_mode"] == "wake_if_idle"
        assert result.state is not None and result.state["input_id"] == result.input_id
        persisted = result.state["persisted_input"]
        assert persisted["input_type"] == "external_event"
        assert persisted["payload"] == {"kind": "ping", "n": 1}
        assert persisted["header"]["source"] == {"type": "external", "source_name": "webhook-x"}
        session.turn("after")  # queued behind the event's run
        assert user_texts(client, session.id)[-2:] == ["[EVENT via webhook-x]", "after"]
        state = client.input_state(session.id, str(result.input_id))
        assert state is not None and state["current_state"] == "consumed"
        assert state["terminal_outcome"] == {"outcome_type": "consumed"}
        if backend.model is not None:
            event_call = backend.model.requests[before]
            assert event_call.messages[-1] == {"role": "user", "content": "[EVENT via webhook-x]"}
            assert "ping" not in json.dumps(event_call.messages)


def test_external_event_default_source_pending_session_and_errors(backend: Backend) -> None:
    with backend.connect() as client:
        pending = client.create_deferred_session("PENDING")
        assert client.send_external_event(pending.id, "text payload").accepted
        client.session(pending.id).turn("then")
        # The deferred create prompt is merged into the event's run.
        assert user_texts(client, pending.id) == ["PENDING\n\n[EVENT via rpc]", "then"]
        with pytest.raises(SessionNotFoundError) as info:
            client.send_external_event(UNKNOWN, {})
        assert info.value.message == f"session not found: {UNKNOWN}"  # lower case here


def test_external_event_while_busy_waits_its_turn(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        stream = session.stream(SLOW)
        events = iter(stream)
        next(events)  # run_started: the slow turn is running
        result = client.send_external_event(session.id, 1, source="busy")
        assert result.policy is not None and result.policy["wake_mode"] == "none"
        # The real 0.5.0 says "running" or "attached" here (both seen, 5 runs of this test):
        # its state does not reliably show a turn/start run.
        assert client.runtime_state(session.id).state in ("running", "attached")
        assert client.input_list(session.id)[-1] == result.input_id
        for _ in events:
            pass
        assert stream.result.text == "slow"
        session.turn("last")
        assert user_texts(client, session.id)[-3:] == [SLOW, "[EVENT via busy]", "last"]


def test_external_event_params_the_server_cannot_tie_to_a_request() -> None:
    """A missing payload is answered with ``id: null``; the client fails the oldest such call."""
    with scripted_client(request_timeout=10) as client:
        session = client.create_session("hi")
        with pytest.raises(MeerkatError) as info:
            client._call("session/external_event", {"session_id": session.id}, 10)
        assert info.value.rpc_code == -32602 and "missing field `payload`" in info.value.message


# --- runtime and input ledger -----------------------------------------------------------------


def test_runtime_accept_runs_once_and_a_resent_header_id_is_stuck(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        assert client.runtime_state(session.id) == RuntimeStateResult(state="attached")
        assert client.input_list(session.id) == []
        item = prompt_input("via runtime/accept")
        result = client.runtime_accept(session.id, item)
        assert result.accepted and result.input_id == item["header"]["id"]
        assert result.state is not None and result.state["persisted_input"]["text"] == "via runtime/accept"
        session.turn("after")
        assert user_texts(client, session.id)[-2:] == ["via runtime/accept", "after"]
        again = client.runtime_accept(session.id, item)  # no dedupe on header.id at 0.5.0
        assert again.outcome_type == "accepted" and again.state is not None
        assert again.state["current_state"] == "accepted"
        assert client.input_list(session.id) == [item["header"]["id"]]
        session.turn("still works")
        assert user_texts(client, session.id)[-1] == "still works"  # the stuck input never ran
        assert client.runtime_reset(session.id) == RuntimeResetResult(inputs_abandoned=1)
        assert client.input_list(session.id) == []
        assert client.runtime_state(session.id).state == "idle"
        with pytest.raises(MeerkatError) as info:
            client.runtime_accept(session.id, {"input_type": "bogus"})
        assert info.value.rpc_code == -32602 and "unknown variant `bogus`" in info.value.message
        with pytest.raises(MeerkatError) as info:
            client.runtime_accept(session.id, {"input_type": "prompt", "text": "x"})
        assert info.value.message == "missing field `header`"


def test_retire_refuses_input_until_reset(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        retired = client.runtime_retire(session.id)
        assert retired == RuntimeRetireResult(inputs_abandoned=0, inputs_pending_drain=0)
        assert client.runtime_state(session.id).state == "retired"
        for attempt in ("after retire", "again"):  # a refused turn does not undo the retirement
            with pytest.raises(MeerkatError) as info:
                session.turn(attempt)
            assert info.value.code == "RUNTIME_NOT_READY" and info.value.rpc_code == -32603
            message = info.value.message
            assert message.startswith("Runtime not ready: retired (") and "runtime_reset" in message
            assert info.value.details["rpc_message"] == "runtime accept failed: Runtime not ready: retired"
            assert client.runtime_state(session.id).state == "retired"
        rejected = client.runtime_accept(session.id, prompt_input("x"))
        assert rejected.outcome_type == "rejected" and not rejected.accepted
        assert rejected.reason == "runtime not accepting input while in state: retired"
        with pytest.raises(MeerkatError) as info:
            client.send_external_event(session.id, {})
        assert info.value.code == "RUNTIME_NOT_READY"
        assert session.inject_context("still staged").status == "staged"
        with pytest.raises(MeerkatError) as info:
            client.runtime_retire(session.id)
        assert info.value.rpc_code == -32602 and "retired -> retired" in info.value.message
        assert client.runtime_reset(session.id).inputs_abandoned == 0
        assert client.runtime_state(session.id).state == "idle"
        assert session.turn("after reset").text == "Echo: after reset"


def test_input_state_of_a_turn_and_of_unknown_inputs(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session("hello")
        assert client.input_state(session.id, UNKNOWN) is None
        with pytest.raises(MeerkatError) as info:
            client.input_state(session.id, "not-a-uuid")
        assert (info.value.rpc_code, info.value.message) == (-32602, "Invalid input ID")
        for method in (client.runtime_state, client.runtime_retire, client.runtime_reset, client.input_list):
            with pytest.raises(SessionNotFoundError):
                method(UNKNOWN)
        result = client.send_external_event(session.id, {}, source="s")
        session.turn("x")
        state = client.input_state(session.id, str(result.input_id))
        assert state is not None
        steps = [(h["from"], h["to"]) for h in state["history"]]
        assert steps == [
            ("accepted", "queued"),
            ("queued", "staged"),
            ("staged", "applied"),
            ("applied", "applied_pending_consumption"),
            ("applied_pending_consumption", "consumed"),
        ]
        assert state["last_run_id"] in state["history"][1]["reason"]


# --- blobs and history ------------------------------------------------------------------------


def test_image_blob_from_the_history(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(
            [{"type": "text", "text": "look"}, {"type": "image", "media_type": "image/png", "data": PNG}]
        )
        history = client.read_session_history(session.id)
        assert history == session.history()
        page = client.read_session_history(session.id, offset=1, limit=1)
        assert page.limit == 1 and page.has_more and len(page.messages) == 1
        user = page.messages[0]
        assert isinstance(user, UserMessage) and isinstance(user.content, list)
        image = next(b for b in user.content if b["type"] == "image")
        assert image["source"] == "blob" and image["blob_id"].startswith("sha256:")
        blob = client.get_blob(image["blob_id"])
        assert blob == BlobPayload(blob_id=image["blob_id"], media_type="image/png", data=PNG)
        assert blob.data_base64 == PNG and blob.decode() == base64.b64decode(PNG)
        with pytest.raises(MeerkatError) as info:
            client.get_blob("sha256:00")
        assert (info.value.rpc_code, info.value.message) == (-32602, "blob not found: sha256:00")


# --- comms ------------------------------------------------------------------------------------


def test_comms_on_a_lone_process(backend: Backend) -> None:
    with backend.connect() as client:
        plain = client.create_session("no comms")
        with pytest.raises(MeerkatError) as info:
            plain.peers()
        assert info.value.rpc_code == -32602 and "comms not enabled" in info.value.message
        alice = client.create_session("I am alice", comms_name="alice")
        client.create_session("I am bob", comms_name="bob")
        assert alice.peers() == [] and client.peers(alice.id) == {"peers": []}  # they do not see each other
        with pytest.raises(MeerkatError) as info:
            alice.send(kind="peer_message", to="bob", body="hi bob")
        assert info.value.code == "PEER_NOT_FOUND_OR_NOT_TRUSTED" and info.value.rpc_code == -32603
        assert info.value.data["peer"] == "bob"
        assert info.value.message == "peer 'bob' is not found or not trusted"
        with pytest.raises(MeerkatError) as info:
            alice.send(kind="input", body="self input")
        assert info.value.code == "SEND_FAILED" and "allow_self_session" in info.value.message
        receipt = client.send(alice.id, kind="input", body="self input", allow_self_session=True)
        assert receipt["kind"] == "input_accepted" and receipt["stream_reserved"] is False
        with pytest.raises(MeerkatError) as info:
            alice.send(kind="peer_request", to="bob")
        assert info.value.code == "INVALID_COMMAND" and info.value.rpc_code == -32602
        assert info.value.data["details"] == [{"field": "intent", "issue": "required_field"}]
        assert info.value.message == "Command validation failed: intent: required_field"
        with pytest.raises(MeerkatError) as info:
            alice.send(kind="peer_response", to="bob", in_reply_to="zz")
        assert info.value.data["details"] == [{"field": "in_reply_to", "got": "zz", "issue": "invalid_uuid"}]
        with pytest.raises(MeerkatError) as info:
            alice.send(kind="bogus")
        assert info.value.data["details"] == [{"field": "kind", "got": "bogus", "issue": "unknown_kind"}]
        alice.archive()
        with pytest.raises(MeerkatError) as info:
            alice.peers()
        assert info.value.message == f"Session is archived: {alice.id}"


# --- bad input and gating ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda c: c.inject_context("", "x"), "session_id"),
        (lambda c: c.inject_context(UNKNOWN, 5), "text"),
        (lambda c: c.inject_context(UNKNOWN, " \n"), "blank"),
        (lambda c: c.inject_context(UNKNOWN, "x", source=1), "source"),
        (lambda c: c.inject_context(UNKNOWN, "x", idempotency_key=b"k"), "idempotency_key"),
        (lambda c: c.send_external_event(UNKNOWN, {"x": object()}), "payload"),
        (lambda c: c.send_external_event(UNKNOWN, float("nan")), "payload"),
        (lambda c: c.send_external_event(UNKNOWN, {}, source=3), "source"),
        (lambda c: c.send_external_event(None, {}), "session_id"),
        (lambda c: c.read_session_history(UNKNOWN, offset=-1), "offset"),
        (lambda c: c.read_session_history(UNKNOWN, limit="all"), "limit"),
        (lambda c: c.get_blob(""), "blob_id"),
        (lambda c: c.runtime_state(""), "session_id"),
        (lambda c: c.runtime_accept(UNKNOWN, {"text": "no type"}), "input_type"),
        (lambda c: c.runtime_accept(UNKNOWN, "prompt"), "input_type"),
        (lambda c: c.input_state(UNKNOWN, None), "input_id"),
        (lambda c: c.input_list(7), "session_id"),
        (lambda c: c.send(UNKNOWN, to="bob"), "kind"),
        (lambda c: c.send(UNKNOWN, kind=1), "kind"),
        (lambda c: c.send(UNKNOWN, kind="input", allow_self_session="yes"), "allow_self_session"),
        (lambda c: c.send(UNKNOWN, kind="peer_message", to="b", bdy="typo"), "bdy"),
        (lambda c: c.send(UNKNOWN, kind="peer_request", to="b", intent="i", params={"x": {1, 2}}), "params"),
        (lambda c: c.session(UNKNOWN).send(session_id=UNKNOWN, kind="input"), "session_id"),
        (lambda c: c.peers(""), "session_id"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(call: Any, needle: str) -> None:
    # Never connected: any call that got as far as sending would fail with NOT_CONNECTED.
    client = scripted_client()
    with pytest.raises(MeerkatError) as info:
        call(client)
    assert info.value.code == "INVALID_ARGS" and needle in info.value.message


@pytest.mark.parametrize(
    "method,call",
    [
        ("session/inject_context", lambda c, s: c.inject_context(s, "x")),
        ("session/external_event", lambda c, s: c.send_external_event(s, {})),
        ("blob/get", lambda c, s: c.get_blob("sha256:00")),
        ("runtime/accept", lambda c, s: c.runtime_accept(s, prompt_input("x"))),
        ("runtime/retire", lambda c, s: c.runtime_retire(s)),
        ("input/state", lambda c, s: c.input_state(s, UNKNOWN)),
        ("comms/send", lambda c, s: c.send(s, kind="input")),
        ("comms/peers", lambda c, s: c.session(s).peers()),
    ],
)
def test_methods_the_server_does_not_list_raise_before_sending(method: str, call: Any) -> None:
    with scripted_client(args=["--without-method", method], request_timeout=10) as client:
        session = client.create_session("hi")
        with pytest.raises(CapabilityUnavailableError) as info:
            call(client, session.id)
        assert method in info.value.message


@pytest.mark.parametrize("status", ["Absent", "DisabledByPolicy"])
def test_comms_needs_the_comms_capability(status: str) -> None:
    with scripted_client(args=["--capability-status", f"comms={status}"], request_timeout=10) as client:
        session = client.create_session("hi", comms_name="alice")
        for call in (lambda: session.send(kind="input"), session.peers, lambda: client.peers(session.id)):
            with pytest.raises(CapabilityUnavailableError) as info:
                call()
            assert "comms" in info.value.message
        assert session.inject_context("not behind comms").status == "staged"
