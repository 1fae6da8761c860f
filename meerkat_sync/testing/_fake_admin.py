"""The scripted runtime's config/*, models/catalog, skills/*, mcp/* (rkat-rpc 0.5.0 semantics).

MCP changes are staged per session, as on the real server, and applied at the
session's next run: each staged add is announced before ``run_started`` by a
``tool_config_changed`` event with status ``pending`` (numbered by a per-session MCP
lifecycle counter of its own, not the session's). The scripted runtime connects to no
MCP server, so no server is ever registered: reloading one by name is an error and
removing one announces nothing, like a server that failed to connect on the real one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from meerkat_sync.testing._fake_catalog import PROVIDERS, SKILL_DETAILS, SKILLS
from meerkat_sync.testing._fake_config import RealmConfig
from meerkat_sync.testing._fake_constants import INTERNAL_ERROR, INVALID_PARAMS
from meerkat_sync.testing._fake_params import (
    ParamError,
    Struct,
    any_value,
    boolean,
    invalid_params,
    parse,
    parse_session_id,
    string,
)
from meerkat_sync.testing._fake_run import event_notification
from meerkat_sync.testing._fake_wire import IncomingRequest, JsonDict, RpcError, json_kind

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Handler, RequestCtx, Server
    from meerkat_sync.testing._fake_sessions import Session

SKILLS_INSPECT = Struct("SkillsInspectParams", {"id": string, "source": string}, ("id",))
MCP_ADD = Struct(
    "McpAddParams",
    {"session_id": string, "server_name": string, "server_config": any_value, "persisted": boolean},
    ("session_id", "server_name", "server_config"),
)
MCP_REMOVE = Struct(
    "McpRemoveParams",
    {"session_id": string, "server_name": string, "persisted": boolean},
    ("session_id", "server_name"),
)
MCP_RELOAD = Struct(
    "McpReloadParams",
    {"session_id": string, "server_name": string, "persisted": boolean},
    ("session_id",),
)

_UNTAGGED = "invalid server_config: data did not match any variant of untagged enum McpTransportConfig"
_STDIO_KEYS = {"command", "args", "env"}
_HTTP_KEYS = {"url", "headers", "transport"}
_COMMON_KEYS = {"name", "connect_timeout_secs"}


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _transport_ok(config: JsonDict) -> bool:
    """Exactly one McpTransportConfig variant (no unknown keys: the real one denies them)."""
    keys = set(config) - _COMMON_KEYS
    if "command" in keys and keys <= _STDIO_KEYS:
        args = config.get("args", [])
        return (
            isinstance(config["command"], str)
            and isinstance(args, list)
            and all(isinstance(a, str) for a in args)
            and _string_map(config.get("env", {}))
        )
    if "url" in keys and keys <= _HTTP_KEYS:
        return (
            isinstance(config["url"], str)
            and _string_map(config.get("headers", {}))
            and config.get("transport", "streamable-http") in ("streamable-http", "sse")
        )
    return False


def check_server_config(config: Any) -> None:
    if not isinstance(config, dict):
        raise RpcError(
            INVALID_PARAMS,
            f"invalid server_config: invalid type: {json_kind(config)}, expected struct McpServerConfig",
        )
    timeout = config.get("connect_timeout_secs")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout < 2**32
    ):
        raise RpcError(
            INVALID_PARAMS, f"invalid server_config: invalid type: {json_kind(timeout)}, expected u32"
        )
    if not _transport_ok(config):
        raise RpcError(INVALID_PARAMS, _UNTAGGED)


class McpState:
    """One session's staged MCP operations and its lifecycle event counter."""

    def __init__(self) -> None:
        self.staged: Dict[str, str] = {}  # by name, in staging order
        self.seq = 0
        self.runs = 0


