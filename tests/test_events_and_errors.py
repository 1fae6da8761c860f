"""Every event variant from its 0.5.0 envelope, forward compatibility, error mapping, bad input."""

from __future__ import annotations

import pickle
from typing import Any, Dict

import pytest
from conftest import fake

import meerkat_sync
from meerkat_sync import (
    EVENT_TYPES,
    CapabilityUnavailableError,
    Event,
    MeerkatClient,
    MeerkatError,
    MeerkatTimeoutError,
    SessionNotFoundError,
    SkillKey,
    SkillNotFoundError,
    TextDelta,
    ToolConfigChanged,
    ToolConfigChangedPayload,
    UnknownEvent,
    parse_envelope,
    parse_event,
)
from meerkat_sync.errors import RPC_ERROR_NAMES, error_from_rpc

USAGE = {"input_tokens": 5, "output_tokens": 7, "cache_creation_tokens": None, "cache_read_tokens": 2}
PATCH = {"patch_type": "assistant_text", "text": "rewritten"}

#: One payload per 0.5.0 AgentEvent variant (PROTOCOL.md §6), with every field set.
PAYLOADS: Dict[str, Dict[str, Any]] = {
    "run_started": {"session_id": "s1", "prompt": "hi"},
    "run_completed": {"session_id": "s1", "result": "done", "usage": USAGE},
    "run_failed": {"session_id": "s1", "error": "boom"},
    "hook_started": {"hook_id": "h", "point": "pre_llm_request"},
    "hook_completed": {"hook_id": "h", "point": "pre_llm_request", "duration_ms": 12},
    "hook_failed": {"hook_id": "h", "point": "turn_boundary", "error": "bad"},
    "hook_denied": {
        "hook_id": "h",
        "point": "pre_tool_execution",
        "reason_code": "policy_violation",
        "message": "no",
        "payload": {"why": 1},
    },
    "hook_rewrite_applied": {"hook_id": "h", "point": "post_llm_response", "patch": PATCH},
    "hook_patch_published": {
        "hook_id": "h",
        "point": "run_completed",
        "envelope": {
            "revision": 1,
            "hook_id": "h",
            "point": "run_completed",
            "patch": PATCH,
            "published_at": "2026-03-26T12:00:00Z",
        },
    },
    "turn_started": {"turn_number": 0},
    "reasoning_delta": {"delta": "think"},
    "reasoning_complete": {"content": "thought"},
    "text_delta": {"delta": "Rust is"},
    "text_complete": {"content": "Rust is fast"},
    "tool_call_requested": {"id": "t1", "name": "calc", "args": {"expr": "2+2"}},
    "tool_result_received": {"id": "t1", "name": "calc", "is_error": False},
    "turn_completed": {"stop_reason": "end_turn", "usage": USAGE},
    "tool_execution_started": {"id": "t1", "name": "calc"},
    "tool_execution_completed": {
        "id": "t1",
        "name": "calc",
        "result": "4",
        "is_error": False,
        "duration_ms": 3,
        "has_images": True,
    },
    "tool_execution_timed_out": {"id": "t1", "name": "calc", "timeout_ms": 30000},
    "compaction_started": {"input_tokens": 120000, "estimated_history_tokens": 150000, "message_count": 42},
    "compaction_completed": {"summary_tokens": 2048, "messages_before": 42, "messages_after": 8},
    "compaction_failed": {"error": "llm failed"},
    "budget_warning": {"budget_type": "tokens", "used": 8000, "limit": 10000, "percent": 0.8},
    "retrying": {"attempt": 1, "max_attempts": 3, "error": "rate limited", "delay_ms": 1000},
    "skills_resolved": {"skills": ["a/b"], "injection_bytes": 512},
    "skill_resolution_failed": {"reference": "a/b", "error": "missing"},
    "interaction_complete": {"interaction_id": "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11", "result": "ok"},
    "interaction_failed": {"interaction_id": "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11", "error": "no"},
    "stream_truncated": {"reason": "channel full"},
    "tool_config_changed": {
        "payload": {
            "operation": "add",
            "target": "my-tools",
            "status": "applied",
            "persisted": False,
            "applied_at_turn": 3,
        }
    },
}


