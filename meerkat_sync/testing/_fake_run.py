"""One scripted run: the event sequence of a real agent run, driven by a reply spec."""

from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import time
from typing import IO, Any, Deque, List, Optional

from meerkat_sync.testing._fake_callbacks import PendingCallback, ServerRequests
from meerkat_sync.testing._fake_constants import RUN_CANCELLED
from meerkat_sync.testing._fake_params import Content, content_text, history_content
from meerkat_sync.testing._fake_script import (
    CallbackSpec,
    ReplySpec,
    ToolCallSpec,
    UsageSpec,
    reply_text,
    reply_usage,
)
from meerkat_sync.testing._fake_sessions import RunHandle, Session
from meerkat_sync.testing._fake_wire import JsonDict, Writer, now_ms, uuid7

_BULK_BATCH = 2000
_STDERR_LINE = 100
_tool_ids = itertools.count()


class Interrupted(Exception):
    """The run was interrupted (``turn/interrupt``, ``cancel``, archive or EOF)."""


class RunEnv:
    """Process-wide things a run needs: stdout writer, callback table, stderr."""

    def __init__(self, writer: Writer, callbacks: ServerRequests, stderr: IO[bytes]) -> None:
        self.writer = writer
        self.callbacks = callbacks
        self.stderr = stderr


class RunOutcome:
    """Either ``result`` (a RunResult) or ``error`` (the original failure text)."""

    def __init__(self, result: Optional[JsonDict] = None, error: Optional[str] = None) -> None:
        self.result = result
        self.error = error


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


def write_event(writer: Writer, session: Session, payload: JsonDict) -> None:
    writer.send(event_notification(session, session.next_seq(), payload))


