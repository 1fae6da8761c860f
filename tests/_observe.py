"""What a scenario observed through the public API, reduced to what must agree.

Ids, timestamps, durations and the absolute ``seq`` base differ between runs and between
backends by design; everything else (event types and fields, results, errors, history,
list and read) is compared as is. Placeholders are numbered in order of appearance, so
"the same id twice" still has to hold.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

import attrs

from meerkat_sync import EventStream, MeerkatError
from meerkat_sync.events import Event

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOOL_ID = re.compile(r"\btoolu_[A-Za-z0-9_]+")
_SERDE_POSITION = re.compile(r" at line \d+ column \d+")
_VOLATILE_KEYS = {"created_at", "updated_at", "timestamp_ms", "event_id", "duration_ms"}
#: The system prompt is the runtime's own prose: each backend has its own text.
_SYSTEM = "<system prompt>"


class Normalizer:
    """Replaces volatile values with stable placeholders, consistently within one observation."""

    def __init__(self) -> None:
        self._names: Dict[str, str] = {}

    def _name(self, kind: str, value: str) -> str:
        key = f"{kind}:{value}"
        if key not in self._names:
            self._names[key] = f"<{kind}{sum(k.startswith(kind + ':') for k in self._names) + 1}>"
        return self._names[key]

    def text(self, value: str) -> str:
        value = _UUID.sub(lambda m: self._name("id", m.group(0)), value)
        value = _TOOL_ID.sub(lambda m: self._name("tool", m.group(0)), value)
        return _SERDE_POSITION.sub(" at <position>", value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key in _VOLATILE_KEYS:
                    out[key] = "<volatile>"
                elif key == "role" and item == "system":
                    return {"role": "system", "content": _SYSTEM}
                else:
                    out[key] = self(item)
            return out
        return value


def plain(value: Any) -> Any:
    """attrs objects (events, results, history) as plain JSON-like data."""
    if attrs.has(type(value)):
        out = attrs.asdict(value, recurse=False)
        for name in ("type", "role", "block_type"):
            tag = getattr(type(value), name, None)
            if isinstance(tag, str):
                out[name] = tag
        return {k: plain(v) for k, v in out.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def error(exc: MeerkatError) -> Dict[str, Any]:
    return {"error": exc.code, "message": exc.message, "rpc_code": exc.rpc_code}


def events(stream: EventStream) -> Dict[str, Any]:
    """Consume a stream: its events (with relative ``seq``) and its result or error."""
    seen: List[Dict[str, Any]] = []
    first_seq = None
    try:
        with stream:
            for envelope in stream.envelopes():
                first_seq = envelope.seq if first_seq is None else first_seq
                seen.append({"seq": envelope.seq - first_seq, **plain(envelope.payload)})
        return {"events": seen, "result": plain(stream.result)}
    except MeerkatError as exc:
        return {"events": seen, **error(exc)}


def event_types(items: List[Any]) -> List[str]:
    return [e.type if isinstance(e, Event) else e["type"] for e in items]


def differences(ours: Any, theirs: Any, path: str = "$") -> List[str]:
    """Where two observations differ, as readable paths (for assertion messages)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out: List[str] = []
        for key in sorted(set(ours) | set(theirs), key=str):
            if key not in ours:
                out.append(f"{path}.{key}: missing here, real has {theirs[key]!r:.200}")
            elif key not in theirs:
                out.append(f"{path}.{key}: {ours[key]!r:.200} here, missing in real")
            else:
                out += differences(ours[key], theirs[key], f"{path}.{key}")
        return out
    if isinstance(ours, list) and isinstance(theirs, list):
        out = [f"{path}: {len(ours)} items here, {len(theirs)} in real"] if len(ours) != len(theirs) else []
        for i, (a, b) in enumerate(zip(ours, theirs)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    return [] if ours == theirs else [f"{path}: {ours!r:.200} here, {theirs!r:.200} in real"]