def _envelope(payload: Dict[str, Any], seq: int = 1) -> Dict[str, Any]:
    return {
        "event_id": f"e{seq}",
        "source_id": "session:s1",
        "seq": seq,
        "timestamp_ms": 1774526400123,
        "payload": payload,
    }


def test_all_31_variants_are_known() -> None:
    assert len(PAYLOADS) == 31 and set(PAYLOADS) == set(EVENT_TYPES)
    for cls in EVENT_TYPES.values():
        assert cls.__name__ in meerkat_sync.__all__


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_each_variant_parses_from_its_envelope(kind: str) -> None:
    payload = {"type": kind, **PAYLOADS[kind]}
    event = parse_event(_envelope(payload))
    assert type(event) is EVENT_TYPES[kind] and event.type == kind
    for field, value in PAYLOADS[kind].items():
        got = getattr(event, field)
        if field == "usage":
            assert (got.input_tokens, got.output_tokens, got.cache_read_tokens) == (5, 7, 2)
            assert got.cache_creation_tokens is None and got.total_tokens == 12
        elif field == "payload" and kind == "tool_config_changed":
            assert got == ToolConfigChangedPayload(**value)
        else:
            assert got == value, field
    assert parse_event(payload) == event  # the bare form parses the same
    envelope = parse_envelope(_envelope(payload, seq=9))
    assert envelope.seq == 9 and envelope.source_id == "session:s1" and envelope.payload == event


def test_forward_compatibility() -> None:
    unknown = parse_event(_envelope({"type": "brand_new_event", "x": 1}))
    assert isinstance(unknown, UnknownEvent) and isinstance(unknown, Event)
    assert unknown.type == "brand_new_event" and unknown.data == {"type": "brand_new_event", "x": 1}
    extra = parse_event({"type": "text_delta", "delta": "hi", "future_field": [1, 2]})
    assert extra == TextDelta("hi")
    missing = parse_event({"type": "tool_config_changed"})
    assert isinstance(missing, ToolConfigChanged) and missing.payload.target == ""
    mistyped = parse_event({"type": "turn_started", "turn_number": "not a number"})
    assert isinstance(mistyped, UnknownEvent) and mistyped.type == "turn_started"
    assert isinstance(parse_event({"no": "type"}), UnknownEvent)


