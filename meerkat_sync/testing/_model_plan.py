"""What the scripted model answers to one Messages API call, planned from a reply spec.

A reply spec describes a whole *run* (the vocabulary the scripted runtime uses); the real
runtime turns a run into one model call per LLM turn. A spec with tool calls therefore
becomes two calls: the first answers ``tool_use`` blocks, the second (the one that carries
their ``tool_result``s) the final text; a structured-output run adds the extraction call,
answered with the JSON. Usage is split as the scripted runtime reports it: input tokens on
the first call, output tokens on the last.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from meerkat_sync.testing._fake_script import (
    ProviderErrorSpec,
    ReplySpec,
    SpecError,
    UsageSpec,
    reply_text,
    reply_usage,
    structured_text,
)

JsonDict = Dict[str, Any]

#: Reply-spec fields that describe the runtime process, not the model: the endpoint refuses
#: them rather than silently doing something else.
RUNTIME_ONLY_FIELDS = (
    "trailing",
    "noise",
    "stderr_bytes",
    "extra_events",
    "exit_after_events",
    "close_stdout_after_events",
    "drop_events",
    "unsolicited",
    "prompt",
    "error",
)

#: Anthropic's error ``type`` for each HTTP status the endpoint can be scripted to return.
ERROR_TYPES: Dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES: Dict[int, str] = {
    400: "invalid request",
    401: "invalid x-api-key",
    403: "permission denied",
    404: "model not found",
    413: "request too large",
    429: "rate limited: slow down",
    500: "internal server error",
    529: "Overloaded",
}


def runtime_only_fields(raw: Any) -> List[str]:
    """The fields of a raw reply spec object that only the scripted runtime can honour."""
    if not isinstance(raw, dict):
        return []
    return [key for key in RUNTIME_ONLY_FIELDS if raw.get(key) is not None]


class Block:
    """One content block of a planned message: ``text``, ``thinking`` or ``tool_use``."""

    def __init__(self, kind: str, deltas: Sequence[str], *, tool_id: str = "", name: str = "") -> None:
        self.kind = kind
        self.deltas = list(deltas)
        self.tool_id = tool_id
        self.name = name

    def as_json(self) -> JsonDict:
        """The block in a non-streamed Messages API response."""
        joined = "".join(self.deltas)
        if self.kind == "text":
            return {"type": "text", "text": joined}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": joined, "signature": thinking_signature(joined)}
        return {
            "type": "tool_use",
            "id": self.tool_id,
            "name": self.name,
            "input": json.loads(joined or "{}"),
        }


class PlannedCall:
    """One model response: blocks with their streaming deltas, stop reason and usage."""

    def __init__(
        self,
        blocks: List[Block],
        stop_reason: str,
        usage: UsageSpec,
        *,
        delay_s: float = 0.0,
        start_delay_s: float = 0.0,
        hang: bool = False,
        error: Optional[ProviderErrorSpec] = None,
    ) -> None:
        self.blocks = blocks
        self.stop_reason = stop_reason
        self.usage = usage
        self.delay_s = delay_s
        self.start_delay_s = start_delay_s
        self.hang = hang
        self.error = error

    def tool_ids(self) -> List[str]:
        return [b.tool_id for b in self.blocks if b.kind == "tool_use"]


def thinking_signature(text: str) -> str:
    """A stable stand-in for Anthropic's opaque thinking signature."""
    return "sig-" + format(abs(hash(text)) % (1 << 48), "x")


def usage_json(usage: UsageSpec, *, output: bool) -> JsonDict:
    """``message_start`` usage (input side) or the full usage of a non-streamed reply."""
    out: JsonDict = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens if output else 0,
    }
    if usage.cache_creation_tokens is not None:
        out["cache_creation_input_tokens"] = usage.cache_creation_tokens
    if usage.cache_read_tokens is not None:
        out["cache_read_input_tokens"] = usage.cache_read_tokens
    return out


