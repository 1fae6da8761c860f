"""The scripted runtime's session inputs: inject_context, external_event, runtime/*, input/*, comms/*.

Shapes, messages and quirks are the real rkat-rpc 0.5.0's (PROTOCOL.md §4.8, §4.9, §4.14,
§4.15 and the issue-10 probe): ``session/external_event`` and ``comms/*`` answer bad params
with ``"id": null``; an external event runs as the prompt ``[EVENT via <source>]`` (its
payload never reaches the model); re-accepting a header id records a new input that never
runs; a retired runtime refuses turns until ``runtime/reset``. The scripted runtime is one
process with no trusted peers, so every peer send fails as the real one does there.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from meerkat_sync.testing._fake_constants import INTERNAL_ERROR, INVALID_PARAMS, SESSION_NOT_FOUND
from meerkat_sync.testing._fake_params import (
    SESSION_ONLY,
    Struct,
    any_value,
    boolean,
    optional,
    parse,
    parse_session_id,
    string,
)
from meerkat_sync.testing._fake_runtime import RUNTIME_RETIRED, Input, SessionRuntime
from meerkat_sync.testing._fake_wire import HANDLED, IncomingRequest, JsonDict, RpcError, response

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Handler, RequestCtx, Server
    from meerkat_sync.testing._fake_sessions import Session

_SESSION = {"session_id": string}
INJECT_CONTEXT = Struct(
    "InjectSystemContextParams",
    {**_SESSION, "text": string, "source": optional(string), "idempotency_key": optional(string)},
    ("session_id", "text"),
)
EXTERNAL_EVENT = Struct(
    "ExternalEventParams",
    {**_SESSION, "payload": any_value, "source": optional(string)},
    ("session_id", "payload"),
)
RUNTIME_ACCEPT = Struct("RuntimeAcceptParams", {**_SESSION, "input": any_value}, ("session_id", "input"))
INPUT_STATE = Struct("InputStateParams", {**_SESSION, "input_id": string}, ("session_id", "input_id"))
COMMS_PEERS = Struct("CommsPeersParams", _SESSION, ("session_id",))
_OPTIONAL_STR = optional(string)
COMMS_SEND = Struct(
    "CommsSendParams",
    {
        **_SESSION,
        "kind": string,
        "to": _OPTIONAL_STR,
        "body": _OPTIONAL_STR,
        "intent": _OPTIONAL_STR,
        "params": any_value,
        "in_reply_to": _OPTIONAL_STR,
        "status": _OPTIONAL_STR,
        "result": any_value,
        "source": _OPTIONAL_STR,
        "stream": _OPTIONAL_STR,
        "allow_self_session": optional(boolean),
        "handling_mode": _OPTIONAL_STR,
    },
    ("session_id", "kind"),
)

INPUT_TYPES = (
    "prompt",
    "peer",
    "flow_step",
    "external_event",
    "continuation",
    "system_generated",
    "operation",
    "projected",
)
_HEADER_FIELDS = ("id", "timestamp", "source", "durability", "visibility")
_VISIBILITY = {"transcript_eligible": True, "operator_eligible": True}
_COMMS_KINDS = ("input", "peer_message", "peer_request", "peer_response")
_COMMS_VALUES = {
    "status": ("accepted", "completed", "failed"),
    "source": ("tcp", "uds", "stdin", "webhook", "rpc"),
    "stream": ("reserve_interaction", "none"),
    "handling_mode": ("queue", "steer"),
}
_REJECTED_RETIRED = "runtime not accepting input while in state: retired"
_SELF_INPUT = "validation failed: self-session input rejected: set allow_self_session=true to override"


def policy(wake_mode: str) -> JsonDict:
    """The admission policy of a queued input, in the runtime's struct order."""
    return {
        "apply_mode": "stage_run_start",
        "wake_mode": wake_mode,
        "queue_mode": "fifo",
        "consume_point": "on_run_complete",
        "interrupt_policy": "none",
        "drain_policy": "queue_next_turn",
        "routing_disposition": "queue",
        "record_transcript": True,
        "emit_operator_content": True,
        "policy_version": 1,
    }


