"""The one cattrs converter that turns wire JSON into the public attrs types.

All wire-shape knowledge lives here: tagged unions (events by ``type``, transcript
messages by ``role``, assistant blocks by ``block_type``), the capability status
normalisation, and the tolerance rules (unknown keys ignored, missing optional keys
defaulted, unknown tags kept as ``Unknown*`` objects rather than raised).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Type, TypeVar

import cattrs

from .events import EVENT_TYPES, Event, EventEnvelope, TextDelta, UnknownEvent
from .types import (
    AssistantBlock,
    AssistantMessage,
    BlockAssistantMessage,
    Capability,
    Content,
    ReasoningBlock,
    SessionMessage,
    SystemMessage,
    TextBlock,
    ToolResultsMessage,
    ToolUseBlock,
    UnknownBlock,
    UnknownMessage,
    UserMessage,
)

log = logging.getLogger("meerkat_sync")

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

# Content is either a string or a list of block dicts; pass it through untouched.
converter.register_structure_hook(Content, lambda value, _: value)


def _tagged_union(
    base: Type[T],
    tag: str,
    variants: List[Type[Any]],
    unknown: Callable[[str, Dict[str, Any]], T],
    fields: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda value: value,
) -> None:
    """Structure ``base`` by the ``tag`` key; an unknown tag becomes ``unknown(tag, raw)``.

    ``fields`` picks the mapping holding the variant's fields (blocks nest them in ``data``).
    """
    by_tag = {getattr(cls, tag): cls for cls in variants}

    def hook(value: Any, _: Any) -> T:
        if not isinstance(value, dict):
            return unknown("", {"value": value})
        cls = by_tag.get(value.get(tag, ""))
        if cls is None:
            return unknown(str(value.get(tag, "")), value)
        structured: T = converter.structure(fields(value), cls)
        return structured

    # Exact match only: a plain class hook would also catch the variants (singledispatch).
    converter.register_structure_hook_func(lambda cls: cls is base, hook)


def _block_data(value: Dict[str, Any]) -> Dict[str, Any]:
    data = value.get("data")
    return data if isinstance(data, dict) else {}


_tagged_union(
    SessionMessage,
    "role",
    [SystemMessage, UserMessage, AssistantMessage, BlockAssistantMessage, ToolResultsMessage],
    lambda kind, raw: UnknownMessage(kind=kind, raw=raw),
)
_tagged_union(
    AssistantBlock,
    "block_type",
    [TextBlock, ReasoningBlock, ToolUseBlock],
    lambda kind, raw: UnknownBlock(kind=kind, raw=raw),
    _block_data,
)


def _capability_status(value: Any) -> str:
    """``"Available"`` stays; ``{"DisabledByPolicy": {...}}`` becomes its tag (§2.3)."""
    if value is None:
        return "Available"
    if isinstance(value, dict) and value:
        return str(next(iter(value)))
    return str(value)


_structure_capability_fields = converter.gen_structure_attrs_fromdict(Capability)


def _structure_capability(value: Any, _: Any) -> Capability:
    fields = dict(value)
    fields["status"] = _capability_status(fields.get("status"))
    return _structure_capability_fields(fields, Capability)


converter.register_structure_hook(Capability, _structure_capability)


def structure(value: Any, cls: Type[T]) -> T:
    """Structure wire JSON into ``cls``."""
    return converter.structure(value, cls)


def structure_event(payload: Mapping[str, Any]) -> Event:
    """Type one AgentEvent payload; never raises for bad input, which becomes ``UnknownEvent``."""
    kind = payload.get("type")
    if kind == "text_delta":
        # The hot path: one field, no nested types, constructed directly.
        delta = payload.get("delta", "")
        if isinstance(delta, str):
            return TextDelta(delta)
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return UnknownEvent(type=kind if isinstance(kind, str) else "", data=dict(payload))
    try:
        return converter.structure(payload, EVENT_TYPES[kind])
    except (cattrs.BaseValidationError, ValueError, TypeError, AttributeError) as exc:
        log.warning("event %r has fields this client cannot type (%s); kept as UnknownEvent", kind, exc)
        return UnknownEvent(type=kind, data=dict(payload))


def structure_envelope(raw: Mapping[str, Any]) -> EventEnvelope:
    """Type an EventEnvelope; a bare event gets empty delivery metadata."""
    payload = raw.get("payload")
    if "type" in raw or not isinstance(payload, Mapping):
        return EventEnvelope(payload=structure_event(raw))
    mob_id = raw.get("mob_id")
    seq = raw.get("seq")
    timestamp = raw.get("timestamp_ms")
    return EventEnvelope(
        event_id=str(raw.get("event_id", "")),
        source_id=str(raw.get("source_id", "")),
        seq=seq if isinstance(seq, int) else 0,
        timestamp_ms=timestamp if isinstance(timestamp, int) else 0,
        mob_id=mob_id if isinstance(mob_id, str) else None,
        payload=structure_event(payload),
    )


def unstructure(value: Any) -> Any:
    """Wire JSON for an attrs value (used for skill keys in requests)."""
    return converter.unstructure(value)


__all__ = ["converter", "structure", "structure_envelope", "structure_event", "unstructure"]
