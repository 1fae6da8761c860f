"""One scripted run: what a real agent run emits, records and reports, driven by a reply spec.

The "model" answers each LLM call the way the scripted model endpoint does for the real
runtime (``_model_plan``): a tool-calling spec is one call that asks for the tools and a
second that answers; a session with an ``output_schema`` adds an extraction call;
``provider_error`` makes calls fail, and the runtime retries the retryable ones.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import threading
import time
from typing import IO, Any, Deque, Dict, List, Mapping, Optional, Tuple

from meerkat_sync.testing._fake_callbacks import PendingCallback, ServerRequests
from meerkat_sync.testing._fake_constants import (
    ABANDONED_PREFIX,
    CALLBACK_TIMEOUT_S,
    EXTRACTION_PROMPT,
    EXTRACTION_RETRY_PROMPT,
    INTERNAL_ERROR,
    LLM_ATTEMPTS,
    RETRY_PAUSE_S,
    RUN_CANCELLED,
    skill_diagnostics,
)
from meerkat_sync.testing._fake_params import Content, history_content, model_text, render_prompt
from meerkat_sync.testing._fake_runtime import RunOutcome
from meerkat_sync.testing._fake_schema import ExtractionError, extract
from meerkat_sync.testing._fake_script import (
    CallbackSpec,
    ProviderErrorSpec,
    ReplySpec,
    ToolCallSpec,
    UsageSpec,
    reply_text,
    reply_usage,
    structured_text,
)
from meerkat_sync.testing._fake_sessions import Session, event_usage, last_assistant_text, result_usage
from meerkat_sync.testing._fake_tools import builtin_result, tool_id
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, Writer, now_ms, uuid7
from meerkat_sync.testing._model_plan import error_body

_BULK_BATCH = 2000
_STDERR_LINE = 100
_NO_USAGE = UsageSpec(0, 0, None, None)


class Interrupted(Exception):
    """The run was interrupted (``turn/interrupt``, ``cancel``, archive or EOF): no terminal event."""


class RunFailed(Exception):
    """The agent failed: ``run_failed`` with this text, and ``agent error: <text>`` for the request."""


class _BudgetSpent(Exception):
    """A token or tool-call budget ran out: the run ends early, successfully."""


class RunEnv:
    """Process-wide things a run needs: stdout, callbacks, stderr, blobs, registered tools."""

    def __init__(
        self,
        writer: Writer,
        callbacks: ServerRequests,
        stderr: IO[bytes],
        blobs: Dict[str, Tuple[str, str]],
        tools: Mapping[str, JsonDict],
    ) -> None:
        self.writer = writer
        self.callbacks = callbacks
        self.stderr = stderr
        self.blobs = blobs
        self.tools = tools


def abandoned(reason: str) -> RpcError:
    """How a failed run reaches the waiting request."""
    return RpcError(INTERNAL_ERROR, ABANDONED_PREFIX + reason)


def failure(reason: str) -> RunOutcome:
    return RunOutcome(error=abandoned(reason))


def event_notification(session: Session, seq: int, payload: JsonDict) -> JsonDict:
    envelope = {
        "event_id": uuid7(),
        "source_id": session.source_id,
        "seq": seq,
        "timestamp_ms": now_ms(),
        "payload": payload,
    }
    return {
        "jsonrpc": "2.0",
        "method": "session/event",
        "params": {"session_id": session.session_id, "event": envelope},
    }


def provider_failure(error: ProviderErrorSpec, provider: str) -> str:
    """The runtime's text for a provider's HTTP error (``LlmError`` display, wrapped)."""
    body = json.dumps(error_body(error))
    status = error.status
    if status == 401:
        detail = f"Authentication failed: {body}"
    elif status == 403:
        detail = "Invalid API key"
    elif status == 404:
        detail = f"Model not found: {body}"
    elif status == 429:
        hint = "" if error.retry_after is None else f", retry after {int(error.retry_after * 1000)}ms"
        detail = f"Rate limited{hint}"
    elif status == 503:
        detail = "Server overloaded (503)"
    elif status >= 500:
        detail = f"Server error: {status} - {body}"
    else:
        detail = f"Invalid request: {body}"
    return f"LLM error ({provider}): {detail}"


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


class _Tool:
    """A tool call of the run's first LLM turn, scripted or answered by the client."""

    def __init__(self, call_id: str, name: str, args: Any) -> None:
        self.id = call_id
        self.name = name
        self.args = args
        self.scripted: Optional[ToolCallSpec] = None
        self.callback: Optional[CallbackSpec] = None
        self.request_params: JsonDict = {}
        self.pending: Optional[PendingCallback] = None
        self.started = 0.0
        self.duration_ms = 0
        self.content = ""
        self.is_error = False


