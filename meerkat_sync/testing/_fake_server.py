"""The scripted runtime's serve loop and method handlers (rkat-rpc 0.5.0 semantics)."""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
import traceback
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from meerkat_sync.testing import _fake_admin, _fake_inputs, _fake_mobs, _fake_streams
from meerkat_sync.testing import _fake_params as params_schema
from meerkat_sync.testing._fake_callbacks import ServerRequests
from meerkat_sync.testing._fake_constants import (
    BUILTIN_TOOLS,
    CANCELLED_BEFORE_PUBLISH,
    CAPABILITIES,
    DEFAULT_CAPABILITY_STATUS,
    DEFAULT_MODEL,
    DEFAULT_STRUCTURED_OUTPUT_RETRIES,
    DEFAULT_SYSTEM_PROMPT,
    EOF_GRACE_S,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    KEEP_ALIVE_MESSAGE,
    KEEP_ALIVE_WAIT_S,
    METHOD_NOT_FOUND,
    METHODS,
    REQUEST_CANCELLED,
    RESERVED_PEER_LABELS,
    RUN_CANCELLED,
    SERVER_NAME,
    SERVER_VERSION,
    SESSION_NOT_FOUND,
    SHELL_TOOLS,
    SKILL_TOOLS,
    TURN_OVERRIDE_MESSAGE,
    TURN_OVERRIDES,
)
from meerkat_sync.testing._fake_params import (
    Content,
    admit,
    check_skill_aliases,
    merge_content,
    model_text,
    parse,
    parse_session_id,
    with_instructions,
)
from meerkat_sync.testing._fake_run import Run, RunEnv, abandoned, failure
from meerkat_sync.testing._fake_runtime import (
    RUNTIME_RETIRED,
    Input,
    Respond,
    RunOutcome,
    SessionRuntime,
)
from meerkat_sync.testing._fake_schema import OutputSchema
from meerkat_sync.testing._fake_script import (
    ProviderErrorSpec,
    ReplySpec,
    Script,
    SpecError,
    parse_directive,
)
from meerkat_sync.testing._fake_sessions import Session, SessionConfig, SessionStore, infer_provider
from meerkat_sync.testing._fake_wire import (
    HANDLED,
    IncomingRequest,
    IncomingResponse,
    JsonDict,
    LineError,
    RpcError,
    Writer,
    error_response,
    id_key,
    parse_error,
    parse_message,
    response,
)

ABSENT = object()
"""Capability status meaning "not compiled in": the entry is left out."""

#: A method handler: the request, and the cancel state of a long-running one.
Handler = Callable[[IncomingRequest, Optional["RequestCtx"]], Any]
_LONG_RUNNING = ("turn/start", "session/create")


class ServerConfig:
    """Everything decided on the command line."""

    def __init__(
        self,
        realm: str,
        script: Script,
        contract_version: str,
        answer_initialize: bool = True,
        capability_status: Optional[Dict[str, Any]] = None,
        notification_queue: Optional[int] = None,
        without_methods: Sequence[str] = (),
    ) -> None:
        self.realm = realm
        self.script = script
        self.contract_version = contract_version
        self.answer_initialize = answer_initialize
        self.capability_status = dict(capability_status or {})
        self.notification_queue = notification_queue
        self.without_methods = frozenset(without_methods)


class RequestCtx:
    """Cancellation state of one long-running request and the input it queued."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._target: Optional[Tuple[Session, Input]] = None

    def bind(self, session: Session, item: Input) -> None:
        with self._lock:
            self._target = (session, item)
            if self.cancelled.is_set():
                session.runtime.cancel(item)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            if self._target is not None:
                session, item = self._target
                session.runtime.cancel(item)


def tracing_line(level: str, target: str, message: str, fields: Sequence[Tuple[str, Any]] = ()) -> str:
    """A line shaped like tracing-subscriber's default stdout format."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if os.environ.get("NO_COLOR"):
        tail = "".join(f" {name}={value}" for name, value in fields)
        return f"{stamp} {level:>5} {target}: {message}{tail}"
    tail = "".join(f" \x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{value}" for name, value in fields)
    return (
        f"\x1b[2m{stamp}\x1b[0m \x1b[31m{level:>5}\x1b[0m \x1b[2m{target}\x1b[0m\x1b[2m:\x1b[0m "
        f"{message}{tail}"
    )


