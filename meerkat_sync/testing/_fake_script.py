"""Reply specs: what the scripted "model" does for one run, from a script file or a prompt.

One format serves both the ``--script`` file and inline ``fake:{...}`` prompts, so a test
can script its own reply without coordinating with other threads.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from meerkat_sync.testing._fake_wire import JsonDict, loads_strict

DIRECTIVE_PREFIX = "fake:"


class SpecError(ValueError):
    """A reply spec that does not follow the documented format."""


class ToolCallSpec:
    """A tool the scripted model calls; ``result`` (scripted runtime only) replaces running it."""

    def __init__(
        self, name: str, args: Any, result: Optional[str], is_error: bool, call_id: Optional[str]
    ) -> None:
        self.name = name
        self.args = args
        self.result = result
        self.is_error = is_error
        self.id = call_id


class CallbackSpec:
    """A server -> client request sent during the run (normally ``tool/execute``)."""

    def __init__(self, method: str, params: JsonDict, timeout_s: float) -> None:
        self.method = method
        self.params = params
        self.timeout_s = timeout_s


class UsageSpec:
    def __init__(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_creation_tokens: Optional[int],
        cache_read_tokens: Optional[int],
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_creation_tokens = cache_creation_tokens
        self.cache_read_tokens = cache_read_tokens


class ProviderErrorSpec:
    """The model provider answers with an HTTP error, ``times`` calls in a row (None: always)."""

    def __init__(
        self,
        status: int,
        kind: Optional[str],
        message: Optional[str],
        retry_after: Optional[float],
        times: Optional[int],
    ) -> None:
        self.status = status
        self.type = kind
        self.message = message
        self.retry_after = retry_after
        self.times = times


class BulkSpec:
    def __init__(self, count: int, delta: str) -> None:
        self.count = count
        self.delta = delta


class ReplySpec:
    """Parsed reply spec; every field is optional and defaults to the echo behaviour."""

    def __init__(self) -> None:
        self.text: Optional[str] = None
        self.chunks: Optional[List[str]] = None
        self.delay_s = 0.0
        self.start_delay_s = 0.0
        self.reasoning: Optional[List[str]] = None
        self.tool_calls: List[ToolCallSpec] = []
        self.callbacks: List[CallbackSpec] = []
        self.usage: Optional[UsageSpec] = None
        self.has_structured_output = False
        self.structured_output: Any = None
        self.schema_warnings: Optional[List[Any]] = None
        self.skill_diagnostics: Any = None
        self.error: Optional[str] = None
        self.trailing = 0
        self.noise: List[str] = []
        self.stderr_bytes = 0
        self.big_delta_bytes: Optional[int] = None
        self.extra_events: List[JsonDict] = []
        self.exit_after_events: Optional[int] = None
        self.close_stdout_after_events: Optional[int] = None
        self.drop_events: Optional[Tuple[int, int]] = None
        self.hang = False
        self.bulk: Optional[BulkSpec] = None
        self.unsolicited: Optional[ReplySpec] = None
        self.prompt: Optional[str] = None
        self.stop_reason = "end_turn"
        self.provider_error: Optional[ProviderErrorSpec] = None


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"`{name}` must be an integer >= {minimum}")
    return value


def _ms(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SpecError(f"`{name}` must be a number of milliseconds >= 0")
    return float(value) / 1000.0


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"`{name}` must be a string")
    return value


def _str_list(value: Any, name: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"`{name}` must be a list of strings")
    return list(value)


def _obj(value: Any, name: str) -> JsonDict:
    if not isinstance(value, dict):
        raise SpecError(f"`{name}` must be an object")
    return value


def _opt_int(obj: JsonDict, key: str, where: str) -> Optional[int]:
    value = obj.get(key)
    return None if value is None else _int(value, f"{where}.{key}")


def _tool_call(raw: Any) -> ToolCallSpec:
    obj = _obj(raw, "tool_calls[]")
    _check_keys(obj, {"name", "args", "result", "is_error", "id"}, "tool_calls[]")
    is_error = obj.get("is_error", False)
    if not isinstance(is_error, bool):
        raise SpecError("`tool_calls[].is_error` must be a boolean")
    call_id = obj.get("id")
    return ToolCallSpec(
        name=_str(obj.get("name"), "tool_calls[].name"),
        args=obj.get("args", {}),
        result=None if obj.get("result") is None else _str(obj["result"], "tool_calls[].result"),
        is_error=is_error,
        call_id=None if call_id is None else _str(call_id, "tool_calls[].id"),
    )


def _callback(raw: Any) -> CallbackSpec:
    obj = _obj(raw, "callbacks[]")
    _check_keys(obj, {"method", "params", "timeout_ms"}, "callbacks[]")
    timeout = obj.get("timeout_ms")
    return CallbackSpec(
        method=_str(obj.get("method", "tool/execute"), "callbacks[].method"),
        params=dict(_obj(obj.get("params", {}), "callbacks[].params")),
        timeout_s=30.0 if timeout is None else _ms(timeout, "callbacks[].timeout_ms"),
    )


def _usage(raw: Any) -> UsageSpec:
    obj = _obj(raw, "usage")
    _check_keys(
        obj,
        {"input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens"},
        "usage",
    )
    return UsageSpec(
        input_tokens=_int(obj.get("input_tokens", 0), "usage.input_tokens"),
        output_tokens=_int(obj.get("output_tokens", 0), "usage.output_tokens"),
        cache_creation_tokens=_opt_int(obj, "cache_creation_tokens", "usage"),
        cache_read_tokens=_opt_int(obj, "cache_read_tokens", "usage"),
    )


def _bulk(raw: Any) -> BulkSpec:
    obj = _obj(raw, "bulk")
    _check_keys(obj, {"count", "delta"}, "bulk")
    return BulkSpec(_int(obj.get("count", 0), "bulk.count"), _str(obj.get("delta", "x"), "bulk.delta"))


def _provider_error(raw: Any) -> ProviderErrorSpec:
    obj = _obj(raw, "provider_error")
    _check_keys(obj, {"status", "type", "message", "retry_after", "times"}, "provider_error")
    status = _int(obj.get("status"), "provider_error.status", 400)
    if status > 599:
        raise SpecError("`provider_error.status` must be an HTTP error status (400-599)")
    retry_after = obj.get("retry_after")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or retry_after < 0
    ):
        raise SpecError("`provider_error.retry_after` must be a number of seconds >= 0")
    kind, message = obj.get("type"), obj.get("message")
    times = obj.get("times")
    return ProviderErrorSpec(
        status,
        None if kind is None else _str(kind, "provider_error.type"),
        None if message is None else _str(message, "provider_error.message"),
        None if retry_after is None else float(retry_after),
        None if times is None else _int(times, "provider_error.times", 1),
    )


def _check_keys(obj: JsonDict, allowed: Any, where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise SpecError(f"unknown field(s) in {where}: {', '.join(unknown)}")


def _set_reasoning(spec: ReplySpec, value: Any) -> None:
    spec.reasoning = [value] if isinstance(value, str) else _str_list(value, "reasoning")


def _set_extra_events(spec: ReplySpec, value: Any) -> None:
    if not isinstance(value, list):
        raise SpecError("`extra_events` must be a list of objects")
    spec.extra_events = [dict(_obj(v, "extra_events[]")) for v in value]


def _set_structured(spec: ReplySpec, value: Any) -> None:
    spec.has_structured_output = True
    spec.structured_output = value


def _set_schema_warnings(spec: ReplySpec, value: Any) -> None:
    if not isinstance(value, list):
        raise SpecError("`schema_warnings` must be a list")
    spec.schema_warnings = list(value)


def _set_stop_reason(spec: ReplySpec, value: Any) -> None:
    spec.stop_reason = _str(value, "stop_reason")


def _set_hang(spec: ReplySpec, value: Any) -> None:
    if not isinstance(value, bool):
        raise SpecError("`hang` must be a boolean")
    spec.hang = value


def _setter(attr: str, convert: Callable[[Any, str], Any]) -> Callable[[ReplySpec, Any], None]:
    def apply(spec: ReplySpec, value: Any) -> None:
        setattr(spec, attr, convert(value, attr))

    return apply


def _drop_events(value: Any) -> Tuple[int, int]:
    """``{"after": K, "count": N}``: as the real server under backpressure (§5.5)."""
    obj = _obj(value, "drop_events")
    _check_keys(obj, ("after", "count"), "drop_events")
    return _int(obj.get("after", 0), "drop_events.after"), _int(obj.get("count", 1), "drop_events.count")


_FIELDS: Dict[str, Callable[[ReplySpec, Any], None]] = {
    "text": _setter("text", _str),
    "chunks": _setter("chunks", _str_list),
    "delay_ms": _setter("delay_s", lambda v, _n: _ms(v, "delay_ms")),
    "start_delay_ms": _setter("start_delay_s", lambda v, _n: _ms(v, "start_delay_ms")),
    "reasoning": _set_reasoning,
    "tool_calls": _setter("tool_calls", lambda v, _n: [_tool_call(t) for t in _list(v, "tool_calls")]),
    "callbacks": _setter("callbacks", lambda v, _n: [_callback(c) for c in _list(v, "callbacks")]),
    "usage": _setter("usage", lambda v, _n: _usage(v)),
    "structured_output": _set_structured,
    "schema_warnings": _set_schema_warnings,
    "skill_diagnostics": _setter("skill_diagnostics", lambda v, _n: v),
    "error": _setter("error", _str),
    "trailing": _setter("trailing", _int),
    "noise": _setter("noise", _str_list),
    "stderr_bytes": _setter("stderr_bytes", _int),
    "big_delta_bytes": _setter("big_delta_bytes", _int),
    "extra_events": _set_extra_events,
    "exit_after_events": _setter("exit_after_events", _int),
    "close_stdout_after_events": _setter("close_stdout_after_events", _int),
    "drop_events": _setter("drop_events", lambda v, _n: _drop_events(v)),
    "hang": _set_hang,
    "bulk": _setter("bulk", lambda v, _n: _bulk(v)),
    "unsolicited": _setter("unsolicited", lambda v, _n: parse_spec(v)),
    "prompt": _setter("prompt", _str),
    "stop_reason": _set_stop_reason,
    "provider_error": _setter("provider_error", lambda v, _n: _provider_error(v)),
}

SPEC_FIELDS = tuple(_FIELDS)


_WORD_CHUNK = re.compile(r"\s*\S+\s*")
_BIG_PATTERN = "0123456789abcdefghijklmnopqrstuvwxyz"


def word_chunks(text: str) -> List[str]:
    """Word-sized deltas whose concatenation is exactly ``text``."""
    chunks = _WORD_CHUNK.findall(text)
    return chunks if chunks else ([text] if text else [])


def reply_text(spec: ReplySpec, prompt_text: str) -> Tuple[str, List[str]]:
    """The text of the run's last agentic turn and its deltas, for either backend."""
    if spec.big_delta_bytes is not None:
        reps = spec.big_delta_bytes // len(_BIG_PATTERN) + 1
        text = (_BIG_PATTERN * reps)[: spec.big_delta_bytes]
        return text, [text] if text else []
    if spec.bulk is not None:
        return spec.bulk.delta * spec.bulk.count, [spec.bulk.delta] * spec.bulk.count
    if spec.chunks is not None:
        return "".join(spec.chunks), list(spec.chunks)
    if spec.text is not None:
        return spec.text, word_chunks(spec.text)
    if spec.error is not None:
        return "", []
    text = "Echo: " + prompt_text
    return text, word_chunks(text)


