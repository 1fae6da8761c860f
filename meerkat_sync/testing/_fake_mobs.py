"""The scripted runtime's mob/* (rkat-rpc 0.5.0 semantics; the model is in ``_fake_mob_state``).

Every mob error is ``-32602`` with the mob layer's message, as on the real server; params
errors use serde's wording. ``mob/stream_open`` param errors go out with ``"id": null``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from meerkat_sync.testing._fake_constants import INVALID_PARAMS
from meerkat_sync.testing._fake_mob_data import MOB_TOOLS, prefab_definition, prefab_list
from meerkat_sync.testing._fake_mob_state import (
    STEER_UNSUPPORTED,
    Mob,
    MobRegistry,
    mob_error,
    mob_topic,
    snapshot,
)
from meerkat_sync.testing._fake_params import (
    U64,
    USIZE,
    Check,
    ParamError,
    Path,
    Struct,
    admit,
    any_value,
    content,
    model_text,
    optional,
    parse,
    sequence,
    serde_column,
    string,
    string_map,
    variant,
)
from meerkat_sync.testing._fake_wire import IncomingRequest, JsonDict, RpcError

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Handler, RequestCtx, Server


class Strict(Struct):
    """A ``deny_unknown_fields`` struct: the first unknown key (in sorted order) is refused."""

    def __call__(self, value: Any, path: Path = ()) -> JsonDict:
        if isinstance(value, dict):
            for key in sorted(value):
                if key not in self.fields:
                    raise _UnknownField(key, list(self.fields), value)
                self.fields[key](value[key], (*path, key))
        return super().__call__(value, path)


class _UnknownField(Exception):
    def __init__(self, key: str, expected: List[str], params: JsonDict) -> None:
        super().__init__(key)
        names = ", ".join(f"`{n}`" for n in expected)
        value_len = len(json.dumps(params[key], ensure_ascii=False, separators=(",", ":")).encode())
        column = serde_column(params, (key,)) - value_len - 1  # serde points at the end of the key
        self.error = RpcError(
            INVALID_PARAMS,
            f"Invalid params: unknown field `{key}`, expected one of {names} at line 1 column {column}",
        )


def _peer_target(value: Any, path: Path) -> JsonDict:
    """``PeerTarget``, externally tagged: ``{"local": id}`` or ``{"external": {name, peer_id, address}}``."""
    if isinstance(value, dict) and len(value) == 1:
        (tag,) = value
        if tag == "local":
            return {"local": string(value[tag], (*path, tag))}
        if tag == "external":
            fields = {"name": string, "peer_id": string, "address": string}
            spec = Struct("TrustedPeerSpec", fields, tuple(fields))(value[tag], (*path, tag))
            return {"external": spec}
        raise ParamError(f"unknown variant `{tag}`, expected `local` or `external`", path)
    raise ParamError("invalid type: expected enum PeerTarget", path)


def _definition(value: Any, path: Path) -> JsonDict:
    checked = Struct("MobDefinition", {"id": string, "profiles": any_value}, ("id",))(value, path)
    return {**value, **checked}


_MODE = optional(variant("MobRuntimeMode", "autonomous_host", "turn_driven"))
_BACKEND = optional(variant("MobBackendKind", "session", "external"))
_SPEC: Dict[str, Check] = {
    "profile": string,
    "meerkat_id": string,
    "initial_message": optional(content),
    "runtime_mode": _MODE,
    "backend": _BACKEND,
    "resume_session_id": optional(string),
    "labels": optional(string_map),
    "context": any_value,
    "additional_instructions": optional(sequence(string)),
}
_RENDER = Struct(
    "RenderMetadata",
    {
        "class": variant(
            "RenderClass",
            "user_prompt",
            "peer_message",
            "peer_request",
            "peer_response",
            "external_event",
            "flow_step",
            "continuation",
            "system_notice",
            "tool_scope_notice",
            "ops_progress",
        ),
        "salience": optional(variant("RenderSalience", "background", "normal", "important", "urgent")),
    },
    ("class",),
)
MOB_ID = Struct("MobIdParams", {"mob_id": string}, ("mob_id",))
MEMBER = Struct("MobMemberParams", {"mob_id": string, "meerkat_id": string}, ("mob_id", "meerkat_id"))
CREATE = Struct("MobCreateParams", {"prefab": optional(string), "definition": optional(_definition)})
LIFECYCLE = Struct("MobLifecycleParams", {"mob_id": string, "action": string}, ("mob_id", "action"))
SPAWN = Struct("MobSpawnParams", {"mob_id": string, **_SPEC}, ("mob_id", "profile", "meerkat_id"))
SPAWN_MANY = Struct(
    "MobSpawnManyParams",
    {"mob_id": string, "specs": sequence(Struct("MobSpawnSpecParams", _SPEC, ("profile", "meerkat_id")))},
    ("mob_id", "specs"),
)
RESPAWN = Struct(
    "MobRespawnParams",
    {"mob_id": string, "meerkat_id": string, "initial_message": optional(content)},
    ("mob_id", "meerkat_id"),
)
WIRE = Strict(
    "MobWireParams", {"mob_id": string, "member": string, "peer": _peer_target}, ("mob_id", "member", "peer")
)
SEND = Strict(
    "MobSendParams",
    {
        "mob_id": string,
        "meerkat_id": string,
        "content": content,
        "handling_mode": variant("HandlingMode", "queue", "steer"),
        "render_metadata": optional(_RENDER),
    },
    ("mob_id", "meerkat_id", "content"),
)
EVENTS = Struct("MobEventsParams", {"mob_id": string, "after_cursor": U64, "limit": USIZE}, ("mob_id",))
APPEND = Struct(
    "MobAppendSystemContextParams",
    {
        "mob_id": string,
        "meerkat_id": string,
        "text": string,
        "source": optional(string),
        "idempotency_key": optional(string),
    },
    ("mob_id", "meerkat_id", "text"),
)
FLOW_RUN = Struct(
    "MobFlowRunParams", {"mob_id": string, "flow_id": string, "params": any_value}, ("mob_id", "flow_id")
)
FLOW_REF = Struct("MobFlowStatusParams", {"mob_id": string, "run_id": string}, ("mob_id", "run_id"))
_HELPER: Dict[str, Check] = {
    "mob_id": string,
    "prompt": string,
    "meerkat_id": optional(string),
    "profile_name": optional(string),
    "runtime_mode": _MODE,
    "backend": _BACKEND,
}
HELPER = Struct("MobSpawnHelperParams", _HELPER, ("mob_id", "prompt"))
FORK = Struct(
    "MobForkHelperParams",
    {**_HELPER, "source_member_id": string, "fork_context": any_value},
    ("mob_id", "source_member_id", "prompt"),
)
WAIT = Struct(
    "MobWaitKickoffParams",
    {"mob_id": string, "member_ids": optional(sequence(string)), "timeout_ms": optional(U64)},
    ("mob_id",),
)
CALL = Struct("MobCallParams", {"name": string, "arguments": any_value}, ("name",))
STREAM_OPEN = Struct("MobStreamOpenParams", {"mob_id": string, "member_id": optional(string)}, ("mob_id",))

_UUID_CHARS = set("0123456789abcdefABCDEF-")


def _run_id(raw: str) -> str:
    """A flow run id: a UUID, with the uuid crate's wording when it is not one."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        bad = next(((i, ch) for i, ch in enumerate(raw) if ch not in _UUID_CHARS), None)
        if bad is not None:
            detail = (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{bad[1]}` at {bad[0] + 1}"
            )
        else:
            detail = (
                f"invalid length: expected length 32 for simple format, found {len(raw.replace('-', ''))}"
            )
        raise mob_error(f"Invalid run_id: {detail}") from None


def handlers(server: Server) -> Dict[str, Handler]:
    """This family's methods, bound to server."""
    mobs = MobRegistry(server)

    def params_of(struct: Struct, message: IncomingRequest) -> JsonDict:
        try:
            return parse(struct, message.params, message.has_params)
        except _UnknownField as exc:
            raise exc.error from None

    def mob_of(params: JsonDict) -> Mob:
        if not params["mob_id"].strip():
            raise mob_error("mob_id must not be empty")
        return mobs.get(params["mob_id"])

    def on_mob(struct: Struct, body: Callable[[Mob, JsonDict], Any]) -> Handler:
        """A handler that parses ``struct``, finds the mob and runs ``body`` under the registry lock."""

        def handle(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
            params = params_of(struct, message)
            with mobs.lock:
                return body(mob_of(params), params)

        return handle

    # -- catalogue, mobs -------------------------------------------------------------------

    def create(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_of(CREATE, message)
        prefab, definition = params.get("prefab"), params.get("definition")
        if prefab is not None and definition is not None:
            raise mob_error("Provide either prefab or definition, not both")
        if prefab is None and definition is None:
            raise mob_error("Provide either prefab or definition")
        if prefab is not None:
            definition = prefab_definition(prefab)
            if definition is None:
                raise mob_error(f"Unknown prefab: {prefab}")
        assert definition is not None
        return {"mob_id": mobs.create(definition)}

    def list_mobs(_message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        with mobs.lock:
            return {"mobs": [{"mob_id": k, "status": mobs.mobs[k].status} for k in sorted(mobs.mobs)]}

    def lifecycle(mob: Mob, params: JsonDict) -> Any:
        mobs.lifecycle(mob, params["action"])
        return {"action": params["action"], "mob_id": mob.mob_id, "ok": True}

    def events(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_of(EVENTS, message)  # no empty-id check here (as on the real server)
        with mobs.lock:
            mob = mobs.get(params["mob_id"])
            after, limit = params.get("after_cursor", 0), params.get("limit", 100)
            return {"events": [e for e in mob.events if e["cursor"] > after][:limit]}

    # -- members ---------------------------------------------------------------------------

    def spawn(mob: Mob, params: JsonDict) -> Any:
        member = mobs.spawn(mob, params)
        sid = member.session.session_id
        return {
            "meerkat_id": member.meerkat_id,
            "member_ref": member.ref,
            "mob_id": mob.mob_id,
            "session_id": sid,
        }

    def spawn_many(mob: Mob, params: JsonDict) -> Any:
        results: List[JsonDict] = []
        for spec in params["specs"]:
            try:
                member = mobs.spawn(mob, spec)
            except RpcError as exc:
                results.append({"error": exc.message, "ok": False})
                continue
            results.append({"member_ref": member.ref, "ok": True, "session_id": member.session.session_id})
        return {"results": results}

    def retire(mob: Mob, params: JsonDict) -> Any:
        mobs.retire(mob, params["meerkat_id"])  # a member not in the roster: still {"retired": true}
        return {"retired": True}

    def respawn(mob: Mob, params: JsonDict) -> Any:
        old = mob.member(params["meerkat_id"])
        peers = [p for p in old.wired_to if p in mob.members]
        mobs.retire(mob, old.meerkat_id)
        spec = {
            "profile": old.profile,
            "meerkat_id": old.meerkat_id,
            "runtime_mode": old.runtime_mode,
            "labels": old.labels,
            "initial_message": params.get("initial_message"),
        }
        new = mobs.spawn(mob, spec)
        for peer in peers:
            mobs.wire(mob, new, {"local": peer}, True)
        receipt = {
            "member_id": new.meerkat_id,
            "new_session_id": new.session.session_id,
            "old_session_id": old.session.session_id,
        }
        return {"receipt": receipt, "status": "completed"}

    def force_cancel(mob: Mob, params: JsonDict) -> Any:
        mob.member(params["meerkat_id"]).session.runtime.interrupt()
        return {"cancelled": True}

    def member_status(mob: Mob, params: JsonDict) -> Any:
        return snapshot(mob.members.get(params["meerkat_id"]))

    def members(mob: Mob, _params: JsonDict) -> Any:
        return {"members": [m.entry() for m in mob.roster()], "mob_id": mob.mob_id}

    def wiring(on: bool) -> Callable[[Mob, JsonDict], Any]:
        def body(mob: Mob, params: JsonDict) -> Any:
            mobs.wire(mob, mob.member(params["member"]), params["peer"], on)
            return {"wired": True} if on else {"unwired": True}

        return body

    def send(mob: Mob, params: JsonDict) -> Any:
        member = mob.member(params["meerkat_id"])
        profile = mob.definition["profiles"][member.profile]
        if not profile.get("external_addressable"):
            raise mob_error(f"meerkat is not externally addressable: {member.meerkat_id}")
        mode = params.get("handling_mode", "queue")
        if mode == "steer":
            raise mob_error(STEER_UNSUPPORTED)
        prompt = admit(params["content"])
        if member.runtime_mode == "autonomous_host":
            # A host-mode member gets the content as an external event (as rkat-rpc 0.5.0 renders it).
            prompt = f"[EVENT via rpc] {model_text(prompt)}"
        mobs.run(member, prompt)
        return {
            "handling_mode": mode,
            "member_id": member.meerkat_id,
            "session_id": member.session.session_id,
        }

    def append_system_context(message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = params_of(APPEND, message)
        with mobs.lock:
            member = mob_of(params).members.get(params["meerkat_id"])
            if member is None:
                raise mob_error(
                    f"invalid system-context request: member has no session: {params['meerkat_id']}"
                )
            session_id = member.session.session_id
        # The member's session stages it exactly as session/inject_context would (same keys, same errors).
        inject = {k: params[k] for k in ("text", "source", "idempotency_key") if k in params}
        stage = server._handlers.get("session/inject_context")
        if stage is None:
            raise mob_error("invalid system-context request: system context is not available")
        staged = stage(
            IncomingRequest("session/inject_context", message.id, {"session_id": session_id, **inject}, True),
            ctx,
        )
        return {
            "meerkat_id": member.meerkat_id,
            "mob_id": params["mob_id"],
            "session_id": session_id,
            **staged,
        }

    def wait_kickoff(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = params_of(WAIT, message)
        with mobs.lock:
            mob = mob_of(params)
            ids = params.get("member_ids") or [m.meerkat_id for m in mob.roster()]
            waits = [
                m.kickoff
                for m in (mob.members.get(i) for i in ids)
                if m is not None and m.kickoff is not None
            ]
        limit = params.get("timeout_ms")
        deadline = None if limit is None else time.monotonic() + limit / 1000.0
        for waiter in waits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not waiter.wait(left):
                raise mob_error("kickoff wait timed out")
        with mobs.lock:
            return {"members": [{"meerkat_id": i, **snapshot(mob.members.get(i))} for i in ids]}

    def helper(prefix: str, fork: bool) -> Callable[[Mob, JsonDict], Any]:
        def body(mob: Mob, params: JsonDict) -> Any:
            if fork:
                mob.member(params["source_member_id"])
            profile = params.get("profile_name") or next(iter(sorted(mob.definition["profiles"])))
            spec = {
                "profile": profile,
                "meerkat_id": params.get("meerkat_id") or f"{prefix}-{uuid.uuid4()}",
                "runtime_mode": params.get("runtime_mode") or "turn_driven",
            }
            member = mobs.spawn(mob, spec)
            mobs.retire(mob, member.meerkat_id)  # the 0.5.0 binary never runs the helper's prompt
            return {"output": None, "session_id": member.session.session_id, "tokens_used": 0}

        return body

    # -- flows -----------------------------------------------------------------------------

    def flows(mob: Mob, _params: JsonDict) -> Any:
        return {"flows": sorted(mob.definition["flows"]), "mob_id": mob.mob_id}

    def flow_run(mob: Mob, params: JsonDict) -> Any:
        return {"run_id": mobs.start_flow(mob, params["flow_id"], params.get("params"))}

    def flow_status(mob: Mob, params: JsonDict) -> Any:
        run = mob.runs.get(_run_id(params["run_id"]))
        return {"run": None if run is None else json.loads(json.dumps(run))}

    def flow_cancel(mob: Mob, params: JsonDict) -> Any:
        mobs.cancel_flow(mob, _run_id(params["run_id"]))
        return {"canceled": True}

    # -- streams ---------------------------------------------------------------------------

    def stream_open(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        try:
            params = params_of(STREAM_OPEN, message)
        except RpcError as exc:
            exc.null_id = True  # the real handler loses the request id here (§8.1)
            raise
        member_id = params.get("member_id")
        with mobs.lock:
            try:
                mob = mobs.get(params["mob_id"])
            except RpcError as exc:
                raise mob_error(f"Mob not found: {exc.message}") from None
            if member_id is not None and member_id not in mob.members:
                raise mob_error(f"Failed to subscribe to member events: meerkat not found: {member_id}")
            stream_id = server.streams.open(mob_topic(mob.mob_id, member_id))
        return {"opened": True, "stream_id": stream_id}

    table: Dict[str, Handler] = {
        "mob/prefabs": lambda _m, _c: {"prefabs": prefab_list()},
        "mob/tools": lambda _m, _c: {"tools": [dict(t) for t in MOB_TOOLS]},
        "mob/create": create,
        "mob/list": list_mobs,
        "mob/status": on_mob(MOB_ID, lambda mob, _p: {"mob_id": mob.mob_id, "status": mob.status}),
        "mob/lifecycle": on_mob(LIFECYCLE, lifecycle),
        "mob/events": events,
        "mob/spawn": on_mob(SPAWN, spawn),
        "mob/spawn_many": on_mob(SPAWN_MANY, spawn_many),
        "mob/members": on_mob(MOB_ID, members),
        "mob/retire": on_mob(MEMBER, retire),
        "mob/respawn": on_mob(RESPAWN, respawn),
        "mob/force_cancel": on_mob(MEMBER, force_cancel),
        "mob/member_status": on_mob(MEMBER, member_status),
        "mob/wire": on_mob(WIRE, wiring(True)),
        "mob/unwire": on_mob(WIRE, wiring(False)),
        "mob/send": on_mob(SEND, send),
        "mob/append_system_context": append_system_context,
        "mob/wait_kickoff": wait_kickoff,
        "mob/spawn_helper": on_mob(HELPER, helper("helper", False)),
        "mob/fork_helper": on_mob(FORK, helper("fork", True)),
        "mob/flows": on_mob(MOB_ID, flows),
        "mob/flow_run": on_mob(FLOW_RUN, flow_run),
        "mob/flow_status": on_mob(FLOW_REF, flow_status),
        "mob/flow_cancel": on_mob(FLOW_REF, flow_cancel),
        "mob/stream_open": stream_open,
    }
    table["mob/call"] = _tool_caller(table)
    return table


#: ``mob/call`` tool name → (the method it runs, how its arguments become that method's params).
_TOOL_METHODS: Mapping[str, str] = {
    "mob_create": "mob/create",
    "mob_lifecycle": "mob/lifecycle",
    "mob_events": "mob/events",
    "mob_run_flow": "mob/flow_run",
    "mob_flow_status": "mob/flow_status",
    "mob_cancel_flow": "mob/flow_cancel",
    "meerkat_spawn": "mob/spawn_many",
    "meerkat_retire": "mob/retire",
    "meerkat_list": "mob/members",
    "meerkat_message": "mob/send",
    "mob_respawn": "mob/respawn",
    "meerkat_force_cancel": "mob/force_cancel",
    "meerkat_status": "mob/member_status",
    "mob_wait_kickoff": "mob/wait_kickoff",
}


def _tool_caller(table: Dict[str, Handler]) -> Handler:
    """``mob/call``: a tool answers what its method answers (``mob_list`` shaped as the tool's)."""

    def call(message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = parse(CALL, message.params, message.has_params)
        name, arguments = params["name"], params.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else {}
        if name == "mob_list":
            if "mob_id" in arguments:
                status = table["mob/status"](IncomingRequest("mob/status", message.id, arguments, True), ctx)
                return {"status": status["status"]}
            return table["mob/list"](message, ctx)
        if name == "meerkat_wire":
            method = "mob/wire" if arguments.get("action") == "wire" else "mob/unwire"
            wire = {
                "mob_id": arguments.get("mob_id"),
                "member": arguments.get("a"),
                "peer": {"local": arguments.get("b")},
            }
            return table[method](IncomingRequest(method, message.id, wire, True), ctx)
        found = _TOOL_METHODS.get(name)
        if found is None:
            raise mob_error(f"Tool not found: {name}")
        result = table[found](IncomingRequest(found, message.id, arguments, True), ctx)
        return {"ok": True} if name == "mob_lifecycle" else result

    return call


__all__ = ["MOB_TOOLS", "handlers"]
