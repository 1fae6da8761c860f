"""``MeerkatClient``: spawn rkat-rpc, handshake, and run sessions as blocking calls.

One client owns one child process and is safe to share across threads: every call
blocks only its own thread, and turns on different sessions run in parallel.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

from ._binary import DEFAULT_RKAT_PATH, resolve_rkat_rpc
from ._calls import ClientCalls
from ._config import ConfigMethods
from ._converter import structure
from ._deadline import USE_DEFAULT, Deadline, Slot, Timeout, check_timeout, resolve_timeout, wait_slot
from ._endpoint import Endpoint
from ._inputs import InputMethods
from ._mobs import MobMethods
from ._params import (
    CREATE_OPTIONS,
    Prompt,
    build_params,
    connect_flags,
    list_args,
    positive_int,
    prompt_key,
    session_id_arg,
    str_list,
)
from ._reader import MAX_MESSAGE_BYTES
from ._routing import RESPONSE, STREAM_BUFFER, EventRouter, RunSink, bare_session_id
from ._session import DeferredSession, Session
from ._streaming import EventStream, RunHandle
from ._subscriptions import SubscriptionMethods, SubscriptionRegistry, route_stream_notification
from ._tools import DEFAULT_TOOL_TIMEOUT, ToolMethods, ToolRegistry
from ._transport import ExitInfo, Transport, closed_error
from ._turns import TurnGate
from ._writer import Ticket
from .errors import MeerkatError, MeerkatTimeoutError
from .types import CONTRACT_VERSION, Capability, RunResult, SessionInfo

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import CreateOptions

log = logging.getLogger("meerkat_sync")


def _client_closed() -> MeerkatError:
    return MeerkatError("CLIENT_CLOSED", "this client was closed; create a new MeerkatClient")


T = TypeVar("T")
# connect() and `with` give back the caller's own class (real_client's has `.model`).
_Self = TypeVar("_Self", bound="MeerkatClient")


def contract_compatible(server: Any, client: str = CONTRACT_VERSION) -> bool:
    """0.x needs the same minor, 1.x+ the same major; anything unparsable is incompatible (§2.2)."""
    try:
        theirs = [int(p) for p in str(server).split(".")]
        ours = [int(p) for p in client.split(".")]
    except ValueError:
        return False
    if len(theirs) != 3:
        return False
    if theirs[0] == 0 and ours[0] == 0:
        return theirs[1] == ours[1]
    return theirs[0] == ours[0]


class MeerkatClient(
    SubscriptionMethods,
    ToolMethods,
    ConfigMethods,
    InputMethods,
    MobMethods,
    ClientCalls,
):
    """A blocking client for one ``rkat-rpc`` process.

    ``request_timeout`` bounds control calls (list, read, history, ...); ``turn_timeout``
    bounds turns and streams (``None``: no limit, since agent runs can be long). Every
    method also takes ``timeout=`` to override the default for one call.

    ``restart=True`` starts a new rkat-rpc on the next call after the child died. Calls in
    flight at the crash still fail (a turn is never retried behind your back), and sessions
    survive only if the realm persists them (``connect(realm_id=...)``).

    ``max_message_bytes`` bounds one line from rkat-rpc (64 MiB by default): a longer one is
    dropped while it is read, and a response that long fails its call with
    ``MESSAGE_TOO_LARGE``.

    ``stream_buffer`` bounds each stream's queue: a consumer that falls further behind
    loses the newest deltas (never the run's lifecycle events) and then sees a
    ``StreamTruncated`` with the count, while the reader keeps draining stdout and the
    run's result is still delivered.

    ``tool_workers`` threads run callback tool handlers (:meth:`register_tool`); requests
    beyond that wait for a free one. ``tool_timeout`` is the default ``handler_timeout``
    of a tool: after that many seconds the model gets an error result (``None``: only
    rkat-rpc's own fixed 30 s limit applies).
    """

    def __init__(
        self,
        rkat_path: str = DEFAULT_RKAT_PATH,
        *,
        extra_args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        request_timeout: Optional[float] = 60.0,
        turn_timeout: Optional[float] = None,
        connect_timeout: Optional[float] = 30.0,
        close_timeout: float = 5.0,
        stream_grace: float = 1.0,
        stream_buffer: int = STREAM_BUFFER,
        restart: bool = False,
        command: Optional[Sequence[str]] = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tool_workers: int = 8,
        tool_timeout: Optional[float] = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        self._rkat_path = rkat_path
        self._extra_args = str_list(extra_args, "extra_args")
        self._env = env
        self._cwd = cwd
        self._request_timeout = check_timeout(request_timeout, "request_timeout")
        self._turn_timeout = check_timeout(turn_timeout, "turn_timeout")
        self._connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        self._close_timeout = check_timeout(close_timeout, "close_timeout") or 5.0
        self._stream_grace = check_timeout(stream_grace, "stream_grace") or 1.0
        self._stream_buffer = positive_int(stream_buffer, "stream_buffer")
        self._max_message_bytes = positive_int(max_message_bytes, "max_message_bytes")
        self._command = str_list(command, "command") if command is not None else None
        self._restart = bool(restart)
        self._tool_workers = positive_int(tool_workers, "tool_workers")
        self._tool_registry = ToolRegistry(check_timeout(tool_timeout, "tool_timeout"))
        self._flags: List[str] = []
        self._lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._transport: Optional[Transport] = None
        self._endpoint: Optional[Endpoint] = None
        self._router: Optional[EventRouter] = None
        self._closed = False
        self._forked = False
        self._capabilities: List[Capability] = []
        self._methods: FrozenSet[str] = frozenset()
        self._server_info: Dict[str, Any] = {}
        self._gate = TurnGate()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self._endpoint else "not connected")
        return f"<MeerkatClient {state} pid={self.pid}>"

    # --- lifecycle --------------------------------------------------------------------------

    def connect(
        self: _Self,
        *,
        realm_id: Optional[str] = None,
        instance_id: Optional[str] = None,
        realm_backend: Optional[str] = None,
        isolated: bool = False,
        state_root: Optional[str] = None,
        context_root: Optional[str] = None,
        user_config_root: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> _Self:
        """Spawn rkat-rpc, check its contract version and read its capabilities."""
        flags = connect_flags(
            realm_id=realm_id,
            instance_id=instance_id,
            realm_backend=realm_backend,
            isolated=isolated,
            state_root=state_root,
            context_root=context_root,
            user_config_root=user_config_root,
        )
        deadline = Deadline(resolve_timeout(timeout, self._connect_timeout))
        # An explicit timeout= covers everything, a first-run download included; the default
        # connect_timeout covers the handshake, and a download has its own deadline
        # (MEERKAT_DOWNLOAD_DEADLINE, docs/binary-resolution.rst).
        explicit = timeout is not USE_DEFAULT
        with self._lock:
            if self._closed:
                raise _client_closed()
            if self._endpoint is not None:
                raise MeerkatError("INVALID_ARGS", "the client is already connected")
            self._flags = flags
            self._router, self._endpoint, self._transport = self._spawn(deadline if explicit else None)
            _LIVE_CLIENTS.add(self)
        if not explicit:
            deadline = Deadline(self._connect_timeout)
        try:
            self._handshake(deadline, self._endpoint)
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, deadline: Optional[Deadline] = None) -> Tuple[EventRouter, Endpoint, Transport]:
        """Start a child with its own router, endpoint and transport.

        Each generation's parts are bound to each other, not to ``self``, so a dead child's
        last callbacks can never touch its successor after a restart. ``deadline`` bounds
        finding (and, on a first run, downloading) the binary.
        """
        argv = self._command or [self._resolve_binary(deadline), *self._extra_args]
        router = EventRouter()
        subscriptions = self._new_subscriptions()
        transport: Transport

        def send(ticket: Ticket) -> None:
            transport.send(ticket)

        def drop(ticket: Ticket) -> bool:
            return transport.drop(ticket)

        endpoint = Endpoint(
            send,
            drop,
            router,
            self._make_notification_handler(router, subscriptions),
            self._max_message_bytes,
            workers=self._tool_workers,
        )
        endpoint.register_handler("tool/execute", self._tool_registry)
        self._bind_subscriptions(endpoint, subscriptions)
        transport = Transport(
            [*argv, *self._flags],
            env=self._env,
            cwd=self._cwd,
            on_lines=endpoint.handle_lines,
            on_close=lambda info: self._on_exit(info, endpoint, router),
            on_oversize=endpoint.fail_oversized,
            max_message_bytes=self._max_message_bytes,
        )
        transport.start()
        endpoint.tearable_above = transport.tearable_above
        return router, endpoint, transport

    def _resolve_binary(self, deadline: Optional[Deadline]) -> str:
        left = None if deadline is None else deadline.remaining()
        if left is not None and left <= 0:
            raise MeerkatTimeoutError("connect() ran out of time before rkat-rpc could be started")
        return resolve_rkat_rpc(self._rkat_path, timeout=left).path

    def _respawn(self, broken: Endpoint) -> None:
        """``restart=True``: replace a dead child, once, however many threads notice it."""
        with self._restart_lock:
            if self._endpoint is not broken:
                return  # another thread already restarted it
            log.warning("rkat-rpc went away; starting a new one (restart=True)")
            dead = self._transport
            if dead is not None:
                dead.close(1.0)
            router, endpoint, transport = self._spawn()
            try:
                # Handshake before publishing: no other thread may use a half-started child.
                self._handshake(Deadline(self._connect_timeout), endpoint)
            except BaseException:
                transport.close(1.0)
                raise
            with self._lock:
                if self._closed:
                    transport.close(1.0)
                    raise _client_closed()
                self._router, self._endpoint, self._transport = router, endpoint, transport

    def _handshake(self, deadline: Deadline, endpoint: Endpoint) -> None:
        info = self._call_until("initialize", {}, deadline, endpoint)
        if not isinstance(info, dict):
            raise MeerkatError("INVALID_RESPONSE", f"initialize returned {info!r}, not an object")
        version = info.get("contract_version")
        if not contract_compatible(version):
            raise MeerkatError(
                "VERSION_MISMATCH",
                f"rkat-rpc speaks contract {version!r} but meerkat_sync {CONTRACT_VERSION} needs "
                f"{CONTRACT_VERSION.rsplit('.', 1)[0]}.x; install rkat-rpc {CONTRACT_VERSION} "
                "or a meerkat_sync release matching your runtime",
                details={"server": version, "client": CONTRACT_VERSION},
            )
        self._server_info = info
        methods = info.get("methods")
        self._methods = (
            frozenset(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else frozenset()
        )
        caps = self._call_until("capabilities/get", {}, deadline, endpoint)
        raw_caps = caps.get("capabilities") if isinstance(caps, dict) else None
        self._capabilities = [structure(c, Capability) for c in raw_caps or [] if isinstance(c, dict)]
        self._register_declared_tools(deadline, endpoint)

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the child: close its stdin, wait, then terminate and kill. Idempotent.

        Calls still waiting get ``MeerkatError("CLIENT_CLOSED")``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            transport, endpoint, router = self._transport, self._endpoint, self._router
        _LIVE_CLIENTS.discard(self)
        if self._forked:
            return  # the child process belongs to the parent: never signal or wait for it
        error = MeerkatError("CLIENT_CLOSED", "the client was closed while this call was waiting")
        if endpoint is not None:
            running = endpoint.pending_long_running()
            # Every waiter is settled first, so none sees the answer to the cancels below.
            endpoint.fail_all(error)
            if router is not None:
                router.fail_all(error)
            self._fail_subscriptions(endpoint, error)
            # Cancelled turns let the server's EOF shutdown finish at once (§1.5).
            for request_id in running:
                endpoint.notify("cancel", {"request_id": request_id})
        if transport is not None:
            transport.close(timeout if timeout is not None else self._close_timeout)

    def __enter__(self: _Self) -> _Self:
        if self._endpoint is None:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once closed, or once the child has gone away."""
        return self._closed or (self._endpoint is not None and self._endpoint.closed_error is not None)

    @property
    def pid(self) -> Optional[int]:
        """The rkat-rpc process id, for operators; None before connect()."""
        return self._transport.pid if self._transport is not None else None

    # --- server -----------------------------------------------------------------------------

    @property
    def server_version(self) -> Optional[str]:
        """The version the runtime reported at connect (``"0.5.0"``); None before connect()."""
        info = self._server_info.get("server_info")
        version = info.get("version") if isinstance(info, dict) else None
        return version if isinstance(version, str) else None

    # --- sessions ---------------------------------------------------------------------------

    def create_session(
        self, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT, **options: Unpack[CreateOptions]
    ) -> Session:
        """Create a session and run its first turn; returns once the turn finished."""
        params, key = self._create_params(prompt, options)
        session = Session(self, "")
        self._run(params, session=session, prompt_key=key, timeout=timeout, create=True)
        return session

    def create_session_streaming(
        self, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT, **options: Unpack[CreateOptions]
    ) -> EventStream:
        """Create a session and stream its first turn; ``events.session`` is the new Session."""
        params, key = self._create_params(prompt, options)
        return self._stream(params, session=None, prompt_key=key, timeout=timeout, create=True)

    def create_deferred_session(
        self, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT, **options: Unpack[CreateOptions]
    ) -> DeferredSession:
        """Reserve a session id now; its first turn runs on ``start_turn()``."""
        params, wire_prompt = build_params(prompt, options, CREATE_OPTIONS, "session/create")
        params["initial_turn"] = "deferred"
        reply = self._call("session/create", params, timeout)
        if not isinstance(reply, dict) or not isinstance(reply.get("session_id"), str):
            raise MeerkatError("INVALID_RESPONSE", f"deferred session/create returned {reply!r}")
        return DeferredSession(self, reply["session_id"], reply.get("session_ref"), wire_prompt)

    def session(self, session_id: str) -> Session:
        """A handle for an existing session (e.g. an id kept in a web session cookie)."""
        return Session(self, session_id_arg(session_id))

    def list_sessions(
        self,
        *,
        labels: Optional[Mapping[str, str]] = None,
        limit: Optional[int] = None,
        offset: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> List[SessionInfo]:
        """The realm's sessions that are not archived, optionally only those with all ``labels``."""
        params = list_args(labels, limit, offset)
        reply = self._call("session/list", params, timeout)
        entries = reply.get("sessions") if isinstance(reply, dict) else None
        return [structure(e, SessionInfo) for e in entries or [] if isinstance(e, dict)]

    def read_session(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> SessionInfo:
        """One session's metadata, archived ones included; unknown ids raise SessionNotFoundError."""
        params = {"session_id": session_id_arg(session_id)}
        return self._call_typed("session/read", params, SessionInfo, timeout)

    def _create_params(self, prompt: Prompt, options: Mapping[str, Any]) -> Any:
        params, wire_prompt = build_params(prompt, options, CREATE_OPTIONS, "session/create")
        return params, prompt_key(wire_prompt)

    # --- calls (used by sessions) -----------------------------------------------------------

    def _parts(self) -> Any:
        if self._forked:
            raise MeerkatError(
                "FORKED",
                "this client was connected in the parent process before a fork; create a new "
                "MeerkatClient in this process (for gunicorn, in the post_fork hook)",
            )
        if self._closed:
            raise _client_closed()
        endpoint, router = self._endpoint, self._router
        if endpoint is None or router is None:
            raise MeerkatError(
                "NOT_CONNECTED",
                "the client is not connected; call connect() or use `with MeerkatClient() as client:`",
            )
        error = endpoint.closed_error
        if error is not None:
            if not (self._restart and error.code == "CONNECTION_CLOSED"):
                raise error
            self._respawn(endpoint)
            endpoint, router = self._endpoint, self._router
        return endpoint, router

    def _start_run(
        self,
        params: Mapping[str, Any],
        *,
        session: Optional[Session],
        prompt_key: Optional[str],
        deliver: bool,
        create: bool,
        on_result: Callable[[RunResult], None],
        deadline: Deadline,
    ) -> RunHandle:
        endpoint, router = self._parts()
        method = "session/create" if create else "turn/start"
        gate_key = None if create or session is None else bare_session_id(session.id)
        if gate_key is not None:
            self._enter_turn(gate_key, endpoint, deadline)
        sink = RunSink(prompt_key, deliver, gate_key, self._stream_buffer)
        register = router.add_create if create else router.add_turn
        result: Slot[RunResult] = Slot()
        grace = self._stream_grace

        def settle(answer: Any, error: Optional[BaseException]) -> None:
            # On the reader thread, before any later event of this session is routed.
            run: Optional[RunResult] = None
            if error is None:
                try:
                    run = structure(answer, RunResult)
                except Exception as exc:
                    error = MeerkatError("INVALID_RESPONSE", f"{method} returned a malformed result: {exc}")
            if create:
                router.create_answered(sink, run.session_id if run is not None else None)
            if run is not None:
                on_result(run)
            result.settle(run, error)
            if gate_key is not None:
                self._gate.release(gate_key, failed=_input_left_queued(error))
            router.mark_answered(sink, grace)
            router.post(sink, RESPONSE)

        try:
            request_id, _ = endpoint.request(
                method, params, before_send=lambda _: register(sink), on_answer=settle
            )
        except BaseException:
            router.release(sink, 0.0)
            if gate_key is not None:
                self._gate.release(gate_key, failed=False)
            raise
        return RunHandle(
            sink,
            result,
            cancel=lambda: endpoint.cancel(request_id, method),
            release=lambda: router.release(sink, grace),
        )

    def _enter_turn(self, session_id: str, endpoint: Endpoint, deadline: Deadline) -> None:
        """Wait for this session's previous turn; drop a failed one from the runtime's queue."""
        reset = self._gate.acquire(session_id, deadline)
        if not reset:
            return
        try:
            left = deadline.remaining()
            limit = self._request_timeout if left is None else min(left, self._request_timeout or left)
            reply = self._call_until("runtime/reset", {"session_id": session_id}, Deadline(limit), endpoint)
            log.debug("dropped %r queued input(s) of session %s after a failed turn", reply, session_id)
        except MeerkatError as exc:
            # E.g. a run the server started itself is going on: the turn will queue behind it.
            log.debug("could not reset session %s after a failed turn: %s", session_id, exc)
        except BaseException:
            self._gate.release(session_id, failed=True)
            raise

    def _run(
        self,
        params: Mapping[str, Any],
        *,
        session: Session,
        prompt_key: Optional[str],
        timeout: Timeout,
        create: bool = False,
    ) -> RunResult:
        deadline = Deadline(resolve_timeout(timeout, self._turn_timeout))
        handle = self._start_run(
            params,
            session=session,
            prompt_key=prompt_key,
            deliver=False,
            create=create,
            on_result=session._record,
            deadline=deadline,
        )
        try:
            return wait_slot(handle.result, deadline, "the turn")
        except (MeerkatTimeoutError, KeyboardInterrupt):
            handle.cancel()
            raise
        finally:
            handle.release()

    def _stream(
        self,
        params: Mapping[str, Any],
        *,
        session: Optional[Session],
        prompt_key: Optional[str],
        timeout: Timeout,
        create: bool = False,
    ) -> EventStream:
        turn_timeout = resolve_timeout(timeout, self._turn_timeout)
        stream_ref: Callable[[], Optional[EventStream]]

        def record(result: RunResult) -> None:
            target = session or Session(self, result.session_id)
            target._record(result)
            current = stream_ref()  # weak: a stream nobody holds must be free to go
            if current is not None:
                current._session = target

        def start(deadline: Deadline) -> RunHandle:
            return self._start_run(
                params,
                session=session,
                prompt_key=prompt_key,
                deliver=True,
                create=create,
                on_result=record,
                deadline=deadline,
            )

        stream = EventStream(
            start,
            timeout=turn_timeout,
            grace=self._stream_grace,
            session_id=session.id if session is not None else None,
            session=session,
        )
        stream_ref = weakref.ref(stream)
        return stream

    def _forget_session(self, session_id: str) -> None:
        if self._router is not None:
            self._router.forget_session(session_id)
        self._gate.forget(bare_session_id(session_id))

    # --- notifications and exit -------------------------------------------------------------

    @staticmethod
    def _make_notification_handler(
        router: EventRouter, subscriptions: SubscriptionRegistry
    ) -> Callable[[str, Dict[str, Any]], None]:
        def on_notification(method: str, params: Dict[str, Any]) -> None:
            if method == "session/event":
                session_id, envelope = params.get("session_id"), params.get("event")
                if isinstance(session_id, str) and isinstance(envelope, dict):
                    router.on_event(session_id, envelope)
                else:
                    log.warning("malformed session/event notification: %.200r", params)
            elif not route_stream_notification(subscriptions, method, params):  # a subscription's?
                log.debug("ignoring %s notification", method)

        return on_notification

    def _on_exit(self, info: ExitInfo, endpoint: Endpoint, router: EventRouter) -> None:
        """A child's stdout ended: wake every waiter of that child with the reason."""
        if self._closed:
            return
        error = closed_error(info)
        log.warning("%s", error.message)
        endpoint.fail_all(error)
        router.fail_all(error)
        self._fail_subscriptions(endpoint, error)


def _input_left_queued(error: Optional[BaseException]) -> bool:
    """Did a failed turn leave its input in the runtime's queue (to be replayed)?

    Only a server's answer says so; params it rejected up front (-32602) never got there,
    nor did a turn a retired runtime refused (resetting it would undo the retirement).
    """
    return (
        isinstance(error, MeerkatError)
        and error.rpc_code is not None
        and error.rpc_code != -32602
        and error.code != "RUNTIME_NOT_READY"
    )


#: Clients to close at interpreter exit, so no rkat-rpc outlives the script.
_LIVE_CLIENTS: weakref.WeakSet[MeerkatClient] = weakref.WeakSet()


def _close_live_clients() -> None:
    for client in list(_LIVE_CLIENTS):
        try:
            client.close(timeout=1.0)
        except Exception:  # never let one client stop the others from closing
            log.debug("closing a client at exit failed", exc_info=True)


# Close before the interpreter joins non-daemon threads, so a thread waiting in a turn
# fails at once (CLIENT_CLOSED) instead of holding the exit for the whole turn. The hook
# is CPython's (3.9+); elsewhere atexit does it, after those threads have finished.
_register_exit = getattr(threading, "_register_atexit", None)
if callable(_register_exit):
    _register_exit(_close_live_clients)
else:
    atexit.register(_close_live_clients)


def _disown_after_fork() -> None:
    """In a forked child, inherited clients must neither be used nor close the parent's child.

    The child also lets go of the pipes, so the parent's death still closes rkat-rpc's stdin.
    """
    for client in list(_LIVE_CLIENTS):
        client._forked = True
        if client._transport is not None:
            client._transport.disown_in_child()
    _LIVE_CLIENTS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


__all__ = ["MeerkatClient"]