def structured_text(spec: ReplySpec, final_text: str) -> Tuple[str, List[str]]:
    """What the extraction turn of a structured-output run answers: the value as JSON."""
    if not spec.has_structured_output:
        return final_text, word_chunks(final_text)
    text = json.dumps(spec.structured_output, ensure_ascii=False, separators=(",", ":"))
    return text, word_chunks(text)


def reply_usage(spec: ReplySpec, prompt_text: str, chunk_count: int) -> UsageSpec:
    """Scripted usage, else *words in the prompt* in and *number of deltas* out."""
    if spec.usage is not None:
        return spec.usage
    return UsageSpec(len(prompt_text.split()), chunk_count, None, None)


def _list(value: Any, name: str) -> List[Any]:
    if not isinstance(value, list):
        raise SpecError(f"`{name}` must be a list")
    return value


def parse_spec(raw: Any) -> ReplySpec:
    """Validate a reply spec object; unknown keys are errors so typos do not pass silently."""
    obj = _obj(raw, "reply spec")
    _check_keys(obj, _FIELDS, "reply spec")
    spec = ReplySpec()
    for key, value in obj.items():
        if value is not None:
            _FIELDS[key](spec, value)
    return spec


def directive_object(prompt_text: str) -> Optional[Any]:
    """The raw JSON object of a ``fake:{...}`` prompt, or None for an ordinary prompt.

    Only the leading JSON object counts, so a deferred create prompt carrying a directive
    still works after the turn prompt is merged behind it.
    """
    if not prompt_text.startswith(DIRECTIVE_PREFIX):
        return None
    rest = prompt_text[len(DIRECTIVE_PREFIX) :].lstrip()
    if not rest.startswith("{"):
        return None
    try:
        raw, _end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid JSON after `fake:`: {exc.msg}") from None
    return raw


