"""Method family: mcp/add, mcp/remove, mcp/reload (behind the ``mcp_live`` capability).

0.5.0 only stages these: the change applies at the session's next turn, which reports
it with ``tool_config_changed`` events (a ``pending`` one before the run, then the
outcome inside it, e.g. ``"failed: Connection failed: ..."``). A server that failed to
connect is not registered: reloading it by name is an error, removing it does nothing.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ._calls import ClientCalls
from ._deadline import USE_DEFAULT, Timeout
from ._params import _json, invalid, session_id_arg
from .types import McpLiveOpResponse


def _server_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"server_name must be a non-empty string, not {value!r}")
    return value


def _server_config(value: Any) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(f"server_config must be a dict, not {type(value).__name__}")
    if not isinstance(value.get("command"), str) and not isinstance(value.get("url"), str):
        raise invalid(
            "server_config needs 'command' (a stdio server: {'command': ..., 'args': [...], 'env': {...}}) "
            "or 'url' (an HTTP server: {'url': ..., 'headers': {...}, 'transport': 'streamable-http'|'sse'})"
        )
    checked: Dict[str, Any] = _json(dict(value), "server_config")
    return checked


def _persisted(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"persisted must be True or False, not {value!r}")
    return value


class McpMethods(ClientCalls):
    """Live changes to a session's MCP servers."""

    def _mcp(self, method: str, params: Dict[str, Any], timeout: Timeout) -> McpLiveOpResponse:
        return self._gated_typed(method, params, McpLiveOpResponse, timeout, capability="mcp_live")

    def mcp_add(
        self,
        session_id: str,
        server_name: str,
        server_config: Mapping[str, Any],
        *,
        persisted: bool = False,
        timeout: Timeout = USE_DEFAULT,
    ) -> McpLiveOpResponse:
        """Stage an MCP server for the session's next turn (it connects there, or fails there).

        ``server_config`` is ``{"command", "args"?, "env"?}`` or ``{"url", "headers"?,
        "transport"?}``, plus ``connect_timeout_secs``; the server rejects other keys.
        ``persisted=True`` is accepted and ignored by 0.5.0.
        """
        params = {
            "session_id": session_id_arg(session_id),
            "server_name": _server_name(server_name),
            "server_config": _server_config(server_config),
            "persisted": _persisted(persisted),
        }
        return self._mcp("mcp/add", params, timeout)

    def mcp_remove(
        self, session_id: str, server_name: str, *, persisted: bool = False, timeout: Timeout = USE_DEFAULT
    ) -> McpLiveOpResponse:
        """Stage the removal of an MCP server; a name that is not connected is not an error."""
        params = {
            "session_id": session_id_arg(session_id),
            "server_name": _server_name(server_name),
            "persisted": _persisted(persisted),
        }
        return self._mcp("mcp/remove", params, timeout)

    def mcp_reload(
        self,
        session_id: str,
        *,
        server_name: Optional[str] = None,
        persisted: bool = False,
        timeout: Timeout = USE_DEFAULT,
    ) -> McpLiveOpResponse:
        """Stage a reconnect of one server (it must be connected: else ``INVALID_PARAMS``) or all."""
        params: Dict[str, Any] = {
            "session_id": session_id_arg(session_id),
            "persisted": _persisted(persisted),
        }
        if server_name is not None:
            params["server_name"] = _server_name(server_name)
        return self._mcp("mcp/reload", params, timeout)
