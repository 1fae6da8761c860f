"""The scripted runtime's serve loop and method handlers (rkat-rpc 0.5.0 semantics)."""

from __future__ import annotations

import datetime
import os
import threading
import time
import traceback
from typing import IO, Any, Callable, Dict, List, Optional, Set

from meerkat_sync.testing._fake_callbacks import ServerRequests
from meerkat_sync.testing._fake_constants import (
    CANCELLED_BEFORE_PUBLISH,
    CANCELLED_BEFORE_START,
    CAPABILITIES,
    DEFAULT_CAPABILITY_STATUS,
    DEFAULT_MODEL,
    EOF_GRACE_S,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    KEEP_ALIVE_WAIT_S,
    METHOD_NOT_FOUND,
    METHODS,
    REQUEST_CANCELLED,
    SERVER_NAME,
    SERVER_VERSION,
    SESSION_NOT_FOUND,
    TURN_OVERRIDE_MESSAGE,
    TURN_OVERRIDES,
)
from meerkat_sync.testing._fake_params import (
    Content,
    content_input,
    content_text,
    invalid,
    merge_content,
    opt_bool,
    opt_str,
    opt_str_map,
    opt_uint,
    optional_object,
    parse_session_id,
    req_field,
    require_object,
)
from meerkat_sync.testing._fake_run import Run, RunEnv, RunOutcome, write_event
from meerkat_sync.testing._fake_script import ReplySpec, Script, SpecError, parse_directive
from meerkat_sync.testing._fake_sessions import RunHandle, Session, SessionStore, infer_provider
from meerkat_sync.testing._fake_wire import (
    IncomingRequest,
    IncomingResponse,
    JsonDict,
    LineError,
    RpcError,
    Writer,
    error_response,
    id_key,
    json_kind,
    parse_error,
    parse_message,
    response,
)

ABSENT = object()
"""Capability status meaning "not compiled in": the entry is left out (§2.3)."""

_HANDLED = object()
_RESERVED_PEER_LABELS = ("mob_id", "role", "meerkat_id")


