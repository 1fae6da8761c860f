"""A loopback Anthropic Messages API whose replies come from a reply script.

The real ``rkat-rpc`` calls it as its model provider, so real turns run with no network
and no tokens spent. The script vocabulary is the scripted runtime's (``fake:{...}``
prompts, ``rules``/``replies``/``default``), so one script drives either backend. Every
request is recorded, so a test can assert what the runtime actually asked the model.
"""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import logging
import socket
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import attrs

from meerkat_sync.testing._fake_script import (
    ReplySpec,
    Script,
    SpecError,
    directive_object,
    parse_script,
    parse_spec,
)
from meerkat_sync.testing._model_plan import (
    AFTER_TOOLS,
    EXTRACTION,
    FIRST,
    Block,
    PlannedCall,
    RunPlan,
    error_body,
    runtime_only_fields,
    thinking_signature,
    usage_json,
)

log = logging.getLogger("meerkat_sync")

JsonDict = Dict[str, Any]

#: How often a hanging reply checks whether its caller went away.
_HANG_PING_S = 0.1


@attrs.frozen
class RecordedRequest:
    """One request the endpoint received, as the model saw it."""

    path: str
    headers: Dict[str, str]
    body: Any
    status: int

    @property
    def model(self) -> Optional[str]:
        """The ``model`` the runtime asked for (e.g. ``claude-opus-4-6``), if any."""
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def system(self) -> Any:
        """The system prompt: a string, a list of text blocks, or None."""
        return self.body.get("system") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> List[JsonDict]:
        """The conversation the runtime sent, in Anthropic's ``messages`` shape."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def tools(self) -> List[JsonDict]:
        """The tool definitions the runtime offered the model."""
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return tools if isinstance(tools, list) else []

    @property
    def tool_names(self) -> List[str]:
        """The names of :attr:`tools`, to assert which tools a session offers."""
        return [str(t.get("name")) for t in self.tools if isinstance(t, dict)]

    @property
    def prompt(self) -> str:
        """The text of the last user message (what a script rule is matched against)."""
        return _last_user_text(self.messages)

    @property
    def tool_results(self) -> List[JsonDict]:
        """The ``tool_result`` blocks sent back in the last message, if any."""
        return _tool_results(self.messages)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _last_user_text(messages: List[JsonDict]) -> str:
    index = _prompt_index(messages, extraction=False)
    return _content_text(messages[index].get("content")) if index >= 0 else ""


#: The user messages the real runtime adds to ask for (and re-ask for) structured output.
_EXTRACTION_PROMPTS = ("Provide the final output as valid JSON", "The previous output was invalid:")


def _prompt_index(messages: List[JsonDict], extraction: bool) -> int:
    """Index of the message that started this run: the last real user prompt."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or message.get("role") != "user" or _tool_results([message]):
            continue
        if extraction and _content_text(message.get("content")).startswith(_EXTRACTION_PROMPTS):
            continue
        return index
    return -1


def _tool_results(messages: List[JsonDict]) -> List[JsonDict]:
    if not messages or not isinstance(messages[-1], dict):
        return []
    content = messages[-1].get("content")
    if messages[-1].get("role") != "user" or not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def check_model_script(raw: Any) -> None:
    """Refuse scripts that ask the model for things only the scripted runtime can do."""
    if not isinstance(raw, dict):
        return
    specs: List[Tuple[str, Any]] = [("default", raw.get("default"))]
    specs += [(f"replies[{i}]", r) for i, r in enumerate(raw.get("replies") or [])]
    specs += [
        (f"rules[{i}].reply", r.get("reply"))
        for i, r in enumerate(raw.get("rules") or [])
        if isinstance(r, dict)
    ]
    for where, spec in specs:
        fields = runtime_only_fields(spec)
        if fields:
            raise SpecError(
                f"{where} uses {', '.join(fields)}, which only the scripted runtime can do; "
                "the model endpoint scripts what the model says, not how the runtime behaves"
            )


class _Reply(Exception):
    """An HTTP error the handler should answer with."""

    def __init__(self, status: int, body: JsonDict, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _invalid(message: str) -> _Reply:
    return _Reply(400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}})