def parse_directive(prompt_text: str) -> Optional[ReplySpec]:
    """``fake:{...}`` at the start of a prompt is that run's reply spec."""
    raw = directive_object(prompt_text)
    return None if raw is None else parse_spec(raw)


class Rule:
    def __init__(self, match: str, reply: ReplySpec) -> None:
        self.match = match
        self.reply = reply


class Script:
    """Rules first (first match wins), then ``replies`` in order, then ``default``."""

    def __init__(
        self,
        replies: Optional[List[ReplySpec]] = None,
        rules: Optional[List[Rule]] = None,
        default: Optional[ReplySpec] = None,
    ) -> None:
        self._lock = threading.Lock()
        self._replies = list(replies or [])
        self._rules = list(rules or [])
        self._default = default

    def select(self, prompt_text: str) -> ReplySpec:
        for rule in self._rules:
            if rule.match in prompt_text:
                return rule.reply
        with self._lock:
            if self._replies:
                return self._replies.pop(0)
        return self._default if self._default is not None else ReplySpec()


def parse_script(raw: Any) -> Script:
    obj = _obj(raw, "script")
    _check_keys(obj, {"replies", "rules", "default"}, "script")
    replies = [parse_spec(r) for r in _list(obj.get("replies", []), "replies")]
    rules: List[Rule] = []
    for item in _list(obj.get("rules", []), "rules"):
        rule = _obj(item, "rules[]")
        _check_keys(rule, {"match", "reply"}, "rules[]")
        rules.append(Rule(_str(rule.get("match"), "rules[].match"), parse_spec(rule.get("reply"))))
    default = obj.get("default")
    return Script(replies, rules, None if default is None else parse_spec(default))


def load_script(path: str) -> Script:
    """Read and validate a script file; errors become start-up failures."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        raw = loads_strict(text)
    except ValueError as exc:
        raise SpecError(f"script {path!r} is not valid JSON: {exc}") from None
    return parse_script(raw)