def _sorted(value: Any) -> Any:
    """JSON with every object's keys sorted: how values that went through serde_json::Value read."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _prompt_record(item: Input) -> JsonDict:
    """``persisted_input`` of a ``turn/start`` prompt."""
    text = item.prompt if isinstance(item.prompt, str) else ""
    header = {
        "id": item.id,
        "timestamp": item.created_at,
        "source": {"type": "operator"},
        "durability": "durable",
        "visibility": dict(_VISIBILITY),
    }
    return {"header": header, "input_type": "prompt", "text": text, "turn_metadata": {}}


def input_state(item: Input, struct_order: bool = False) -> JsonDict:
    """The input ledger's snapshot of ``item`` (``input/state``, and inside accept outcomes).

    ``struct_order``: the external-event path keeps the policy and input as structs;
    everywhere else they come back with sorted keys.
    """
    decision = policy(item.wake_mode)
    persisted = item.persisted if item.persisted is not None else _prompt_record(item)
    out: JsonDict = {"input_id": item.id, "current_state": item.current_state}
    if struct_order:
        out["policy"] = {"version": 1, "decision": decision}
    else:
        out["policy"] = _sorted({"version": 1, "decision": decision})
    if item.terminal is not None:
        out["terminal_outcome"] = dict(item.terminal)
    out.update({"durability": "durable", "attempt_count": 0, "recovery_count": 0})
    if item.transitions:
        out["history"] = [dict(entry) for entry in item.transitions]
    out["persisted_input"] = persisted if struct_order else _sorted(persisted)
    if item.last_run_id is not None:
        out["last_run_id"] = item.last_run_id
    if item.last_boundary_sequence is not None:
        out["last_boundary_sequence"] = item.last_boundary_sequence
    out.update({"created_at": item.created_at, "updated_at": item.updated_at})
    return out


def accepted(item: Input, struct_order: bool = False) -> JsonDict:
    decision = policy(item.wake_mode)
    return {
        "outcome_type": "accepted",
        "input_id": item.id,
        "policy": decision if struct_order else _sorted(decision),
        "state": input_state(item, struct_order),
    }


def _input_error(message: str) -> RpcError:
    """runtime/accept deserialises ``input`` on its own: serde's text, no prefix, no column."""
    return RpcError(INVALID_PARAMS, message)


def parse_runtime_input(raw: Any) -> Tuple[str, JsonDict]:
    """``(prompt the run gets, input as persisted)`` of a runtime Input JSON."""
    if not isinstance(raw, dict):
        raise _input_error("invalid type: expected internally tagged enum Input")
    kind = raw.get("input_type")
    if kind is None:
        raise _input_error("missing field `input_type`")
    if kind not in INPUT_TYPES:
        expected = ", ".join(f"`{name}`" for name in INPUT_TYPES)
        raise _input_error(f"unknown variant `{kind}`, expected one of {expected}")
    header = raw.get("header")
    if not isinstance(header, dict):
        wrong = "missing field `header`" if header is None else "invalid type: expected struct InputHeader"
        raise _input_error(wrong)
    for field in _HEADER_FIELDS:
        if field not in header:
            raise _input_error(f"missing field `{field}`")
    try:
        uuid.UUID(str(header["id"]))
    except ValueError:
        raise _input_error(f"invalid input id: {header['id']}") from None
    if kind == "prompt":
        if not isinstance(raw.get("text"), str):
            raise _input_error("missing field `text`")
        return raw["text"], raw
    if kind == "external_event":
        if "event_type" not in raw:
            raise _input_error("missing field `event_type`")
        return f"[EVENT via {raw['event_type']}]", raw
    raise _input_error(f"the scripted runtime runs only `prompt` and `external_event` inputs, not `{kind}`")