class Run:
    """Emits one run's events in the real server's order, then reports its outcome."""

    def __init__(
        self,
        env: RunEnv,
        session: Session,
        spec: ReplySpec,
        prompt: Content,
        interrupt: threading.Event,
        started: Optional[threading.Event] = None,
    ) -> None:
        self.env = env
        self.started = started
        self.session = session
        self.spec = spec
        self.prompt = prompt
        self.prompt_text = model_text(prompt)
        self.interrupt = interrupt
        self._held: Deque[JsonDict] = collections.deque()
        self._turns = 0
        self._tool_calls = 0
        self._written = 0
        self._dropped = False
        provider_error = spec.provider_error
        times = provider_error.times if provider_error is not None else 0
        self._errors_left: float = math.inf if times is None else times

    # -- event plumbing -------------------------------------------------------------------

    def _pause(self, seconds: Optional[float]) -> None:
        """Sleep (None: until interrupted); interrupts and the session's time budget end it."""
        deadline = self.session.budget.deadline()
        wait = seconds
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            wait = left if wait is None else min(wait, left)
        if self.interrupt.wait(wait) if wait is None or wait > 0 else self.interrupt.is_set():
            raise Interrupted()
        if deadline is not None and wait != seconds:
            self._budget_gate(time_only=True)

    def _emit(self, payload: JsonDict) -> None:
        if self.spec.trailing:
            self._held.append(payload)
            if len(self._held) > self.spec.trailing:
                self._write(self._held.popleft())
        else:
            self._write(payload)

    def _write(self, payload: JsonDict) -> None:
        session = self.session
        self.env.writer.send_event(event_notification(session, session.next_seq(), payload))
        self._count(1)

    def _count(self, events: int) -> None:
        self._written += events
        self._check_thresholds()

    def _check_thresholds(self) -> None:
        spec = self.spec
        if spec.drop_events is not None and not self._dropped and self._written >= spec.drop_events[0]:
            # Dropped notifications still consumed their seq numbers on the real server.
            self.session.next_seq(spec.drop_events[1])
            self._dropped = True
        limit = spec.close_stdout_after_events
        if limit is not None and self._written >= limit and self.env.writer.is_open:
            self.env.writer.close_stdout()
        if spec.exit_after_events is not None and self._written >= spec.exit_after_events:
            self._crash()

    def _crash(self) -> None:
        """Die like a panicking server: a panic message on stderr, status 3, no cleanup."""
        self.env.writer.freeze()
        message = (
            "\nthread 'tokio-runtime-worker' panicked at meerkat-rpc/src/session_executor.rs:"
            f"214:17:\nfake-rkat-rpc: exit_after_events reached after {self._written} events\n"
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
        )
        try:
            self.env.stderr.write(message.encode())
            self.env.stderr.flush()
        finally:
            os._exit(3)

    def flush_held(self) -> None:
        """Write events held back by ``trailing`` (called after the response)."""
        while self._held:
            self._write(self._held.popleft())

    # -- side channels ---------------------------------------------------------------------

    def _write_noise(self) -> None:
        for line in self.spec.noise:
            self.env.writer.write((line + "\n").encode())

    def _write_stderr(self) -> None:
        remaining = self.spec.stderr_bytes
        index = 0
        while remaining > 0:
            size = min(_STDERR_LINE, remaining)
            text = f"fake-rkat-rpc stderr filler {index:08d} "
            line = (text + "." * _STDERR_LINE)[: size - 1] + "\n"
            self.env.stderr.write(line.encode())
            remaining -= size
            index += 1
        if self.spec.stderr_bytes:
            self.env.stderr.flush()

    def _write_bulk(self, count: int, delta: str) -> None:
        """Many text_delta events encoded in batches: the server must never be the bottleneck."""
        self.flush_held()
        payload = json.dumps(
            {"delta": delta, "type": "text_delta"}, ensure_ascii=False, separators=(",", ":")
        )
        # The notification with its keys sorted, as encode(..., sort_keys=True) writes it.
        head = '{"jsonrpc":"2.0","method":"session/event","params":{"event":{"event_id":"'
        middle = f'","payload":{payload},"seq":'
        source = f',"source_id":"{self.session.source_id}","timestamp_ms":'
        tail = f'}},"session_id":"{self.session.session_id}"}}}}\n'
        done = 0
        while done < count:
            self._pause(0.0)
            batch = min(_BULK_BATCH, count - done)
            first = self.session.next_seq(batch)
            stamp = now_ms()
            lines = [
                f"{head}{uuid7()}{middle}{first + i}{source}{stamp}{tail}".encode() for i in range(batch)
            ]
            self.env.writer.write_events(lines)
            done += batch
            self._count(batch)

    # -- the run ---------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        session = self.session
        try:
            self._check_thresholds()
            session.materialize()
            session.append({"role": "user", "content": history_content(self.prompt, self.env.blobs)})
            shown = render_prompt(self.prompt)
            self._emit({"type": "run_started", "session_id": session.session_id, "prompt": shown})
            self._write_noise()
            self._write_stderr()
            result = self._agent_loop()
        except Interrupted:
            session.publish(commit=False)
            cancelled = abandoned(f"agent error: {RUN_CANCELLED}")
            return RunOutcome(error=cancelled, after_response=self.flush_held)
        except RunFailed as exc:
            self._emit({"type": "run_failed", "session_id": session.session_id, "error": str(exc)})
            session.publish(commit=False)
            return RunOutcome(error=abandoned(f"agent error: {exc}"), after_response=self.flush_held)
        session.publish(commit=True)
        return RunOutcome(result=result, after_response=self.flush_held, follow_up=self.spec.unsolicited)

    def _agent_loop(self) -> JsonDict:
        text, chunks = reply_text(self.spec, self.prompt_text)
        tools = self._tools()
        first_usage, final_usage = self._split_usage(len(chunks), bool(tools))
        try:
            if tools:
                self._begin_turn()
                self._tool_turn(tools, first_usage)
            self._begin_turn()
            self._final_turn(text, chunks, final_usage)
            if self.session.config.output_schema is not None:
                return self._extraction(text)
        except _BudgetSpent:
            text = last_assistant_text(self.session.messages) or ""
        self._completed(text)
        return self._result(text)

    def _split_usage(self, chunk_count: int, tools: bool) -> Tuple[UsageSpec, UsageSpec]:
        """(first call, final call) usage: the model endpoint's split; they add up to the run's."""
        usage = reply_usage(self.spec, self.prompt_text, chunk_count)
        if not tools:
            return usage, usage
        first = UsageSpec(usage.input_tokens, 0, usage.cache_creation_tokens, usage.cache_read_tokens)
        return first, UsageSpec(0, usage.output_tokens, None, None)

    def _begin_turn(self) -> None:
        """The top of the agent loop: budget check, ``turn_started``, then the model call."""
        self._budget_gate()
        turn = self._turns
        self._turns += 1
        self._emit({"type": "turn_started", "turn_number": turn})
        if turn == 0:
            if self.started is not None:
                self.started.set()
            for payload in self.spec.extra_events:
                self._emit(payload)
        self._call_model()
        if turn == 0:
            self._pause(self.spec.start_delay_s)
            if self.spec.hang:
                self.flush_held()
                self._pause(None)

    def _budget_gate(self, time_only: bool = False) -> None:
        """A spent budget ends the run: time fails it, tokens and tool calls end it early."""
        spent = self.session.budget.exceeded()
        if spent is None or (time_only and spent[0] != "time"):
            return
        kind, used, limit = spent
        self._emit(
            {"type": "budget_warning", "budget_type": kind, "used": used, "limit": limit, "percent": 1.0}
        )
        if kind == "time":
            raise RunFailed(f"Time budget exceeded: {used}s > {limit}s")
        raise _BudgetSpent()

    def _call_model(self) -> None:
        """One LLM call: scripted provider errors first, retried as the runtime retries them."""
        error = self.spec.provider_error
        for attempt in range(1, LLM_ATTEMPTS + 1):
            if error is None or self._errors_left <= 0:
                return
            self._errors_left -= 1
            if not retryable(error.status) or attempt == LLM_ATTEMPTS:
                raise RunFailed(provider_failure(error, self.session.provider))
            self._pause(RETRY_PAUSE_S)

    def _deltas(self, kind: str, chunks: List[str]) -> None:
        for chunk in chunks:
            self._pause(self.spec.delay_s)
            self._emit({"type": kind, "delta": chunk})

    def _final_turn(self, text: str, chunks: List[str], usage: UsageSpec) -> None:
        """The LLM turn that answers with text (and reasoning)."""
        spec = self.spec
        blocks: List[JsonDict] = []
        if spec.reasoning is not None:
            self._deltas("reasoning_delta", spec.reasoning)
            thinking = "".join(spec.reasoning)
            self._emit({"type": "reasoning_complete", "content": thinking})
            meta = {"provider": self.session.provider, "signature": _signature(thinking)}
            blocks.append({"block_type": "reasoning", "data": {"text": thinking, "meta": meta}})
        if spec.bulk is not None:
            self._write_bulk(spec.bulk.count, spec.bulk.delta)
        else:
            self._deltas("text_delta", chunks)
        if spec.error is not None:
            raise RunFailed(spec.error)
        self._answer(text, blocks, spec.stop_reason, usage)

    def _answer(self, text: str, blocks: List[JsonDict], stop_reason: str, usage: UsageSpec) -> None:
        """``text_complete`` and ``turn_completed`` of a text turn; the call's usage counts."""
        if text:
            self._emit({"type": "text_complete", "content": text})
            blocks.append({"block_type": "text", "data": {"text": text}})
        self.session.record_usage(usage)
        self._emit({"type": "turn_completed", "stop_reason": stop_reason, "usage": event_usage(usage)})
        self.session.append({"role": "block_assistant", "blocks": blocks, "stop_reason": stop_reason})

    def _extraction(self, final_text: str) -> JsonDict:
        """The structured-output turns: ask for the JSON, check it, ask again on failure."""
        schema = self.session.config.output_schema
        assert schema is not None
        attempts = max(1, self.session.config.structured_output_retries)
        request = EXTRACTION_PROMPT
        problem = ""
        for _ in range(attempts):
            self.session.append({"role": "user", "content": request})
            self._begin_turn()
            text, chunks = structured_text(self.spec, final_text)
            self._deltas("text_delta", chunks)
            self._answer(text, [], "end_turn", _NO_USAGE)
            try:
                value = extract(text, schema)
            except ExtractionError as exc:
                problem = str(exc)
                request = EXTRACTION_RETRY_PROMPT.format(error=problem)
                continue
            self._completed(text)
            return self._result(text, structured=(value,))
        raise RunFailed(f"Structured output validation failed after {attempts} attempts: {problem}")

    def _completed(self, text: str) -> None:
        usage = event_usage(self.session.usage.as_spec())
        sid = self.session.session_id
        self._emit({"type": "run_completed", "session_id": sid, "result": text, "usage": usage})

    def _result(self, text: str, structured: Optional[Tuple[Any]] = None) -> JsonDict:
        """The RunResult: this run's turns and tool calls, the session's usage so far."""
        spec = self.spec
        result: JsonDict = {
            "session_id": self.session.session_id,
            "session_ref": self.session.session_ref,
            "text": text,
            "turns": self._turns,
            "tool_calls": self._tool_calls,
            "usage": result_usage(self.session.usage.as_spec()),
        }
        if structured is not None:
            result["structured_output"] = structured[0]
        if spec.schema_warnings:
            result["schema_warnings"] = spec.schema_warnings
        if spec.skill_diagnostics is not None:
            result["skill_diagnostics"] = spec.skill_diagnostics
        elif structured is None:
            result["skill_diagnostics"] = skill_diagnostics()
        return result

    # -- tools -----------------------------------------------------------------------------

    def _tools(self) -> List[_Tool]:
        tools: List[_Tool] = []
        for call in self.spec.tool_calls:
            tool = _Tool(call.id or tool_id(), call.name, call.args)
            tool.scripted = call
            if call.result is None and call.name in self.session.config.callback_tools:
                # A tool the client answers: rkat-rpc sends it a tool/execute (§7).
                tool.callback = CallbackSpec("tool/execute", {}, CALLBACK_TIMEOUT_S)
                tool.request_params = {"arguments": call.args, "name": call.name, "tool_use_id": tool.id}
            tools.append(tool)
        for cb in self.spec.callbacks:
            params = dict(cb.params)
            if cb.method == "tool/execute":
                params.setdefault("tool_use_id", tool_id())
                params.setdefault("name", "callback_tool")
                params.setdefault("arguments", {})
            call_id = str(params.get("tool_use_id") or tool_id())
            tool = _Tool(call_id, str(params.get("name", cb.method)), params.get("arguments", {}))
            tool.callback = cb
            tool.request_params = params
            tools.append(tool)
        return tools

    def _tool_turn(self, tools: List[_Tool], usage: UsageSpec) -> None:
        """The first LLM turn asks for tools: they run and their results go back (no turn_completed)."""
        self.session.record_usage(usage)
        if any(t.callback is not None for t in tools):
            self.flush_held()  # held events must not wait behind a client round trip
        for tool in tools:
            if tool.callback is not None:
                tool.pending = self.env.callbacks.send(tool.callback.method, tool.request_params)
        for tool in tools:
            self._emit({"type": "tool_call_requested", "id": tool.id, "name": tool.name, "args": tool.args})
        for tool in tools:
            self._emit({"type": "tool_execution_started", "id": tool.id, "name": tool.name})
            tool.started = time.monotonic()
        uses = [_tool_use(t) for t in tools]
        self.session.append({"role": "block_assistant", "blocks": uses, "stop_reason": "tool_use"})
        for tool in tools:
            self._run_tool(tool)
        # Completions are reported in call order once every call has its result.
        for tool in tools:
            self._report_tool(tool)
        self._tool_calls += len(tools)
        self.session.budget.tool_calls += len(tools)
        results = [{"tool_use_id": t.id, "content": t.content, "is_error": t.is_error} for t in tools]
        self.session.append({"role": "tool_results", "results": results})

    def _run_tool(self, tool: _Tool) -> None:
        if tool.callback is not None and tool.pending is not None:
            callback, interrupt = tool.callback, self.interrupt
            outcome = self.env.callbacks.wait(tool.pending, callback.timeout_s, interrupt, tool.name)
            if outcome is None:
                raise Interrupted()
            tool.content, tool.is_error = outcome
        elif tool.scripted is not None and tool.scripted.result is not None:
            tool.content, tool.is_error = tool.scripted.result, tool.scripted.is_error
        elif tool.scripted is not None:
            available = [*self.session.config.tools, *self.session.config.callback_tools]
            tool.content, tool.is_error = builtin_result(tool.name, available)
        tool.duration_ms = int((time.monotonic() - tool.started) * 1000)

    def _report_tool(self, tool: _Tool) -> None:
        self._emit(
            {
                "type": "tool_execution_completed",
                "id": tool.id,
                "name": tool.name,
                "result": tool.content,
                "is_error": tool.is_error,
                "duration_ms": tool.duration_ms,
                "has_images": False,
            }
        )
        self._emit(
            {"type": "tool_result_received", "id": tool.id, "name": tool.name, "is_error": tool.is_error}
        )


def _tool_use(tool: _Tool) -> JsonDict:
    return {"block_type": "tool_use", "data": {"id": tool.id, "name": tool.name, "args": tool.args}}


def _signature(text: str) -> str:
    """A stable stand-in for a provider's opaque thinking signature."""
    return "sig-" + hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = ["Interrupted", "Run", "RunEnv", "abandoned", "event_notification", "failure"]