class ModelEndpoint:
    """A scripted Anthropic Messages API on ``127.0.0.1``; use it as a context manager.

    ``script`` is a reply script (a dict, or a path to a JSON file) in the scripted
    runtime's format; prompts starting with ``fake:{...}`` script their own reply either
    way. ``api_key``, when given, must match the ``x-api-key`` header (else 401).
    """

    def __init__(self, script: Any = None, *, api_key: Optional[str] = None, port: int = 0) -> None:
        raw = _load_raw(script)
        check_model_script(raw)
        self._script: Script = parse_script(raw) if raw is not None else Script()
        self._api_key = api_key
        self._lock = threading.Lock()
        self._requests: List[RecordedRequest] = []
        self._arrived = threading.Condition(self._lock)
        self._runs: Dict[str, RunPlan] = {}
        self._ids = (f"toolu_{n:06d}" for n in itertools.count(1))
        self._messages = itertools.count(1)
        self._stop = threading.Event()
        endpoint = self

        class Handler(_Handler):
            owner = endpoint

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meerkat-model-endpoint", daemon=True
        )
        self._thread.start()

    # --- public surface --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure as the provider's (no trailing ``/v1``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> List[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> List[RecordedRequest]:
        """Block until at least ``count`` requests arrived (or ``timeout``); return them all."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests recorded so far, so a test can look at the next ones only."""
        with self._lock:
            self._requests.clear()

    def close(self) -> None:
        """Stop serving; hanging replies end at once. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> ModelEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request handling (handler threads) ------------------------------------------------

    def _record(self, path: str, headers: Mapping[str, str], body: Any, status: int) -> None:
        with self._arrived:
            self._requests.append(RecordedRequest(path, dict(headers), body, status))
            self._arrived.notify_all()

    def _authorize(self, headers: Mapping[str, str]) -> None:
        """An API key must come as ``x-api-key`` or a bearer token, as the real API wants."""
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
        if not key or (self._api_key is not None and key != self._api_key):
            raise _Reply(
                401,
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
            )

    def _next_call(self, body: JsonDict) -> PlannedCall:
        """Answer a call: the stage comes from the request, the run from its prompt message."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages: at least one message is required")
        output_config = body.get("output_config")
        extraction = isinstance(output_config, dict) and "format" in output_config
        stage = AFTER_TOOLS if _tool_results(messages) else EXTRACTION if extraction else FIRST
        index = _prompt_index(messages, extraction)
        prompt = _content_text(messages[index].get("content")) if index >= 0 else ""
        key = hashlib.sha256(
            json.dumps([body.get("system"), messages[: index + 1]], sort_keys=True, default=str).encode()
        ).hexdigest()
        with self._lock:
            plan = self._runs.get(key)
            # A first call whose run already answered one is a new run with the same prompt
            # (another session); one that was only answered with errors is a retry.
            if plan is None or (stage == FIRST and plan.answered_first):
                plan = None
        if plan is None:
            try:
                plan = RunPlan(self._spec_for(prompt), prompt, self._ids)
            except SpecError as exc:
                raise _invalid(f"invalid fake directive: {exc}") from None
        with self._lock:
            self._runs[key] = plan
            return plan.call(stage)

    def _spec_for(self, prompt: str) -> ReplySpec:
        raw = directive_object(prompt)
        if raw is None:
            return self._script.select(prompt)
        fields = runtime_only_fields(raw)
        if fields:
            raise SpecError(f"{', '.join(fields)} only work with the scripted runtime")
        return parse_spec(raw)

    def _message_json(self, call: PlannedCall, model: Any) -> JsonDict:
        return {
            "id": f"msg_{next(self._messages):06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [b.as_json() for b in call.blocks],
            "stop_reason": call.stop_reason,
            "stop_sequence": None,
            "usage": usage_json(call.usage, output=True),
        }

    def _events(self, call: PlannedCall, model: Any) -> Iterator[Tuple[str, JsonDict]]:
        """The server-sent events of one streamed reply."""
        message = self._message_json(call, model)
        message["content"], message["stop_reason"] = [], None
        message["usage"] = usage_json(call.usage, output=False)
        yield "message_start", {"type": "message_start", "message": message}
        if call.hang:
            while not self._stop.wait(_HANG_PING_S):
                yield "ping", {"type": "ping"}
            return
        for index, block in enumerate(call.blocks):
            yield from _block_events(index, block, self._pause(call.delay_s))
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": call.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": call.usage.output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    def _pause(self, seconds: float) -> Iterator[None]:
        while True:
            if seconds > 0:
                self._stop.wait(seconds)
            yield None


def _block_events(index: int, block: Block, pause: Iterator[None]) -> Iterator[Tuple[str, JsonDict]]:
    if block.kind == "text":
        start: JsonDict = {"type": "text", "text": ""}
    elif block.kind == "thinking":
        start = {"type": "thinking", "thinking": ""}
    else:
        start = {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}}
    yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
    for piece in block.deltas:
        next(pause)
        if block.kind == "text":
            delta: JsonDict = {"type": "text_delta", "text": piece}
        elif block.kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": piece}
        else:
            delta = {"type": "input_json_delta", "partial_json": piece}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    if block.kind == "thinking":
        signature = {"type": "signature_delta", "signature": thinking_signature("".join(block.deltas))}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": signature}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def _load_raw(script: Any) -> Any:
    if script is None or isinstance(script, Mapping):
        return None if script is None else dict(script)
    with open(script, encoding="utf-8") as handle:
        return json.load(handle)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: ModelEndpoint
    protocol_version = "HTTP/1.1"
    server_version = "meerkat-sync-model-endpoint"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("model endpoint: " + format, *args)

    def do_GET(self) -> None:
        self._send_json(
            404, {"type": "error", "error": {"type": "not_found_error", "message": "POST /v1/messages"}}
        )

    def do_POST(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        try:
            if self.path.split("?")[0] != "/v1/messages":
                raise _Reply(
                    404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
                )
            self.owner._authorize(headers)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise _invalid("the request body is not JSON") from None
            if not isinstance(body, dict):
                raise _invalid("the request body must be a JSON object")
            call = self.owner._next_call(body)
            if call.error is not None:
                extra = (
                    {} if call.error.retry_after is None else {"retry-after": f"{call.error.retry_after:g}"}
                )
                raise _Reply(call.error.status, error_body(call.error), extra)
        except _Reply as reply:
            self.owner._record(self.path, headers, body, reply.status)
            self._send_json(reply.status, reply.body, reply.headers)
            return
        self.owner._record(self.path, headers, body, 200)
        if call.start_delay_s:
            self.owner._stop.wait(call.start_delay_s)
        if body.get("stream"):
            self._stream(call, body.get("model"))
        else:
            self._send_json(200, self.owner._message_json(call, body.get("model")))

    def _send_json(self, status: int, body: JsonDict, headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{status}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, call: PlannedCall, model: Any) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for name, event in self.owner._events(call, model):
                data = f"event: {name}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            # The caller went away mid-reply (an interrupted turn): nothing to clean up.
            self.close_connection = True