class _Contexts:
    """Each session's system-context idempotency keys: ``key -> (text, source)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: Dict[str, Dict[str, Tuple[str, Optional[str]]]] = {}

    def stage(self, session_id: str, text: str, source: Optional[str], key: Optional[str]) -> str:
        with self._lock:
            if key is None:
                return "staged"
            keys = self._keys.setdefault(session_id, {})
            seen = keys.get(key)
            if seen is None:
                keys[key] = (text, source)
                return "staged"
            if seen != (text, source):
                raise RpcError(INVALID_PARAMS, f"system-context idempotency conflict for key '{key}'")
            return "duplicate"


def handlers(server: Server) -> Dict[str, Handler]:
    """This family's methods, bound to server."""
    contexts = _Contexts()
    realm = server.config.realm

    def params_or_null_id(struct: Struct, message: IncomingRequest) -> JsonDict:
        """Parse params the way handlers that forget the request id do: errors go out with id null."""
        try:
            return parse(struct, message.params, message.has_params)
        except RpcError as exc:
            exc.null_id = True
            raise

    def answer_then_run(message: IncomingRequest, runtime: SessionRuntime, result: JsonDict) -> Any:
        """The accept outcome goes out first; the run it starts follows (unsolicited events)."""
        server.writer.send(response(message.id, result))
        runtime.wake()
        return HANDLED

    def inject_context(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(INJECT_CONTEXT, message.params, message.has_params)
        session = server.store.live(parse_session_id(params["session_id"], realm))
        if not params["text"].strip():
            raise RpcError(INVALID_PARAMS, "system context text must not be empty")
        key = params.get("idempotency_key")
        status = contexts.stage(session.session_id, params["text"], params.get("source"), key)
        return {"status": status}

    def external_event(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_or_null_id(EXTERNAL_EVENT, message)
        session_id = parse_session_id(params["session_id"], realm)
        session = server.store.find(session_id)
        if session is None or session.archived:
            raise RpcError(SESSION_NOT_FOUND, f"session not found: {session_id}")
        if session.runtime.retired:
            raise RpcError(INTERNAL_ERROR, RUNTIME_RETIRED)
        source = params.get("source") or "rpc"
        item = Input(f"[EVENT via {source}]", None)
        item.persisted = {
            "input_type": "external_event",
            "header": {
                "id": item.id,
                "timestamp": item.created_at,
                "source": {"type": "external", "source_name": source},
                "durability": "durable",
                "visibility": dict(_VISIBILITY),
            },
            "event_type": source,
            "payload": params["payload"],
            "handling_mode": "queue",
        }
        session.runtime.submit(item, wake=False)
        return answer_then_run(message, session.runtime, accepted(item, struct_order=True))

    def runtime_accept(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(RUNTIME_ACCEPT, message.params, message.has_params)
        session = server.store.live(parse_session_id(params["session_id"], realm))
        prompt, persisted = parse_runtime_input(params["input"])
        runtime = session.runtime
        if runtime.retired:
            return {"outcome_type": "rejected", "reason": _REJECTED_RETIRED}
        item = Input(prompt, None)
        item.id = str(persisted["header"]["id"])
        item.persisted = persisted
        if runtime.state() == "running":
            item.wake_mode = "none"
        if runtime.record(item.id) is not None:
            runtime.accept_again(item)  # no dedupe on the header id: recorded again, never run
            return accepted(item)
        runtime.submit(item, wake=False)
        return answer_then_run(message, runtime, accepted(item))

    def runtime_retire(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        session = server.store.live(session_id_of(message))
        abandoned, pending = session.runtime.retire()
        return {"inputs_abandoned": abandoned, "inputs_pending_drain": pending}

    def input_state_of(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(INPUT_STATE, message.params, message.has_params)
        session = server.store.live(parse_session_id(params["session_id"], realm))
        try:
            input_id = str(uuid.UUID(params["input_id"]))
        except ValueError:
            raise RpcError(INVALID_PARAMS, "Invalid input ID") from None
        item = session.runtime.record(input_id)
        return None if item is None else input_state(item)

    def session_id_of(message: IncomingRequest) -> str:
        params = parse(SESSION_ONLY, message.params, message.has_params)
        return parse_session_id(params["session_id"], realm)

    def comms_session(session_id: str) -> Session:
        session = server.store.find(session_id)
        if session is None or session.config.comms_name is None:
            raise RpcError(INVALID_PARAMS, f"Session not found or comms not enabled: {session_id}")
        if session.archived:
            raise RpcError(INVALID_PARAMS, f"Session is archived: {session_id}")
        return session

    def comms_peers(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_or_null_id(COMMS_PEERS, message)
        comms_session(parse_session_id(params["session_id"], realm))
        return {"peers": []}  # one process, nobody trusted: the real server lists none either

    def comms_send(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_or_null_id(COMMS_SEND, message)
        comms_session(parse_session_id(params["session_id"], realm))
        issues = command_issues(params)
        if issues:
            text = "Command validation failed"
            data = {"code": "invalid_command", "details": issues, "message": text}
            raise RpcError(INVALID_PARAMS, text, data)
        if params["kind"] == "input":
            if not params.get("allow_self_session"):
                data = {"code": "send_failed", "message": _SELF_INPUT}
                raise RpcError(INTERNAL_ERROR, _SELF_INPUT, data)
            reserved = params.get("stream") == "reserve_interaction"
            interaction = str(uuid.uuid4())
            return {"interaction_id": interaction, "kind": "input_accepted", "stream_reserved": reserved}
        peer = params["to"]
        text = f"peer '{peer}' is not found or not trusted"
        data = {"code": "peer_not_found_or_not_trusted", "message": text, "peer": peer}
        raise RpcError(INTERNAL_ERROR, text, data)

    return {
        "session/inject_context": inject_context,
        "session/external_event": external_event,
        "runtime/accept": runtime_accept,
        "runtime/retire": runtime_retire,
        "input/state": input_state_of,
        "comms/peers": comms_peers,
        "comms/send": comms_send,
    }


def command_issues(params: JsonDict) -> List[JsonDict]:
    """The comms command's validation issues, in the runtime's field order."""
    kind = params["kind"]
    if kind not in _COMMS_KINDS:
        return [{"field": "kind", "got": kind, "issue": "unknown_kind"}]
    issues: List[JsonDict] = []
    if kind != "input" and params.get("to") is None:
        issues.append({"field": "to", "issue": "required_field"})
    if kind == "peer_request" and params.get("intent") is None:
        issues.append({"field": "intent", "issue": "required_field"})
    if kind == "peer_response":
        reply_to = params.get("in_reply_to")
        if reply_to is None:
            issues.append({"field": "in_reply_to", "issue": "required_field"})
        else:
            try:
                uuid.UUID(reply_to)
            except ValueError:
                issues.append({"field": "in_reply_to", "got": reply_to, "issue": "invalid_uuid"})
    for field, allowed in _COMMS_VALUES.items():
        value = params.get(field)
        if value is not None and value not in allowed:
            issues.append({"field": field, "got": value, "issue": "invalid_value"})
    return issues