class Admin:
    """Realm config and per-session MCP staging for one scripted runtime process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = RealmConfig(server.config.realm)
        self._lock = threading.Lock()
        self._mcp: Dict[str, McpState] = {}

    # -- config, models, skills -------------------------------------------------------------

    def config_get(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return self.config.envelope()

    def config_set(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        if not message.has_params or message.params is None:
            raise RpcError(INVALID_PARAMS, "Missing params")
        return self.config.set(message.params)

    def config_patch(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        if not message.has_params or message.params is None:
            raise RpcError(INVALID_PARAMS, "Missing params")
        return self.config.patch(message.params)

    def models_catalog(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return {"contract_version": {"major": 0, "minor": 5, "patch": 0}, "providers": PROVIDERS}

    def skills_list(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return {"skills": SKILLS}

    def skills_inspect(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        # This handler's serde errors are lowercase, unlike every other method's.
        if not message.has_params or message.params is None:
            raise RpcError(INVALID_PARAMS, "missing params")
        try:
            params = SKILLS_INSPECT(message.params)
        except ParamError as exc:
            error = invalid_params(message.params, exc)
            raise RpcError(INVALID_PARAMS, "i" + error.message[1:]) from None
        skill = SKILL_DETAILS.get(params["id"])
        source = params.get("source")
        if skill is None or (source is not None and source != "embedded"):
            raise RpcError(INTERNAL_ERROR, f"skill inspect failed: skill not found: {params['id']}")
        return skill

    # -- mcp ----------------------------------------------------------------------------------

    def _session(self, params: JsonDict, name: Optional[str]) -> str:
        """The session's id after the checks the real server makes first, in its order."""
        session_id = parse_session_id(params["session_id"], self.server.config.realm)
        if name is not None and not name.strip():
            raise RpcError(INVALID_PARAMS, "server_name cannot be empty")
        self.server.store.live(session_id)
        return session_id

    def _state(self, session_id: str) -> McpState:
        with self._lock:
            return self._mcp.setdefault(session_id, McpState())

    @staticmethod
    def _result(params: JsonDict, operation: str, name: Optional[str]) -> JsonDict:
        out: JsonDict = {"session_id": params["session_id"], "operation": operation}
        if name is not None:
            out["server_name"] = name
        out.update({"status": "staged", "persisted": False})
        return out

    def mcp_add(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(MCP_ADD, message.params, message.has_params)
        name = params["server_name"]
        state = self._state(self._session(params, name))
        check_server_config(params["server_config"])
        with self._lock:
            state.staged[name] = "add"
        return self._result(params, "add", name)

    def mcp_remove(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(MCP_REMOVE, message.params, message.has_params)
        name = params["server_name"]
        state = self._state(self._session(params, name))
        with self._lock:
            if state.staged.get(name) == "add":
                del state.staged[name]  # never applied: nothing to announce
            else:
                state.staged[name] = "remove"
        return self._result(params, "remove", name)

    def mcp_reload(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(MCP_RELOAD, message.params, message.has_params)
        name = params.get("server_name")
        self._session(params, name)
        if name is not None:  # nothing is ever registered here (see the module docstring)
            raise RpcError(INVALID_PARAMS, f"MCP server '{name}' is not registered on this session")
        return self._result(params, "reload", None)

    def before_run(self, session: Session) -> None:
        """At the run boundary: announce the staged adds, before ``run_started``."""
        state = self._state(session.session_id)
        with self._lock:
            state.runs += 1
            adds = [name for name, op in state.staged.items() if op == "add"]
            state.staged.clear()
            events: List[JsonDict] = []
            for name in adds:
                state.seq += 1
                payload = {
                    "type": "tool_config_changed",
                    "payload": {
                        "operation": "add",
                        "target": name,
                        "status": "pending",
                        "persisted": False,
                        "applied_at_turn": state.runs,
                    },
                }
                events.append(event_notification(session, state.seq, payload))
        for event in events:
            self.server.writer.send_event(event)


def handlers(server: Server) -> Dict[str, Handler]:
    """This family's methods, bound to server."""
    admin = Admin(server)
    server.before_run.append(admin.before_run)  # staged MCP changes apply as a run starts
    return {
        "config/get": admin.config_get,
        "config/set": admin.config_set,
        "config/patch": admin.config_patch,
        "models/catalog": admin.models_catalog,
        "skills/list": admin.skills_list,
        "skills/inspect": admin.skills_inspect,
        "mcp/add": admin.mcp_add,
        "mcp/remove": admin.mcp_remove,
        "mcp/reload": admin.mcp_reload,
    }