def test_every_variant_and_unknown_ones_through_a_real_stream(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    lifecycle = {"run_started", "run_completed", "run_failed"}  # injected, these would end the run
    extra = [{"type": k, **v} for k, v in PAYLOADS.items() if k not in lifecycle]
    extra.append({"type": "from_the_future", "n": 1})
    events = list(session.stream(fake(chunks=["x"], extra_events=extra)))
    kinds = [e.type for e in events]
    for kind in set(PAYLOADS) - {"run_failed"}:
        assert kind in kinds, kind
    unknown = [e for e in events if isinstance(e, UnknownEvent)]
    assert [u.type for u in unknown] == ["from_the_future"]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("code,name", sorted(RPC_ERROR_NAMES.items()))
def test_every_server_code_maps_to_its_name(code: int, name: str) -> None:
    error = error_from_rpc({"code": code, "message": "m", "data": {"details": [1]}})
    assert error.code == name and error.rpc_code == code and error.details == [1]
    expected = {
        "SESSION_NOT_FOUND": SessionNotFoundError,
        "CAPABILITY_UNAVAILABLE": CapabilityUnavailableError,
        "SKILL_NOT_FOUND": SkillNotFoundError,
    }.get(name, MeerkatError)
    assert type(error) is expected
    assert pickle.loads(pickle.dumps(error)).rpc_code == code


def test_odd_error_objects_never_break_the_mapping() -> None:
    assert error_from_rpc({"code": -39999, "message": "new"}).code == "-39999"
    assert error_from_rpc({"code": "x", "message": "m"}).code == "INVALID_RESPONSE"
    assert error_from_rpc({}).code == "INVALID_RESPONSE"
    assert error_from_rpc("nonsense").code == "INVALID_RESPONSE"
    comms = error_from_rpc(
        {
            "code": -32603,
            "message": "peer 'alice' is unreachable",
            "data": {"code": "peer_unreachable", "peer": "alice"},
        }
    )
    assert comms.code == "INTERNAL_ERROR" and comms.data["peer"] == "alice"


def test_timeout_error_is_a_builtin_timeout() -> None:
    error = MeerkatTimeoutError("slow")
    assert isinstance(error, TimeoutError) and isinstance(error, MeerkatError)
    assert pickle.loads(pickle.dumps(error)).code == "TIMEOUT"


# --- bad input: nothing is sent ------------------------------------------------------------


_UUID = "dc256086-0d2f-4f61-a307-0b0c1b5f1a2e"


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda c: c.create_session(123), "prompt"),
        (lambda c: c.create_session([]), "prompt"),
        (lambda c: c.create_session([{"type": "image", "data": "x"}]), "media_type"),
        (lambda c: c.create_session([{"type": "video"}]), "type"),
        (lambda c: c.create_session("hi", max_tokens=-1), "max_tokens"),
        (lambda c: c.create_session("hi", max_tokens=True), "max_tokens"),
        (lambda c: c.create_session("hi", keep_alive="yes"), "keep_alive"),
        (lambda c: c.create_session("hi", labels={"a": 1}), "labels"),
        (lambda c: c.create_session("hi", provider_params={"x": object()}), "provider_params"),
        (lambda c: c.create_session("hi", app_context={"x": float("nan")}), "app_context"),
        (lambda c: c.create_session("hi", skill_refs=[SkillKey("abc123", "x")]), "skill_refs[0]"),
        (lambda c: c.create_session("hi", skill_refs=[SkillKey(_UUID, "Not A Slug")]), "skill_refs[0]"),
        (lambda c: c.create_session("hi", skill_refs=[""]), "skill_refs[0]"),
        (lambda c: c.create_session("hi", skill_refs="x/y"), "skill_refs"),
        (lambda c: c.create_session("hi", peer_meta={"labels": {"role": "x"}}), "reserved"),
        (lambda c: c.create_session("hi", external_tools=[{"name": "t"}]), "external_tools[0]"),
        (lambda c: c.create_session("hi", modle="x"), "modle"),
        (lambda c: c.create_session("hi", timeout=0), "timeout"),
        (lambda c: c.create_session("hi", timeout=-1), "timeout"),
        (lambda c: c.read_session(""), "session_id"),
        (lambda c: c.list_sessions(limit=-5), "limit"),
    ],
)
def test_invalid_arguments_are_rejected_before_sending(client: MeerkatClient, call: Any, needle: str) -> None:
    before = len(client.list_sessions())
    with pytest.raises(MeerkatError) as info:
        call(client)
    assert info.value.code == "INVALID_ARGS" and needle in info.value.message
    assert len(client.list_sessions()) == before  # nothing reached the server
    assert client.create_session("still fine").text == "Echo: still fine"


def test_invalid_turn_arguments(client: MeerkatClient) -> None:
    session = client.create_session("hi")
    for kwargs, needle in (
        ({"provider": "openai"}, "model"),
        ({"max_tokens": 5}, "max_tokens"),
        ({"system_prompt": "x"}, "system_prompt"),
    ):
        with pytest.raises(MeerkatError) as info:
            session.turn("x", **kwargs)  # type: ignore[arg-type]
        assert info.value.code == "INVALID_ARGS" and needle in info.value.message
    assert client.read_session(session.id).message_count == 3  # system, user, assistant