def event_usage(usage: UsageSpec) -> JsonDict:
    """Usage as events carry it: cache fields always present, no total (§6)."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
    }


def result_usage(usage: UsageSpec) -> JsonDict:
    """Usage as RunResult carries it: total = input + output, unknown cache fields omitted."""
    out: JsonDict = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_creation_tokens is not None:
        out["cache_creation_tokens"] = usage.cache_creation_tokens
    if usage.cache_read_tokens is not None:
        out["cache_read_tokens"] = usage.cache_read_tokens
    return out


class _Tool:
    """A tool call of the first turn, scripted or answered by the client."""

    def __init__(self, call_id: str, name: str, args: Any) -> None:
        self.id = call_id
        self.name = name
        self.args = args
        self.scripted: Optional[ToolCallSpec] = None
        self.callback: Optional[CallbackSpec] = None
        self.request_params: JsonDict = {}
        self.pending: Optional[PendingCallback] = None
        self.started = 0.0
        self.content = ""
        self.is_error = False


class Run:
    """Emits the events of one run in the real server's order, then reports the outcome."""

    def __init__(
        self,
        env: RunEnv,
        session: Session,
        spec: ReplySpec,
        prompt: Content,
        handle: RunHandle,
    ) -> None:
        self.env = env
        self.session = session
        self.spec = spec
        self.prompt = prompt
        self.prompt_text = content_text(prompt)
        self.handle = handle
        self._held: Deque[JsonDict] = collections.deque()
        self._written = 0
        self._dropped = False
        self._emitted = 0
        self._started = False

    # -- event plumbing -------------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        interrupt = self.handle.interrupt
        if interrupt.wait(seconds) if seconds > 0 else interrupt.is_set():
            raise Interrupted()

    def _emit(self, payload: JsonDict, pace: bool = True) -> None:
        if pace:
            self._pause(self.spec.delay_s if self._emitted else 0.0)
        self._emitted += 1
        if self.spec.trailing:
            self._held.append(payload)
            if len(self._held) > self.spec.trailing:
                self._write(self._held.popleft())
        else:
            self._write(payload)

    def _write(self, payload: JsonDict) -> None:
        write_event(self.env.writer, self.session, payload)
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
        payload = json.dumps(
            {"type": "text_delta", "delta": delta}, ensure_ascii=False, separators=(",", ":")
        )
        sid = self.session.session_id
        head = (
            '{"jsonrpc":"2.0","method":"session/event","params":{"session_id":"'
            + sid
            + '","event":{"event_id":"'
        )
        middle = '","source_id":"' + self.session.source_id + '","seq":'
        tail = ',"payload":' + payload + "}}}\n"
        self.flush_held()
        done = 0
        while done < count:
            self._pause(0.0)
            batch = min(_BULK_BATCH, count - done)
            first = self.session.next_seq(batch)
            ts = now_ms()
            lines = [f'{head}{uuid7()}{middle}{first + i},"timestamp_ms":{ts}{tail}' for i in range(batch)]
            self.env.writer.write("".join(lines).encode())
            done += batch
            self._count(batch)

    # -- the run ---------------------------------------------------------------------------

    def _reasoning(self) -> Optional[JsonDict]:
        if self.spec.reasoning is None:
            return None
        for delta in self.spec.reasoning:
            self._emit({"type": "reasoning_delta", "delta": delta})
        content = "".join(self.spec.reasoning)
        self._emit({"type": "reasoning_complete", "content": content})
        return {"block_type": "reasoning", "data": {"text": content}}

    def _tools(self) -> List[_Tool]:
        tools: List[_Tool] = []
        for call in self.spec.tool_calls:
            tool = _Tool(call.id or f"toolu_fake_{next(_tool_ids)}", call.name, call.args)
            tool.scripted = call
            tools.append(tool)
        for cb in self.spec.callbacks:
            params = dict(cb.params)
            if cb.method == "tool/execute":
                params.setdefault("tool_use_id", f"toolu_fake_{next(_tool_ids)}")
                params.setdefault("name", "callback_tool")
                params.setdefault("arguments", {})
            call_id = str(params.get("tool_use_id", f"toolu_fake_{next(_tool_ids)}"))
            tool = _Tool(call_id, str(params.get("name", cb.method)), params.get("arguments", {}))
            tool.callback = cb
            tool.request_params = params
            tools.append(tool)
        return tools

    def _tool_turn(self, tools: List[_Tool], usage: UsageSpec) -> List[JsonDict]:
        """The first LLM turn: the model asks for tools, they run, results go back."""
        for tool in tools:
            self._emit({"type": "tool_call_requested", "id": tool.id, "name": tool.name, "args": tool.args})
        for tool in tools:
            self._emit({"type": "tool_execution_started", "id": tool.id, "name": tool.name})
            tool.started = time.monotonic()
        self.flush_held_before_callbacks(tools)
        for tool in tools:
            if tool.callback is not None:
                tool.pending = self.env.callbacks.send(tool.callback.method, tool.request_params)
        for tool in tools:
            if tool.scripted is not None:
                tool.content, tool.is_error = tool.scripted.result, tool.scripted.is_error
            elif tool.callback is not None and tool.pending is not None:
                outcome = self.env.callbacks.wait(
                    tool.pending, tool.callback.timeout_s, self.handle.interrupt, tool.name
                )
                if outcome is None:
                    raise Interrupted()
                tool.content, tool.is_error = outcome
            self._emit(
                {
                    "type": "tool_execution_completed",
                    "id": tool.id,
                    "name": tool.name,
                    "result": tool.content,
                    "is_error": tool.is_error,
                    "duration_ms": int((time.monotonic() - tool.started) * 1000),
                    "has_images": False,
                }
            )
        for tool in tools:
            self._emit(
                {
                    "type": "tool_result_received",
                    "id": tool.id,
                    "name": tool.name,
                    "is_error": tool.is_error,
                }
            )
        first_usage = UsageSpec(usage.input_tokens, 0, usage.cache_creation_tokens, usage.cache_read_tokens)
        self._emit({"type": "turn_completed", "stop_reason": "tool_use", "usage": event_usage(first_usage)})
        return [
            {
                "role": "block_assistant",
                "blocks": [
                    {"block_type": "tool_use", "data": {"id": t.id, "name": t.name, "args": t.args}}
                    for t in tools
                ],
                "stop_reason": "tool_use",
            },
            {
                "role": "tool_results",
                "results": [
                    {"tool_use_id": t.id, "content": t.content, "is_error": t.is_error} for t in tools
                ],
            },
        ]

    def flush_held_before_callbacks(self, tools: List[_Tool]) -> None:
        """Held events must not wait behind a client round trip that could take 30 s."""
        if any(t.callback is not None for t in tools):
            self.flush_held()

    def execute(self) -> RunOutcome:
        spec = self.spec
        sid = self.session.session_id
        try:
            self._check_thresholds()
            self._pause(spec.start_delay_s)
            self._emit({"type": "run_started", "session_id": sid, "prompt": self.prompt_text}, pace=False)
            self._started = True
            self._write_noise()
            self._write_stderr()
            self._emit({"type": "turn_started", "turn_number": 0})
            for payload in spec.extra_events:
                self._emit(payload)
            if spec.hang:
                self.flush_held()
                self.handle.interrupt.wait()
                raise Interrupted()
            text, chunks = reply_text(spec, self.prompt_text)
            if spec.bulk is not None:
                chunks = []  # written in batches by _write_bulk
            chunk_count = spec.bulk.count if spec.bulk is not None else len(chunks)
            usage = reply_usage(spec, self.prompt_text, chunk_count)
            messages: List[JsonDict] = [{"role": "user", "content": history_content(self.prompt)}]
            tools = self._tools()
            turns = 1
            final_usage = usage
            if tools:
                messages.extend(self._tool_turn(tools, usage))
                self._emit({"type": "turn_started", "turn_number": 1})
                turns = 2
                final_usage = UsageSpec(0, usage.output_tokens, None, None)
            blocks: List[JsonDict] = []
            reasoning = self._reasoning()
            if reasoning is not None:
                blocks.append(reasoning)
            if spec.bulk is not None:
                self._write_bulk(spec.bulk.count, spec.bulk.delta)
            for chunk in chunks:
                self._emit({"type": "text_delta", "delta": chunk})
            if spec.error is not None:
                self._emit({"type": "run_failed", "session_id": sid, "error": spec.error})
                return RunOutcome(error=spec.error)
            if text:
                self._emit({"type": "text_complete", "content": text})
                blocks.append({"block_type": "text", "data": {"text": text}})
            self._emit(
                {
                    "type": "turn_completed",
                    "stop_reason": spec.stop_reason,
                    "usage": event_usage(final_usage),
                }
            )
            messages.append({"role": "block_assistant", "blocks": blocks, "stop_reason": spec.stop_reason})
            self._emit(
                {"type": "run_completed", "session_id": sid, "result": text, "usage": event_usage(usage)}
            )
            self.session.commit(messages, usage.input_tokens + usage.output_tokens, text)
            return RunOutcome(result=self._run_result(text, turns, len(tools), usage))
        except Interrupted:
            if self._started:
                self._emit({"type": "run_failed", "session_id": sid, "error": RUN_CANCELLED}, pace=False)
            return RunOutcome(error=RUN_CANCELLED)

    def _run_result(self, text: str, turns: int, tool_calls: int, usage: UsageSpec) -> JsonDict:
        spec = self.spec
        result: JsonDict = {
            "session_id": self.session.session_id,
            "session_ref": self.session.session_ref,
            "text": text,
            "turns": turns,
            "tool_calls": tool_calls,
            "usage": result_usage(usage),
        }
        if spec.has_structured_output:
            result["structured_output"] = spec.structured_output
        if spec.schema_warnings:
            result["schema_warnings"] = spec.schema_warnings
        if spec.skill_diagnostics is not None:
            result["skill_diagnostics"] = spec.skill_diagnostics
        return result


def default_stderr() -> IO[bytes]:
    return sys.stderr.buffer


__all__ = [
    "Interrupted",
    "Run",
    "RunEnv",
    "RunOutcome",
    "default_stderr",
    "event_notification",
    "write_event",
]
