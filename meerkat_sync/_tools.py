"""Method family: callback tools: tool(), register_tool(), answering tool/execute (§7).

rkat-rpc 0.5.0 keeps registered tools process-wide and binds them into a session when the
session is created; a session never sees a tool registered after its creation. So the
client registers its declared tools during ``connect()`` (and again after a restart), and
a tool added later at once, for the sessions created from then on.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

from ._calls import ClientCalls
from ._deadline import USE_DEFAULT, Deadline, Timeout, check_timeout
from ._endpoint import Endpoint
from ._params import invalid
from ._server_requests import TimedHandler
from .errors import CapabilityUnavailableError, MeerkatError

log = logging.getLogger("meerkat_sync")

#: ``fn(arguments) -> str | dict``: what a callback tool runs.
ToolHandler = Callable[[Dict[str, Any]], Any]
F = TypeVar("F", bound=Callable[..., Any])

#: The names every model provider accepts (Anthropic, OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``).
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: rkat-rpc 0.5.0 gives up on a callback after 30 s (fixed). The client's default answers
#: a little earlier, so the model reads which tool was too slow.
DEFAULT_TOOL_TIMEOUT = 25.0


class _Tool:
    __slots__ = ("description", "handler", "input_schema", "limit", "name")

    def __init__(
        self,
        name: str,
        handler: ToolHandler,
        description: str,
        input_schema: Dict[str, Any],
        limit: Any,
    ) -> None:
        self.name = name
        self.handler = handler
        self.description = description
        self.input_schema = input_schema
        self.limit = limit  # seconds, None (no limit) or USE_DEFAULT (the client's tool_timeout)

    def definition(self) -> Dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


class ToolRegistry(TimedHandler):
    """The client's callback tools by name, and the ``tool/execute`` answers they give."""

    def __init__(self, default_limit: Optional[float]) -> None:
        self._tools: Dict[str, _Tool] = {}
        self._lock = threading.Lock()
        self.default_limit = default_limit

    def add(self, tool: _Tool) -> Optional[_Tool]:
        with self._lock:
            previous = self._tools.get(tool.name)
            self._tools[tool.name] = tool
            return previous

    def restore(self, tool: _Tool, previous: Optional[_Tool]) -> None:
        """Undo :meth:`add` (a registration the server refused), unless replaced since."""
        with self._lock:
            if self._tools.get(tool.name) is not tool:
                return
            if previous is None:
                del self._tools[tool.name]
            else:
                self._tools[tool.name] = previous

    def definitions(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [t.definition() for t in self._tools.values()]

    def _lookup(self, params: Any) -> Optional[_Tool]:
        name = params.get("name") if isinstance(params, dict) else None
        with self._lock:
            return self._tools.get(name) if isinstance(name, str) else None

    # --- the tool/execute handler (ServerRequests) -----------------------------------------

    def run(self, params: Any) -> Dict[str, Any]:
        tool = self._lookup(params)
        if tool is None:
            name = params.get("name") if isinstance(params, dict) else None
            log.warning("rkat-rpc asked for callback tool %r, which this client does not have", name)
            return _error(f"Unknown tool: {name}")
        arguments = params.get("arguments")
        try:
            value = tool.handler({} if arguments is None else arguments)
            return {"content": _content(value), "is_error": False}
        except Exception as exc:
            log.exception("callback tool %r failed", tool.name)
            return _error(f"Tool error: {type(exc).__name__}: {exc}")

    def time_limit(self, params: Any) -> Optional[float]:
        tool = self._lookup(params)
        if tool is None:
            return None
        return self.default_limit if tool.limit is USE_DEFAULT else tool.limit

    def timed_out(self, params: Any, limit: float, started: bool) -> Dict[str, Any]:
        name = params.get("name") if isinstance(params, dict) else None
        if started:
            log.warning("callback tool %r did not return within %gs; answered with an error", name, limit)
            return _error(f"Tool timed out: {name} did not return within {limit:g}s")
        log.warning("callback tool %r waited %gs for a free tool worker; answered with an error", name, limit)
        return _error(
            f"Tool timed out: {name} waited {limit:g}s for a free worker (all tool_workers were busy)"
        )


def _error(message: str) -> Dict[str, Any]:
    return {"content": _sendable(message), "is_error": True}


def _content(value: Any) -> str:
    """A str is sent as it is; None as ""; anything else as its JSON text (rkat-rpc takes strings only)."""
    if isinstance(value, str):
        return _sendable(value)
    if value is None:
        return ""
    if inspect.isawaitable(value):
        raise TypeError("the handler returned an awaitable; callback tools are plain functions")
    try:
        return _sendable(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the result cannot be sent as JSON text ({exc}); return a str or a dict") from None


def _sendable(text: str) -> str:
    # A lone surrogate cannot be written as UTF-8: the whole answer would fail.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def make_tool(
    name: Any, handler: Any, description: Any, input_schema: Any, handler_timeout: Any
) -> _Tool:
    """A checked tool; bad input raises INVALID_ARGS before anything is sent."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise invalid(
            f"tool name must be 1-64 letters, digits, '_' or '-' (what model providers accept), not {name!r}"
        )
    if not callable(handler):
        raise invalid(f"the handler of tool {name!r} must be a function fn(arguments) -> str | dict")
    if inspect.iscoroutinefunction(handler):
        raise invalid(
            f"the handler of tool {name!r} is an async function; meerkat_sync runs plain functions "
            "on its own threads: pass a def, not an async def"
        )
    if not isinstance(description, str):
        raise invalid(f"description of tool {name!r} must be a string, not {type(description).__name__}")
    schema = _schema(name, input_schema)
    limit: Any = USE_DEFAULT
    if handler_timeout is not USE_DEFAULT:
        limit = check_timeout(handler_timeout, "handler_timeout")
    return _Tool(name, handler, description or f"Tool: {name}", schema, limit)


def _schema(name: str, input_schema: Any) -> Dict[str, Any]:
    if input_schema is None:
        return {"type": "object"}
    if not isinstance(input_schema, Mapping) or input_schema.get("type") != "object":
        raise invalid(
            f"input_schema of tool {name!r} must be a JSON Schema dict with \"type\": \"object\" "
            f"(tool arguments are an object), not {input_schema!r:.200}"
        )
    try:
        return json.loads(json.dumps(input_schema, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise invalid(f"input_schema of tool {name!r} cannot be sent as JSON: {exc}") from None


def _check_registered(reply: Any, sent: int) -> None:
    count = reply.get("registered") if isinstance(reply, dict) else None
    if count != sent:
        raise MeerkatError(
            "INVALID_RESPONSE",
            f"tools/register registered {count!r} of the {sent} tool(s) sent: {reply!r:.200}",
        )


class ToolMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""

    _tool_registry: ToolRegistry
    _endpoint: Optional[Endpoint]
    _closed: bool

    def tool(
        self,
        name: str,
        *,
        description: str = "",
        input_schema: Optional[Dict[str, Any]] = None,
        handler_timeout: Timeout = USE_DEFAULT,
        timeout: Timeout = USE_DEFAULT,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register_tool`; the function is returned unchanged."""

        def decorator(fn: F) -> F:
            self.register_tool(
                name,
                fn,
                description=description,
                input_schema=input_schema,
                handler_timeout=handler_timeout,
                timeout=timeout,
            )
            return fn

        return decorator

    def register_tool(
        self,
        name: str,
        handler: ToolHandler,
        *,
        description: str = "",
        input_schema: Optional[Dict[str, Any]] = None,
        handler_timeout: Timeout = USE_DEFAULT,
        timeout: Timeout = USE_DEFAULT,
    ) -> None:
        """Offer ``handler`` to the model as the callback tool ``name``.

        Before ``connect()`` the tool is kept and registered during connect (and again after a
        restart); once connected it is registered at once (``tools/register``, bounded by
        ``timeout=``) and a failure raises, leaving the client's tools as they were. rkat-rpc
        binds tools into a session when it is created: **sessions created before this call do
        not get the tool** (the model of such a session gets ``tool_not_found``). Register
        every tool first, or create new sessions afterwards.

        ``handler(arguments)`` runs on one of the client's ``tool_workers`` threads, never on
        the reader thread, and may call the client (say, a turn on another session). It
        returns a str (sent as it is), a dict or another JSON value (sent as its JSON text),
        or None (""). An exception becomes an error result ``"Tool error: <type>: <message>"``
        for the model, and its traceback is logged. ``handler_timeout`` (seconds; default the
        client's ``tool_timeout``; None: no limit of the client's own) bounds the time from
        the request's arrival to the answer: then an error result is sent, the handler keeps
        running (a thread cannot be killed) and its late result is discarded. rkat-rpc 0.5.0
        itself gives up on a callback after 30 s. Registering a name again replaces the tool.
        """
        tool = make_tool(name, handler, description, input_schema, handler_timeout)
        check_timeout(None if timeout is USE_DEFAULT else timeout)
        previous = self._tool_registry.add(tool)
        if self._endpoint is None and not self._closed:
            return  # registered during connect()
        if not self._methods and self._endpoint is not None and self._endpoint.closed_error is None:
            return  # connect() is between spawning and initialize: its registration takes it
        try:
            reply = self._gated("tools/register", {"tools": [tool.definition()]}, timeout)
            _check_registered(reply, 1)
        except BaseException:
            self._tool_registry.restore(tool, previous)
            raise
        log.debug("registered callback tool %r", name)

    def _register_declared_tools(self, deadline: Deadline, endpoint: Endpoint) -> None:
        """During the handshake: every tool declared so far, in one ``tools/register``."""
        definitions = self._tool_registry.definitions()
        if not definitions:
            return
        if "tools/register" not in self._methods:
            raise CapabilityUnavailableError(
                "CAPABILITY_UNAVAILABLE",
                f"callback tools {[d['name'] for d in definitions]} were declared, but this rkat-rpc "
                "does not offer tools/register (it is not in initialize.methods)",
                details={"method": "tools/register"},
            )
        reply = self._call_until("tools/register", {"tools": definitions}, deadline, endpoint)
        _check_registered(reply, len(definitions))
