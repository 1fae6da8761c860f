"""Method family: mob/*: the client's mob_* calls (the handles live in ``_mob_handle``).

Every call is gated on the ``mob`` capability (rkat-rpc 0.5.0 has no capability entry
for it: a server that lists ``mob/create``, ``mob/list`` or ``mob/call`` has mobs) and
checks its arguments before anything is sent, so a bad one never reaches the server as
an error it could not tie to the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from ._calls import ClientCalls, listed, object_reply
from ._deadline import USE_DEFAULT, Timeout
from ._mob_handle import Member, Mob
from ._params import _object, _str_list, _str_map, invalid, positive_int, prompt_to_wire
from ._subscriptions import EventSubscription
from .errors import MeerkatError
from .types import (
    MemberDeliveryReceipt,
    MobEvent,
    MobHelperResult,
    MobKickoffMemberSnapshot,
    MobMember,
    MobMemberSnapshot,
    MobPrefab,
    MobRespawnResult,
    MobSpawnReceipt,
    MobSpawnResult,
    MobSummary,
    MobSystemContextReceipt,
)

T = TypeVar("T")

RUNTIME_MODES = ("autonomous_host", "turn_driven")
BACKENDS = ("session", "external")
HANDLING_MODES = ("queue", "steer")
LIFECYCLE_ACTIONS = ("stop", "resume", "complete", "reset", "destroy")
RENDER_CLASSES = (
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
)
RENDER_SALIENCE = ("background", "normal", "important", "urgent")

#: The fields of one spawn spec (``mob/spawn`` without ``mob_id``, one ``mob/spawn_many`` entry).
SPAWN_FIELDS = (
    "profile",
    "meerkat_id",
    "initial_message",
    "runtime_mode",
    "backend",
    "resume_session_id",
    "labels",
    "context",
    "additional_instructions",
)

#: A spawn spec for ``spawn_mob_members``: ``{"profile": ..., "meerkat_id": ..., ...}``.
MobSpawnSpec = Mapping[str, Any]
#: A wiring target: another member's id, ``{"local": id}`` or ``{"external": {name, peer_id, address}}``.
PeerTarget = Union[str, Mapping[str, Any]]


# --- argument checks --------------------------------------------------------------------------


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"{name} must be a non-empty string, not {value!r}")
    return value


def _choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _put(params: Dict[str, Any], name: str, value: Any, check: Any) -> None:
    """Set an optional param; ``None`` is left out (the server's default applies)."""
    if value is not None:
        params[name] = check(value, name)


def _spawn_spec(spec: Mapping[str, Any], where: str = "") -> Dict[str, Any]:
    """One checked spawn spec; an unknown key is refused rather than silently dropped."""

    def label(name: str) -> str:
        return f"{where}['{name}']" if where else name

    unknown = sorted(set(spec) - set(SPAWN_FIELDS))
    if unknown:
        raise invalid(f"{where} has unknown fields {unknown}; valid fields: {', '.join(SPAWN_FIELDS)}")
    out = {
        "profile": _text(spec.get("profile"), label("profile")),
        "meerkat_id": _text(spec.get("meerkat_id"), label("meerkat_id")),
    }
    checks: Dict[str, Any] = {
        "initial_message": prompt_to_wire,
        "runtime_mode": lambda v, n: _choice(v, n, RUNTIME_MODES),
        "backend": lambda v, n: _choice(v, n, BACKENDS),
        "resume_session_id": _text,
        "labels": _str_map,
        "context": _object,
        "additional_instructions": _str_list,
    }
    for name, check in checks.items():
        if spec.get(name) is not None:
            out[name] = check(spec[name], label(name))
    return out


def _peer_target(peer: Any) -> Dict[str, Any]:
    """``mob/wire``'s ``peer``: a member id becomes ``{"local": id}`` (the server rejects other keys)."""
    if isinstance(peer, str):
        return {"local": _text(peer, "peer")}
    if isinstance(peer, Mapping) and set(peer) == {"local"}:
        return {"local": _text(peer["local"], "peer['local']")}
    if isinstance(peer, Mapping) and set(peer) == {"external"} and isinstance(peer["external"], Mapping):
        external = peer["external"]
        fields = {
            k: _text(external.get(k), f"peer['external']['{k}']") for k in ("name", "peer_id", "address")
        }
        extra = sorted(set(external) - set(fields))
        if extra:
            raise invalid(f"peer['external'] has unknown fields {extra}; it takes name, peer_id and address")
        return {"external": fields}
    raise invalid(
        "peer must be a member id, {'local': id} or {'external': {'name', 'peer_id', 'address'}}, "
        f"not {peer!r}"
    )


def _render_metadata(value: Any, name: str) -> Dict[str, Any]:
    if not isinstance(value, Mapping) or not set(value) <= {"class", "salience"}:
        raise invalid(f"{name} must be a dict with 'class' and optionally 'salience', not {value!r}")
    out = {"class": _choice(value.get("class"), f"{name}['class']", RENDER_CLASSES)}
    _put(out, "salience", value.get("salience"), lambda v, n: _choice(v, f"{name}['{n}']", RENDER_SALIENCE))
    return out


def _fork_context(value: Any, name: str) -> Dict[str, Any]:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "full_history" and set(value) == {"type"}:
        return {"type": kind}
    if kind == "last_messages" and set(value) == {"type", "count"}:
        return {"type": kind, "count": positive_int(value["count"], f"{name}['count']")}
    raise invalid(
        f"{name} must be {{'type': 'full_history'}} or {{'type': 'last_messages', 'count': n}}, not {value!r}"
    )


# --- the client's calls -----------------------------------------------------------------------


class MobMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""

    _turn_timeout: Optional[float]

    def _mob(self, method: str, params: Mapping[str, Any], timeout: Timeout) -> Any:
        return self._gated(method, params, timeout, capability="mob")

    def _mob_typed(self, method: str, params: Mapping[str, Any], cls: Type[T], timeout: Timeout) -> T:
        return self._gated_typed(method, params, cls, timeout, capability="mob")

    def _waiting(self, timeout: Timeout) -> Timeout:
        """Calls that wait for a member's turn get the turn timeout, not the request timeout."""
        return self._turn_timeout if timeout is USE_DEFAULT else timeout

    # -- catalogue and tools -----------------------------------------------------------------

    def list_mob_prefabs(self, *, timeout: Timeout = USE_DEFAULT) -> List[MobPrefab]:
        """The built-in mob templates, each with its TOML definition to copy and adapt."""
        return listed("mob/prefabs", self._mob("mob/prefabs", {}, timeout), "prefabs", MobPrefab)

    def list_mob_tools(self, *, timeout: Timeout = USE_DEFAULT) -> List[Dict[str, Any]]:
        """The tools ``call_mob_tool`` runs, MCP-shaped (``name``, ``description``, ``inputSchema``)."""
        tools = object_reply("mob/tools", self._mob("mob/tools", {}, timeout)).get("tools")
        if not isinstance(tools, list):
            raise invalid_response("mob/tools", tools)
        return tools

    def call_mob_tool(
        self, name: str, arguments: Optional[Mapping[str, Any]] = None, *, timeout: Timeout = USE_DEFAULT
    ) -> Dict[str, Any]:
        """Run one mob tool by name, as an agent with mob tools would; returns its JSON result."""
        params = {
            "name": _text(name, "name"),
            "arguments": {} if arguments is None else _object(arguments, "arguments"),
        }
        return object_reply("mob/call", self._mob("mob/call", params, timeout))

    # -- mobs --------------------------------------------------------------------------------

    def create_mob(
        self,
        *,
        prefab: Optional[str] = None,
        definition: Optional[Mapping[str, Any]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> Mob:
        """Create a mob from a prefab key or a definition (exactly one of them)."""
        if (prefab is None) == (definition is None):
            raise invalid("create_mob takes exactly one of prefab= or definition=")
        params = (
            {"prefab": _text(prefab, "prefab")}
            if prefab is not None
            else {"definition": _object(definition, "definition")}
        )
        mob_id = object_reply("mob/create", self._mob("mob/create", params, timeout)).get("mob_id")
        if not isinstance(mob_id, str):
            raise invalid_response("mob/create", mob_id)
        return Mob(self, mob_id)

    def mob(self, mob_id: str) -> Mob:
        """A handle on an existing mob; nothing is sent until a method of the handle is called."""
        return Mob(self, _text(mob_id, "mob_id"))

    def list_mobs(self, *, timeout: Timeout = USE_DEFAULT) -> List[MobSummary]:
        """Every live mob of this runtime and its state; destroyed mobs are gone."""
        return listed("mob/list", self._mob("mob/list", {}, timeout), "mobs", MobSummary)

    def mob_status(self, mob_id: str, *, timeout: Timeout = USE_DEFAULT) -> MobSummary:
        """The mob's lifecycle state (``"Running"``, ``"Stopped"``, ``"Completed"``, ...)."""
        return self._mob_typed("mob/status", {"mob_id": _text(mob_id, "mob_id")}, MobSummary, timeout)

    def list_mob_members(self, mob_id: str, *, timeout: Timeout = USE_DEFAULT) -> List[MobMember]:
        """The mob's roster, retiring members included."""
        reply = self._mob("mob/members", {"mob_id": _text(mob_id, "mob_id")}, timeout)
        return listed("mob/members", reply, "members", MobMember)

    def list_mob_events(
        self, mob_id: str, *, after_cursor: int = 0, limit: int = 100, timeout: Timeout = USE_DEFAULT
    ) -> List[MobEvent]:
        """The mob's lifecycle log after ``after_cursor``; pass the last ``cursor`` seen to page on."""
        if isinstance(after_cursor, bool) or not isinstance(after_cursor, int) or after_cursor < 0:
            raise invalid(f"after_cursor must be a non-negative integer, not {after_cursor!r}")
        params = {
            "mob_id": _text(mob_id, "mob_id"),
            "after_cursor": after_cursor,
            "limit": positive_int(limit, "limit"),
        }
        return listed("mob/events", self._mob("mob/events", params, timeout), "events", MobEvent)

    def mob_lifecycle(self, mob_id: str, action: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """``stop``, ``resume``, ``complete``, ``reset`` or ``destroy`` the mob."""
        params = {"mob_id": _text(mob_id, "mob_id"), "action": _choice(action, "action", LIFECYCLE_ACTIONS)}
        self._mob("mob/lifecycle", params, timeout)

    # -- members -----------------------------------------------------------------------------

    def spawn_mob_member(
        self,
        mob_id: str,
        *,
        profile: str,
        meerkat_id: str,
        initial_message: Optional[Any] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        resume_session_id: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        context: Optional[Mapping[str, Any]] = None,
        additional_instructions: Optional[List[str]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobSpawnReceipt:
        """Add a member running ``profile``; its turns run on the receipt's ``session_id``."""
        spec = dict(
            profile=profile,
            meerkat_id=meerkat_id,
            initial_message=initial_message,
            runtime_mode=runtime_mode,
            backend=backend,
            resume_session_id=resume_session_id,
            labels=labels,
            context=context,
            additional_instructions=additional_instructions,
        )
        params = {"mob_id": _text(mob_id, "mob_id"), **_spawn_spec(spec)}
        return self._mob_typed("mob/spawn", params, MobSpawnReceipt, timeout)

    def spawn_mob_members(
        self, mob_id: str, specs: Sequence[MobSpawnSpec], *, timeout: Timeout = USE_DEFAULT
    ) -> List[MobSpawnResult]:
        """Spawn several members at once; each spec succeeds or fails on its own, in order."""
        if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence) or not specs:
            raise invalid(
                "specs must be a non-empty list of spawn specs ({'profile': ..., 'meerkat_id': ...})"
            )
        checked = []
        for i, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                raise invalid(f"specs[{i}] must be a dict, not {type(spec).__name__}")
            checked.append(_spawn_spec(spec, f"specs[{i}]"))
        params = {"mob_id": _text(mob_id, "mob_id"), "specs": checked}
        return listed(
            "mob/spawn_many", self._mob("mob/spawn_many", params, timeout), "results", MobSpawnResult
        )

    def retire_mob_member(self, mob_id: str, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """Remove a member from the mob; its session is archived and its subscriptions end."""
        self._mob("mob/retire", _member(mob_id, meerkat_id), timeout)

    def respawn_mob_member(
        self,
        mob_id: str,
        meerkat_id: str,
        initial_message: Optional[Any] = None,
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobRespawnResult:
        """Replace a member with a fresh session of the same profile, restoring its wiring."""
        params = _member(mob_id, meerkat_id)
        _put(params, "initial_message", initial_message, prompt_to_wire)
        return self._mob_typed("mob/respawn", params, MobRespawnResult, timeout)

    def force_cancel_mob_member(
        self, mob_id: str, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT
    ) -> None:
        """Interrupt the member's in-flight turn now, without retiring it."""
        self._mob("mob/force_cancel", _member(mob_id, meerkat_id), timeout)

    def mob_member_status(
        self, mob_id: str, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT
    ) -> MobMemberSnapshot:
        """The member's execution snapshot; an id not in the roster reads ``status="unknown"``."""
        return self._mob_typed("mob/member_status", _member(mob_id, meerkat_id), MobMemberSnapshot, timeout)

    def wait_mob_kickoff(
        self,
        mob_id: str,
        *,
        member_ids: Optional[List[str]] = None,
        timeout_ms: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> List[MobKickoffMemberSnapshot]:
        """Block until the members' autonomous kickoff turns are over (default: the turn timeout)."""
        params: Dict[str, Any] = {"mob_id": _text(mob_id, "mob_id")}
        _put(params, "member_ids", member_ids, _str_list)
        _put(params, "timeout_ms", timeout_ms, positive_int)
        reply = self._mob("mob/wait_kickoff", params, self._waiting(timeout))
        return listed("mob/wait_kickoff", reply, "members", MobKickoffMemberSnapshot)

    def spawn_mob_helper(
        self,
        mob_id: str,
        prompt: Any,
        *,
        meerkat_id: Optional[str] = None,
        profile_name: Optional[str] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobHelperResult:
        """Run ``prompt`` on a short-lived member and return its answer (waits: the turn timeout applies)."""
        params: Dict[str, Any] = {"mob_id": _text(mob_id, "mob_id"), "prompt": _text(prompt, "prompt")}
        _helper_options(params, meerkat_id, profile_name, runtime_mode, backend)
        return self._mob_typed("mob/spawn_helper", params, MobHelperResult, self._waiting(timeout))

    def fork_mob_helper(
        self,
        mob_id: str,
        source_member_id: str,
        prompt: Any,
        *,
        meerkat_id: Optional[str] = None,
        profile_name: Optional[str] = None,
        fork_context: Optional[Mapping[str, Any]] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobHelperResult:
        """Like ``spawn_mob_helper``, starting from a member's history (all of it by default)."""
        params: Dict[str, Any] = {
            "mob_id": _text(mob_id, "mob_id"),
            "source_member_id": _text(source_member_id, "source_member_id"),
            "prompt": _text(prompt, "prompt"),
        }
        _helper_options(params, meerkat_id, profile_name, runtime_mode, backend)
        _put(params, "fork_context", fork_context, _fork_context)
        return self._mob_typed("mob/fork_helper", params, MobHelperResult, self._waiting(timeout))

    def wire_mob_members(
        self, mob_id: str, member: str, peer: PeerTarget, *, timeout: Timeout = USE_DEFAULT
    ) -> None:
        """Let two members trust and message each other (``peer``: a member id or an external peer)."""
        self._mob("mob/wire", _wiring(mob_id, member, peer), timeout)

    def unwire_mob_members(
        self, mob_id: str, member: str, peer: PeerTarget, *, timeout: Timeout = USE_DEFAULT
    ) -> None:
        """Undo ``wire_mob_members``."""
        self._mob("mob/unwire", _wiring(mob_id, member, peer), timeout)

    def send_mob_member_content(
        self,
        mob_id: str,
        meerkat_id: str,
        content: Any,
        *,
        handling_mode: str = "queue",
        render_metadata: Optional[Mapping[str, Any]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MemberDeliveryReceipt:
        """Deliver content to an externally addressable member, which runs a turn on it."""
        params = _member(mob_id, meerkat_id)
        params["content"] = prompt_to_wire(content, "content")
        params["handling_mode"] = _choice(handling_mode, "handling_mode", HANDLING_MODES)
        _put(params, "render_metadata", render_metadata, _render_metadata)
        return self._mob_typed("mob/send", params, MemberDeliveryReceipt, timeout)

    def append_mob_system_context(
        self,
        mob_id: str,
        meerkat_id: str,
        text: str,
        *,
        source: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobSystemContextReceipt:
        """Add text to the member's system prompt from its next turn on; a repeated key is a no-op."""
        params = _member(mob_id, meerkat_id)
        params["text"] = _text(text, "text")
        _put(params, "source", source, _text)
        _put(params, "idempotency_key", idempotency_key, _text)
        return self._mob_typed("mob/append_system_context", params, MobSystemContextReceipt, timeout)

    # -- flows -------------------------------------------------------------------------------

    def list_mob_flows(self, mob_id: str, *, timeout: Timeout = USE_DEFAULT) -> List[str]:
        """The ids of the flows the mob's definition declares."""
        reply = self._mob("mob/flows", {"mob_id": _text(mob_id, "mob_id")}, timeout)
        return listed("mob/flows", reply, "flows", str)

    def run_mob_flow(
        self,
        mob_id: str,
        flow_id: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> str:
        """Start a flow run and return its ``run_id`` at once; poll ``get_mob_flow_status`` for progress."""
        wire = {
            "mob_id": _text(mob_id, "mob_id"),
            "flow_id": _text(flow_id, "flow_id"),
            "params": {} if params is None else _object(params, "params"),
        }
        run_id = object_reply("mob/flow_run", self._mob("mob/flow_run", wire, timeout)).get("run_id")
        if not isinstance(run_id, str):
            raise invalid_response("mob/flow_run", run_id)
        return run_id

    def get_mob_flow_status(
        self, mob_id: str, run_id: str, *, timeout: Timeout = USE_DEFAULT
    ) -> Optional[Dict[str, Any]]:
        """The run record (``status``, step and failure ledgers; open-shaped), or None for an unknown run."""
        params = {"mob_id": _text(mob_id, "mob_id"), "run_id": _text(run_id, "run_id")}
        run = object_reply("mob/flow_status", self._mob("mob/flow_status", params, timeout)).get("run")
        return None if run is None else object_reply("mob/flow_status", run)

    def cancel_mob_flow(self, mob_id: str, run_id: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """Cancel an in-flight flow run."""
        params = {"mob_id": _text(mob_id, "mob_id"), "run_id": _text(run_id, "run_id")}
        self._mob("mob/flow_cancel", params, timeout)

    # -- subscriptions -----------------------------------------------------------------------

    if TYPE_CHECKING:  # provided by SubscriptionMethods, the client's other base

        def _open_subscription(
            self,
            open_method: str,
            params: Mapping[str, Any],
            *,
            close_method: str,
            timeout: Timeout = USE_DEFAULT,
            idle_timeout: Timeout = USE_DEFAULT,
            capability: Optional[str] = None,
            session_id: Optional[str] = None,
        ) -> EventSubscription: ...

    def subscribe_mob_events(
        self, mob_id: str, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """Every member's events from now on, each attributed (``attributed()``: ``source``, ``profile``).

        ``timeout`` bounds the open, ``idle_timeout`` each wait for an event. The stream does
        not end when the mob is destroyed (rkat-rpc 0.5.0 sends no ``stream_end`` then): close it.
        """
        params = {"mob_id": _text(mob_id, "mob_id")}
        return self._open_subscription(
            "mob/stream_open",
            params,
            close_method="mob/stream_close",
            timeout=timeout,
            idle_timeout=idle_timeout,
            capability="mob",
        )

    def subscribe_mob_member_events(
        self,
        mob_id: str,
        meerkat_id: str,
        *,
        timeout: Timeout = USE_DEFAULT,
        idle_timeout: Timeout = USE_DEFAULT,
    ) -> EventSubscription:
        """One member's events: the way to see them, as members emit no plain ``session/event``.

        It ends (``outcome == "remote_end"``) when the member is retired.
        """
        params = {"mob_id": _text(mob_id, "mob_id"), "member_id": _text(meerkat_id, "meerkat_id")}
        return self._open_subscription(
            "mob/stream_open",
            params,
            close_method="mob/stream_close",
            timeout=timeout,
            idle_timeout=idle_timeout,
            capability="mob",
        )


def invalid_response(method: str, value: Any) -> MeerkatError:
    return MeerkatError("INVALID_RESPONSE", f"{method} returned {value!r} where the protocol has a value")


def _member(mob_id: Any, meerkat_id: Any) -> Dict[str, Any]:
    return {"mob_id": _text(mob_id, "mob_id"), "meerkat_id": _text(meerkat_id, "meerkat_id")}


def _wiring(mob_id: Any, member: Any, peer: Any) -> Dict[str, Any]:
    return {"mob_id": _text(mob_id, "mob_id"), "member": _text(member, "member"), "peer": _peer_target(peer)}


def _helper_options(
    params: Dict[str, Any], meerkat_id: Any, profile_name: Any, mode: Any, backend: Any
) -> None:
    _put(params, "meerkat_id", meerkat_id, _text)
    _put(params, "profile_name", profile_name, _text)
    _put(params, "runtime_mode", mode, lambda v, n: _choice(v, n, RUNTIME_MODES))
    _put(params, "backend", backend, lambda v, n: _choice(v, n, BACKENDS))


__all__ = ["Member", "Mob", "MobMethods", "MobSpawnSpec", "PeerTarget"]