def session_tools(params: JsonDict) -> List[str]:
    """The tool names a session is given, for ``flow_tool_overlay`` checks."""
    names: List[str] = []
    if params.get("enable_builtins") is not False:
        names += BUILTIN_TOOLS
        names += SHELL_TOOLS if params.get("enable_shell") is not False else ()
        names += SKILL_TOOLS
    names += [tool["name"] for tool in params.get("external_tools") or ()]
    return names


class Server:
    """Reads stdin in one thread and handles every request with an id in its own thread."""

    def __init__(self, config: ServerConfig, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.config = config
        self.stdin = stdin
        self.stderr = stderr
        self.writer = Writer(stdout, config.notification_queue)
        self.callbacks = ServerRequests(self.writer)
        self.store = SessionStore(config.realm, self._new_runtime)
        self.tools: Dict[str, JsonDict] = {}
        self.env = RunEnv(self.writer, self.callbacks, stderr, self.store.blobs, self.tools)
        self._lock = threading.Lock()
        self._requests: Dict[str, RequestCtx] = {}
        self._woken: List[SessionRuntime] = []
        self._handlers: Dict[str, Handler] = {
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
            "runtime/state": self._runtime_state,
            "runtime/reset": self._runtime_reset,
            "input/list": self._input_list,
            "blob/get": self._blob_get,
        }
        self.streams = _fake_streams.StreamHub(self)  # subscriptions; mob code publishes here
        #: Called with the session at the start of each of its runs (MCP staging applies there).
        self.before_run: List[Callable[[Session], None]] = []
        for family in (_fake_streams, _fake_admin, _fake_inputs, _fake_mobs):
            self._handlers.update(family.handlers(self))
        for method in config.without_methods:
            self._handlers.pop(method, None)

    # -- serve loop ------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until stdin EOF (status 0) or a read error such as invalid UTF-8 (status 1).

        Input is read in chunks; turns queued by one chunk start only once the whole chunk
        was handled, so a ``cancel`` written together with its ``turn/start`` finds the
        turn still queued, as the real server does.
        """
        buffered = bytearray()
        while True:
            chunk = self.stdin.read1(65536)  # type: ignore[attr-defined]
            buffered += chunk
            lines = buffered.split(b"\n")
            buffered = bytearray(lines.pop()) if chunk else bytearray()
            for raw in lines:
                self._line(bytes(raw))
            self._wake_queued()
            if not chunk:
                break
        self._shutdown()
        return 0

    def _line(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fatal('Custom { kind: InvalidData, error: "stream did not contain valid UTF-8" }')
        text = text.strip()
        if text:
            self._dispatch(text)

    def _wake_queued(self) -> None:
        woken, self._woken = self._woken, []
        for runtime in woken:
            runtime.wake()

    def fatal(self, detail: str, status: int = 1) -> None:
        """End like ``main`` returning an error: ``Error: ...`` on stderr, no cleanup."""
        self.writer.freeze()
        try:
            self.stderr.write(f"Error: {detail}\n".encode())
            self.stderr.flush()
        finally:
            os._exit(status)

    def _shutdown(self) -> None:
        """EOF: stop every run, give them 5 s, write nothing more."""
        self.writer.stop()
        sessions = self.store.all()
        for session in sessions:
            session.runtime.stop_all()
        deadline = time.monotonic() + EOF_GRACE_S
        for session in sessions:
            session.runtime.join(max(0.0, deadline - time.monotonic()))

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
            # Runs inline in the read loop and answers even without an id (a real quirk).
            self._handle(message, None)
            return
        if message.id is None:
            if message.method == "cancel":
                self._cancel(message.params)
            return
        if message.method in _LONG_RUNNING:
            # Queued in arrival order, right here: they never block (the answer comes later).
            ctx = RequestCtx()
            with self._lock:
                self._requests[str(id_key(message.id))] = ctx
            self._handle(message, ctx)
            return
        thread = threading.Thread(
            target=self._handle, args=(message, None), name=f"rpc-{message.method}", daemon=True
        )
        thread.start()

    def _handle(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> None:
        try:
            handler = self._handlers.get(message.method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {message.method}")
            result = handler(message, ctx)
            if result is not HANDLED:
                self._forget(message, ctx)
                self.writer.send(response(message.id, result))
        except RpcError as exc:
            self._forget(message, ctx)
            answer_id = None if exc.null_id else message.id
            self.writer.send(error_response(answer_id, exc.code, exc.message, exc.data))
        except Exception as exc:  # a bug in the fake: answer, and show it like a panic would
            self._forget(message, ctx)
            self.stderr.write(traceback.format_exc().encode())
            self.stderr.flush()
            self.writer.send(error_response(message.id, INTERNAL_ERROR, f"fake-rkat-rpc: {exc}"))

    def _forget(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> None:
        if ctx is None:
            return
        key = str(id_key(message.id))
        with self._lock:
            if self._requests.get(key) is ctx:
                del self._requests[key]

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
            return HANDLED
        return {
            "server_info": {"name": SERVER_NAME, "version": SERVER_VERSION},
            "contract_version": self.config.contract_version,
            "methods": [m for m in METHODS if m not in self.config.without_methods],
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
        tools = parse(params_schema.REGISTER_TOOLS, message.params, message.has_params)["tools"]
        for tool in tools:
            self.tools[tool["name"]] = tool
        return {"registered": len(tools)}

    # -- running inputs --------------------------------------------------------------------

    def _new_runtime(self, session: Session) -> SessionRuntime:
        return SessionRuntime(lambda item: self._execute(session, item))

    def _spec_for(self, prompt_text: str) -> ReplySpec:
        """The reply spec of one run; a bad directive is what the model endpoint makes of it."""
        try:
            directive = parse_directive(prompt_text)
        except SpecError as exc:
            spec = ReplySpec()
            spec.provider_error = ProviderErrorSpec(
                400, "invalid_request_error", f"invalid fake directive: {exc}", None, None
            )
            return spec
        return directive if directive is not None else self.config.script.select(prompt_text)

    def _execute(self, session: Session, item: Input) -> RunOutcome:
        """Run one input on its session (called on the session's runtime loop)."""
        for hook in self.before_run:
            hook(session)
        if item.cancel_at_start or item.interrupt.is_set():
            return failure(f"agent error: {RUN_CANCELLED}")
        was_pending = session.pending
        prompt = item.prompt
        pending = session.take_pending_prompt()
        if pending is not None:
            prompt = merge_content(pending, prompt)
        problem = self._apply_turn(session, item.turn, was_pending)
        session.agent_running = problem is None
        if problem is not None:
            return failure(problem)
        spec = item.spec if item.spec is not None else self._spec_for(model_text(prompt))
        return Run(self.env, session, spec, prompt, item.interrupt, item.started).execute()

    def _apply_turn(self, session: Session, turn: JsonDict, was_pending: bool) -> Optional[str]:
        """A turn's model override and tool overlay; the failure text if they cannot apply."""
        model, provider = turn.get("model"), turn.get("provider")
        if provider is not None and model is None:
            where = "a session turn" if was_pending else "an existing session"
            return f"provider override requires model on {where}"
        if model is not None:
            session.model = model
            session.provider = infer_provider(model, provider)
        overlay = turn.get("flow_tool_overlay") or {}
        named = (overlay.get("allowed_tools") or []) + (overlay.get("blocked_tools") or [])
        unknown = sorted(set(named) - set(session.config.tools) - set(self.tools))
        if unknown:
            return f"agent error: Configuration error: Unknown tool(s) in filter: {json.dumps(unknown)}"
        return None

    def _respond_to(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> Respond:
        """Answer a run's request: its RunResult, its error, or -32005 once it was cancelled."""

        def respond(outcome: RunOutcome) -> None:
            self._forget(message, ctx)
            if outcome.result is not None:
                self.writer.send(response(message.id, outcome.result))
            elif ctx is not None and ctx.cancelled.is_set():
                self.writer.send(error_response(message.id, REQUEST_CANCELLED, CANCELLED_BEFORE_PUBLISH))
            else:
                assert outcome.error is not None
                self.writer.send(error_response(message.id, outcome.error.code, outcome.error.message))

        return respond

    def _submit(self, session: Session, item: Input, ctx: Optional[RequestCtx]) -> Any:
        """Queue a request's input; the loop starts once the current input chunk is handled."""
        session.runtime.submit(item, wake=False)
        self._woken.append(session.runtime)
        if ctx is not None:
            ctx.bind(session, item)
        return HANDLED

    def _turn_start(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = parse(params_schema.TURN_START, message.params, message.has_params)
        session_id = parse_session_id(params["session_id"], self.config.realm)
        check_skill_aliases(params.get("skill_refs"), params.get("skill_references"))
        overrides = [key for key in TURN_OVERRIDES if params.get(key) is not None]
        if overrides:
            raise RpcError(INVALID_PARAMS, TURN_OVERRIDE_MESSAGE.format(fields=", ".join(overrides)))
        session = self.store.find(session_id)
        if params.get("keep_alive"):
            if session is None or session.config.comms_name is None or session.pending:
                raise RpcError(INVALID_PARAMS, KEEP_ALIVE_MESSAGE)
            session.keep_alive = True
        if session is None or (session.archived and not session.orphaned):
            raise abandoned(f"session not found: {session_id}")
        if session.runtime.retired:
            raise RpcError(INTERNAL_ERROR, RUNTIME_RETIRED)
        prompt = with_instructions(admit(params["prompt"]), params.get("additional_instructions"))
        return self._submit(session, Input(prompt, self._respond_to(message, ctx), turn=params), ctx)

    # -- session methods -------------------------------------------------------------------

    def _session_create(self, message: IncomingRequest, ctx: Optional[RequestCtx]) -> Any:
        params = parse(params_schema.SESSION_CREATE, message.params, message.has_params)
        check_skill_aliases(params.get("skill_refs"), params.get("skill_references"))
        _check_peer_meta(params.get("peer_meta"))
        deferred = params.get("initial_turn") == "deferred"
        config = _session_config(params, self.tools)
        session = self.store.create(config, params["prompt"] if deferred else None)
        if deferred:  # kept as sent: the merge with the first turn's prompt flattens it
            return {"session_id": session.session_id, "session_ref": session.session_ref}
        prompt = admit(params["prompt"])
        if params.get("keep_alive"):
            return self._create_keep_alive(message, ctx, session, prompt)
        respond = self._respond_to(message, ctx)

        def answer_and_clean_up(outcome: RunOutcome) -> None:
            if outcome.failed:
                self._orphan(session)
            respond(outcome)

        return self._submit(session, Input(prompt, answer_and_clean_up), ctx)

    def _orphan(self, session: Session) -> None:
        """A failed immediate create is archived; later turns on it wait for the next archive."""
        session.store_snapshot()
        session.archived = True
        session.orphaned = True
        session.runtime.detach()

    def _create_keep_alive(
        self, message: IncomingRequest, ctx: Optional[RequestCtx], session: Session, prompt: Content
    ) -> Any:
        """Answer an empty RunResult; the first turn runs on (comms: once it started, else 250 ms)."""
        session.keep_alive = session.config.comms_name is not None
        item = Input(prompt, lambda outcome: self._log_host_failure(session, outcome))
        self._submit(session, item, None)
        empty = {
            "session_id": session.session_id,
            "session_ref": session.session_ref,
            "text": "",
            "turns": 0,
            "tool_calls": 0,
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }

        def answer_later() -> None:
            if session.config.comms_name is not None:
                item.started.wait(KEEP_ALIVE_WAIT_S)
            else:
                time.sleep(KEEP_ALIVE_WAIT_S)
            self._forget(message, ctx)
            self.writer.send(response(message.id, empty))

        threading.Thread(target=answer_later, name="rpc-keep-alive", daemon=True).start()
        return HANDLED

    def _log_host_failure(self, session: Session, outcome: RunOutcome) -> None:
        if outcome.error is None:
            return
        fields = (("session_id", session.session_id), ("error", outcome.error.code))
        message = f"Host-mode session start failed: {outcome.error.message}"
        line = tracing_line("ERROR", "meerkat_rpc::handlers::session", message, fields)
        self.writer.write((line + "\n").encode())

    def _session_id(self, message: IncomingRequest, struct: Any = params_schema.SESSION_ONLY) -> str:
        params = parse(struct, message.params, message.has_params)
        return parse_session_id(params["session_id"], self.config.realm)

    def _turn_interrupt(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        session_id = self._session_id(message)
        session = self.store.find(session_id)
        if session is None or session.archived:
            raise RpcError(SESSION_NOT_FOUND, f"session not found: {session_id}")
        session.runtime.interrupt()
        return {"interrupted": True}

    def _session_list(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(params_schema.LIST, message.params, message.has_params, optional_params=True)
        labels = params.get("labels") or {}
        offset = params.get("offset") or 0
        limit = params.get("limit")
        sessions = [s for s in self.store.listed() if all(s.labels.get(k) == v for k, v in labels.items())]
        sessions = sessions[offset:] if limit is None else sessions[offset : offset + limit]
        return {"sessions": [s.summary() for s in sessions]}

    def _session_read(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return self.store.get(self._session_id(message)).info()

    def _session_history(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(params_schema.HISTORY, message.params, message.has_params)
        session = self.store.get(parse_session_id(params["session_id"], self.config.realm))
        return session.history(params.get("offset") or 0, params.get("limit"))

    def _session_archive(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        session = self.store.get(self._session_id(message))
        if not session.archived or session.orphaned:
            session.store_snapshot()
            session.archived = True
            session.orphaned = False
            session.runtime.unregister()
        # Its event source is gone: open streams end before the archive response (probe §2).
        self.streams.end(_fake_streams.session_topic(session.session_id), "remote_end")
        return {"archived": True}

    def _runtime_state(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return {"state": self.store.live(self._session_id(message)).runtime.state()}

    def _runtime_reset(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return {"inputs_abandoned": self.store.live(self._session_id(message)).runtime.reset()}

    def _input_list(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        return {"input_ids": self.store.live(self._session_id(message)).runtime.input_ids()}

    def _blob_get(self, message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        blob = parse(params_schema.BLOB_GET, message.params, message.has_params)["blob_id"]
        stored = self.store.blobs.get(blob)
        if stored is None:
            raise RpcError(INVALID_PARAMS, f"blob not found: {blob}")
        return {"blob_id": blob, "media_type": stored[0], "data": stored[1]}


def _session_config(params: JsonDict, registered: Mapping[str, JsonDict]) -> SessionConfig:
    model = params.get("model") or DEFAULT_MODEL
    system_prompt = params.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
    for section in params.get("additional_instructions") or ():
        system_prompt += "\n\n" + section
    retries = params.get("structured_output_retries")
    return SessionConfig(
        model=model,
        provider=infer_provider(model, params.get("provider")),
        labels=params.get("labels") or {},
        system_prompt=system_prompt,
        comms_name=params.get("comms_name"),
        tools=session_tools(params),
        callback_tools=frozenset([*registered, *(t["name"] for t in params.get("external_tools") or ())]),
        output_schema=_output_schema(params.get("output_schema")),
        structured_output_retries=DEFAULT_STRUCTURED_OUTPUT_RETRIES if retries is None else retries,
        budget_limits=params.get("budget_limits"),
    )


def _output_schema(raw: Any) -> Optional[OutputSchema]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RpcError(INVALID_PARAMS, "Invalid output_schema: expected a JSON object")
    return OutputSchema(raw)


def _check_peer_meta(peer_meta: Optional[JsonDict]) -> None:
    labels = (peer_meta or {}).get("labels") or {}
    for key in RESERVED_PEER_LABELS:
        if key in labels:
            raise RpcError(INVALID_PARAMS, f"peer_meta label '{key}' is reserved for mob-managed sessions")


def _version_object(version: str) -> JsonDict:
    """``capabilities/get`` reports the version as ``{major, minor, patch}``."""
    parts = version.split(".")
    numbers: List[int] = []
    for part in [*parts, "0", "0", "0"][:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return {"major": numbers[0], "minor": numbers[1], "patch": numbers[2]}


__all__ = ["ABSENT", "Handler", "RequestCtx", "Server", "ServerConfig", "tracing_line"]