def error_body(error: ProviderErrorSpec) -> JsonDict:
    """The Anthropic error JSON for a scripted provider error."""
    message = error.message or _ERROR_MESSAGES.get(error.status, f"HTTP {error.status}")
    kind = error.type or ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


#: The stages of a run as the model sees them.
FIRST, AFTER_TOOLS, EXTRACTION = "first", "after_tools", "extraction"


class RunPlan:
    """The model calls of one scripted run.

    The stage of a call is read off the request itself (tool results sent back, or the
    structured-output format asked for), so concurrent runs never confuse each other.
    """

    def __init__(self, spec: ReplySpec, prompt_text: str, ids: Any) -> None:
        self.spec = spec
        self.answered_first = False
        self._errors_left = spec.provider_error.times if spec.provider_error is not None else 0
        self._tool_calls = _tool_uses(spec, ids)
        self._text, self._chunks = reply_text(spec, prompt_text)
        self._final_usage, self._first_usage = _split_usage(
            spec, prompt_text, len(self._chunks), bool(self._tool_calls)
        )

    def call(self, stage: str) -> PlannedCall:
        """The reply to a model call of this run at ``stage`` (scripted errors come first)."""
        spec = self.spec
        if spec.provider_error is not None and (self._errors_left is None or self._errors_left > 0):
            if self._errors_left is not None:
                self._errors_left -= 1
            return PlannedCall([], "", UsageSpec(0, 0, None, None), error=spec.provider_error)
        first = stage == FIRST
        if first:
            self.answered_first = True
        if first and spec.hang:
            return self._turn([], "", self._first_usage, first, hang=True)
        if first and self._tool_calls:
            return self._turn(self._tool_calls, "tool_use", self._first_usage, first)
        if stage == EXTRACTION:
            _json, chunks = structured_text(spec, self._text)
            return self._turn([Block("text", chunks)], "end_turn", UsageSpec(0, 0, None, None), first)
        blocks: List[Block] = []
        if spec.reasoning is not None:
            blocks.append(Block("thinking", spec.reasoning))
        if self._chunks:
            blocks.append(Block("text", self._chunks))
        return self._turn(blocks, spec.stop_reason, self._final_usage, first)

    def _turn(
        self, blocks: List[Block], stop_reason: str, usage: UsageSpec, first: bool, hang: bool = False
    ) -> PlannedCall:
        return PlannedCall(
            blocks,
            stop_reason,
            usage,
            delay_s=self.spec.delay_s,
            start_delay_s=self.spec.start_delay_s if first else 0.0,
            hang=hang,
        )


def _tool_uses(spec: ReplySpec, ids: Any) -> List[Block]:
    blocks: List[Block] = []
    for call in spec.tool_calls:
        blocks.append(_tool_block(call.id or next(ids), call.name, call.args))
    for callback in spec.callbacks:
        if callback.method != "tool/execute":
            raise SpecError("the model endpoint can only script `tool/execute` callbacks")
        params = callback.params
        blocks.append(
            _tool_block(
                str(params.get("tool_use_id") or next(ids)),
                str(params.get("name", "callback_tool")),
                params.get("arguments", {}),
            )
        )
    return blocks


def _tool_block(tool_id: str, name: str, args: Any) -> Block:
    encoded = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    # Split the arguments like the real API does: several partial_json pieces.
    step = max(1, len(encoded) // 3)
    pieces = [encoded[i : i + step] for i in range(0, len(encoded), step)] or ["{}"]
    return Block("tool_use", pieces, tool_id=tool_id, name=name)


def _split_usage(spec: ReplySpec, prompt_text: str, chunk_count: int, tools: bool) -> Any:
    """(final call, first call) usage; their sum is the run's usage."""
    usage = reply_usage(spec, prompt_text, chunk_count)
    if not tools:
        return usage, usage
    first = UsageSpec(usage.input_tokens, 0, usage.cache_creation_tokens, usage.cache_read_tokens)
    return UsageSpec(0, usage.output_tokens, None, None), first