class ServerConfig:
    """Everything decided on the command line."""

    def __init__(
        self,
        realm: str,
        script: Script,
        contract_version: str,
        answer_initialize: bool = True,
        capability_status: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.realm = realm
        self.script = script
        self.contract_version = contract_version
        self.answer_initialize = answer_initialize
        self.capability_status = dict(capability_status or {})


class RequestCtx:
    """Cancellation state of one long-running request (§1.7)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._handle: Optional[RunHandle] = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            if self._handle is not None:
                self._handle.interrupt.set()

    def attach(self, handle: RunHandle) -> bool:
        """Bind the run about to start; False if the cancel came first."""
        with self._lock:
            if self.cancelled.is_set():
                return False
            self._handle = handle
            return True


def abandoned(message: str) -> RpcError:
    """How a failed run reaches the waiting request (§8.3)."""
    return RpcError(INTERNAL_ERROR, f"turn abandoned: apply failed: Apply failed: {message}")


def tracing_line(level: str, target: str, message: str) -> str:
    """A line shaped like tracing-subscriber's default stdout format (§1.4)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if os.environ.get("NO_COLOR"):
        return f"{stamp} {level:>5} {target}: {message}"
    return f"\x1b[2m{stamp}\x1b[0m \x1b[31m{level:>5}\x1b[0m \x1b[2m{target}\x1b[0m\x1b[2m:\x1b[0m {message}"


class Server:
    """Reads stdin in one thread and handles every request with an id in its own thread."""

    def __init__(self, config: ServerConfig, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.config = config
        self.stdin = stdin
        self.stderr = stderr
        self.writer = Writer(stdout)
        self.callbacks = ServerRequests(self.writer)
        self.env = RunEnv(self.writer, self.callbacks, stderr)
        self.store = SessionStore(config.realm)
        self.tools: Dict[str, JsonDict] = {}
        self._lock = threading.Lock()
        self._requests: Dict[str, RequestCtx] = {}
        self._long_running: Set[threading.Thread] = set()
        self._handlers: Dict[str, Callable[[IncomingRequest, Optional[RequestCtx]], Any]] = {
            "initialize": self._initialize,
            "capabilities/get": self._capabilities,
            "session/create": self._session_create,
            "turn/start": self._turn_start,
            "turn/interrupt": self._turn_interrupt,
            "session/list": self._session_list,
            "session/read": self._session_read,
            "session/history": self._session_history,
            "session/archive": self._session_archive,
            "tools/register": self._tools_register,
        }

    # -- serve loop ------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until stdin EOF (status 0) or a read error such as invalid UTF-8 (status 1)."""
        while True:
            raw = self.stdin.readline()
            if not raw:
                break
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.fatal('Custom { kind: InvalidData, error: "stream did not contain valid UTF-8" }')
            text = text.strip()
            if text:
                self._dispatch(text)
        self._shutdown()
        return 0

    def fatal(self, detail: str, status: int = 1) -> None:
        """End like ``main`` returning an error: ``Error: ...`` on stderr, no cleanup."""
        self.writer.freeze()
        try:
            self.stderr.write(f"Error: {detail}\n".encode())
            self.stderr.flush()
        finally:
            os._exit(status)

    def _shutdown(self) -> None:
        """EOF: cancel long-running requests, give them 5 s, write nothing more (§1.5)."""
        self.writer.stop()
        with self._lock:
            contexts = list(self._requests.values())
            threads = list(self._long_running)
        for ctx in contexts:
            ctx.cancel()
        for session in self.store.all():
            session.interrupt()
        deadline = time.monotonic() + EOF_GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _dispatch(self, text: str) -> None:
        try:
            message = parse_message(text)
        except LineError as exc:
            self.writer.send(parse_error(str(exc)))
            return
        if isinstance(message, IncomingResponse):
            self.callbacks.resolve(message)
            return
        if message.method == "tools/register":
            # Runs inline in the read loop and answers even without an id (§1.5 quirk).
            self._handle(message, None)
            return
        if message.id is None:
            if message.method == "cancel":
                self._cancel(message.params)
            return
        ctx: Optional[RequestCtx] = None
        if message.method in ("turn/start", "session/create"):
            ctx = RequestCtx()
            key = id_key(message.id)
            assert key is not None
            with self._lock:
                self._requests[key] = ctx
        thread = threading.Thread(
            target=self._handle, args=(message, ctx), name=f"rpc-{message.method}", daemon=True
        )
        if ctx is not None:
            with self._lock:
                self._long_running.add(thread)
        thread.start()

    def _handle(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> None:
        try:
            handler = self._handlers.get(message.method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {message.method}")
            result = handler(message, ctx)
            if result is not _HANDLED:
                self.writer.send(response(message.id, result))
        except RpcError as exc:
            self.writer.send(error_response(message.id, exc.code, exc.message))
        except Exception as exc:  # a bug in the fake: answer, and show it like a panic would
            self.stderr.write(traceback.format_exc().encode())
            self.stderr.flush()
            self.writer.send(error_response(message.id, INTERNAL_ERROR, f"fake-rkat-rpc: {exc}"))
        finally:
            if ctx is not None:
                key = id_key(message.id)
                with self._lock:
                    if key is not None and self._requests.get(key) is ctx:
                        del self._requests[key]
                    self._long_running.discard(threading.current_thread())

    def _cancel(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        key = id_key(params.get("request_id"))
        if key is None:
            return
        with self._lock:
            ctx = self._requests.get(key)
        if ctx is not None:
            ctx.cancel()

    # -- handshake -------------------------------------------------------------------------

    def _initialize(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        if not self.config.answer_initialize:
            return _HANDLED
        return {
            "server_info": {"name": SERVER_NAME, "version": SERVER_VERSION},
            "contract_version": self.config.contract_version,
            "methods": list(METHODS),
        }

    def _capabilities(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        overrides = self.config.capability_status
        entries: List[JsonDict] = []
        known = [cap_id for cap_id, _ in CAPABILITIES]
        for cap_id, description in CAPABILITIES:
            status = overrides.get(cap_id, DEFAULT_CAPABILITY_STATUS.get(cap_id, "Available"))
            if status is not ABSENT:
                entries.append({"id": cap_id, "description": description, "status": status})
        for cap_id, status in overrides.items():
            if cap_id not in known and status is not ABSENT:
                entries.append({"id": cap_id, "description": cap_id, "status": status})
        return {"contract_version": _version_object(self.config.contract_version), "capabilities": entries}

    def _tools_register(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = require_object(message.params, message.has_params, "RegisterToolsParams")
        tools = req_field(params, "tools")
        if not isinstance(tools, list):
            raise invalid(f"invalid type: {json_kind(tools)}, expected a sequence")
        for tool in tools:
            if not isinstance(tool, dict):
                raise invalid(f"invalid type: {json_kind(tool)}, expected struct ToolDef")
            for key in ("name", "description"):
                if not isinstance(req_field(tool, key), str):
                    raise invalid(f"invalid type: {json_kind(tool[key])}, expected a string")
            req_field(tool, "input_schema")
        for tool in tools:
            self.tools[tool["name"]] = tool
        return {"registered": len(tools)}

    # -- running turns ---------------------------------------------------------------------

    def _spec_for(self, prompt_text: str) -> ReplySpec:
        directive = parse_directive(prompt_text)
        return directive if directive is not None else self.config.script.select(prompt_text)

    def _fail_without_run(self, session: Session, error: str) -> RunOutcome:
        write_event(
            self.writer, session, {"type": "run_failed", "session_id": session.session_id, "error": error}
        )
        return RunOutcome(error=error)

    def _run_in_slot(
        self,
        message: Optional[IncomingRequest],
        ctx: Optional[RequestCtx],
        session: Session,
        prompt: Content,
        handle: RunHandle,
        on_failure: Optional[Callable[[], object]] = None,
        precheck: Optional[str] = None,
    ) -> None:
        """Run, publish the response, write trailing events, then any unsolicited runs.

        The caller holds the session's slot; it is released by the caller.
        """
        run: Optional[Run] = None
        if precheck is not None:
            outcome = self._fail_without_run(session, precheck)
        else:
            try:
                spec = self._spec_for(content_text(prompt))
            except SpecError as exc:
                outcome = self._fail_without_run(session, f"invalid fake directive: {exc}")
            else:
                run = Run(self.env, session, spec, prompt, handle)
                outcome = run.execute()
        if outcome.result is None and on_failure is not None:
            on_failure()
        if message is not None:
            if outcome.result is not None:
                self.writer.send(response(message.id, outcome.result))
            elif ctx is not None and ctx.cancelled.is_set():
                self.writer.send(error_response(message.id, REQUEST_CANCELLED, CANCELLED_BEFORE_PUBLISH))
            else:
                err = abandoned(outcome.error or "turn completed without result")
                self.writer.send(error_response(message.id, err.code, err.message))
        elif outcome.result is None:
            self.writer.write(
                (
                    tracing_line("ERROR", "meerkat_rpc::session_runtime", f"run failed: {outcome.error}")
                    + "\n"
                ).encode()
            )
        if run is None:
            return
        run.flush_held()
        follow = run.spec.unsolicited
        while follow is not None and not session.archived and self.writer.is_open:
            follow_handle = RunHandle()
            session.hand_over(follow_handle)
            follow_run = Run(self.env, session, follow, follow.prompt or "unsolicited", follow_handle)
            follow_run.execute()
            follow_run.flush_held()
            follow = follow.unsolicited

    def _acquire(self, ctx: Optional[RequestCtx], session: Session, handle: RunHandle) -> bool:
        cancelled: Callable[[], bool] = (lambda: False) if ctx is None else ctx.cancelled.is_set
        if not session.acquire(handle, cancelled):
            return False
        if ctx is not None and not ctx.attach(handle):
            session.release()
            return False
        return True

    def _turn_start(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = require_object(message.params, message.has_params, "TurnStartParams")
        raw_session_id = req_field(params, "session_id")
        prompt = content_input(params, "prompt")
        model = opt_str(params, "model")
        provider = opt_str(params, "provider")
        keep_alive = opt_bool(params, "keep_alive")
        if any(params.get(key) is not None for key in TURN_OVERRIDES):
            raise RpcError(INVALID_PARAMS, TURN_OVERRIDE_MESSAGE)
        session_id = parse_session_id(raw_session_id, self.config.realm)
        session = self.store.find(session_id)
        if session is None:
            raise abandoned(f"Session not found: {session_id}")
        if keep_alive:
            if session.comms_name is None or session.pending:
                raise RpcError(INVALID_PARAMS, "keep_alive requires a session created with comms_name")
            session.keep_alive = True
        if ctx is not None and ctx.cancelled.is_set():
            raise RpcError(REQUEST_CANCELLED, CANCELLED_BEFORE_START)
        handle = RunHandle()
        if not self._acquire(ctx, session, handle):
            if ctx is not None and ctx.cancelled.is_set():
                raise RpcError(REQUEST_CANCELLED, CANCELLED_BEFORE_START)
            raise abandoned(f"Session not found: {session_id}")
        try:
            precheck: Optional[str] = None
            if provider is not None and model is None:
                precheck = "provider override requires a model override"
            else:
                if model is not None:
                    session.model = model
                    session.provider = infer_provider(model, provider)
                pending = session.take_pending_prompt()
                if pending is not None:
                    prompt = merge_content(pending, prompt)
            self._run_in_slot(message, ctx, session, prompt, handle, precheck=precheck)
        finally:
            session.release()
        return _HANDLED

    # -- session methods -------------------------------------------------------------------

    def _session_create(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = require_object(message.params, message.has_params, "CreateSessionParams")
        prompt = content_input(params, "prompt")
        initial_turn = params.get("initial_turn")
        if initial_turn is not None:
            if not isinstance(initial_turn, str):
                raise invalid(f"invalid type: {json_kind(initial_turn)}, expected a string")
            if initial_turn not in ("run_immediately", "deferred"):
                raise invalid(f"unknown variant `{initial_turn}`, expected `run_immediately` or `deferred`")
        model = opt_str(params, "model") or DEFAULT_MODEL
        provider = opt_str(params, "provider")
        system_prompt = opt_str(params, "system_prompt")
        comms_name = opt_str(params, "comms_name")
        labels = opt_str_map(params, "labels")
        keep_alive = opt_bool(params, "keep_alive", null_ok=False)
        opt_uint(params, "max_tokens", "u32")
        if "structured_output_retries" in params and params["structured_output_retries"] is None:
            raise invalid("invalid type: null, expected u32")
        opt_uint(params, "structured_output_retries", "u32")
        for flag in ("enable_builtins", "enable_shell", "enable_memory", "enable_mob"):
            opt_bool(params, flag)
        _check_peer_meta(params.get("peer_meta"))
        output_schema = params.get("output_schema")
        if output_schema is not None and not isinstance(output_schema, dict):
            raise RpcError(INVALID_PARAMS, "Invalid output_schema: expected a JSON object")
        deferred = initial_turn == "deferred"
        session = self.store.create(
            model=model,
            provider=infer_provider(model, provider),
            labels=labels,
            system_prompt=system_prompt,
            comms_name=comms_name,
            pending_prompt=prompt if deferred else None,
        )
        if deferred:
            return {"session_id": session.session_id, "session_ref": session.session_ref}
        if keep_alive:
            return self._create_keep_alive(message, session, prompt)
        if ctx is not None and ctx.cancelled.is_set():
            self.store.archive(session.session_id)
            raise RpcError(REQUEST_CANCELLED, CANCELLED_BEFORE_START)
        handle = RunHandle()
        if not self._acquire(ctx, session, handle):
            self.store.archive(session.session_id)
            raise RpcError(REQUEST_CANCELLED, CANCELLED_BEFORE_START)
        try:
            self._run_in_slot(
                message,
                ctx,
                session,
                prompt,
                handle,
                on_failure=lambda: self.store.archive(session.session_id),
            )
        finally:
            session.release()
        return _HANDLED

    def _create_keep_alive(self, message: IncomingRequest, session: Session, prompt: Content) -> Any:
        """Flow C: answer an empty RunResult; the first turn runs in the background (§4.1)."""
        empty = {
            "session_id": session.session_id,
            "session_ref": session.session_ref,
            "text": "",
            "turns": 0,
            "tool_calls": 0,
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }
        if session.comms_name is None:
            self.store.archive(session.session_id)
            line = tracing_line(
                "ERROR",
                "meerkat_rpc::handlers::session",
                "keep_alive background turn failed: keep_alive requires comms_name to be set",
            )
            self.writer.write((line + "\n").encode())
            time.sleep(KEEP_ALIVE_WAIT_S)
            return empty
        session.keep_alive = True
        handle = RunHandle()
        self._acquire(None, session, handle)
        self.writer.send(response(message.id, empty))

        def background() -> None:
            try:
                self._run_in_slot(None, None, session, prompt, handle)
            finally:
                session.release()

        threading.Thread(target=background, name="rpc-keep-alive", daemon=True).start()
        return _HANDLED

    def _session_arg(self, message: IncomingRequest, struct: str) -> JsonDict:
        return require_object(message.params, message.has_params, struct)

    def _find(self, params: JsonDict) -> Session:
        session_id = parse_session_id(req_field(params, "session_id"), self.config.realm)
        return self.store.get(session_id)

    def _turn_interrupt(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        self._find(self._session_arg(message, "InterruptParams")).interrupt()
        return {"interrupted": True}

    def _session_list(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = optional_object(message.params, "ListSessionsParams")
        labels = opt_str_map(params, "labels")
        offset = opt_uint(params, "offset") or 0
        limit = opt_uint(params, "limit")
        sessions = [s for s in self.store.all() if all(s.labels.get(k) == v for k, v in labels.items())]
        sessions = sessions[offset:] if limit is None else sessions[offset : offset + limit]
        return {"sessions": [s.summary() for s in sessions]}

    def _session_read(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return self._find(self._session_arg(message, "ReadSessionParams")).info()

    def _session_history(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = self._session_arg(message, "SessionHistoryParams")
        session_id = parse_session_id(req_field(params, "session_id"), self.config.realm)
        offset = opt_uint(params, "offset") or 0
        limit = opt_uint(params, "limit")
        return self.store.get(session_id).history(offset, limit)

    def _session_archive(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = self._session_arg(message, "ArchiveSessionParams")
        session_id = parse_session_id(req_field(params, "session_id"), self.config.realm)
        if self.store.archive(session_id) is None:
            raise RpcError(SESSION_NOT_FOUND, f"Session not found: {session_id}")
        return {"archived": True}


def _check_peer_meta(peer_meta: Any) -> None:
    if peer_meta is None:
        return
    if not isinstance(peer_meta, dict):
        raise invalid(f"invalid type: {json_kind(peer_meta)}, expected struct PeerMeta")
    labels = opt_str_map(peer_meta, "labels")
    for key in _RESERVED_PEER_LABELS:
        if key in labels:
            raise RpcError(INVALID_PARAMS, f"peer_meta label '{key}' is reserved")


def _version_object(version: str) -> JsonDict:
    """``capabilities/get`` reports the version as ``{major, minor, patch}`` (§2.3)."""
    parts = version.split(".")
    numbers: List[int] = []
    for part in [*parts, "0", "0", "0"][:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return {"major": numbers[0], "minor": numbers[1], "patch": numbers[2]}
