"""Typed agent events (the 31 AgentEvent variants of rkat-rpc 0.5.0, PROTOCOL.md §6).

Every field has a default, so an event with a missing field still parses; an event type
this client does not know becomes :class:`UnknownEvent` instead of an error. All classes
are frozen slotted attrs classes, so ``match event: case TextDelta(delta=chunk)`` works.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Type, TypeVar

import attrs

from .types import Usage

__all__ = [
    "EVENT_TYPES",
    "AttributedEvent",
    "BudgetWarning",
    "CompactionCompleted",
    "CompactionFailed",
    "CompactionStarted",
    "Event",
    "EventEnvelope",
    "HookCompleted",
    "HookDenied",
    "HookFailed",
    "HookPatchPublished",
    "HookRewriteApplied",
    "HookStarted",
    "InteractionComplete",
    "InteractionFailed",
    "ReasoningComplete",
    "ReasoningDelta",
    "Retrying",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "SkillResolutionFailed",
    "SkillsResolved",
    "StreamTruncated",
    "TextComplete",
    "TextDelta",
    "ToolCallRequested",
    "ToolConfigChanged",
    "ToolConfigChangedPayload",
    "ToolExecutionCompleted",
    "ToolExecutionStarted",
    "ToolExecutionTimedOut",
    "ToolResultReceived",
    "TurnCompleted",
    "TurnStarted",
    "UnknownEvent",
    "parse_envelope",
    "parse_event",
]


@attrs.frozen
class Event:
    """Base class of every event; ``type`` is the wire discriminator."""

    type: ClassVar[str] = ""


#: Wire ``type`` → event class, for every variant this client knows.
EVENT_TYPES: Dict[str, Type[Event]] = {}

_E = TypeVar("_E", bound=Event)


def _variant(tag: str) -> Callable[[Type[_E]], Type[_E]]:
    def register(cls: Type[_E]) -> Type[_E]:
        cls.type = tag
        EVENT_TYPES[tag] = cls
        return cls

    return register


# --- session lifecycle -------------------------------------------------------------------


@_variant("run_started")
@attrs.frozen
class RunStarted(Event):
    """A run began: always its first event. ``prompt`` is the prompt as the runtime
    rendered it (the client matches it to the waiting turn).
    """

    session_id: str = ""
    prompt: str = ""


@_variant("run_completed")
@attrs.frozen
class RunCompleted(Event):
    """The run succeeded: ``result`` is its final text, ``usage`` the session's running
    total (not this run's).
    """

    session_id: str = ""
    result: str = ""
    usage: Usage = attrs.Factory(Usage)


@_variant("run_failed")
@attrs.frozen
class RunFailed(Event):
    """The run failed with ``error`` (the runtime's text); a stream yields it, then raises the
    matching :class:`~meerkat_sync.MeerkatError`.
    """

    session_id: str = ""
    error: str = ""


# --- hooks -------------------------------------------------------------------------------


@_variant("hook_started")
@attrs.frozen
class HookStarted(Event):
    """A configured hook began running at hook point ``point`` (e.g. ``pre_tool_execution``)."""

    hook_id: str = ""
    point: str = ""


@_variant("hook_completed")
@attrs.frozen
class HookCompleted(Event):
    """A hook finished at ``point`` after ``duration_ms`` and let the run go on."""

    hook_id: str = ""
    point: str = ""
    duration_ms: int = 0


@_variant("hook_failed")
@attrs.frozen
class HookFailed(Event):
    """A hook itself failed (rather than denying anything); ``error`` says why."""

    hook_id: str = ""
    point: str = ""
    error: str = ""


@_variant("hook_denied")
@attrs.frozen
class HookDenied(Event):
    """A hook refused an action at ``point``: ``reason_code`` and ``message`` say why,
    ``payload`` is the hook's extra data. A denied run fails with ``HOOK_DENIED``.
    """

    hook_id: str = ""
    point: str = ""
    reason_code: str = ""
    message: str = ""
    payload: Any = None


@_variant("hook_rewrite_applied")
@attrs.frozen
class HookRewriteApplied(Event):
    """A hook changed the run in place (model request settings, the reply text, tool
    arguments or results, the final text); ``patch`` is the change it applied.
    """

    hook_id: str = ""
    point: str = ""
    patch: Dict[str, Any] = attrs.Factory(dict)


@_variant("hook_patch_published")
@attrs.frozen
class HookPatchPublished(Event):
    """A background hook published a patch for later consumers; ``envelope`` holds it as
    the runtime sent it.
    """

    hook_id: str = ""
    point: str = ""
    envelope: Dict[str, Any] = attrs.Factory(dict)


# --- LLM interaction ----------------------------------------------------------------------


@_variant("turn_started")
@attrs.frozen
class TurnStarted(Event):
    """``turn_number`` is 0-based on the 0.5.0 wire."""

    turn_number: int = 0


@_variant("reasoning_delta")
@attrs.frozen
class ReasoningDelta(Event):
    """A piece of the model's reasoning (thinking) text, streamed before its answer."""

    delta: str = ""


@_variant("reasoning_complete")
@attrs.frozen
class ReasoningComplete(Event):
    """The full reasoning text of one reasoning block, after its deltas."""

    content: str = ""


@_variant("text_delta")
@attrs.frozen
class TextDelta(Event):
    """A piece of the answer as it streams. Join the ``delta`` values in order for the text,
    or use :meth:`~meerkat_sync.EventStream.collect_text`.
    """

    delta: str = ""


@_variant("text_complete")
@attrs.frozen
class TextComplete(Event):
    """The full text of one model call, after its deltas (not sent for an empty text)."""

    content: str = ""


@_variant("tool_call_requested")
@attrs.frozen
class ToolCallRequested(Event):
    """The model asked for a tool: ``name`` with ``args``; ``id`` ties together the later
    events of this call.
    """

    id: str = ""
    name: str = ""
    args: Any = None


@_variant("tool_result_received")
@attrs.frozen
class ToolResultReceived(Event):
    """A tool call's result went back into the conversation; ``is_error`` if the tool failed."""

    id: str = ""
    name: str = ""
    is_error: bool = False


@_variant("turn_completed")
@attrs.frozen
class TurnCompleted(Event):
    """One model call finished with ``stop_reason``; ``usage`` is that call's tokens only.
    A model call that asks for tools sends none on rkat-rpc 0.5.0.
    """

    stop_reason: str = ""
    usage: Usage = attrs.Factory(Usage)


# --- tool execution -----------------------------------------------------------------------


@_variant("tool_execution_started")
@attrs.frozen
class ToolExecutionStarted(Event):
    """The runtime started running the tool call ``id``."""

    id: str = ""
    name: str = ""


@_variant("tool_execution_completed")
@attrs.frozen
class ToolExecutionCompleted(Event):
    """A tool call finished: ``result`` is its output as text, ``is_error`` if it failed,
    ``has_images`` if the output also holds images.
    """

    id: str = ""
    name: str = ""
    result: str = ""
    is_error: bool = False
    duration_ms: int = 0
    has_images: bool = False


@_variant("tool_execution_timed_out")
@attrs.frozen
class ToolExecutionTimedOut(Event):
    """A tool call ran longer than ``timeout_ms`` and was given up."""

    id: str = ""
    name: str = ""
    timeout_ms: int = 0


# --- compaction, budget, retry ------------------------------------------------------------


@_variant("compaction_started")
@attrs.frozen
class CompactionStarted(Event):
    """The history grew too large for the model's context and is being summarised."""

    input_tokens: int = 0
    estimated_history_tokens: int = 0
    message_count: int = 0


@_variant("compaction_completed")
@attrs.frozen
class CompactionCompleted(Event):
    """History compaction is done: ``messages_before`` messages became ``messages_after``,
    with a summary of ``summary_tokens`` tokens.
    """

    summary_tokens: int = 0
    messages_before: int = 0
    messages_after: int = 0


@_variant("compaction_failed")
@attrs.frozen
class CompactionFailed(Event):
    """History compaction failed with ``error``; the run goes on with the full history."""

    error: str = ""


@_variant("budget_warning")
@attrs.frozen
class BudgetWarning(Event):
    """A session budget (``budget_type``: tokens, time or tool calls) is ``percent`` used.

    At 1.0 a token or tool-call budget ends the run successfully (with an empty ``text``);
    a spent time budget fails it with ``BUDGET_EXHAUSTED``.
    """

    budget_type: str = ""
    used: int = 0
    limit: int = 0
    percent: float = 0.0


@_variant("retrying")
@attrs.frozen
class Retrying(Event):
    """The runtime is retrying after ``error``: attempt ``attempt`` of ``max_attempts``, in
    ``delay_ms``.
    """

    attempt: int = 0
    max_attempts: int = 0
    error: str = ""
    delay_ms: int = 0


# --- skills, interactions, streams, tool config -------------------------------------------


@_variant("skills_resolved")
@attrs.frozen
class SkillsResolved(Event):
    """The skills of this turn were resolved: ``skills`` lists their ids, ``injection_bytes``
    is how much text they add to the prompt.
    """

    skills: List[str] = attrs.Factory(list)
    injection_bytes: int = 0


@_variant("skill_resolution_failed")
@attrs.frozen
class SkillResolutionFailed(Event):
    """The skill ``reference`` could not be resolved; ``error`` says why."""

    reference: str = ""
    error: str = ""


@_variant("interaction_complete")
@attrs.frozen
class InteractionComplete(Event):
    """A comms interaction (a message exchange with another agent) ended with ``result``."""

    interaction_id: str = ""
    result: str = ""


@_variant("interaction_failed")
@attrs.frozen
class InteractionFailed(Event):
    """A comms interaction (a message exchange with another agent) failed with ``error``."""

    interaction_id: str = ""
    error: str = ""


@_variant("stream_truncated")
@attrs.frozen
class StreamTruncated(Event):
    """Events were lost at this point: ``dropped`` counts them when the client knows.

    The server sends it for interaction streams; the client yields its own when a stream
    overflowed its buffer or the envelope ``seq`` shows the server dropped events (§5.5).
    """

    reason: str = ""
    dropped: int = 0


@attrs.frozen
class ToolConfigChangedPayload:
    """What changed in a :class:`ToolConfigChanged`: the ``operation`` on ``target``, its
    ``status``, whether it was ``persisted``, and from which turn it applies.
    """

    operation: str = ""
    target: str = ""
    status: str = ""
    persisted: bool = False
    applied_at_turn: Optional[int] = None


@_variant("tool_config_changed")
@attrs.frozen
class ToolConfigChanged(Event):
    """The session's live tool configuration changed (a tool was added, removed or
    reconfigured); ``payload`` says how.
    """

    payload: ToolConfigChangedPayload = attrs.Factory(ToolConfigChangedPayload)


# --- forward compatibility ----------------------------------------------------------------


@attrs.frozen
class UnknownEvent(Event):
    """An event this client cannot type: a newer variant, or one whose fields do not fit.

    ``type`` is the wire discriminator (instance attribute here) and ``data`` the raw payload.
    """

    type: str = ""  # type: ignore[misc]
    data: Dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class EventEnvelope:
    """Delivery metadata around an event (``session/event`` params, PROTOCOL.md §5.1)."""

    event_id: str = ""
    source_id: str = ""
    seq: int = 0
    timestamp_ms: int = 0
    mob_id: Optional[str] = None
    payload: Event = attrs.Factory(UnknownEvent)


@attrs.frozen
class AttributedEvent:
    """A mob stream's event with who sent it (``mob/stream_event``, PROTOCOL.md §5.4).

    ``source`` is the member (meerkat) id and ``profile`` its profile; both are ``""`` for
    the bare envelopes of session and per-member streams, which name no member.
    """

    source: str = ""
    profile: str = ""
    envelope: EventEnvelope = attrs.Factory(EventEnvelope)

    @property
    def event(self) -> Event:
        """The typed event itself (``envelope.payload``)."""
        return self.envelope.payload


def parse_event(raw: Mapping[str, Any]) -> Event:
    """Type an event given either as a 0.5.0 envelope or as a bare ``{"type": ...}`` payload."""
    from ._converter import structure_event

    if "type" not in raw:
        payload = raw.get("payload")
        if isinstance(payload, Mapping):
            return structure_event(payload)
    return structure_event(raw)


def parse_envelope(raw: Mapping[str, Any]) -> EventEnvelope:
    """Type a whole envelope; a bare event gets an envelope with empty metadata."""
    from ._converter import structure_envelope

    return structure_envelope(raw)
