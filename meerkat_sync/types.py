"""Result and wire types returned by the client.

All are frozen, slotted attrs classes built from the wire by the one converter in
``_converter``; unknown wire fields are ignored and missing optional ones get defaults,
so a newer runtime does not break an older client.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Union

import attrs

__all__ = [
    "CONTRACT_VERSION",
    "AssistantBlock",
    "AssistantMessage",
    "BlockAssistantMessage",
    "Capability",
    "ReasoningBlock",
    "RunResult",
    "SchemaWarning",
    "SessionHistory",
    "SessionInfo",
    "SessionMessage",
    "SkillKey",
    "SkillQuarantineDiagnostic",
    "SkillRef",
    "SkillRuntimeDiagnostics",
    "SourceHealthSnapshot",
    "SystemMessage",
    "TextBlock",
    "ToolCall",
    "ToolResult",
    "ToolResultsMessage",
    "ToolUseBlock",
    "UnknownBlock",
    "UnknownMessage",
    "Usage",
    "UserMessage",
]

#: The rkat-rpc wire contract this client speaks.
CONTRACT_VERSION = "0.5.0"

#: Prompt content: a plain string or a list of content blocks (PROTOCOL.md §3.2).
Content = Union[str, List[Dict[str, Any]]]


def _sum_tokens(usage: Usage) -> int:
    return usage.input_tokens + usage.output_tokens


@attrs.frozen
class Usage:
    """Token counts. Events carry no ``total_tokens``, so it defaults to input + output."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: Optional[int] = None
    cache_read_tokens: Optional[int] = None
    total_tokens: int = attrs.field(default=attrs.Factory(_sum_tokens, takes_self=True))


@attrs.frozen
class SchemaWarning:
    """A warning from adapting the ``output_schema`` to ``provider``'s dialect: the part at
    ``path`` it cannot express as given, and why.
    """

    provider: str = ""
    path: str = ""
    message: str = ""


@attrs.frozen
class SourceHealthSnapshot:
    """How healthy a skill source is: ``state``, and how many of its skills failed to load."""

    state: str = ""
    invalid_ratio: float = 0.0
    invalid_count: int = 0
    total_count: int = 0
    failure_streak: int = 0
    handshake_failed: bool = False


@attrs.frozen
class SkillQuarantineDiagnostic:
    """One skill the runtime set aside because it failed to load, where it came from, and
    when that was first and last seen.
    """

    source_uuid: str = ""
    skill_id: str = ""
    location: str = ""
    error_code: str = ""
    error_class: str = ""
    message: str = ""
    first_seen_unix_secs: int = 0
    last_seen_unix_secs: int = 0


@attrs.frozen
class SkillRuntimeDiagnostics:
    """The skill system's health after a run (:attr:`RunResult.skill_diagnostics`)."""

    source_health: SourceHealthSnapshot = attrs.Factory(SourceHealthSnapshot)
    quarantined: List[SkillQuarantineDiagnostic] = attrs.Factory(list)


@attrs.frozen
class RunResult:
    """The outcome of one run: a ``session/create`` first turn or a ``turn/start``."""

    #: The session the run belongs to.
    session_id: str
    #: The final answer (with an ``output_schema``: the JSON text of the structured output).
    text: str = ""
    #: Model calls the run made; a tool round trip or a structured-output extraction adds one.
    turns: int = 0
    #: Tool calls the run made.
    tool_calls: int = 0
    #: The session's running token total as rkat-rpc reports it, not this run's alone.
    usage: Usage = attrs.Factory(Usage)
    #: ``"<realm>:<session_id>"``.
    session_ref: Optional[str] = None
    #: The parsed value for an ``output_schema`` session, else None.
    structured_output: Any = None
    #: What the provider could not express of the ``output_schema``, if anything.
    schema_warnings: Optional[List[SchemaWarning]] = None
    #: The skill system's health, sent with most 0.5.0 results.
    skill_diagnostics: Optional[SkillRuntimeDiagnostics] = None


@attrs.frozen
class SessionInfo:
    """A session as ``session/list`` and ``session/read`` describe it.

    ``created_at`` and ``updated_at`` are Unix seconds, as the 0.5.0 server sends them.
    ``model``, ``provider`` and ``last_assistant_text`` are only filled by ``read_session``.
    """

    session_id: str
    session_ref: Optional[str] = None
    created_at: int = 0
    updated_at: int = 0
    message_count: int = 0
    total_tokens: int = 0
    is_active: bool = False
    model: Optional[str] = None
    provider: Optional[str] = None
    last_assistant_text: Optional[str] = None
    labels: Dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Capability:
    """One runtime capability; ``status`` is normalised to a plain string."""

    id: str
    description: str = ""
    status: str = "Available"

    @property
    def available(self) -> bool:
        """True when the runtime offers the capability (``status == "Available"``)."""
        return self.status == "Available"


@attrs.frozen
class SkillKey:
    """Structured skill reference (preferred over the legacy ``"<uuid>/<name>"`` string)."""

    source_uuid: str
    skill_name: str


SkillRef = Union[SkillKey, str]


# --- history --------------------------------------------------------------------------


@attrs.frozen
class AssistantBlock:
    """Base of the blocks inside a ``block_assistant`` message, tagged by ``block_type``."""

    block_type: ClassVar[str] = ""


@attrs.frozen
class TextBlock(AssistantBlock):
    """Answer text inside a :class:`BlockAssistantMessage`."""

    block_type: ClassVar[str] = "text"
    text: str = ""
    meta: Optional[Dict[str, Any]] = None


@attrs.frozen
class ReasoningBlock(AssistantBlock):
    """The model's reasoning (thinking) inside a :class:`BlockAssistantMessage`; ``meta``
    holds its provider signature.
    """

    block_type: ClassVar[str] = "reasoning"
    text: str = ""
    meta: Optional[Dict[str, Any]] = None


@attrs.frozen
class ToolUseBlock(AssistantBlock):
    """A tool call the model made, inside a :class:`BlockAssistantMessage`."""

    block_type: ClassVar[str] = "tool_use"
    id: str = ""
    name: str = ""
    args: Any = None
    meta: Optional[Dict[str, Any]] = None


@attrs.frozen
class UnknownBlock(AssistantBlock):
    """A block kind this client does not know; ``raw`` keeps what the server sent."""

    kind: str = ""
    raw: Dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class ToolCall:
    """A tool call in the older :class:`AssistantMessage` form."""

    id: str = ""
    name: str = ""
    args: Any = None


@attrs.frozen
class ToolResult:
    """One tool's answer in a :class:`ToolResultsMessage`; ``tool_use_id`` names the call."""

    tool_use_id: str = ""
    content: Content = ""
    is_error: bool = False


@attrs.frozen
class SessionMessage:
    """Base of the transcript messages, tagged by ``role``."""

    role: ClassVar[str] = ""


@attrs.frozen
class SystemMessage(SessionMessage):
    """The system prompt, first in every history (and counted in ``message_count``)."""

    role: ClassVar[str] = "system"
    content: str = ""


@attrs.frozen
class UserMessage(SessionMessage):
    """What the user sent: a string or a list of content blocks (images come back as
    ``sha256:`` blob references).
    """

    role: ClassVar[str] = "user"
    content: Content = ""


@attrs.frozen
class AssistantMessage(SessionMessage):
    """Assistant message in the older transcript form."""

    role: ClassVar[str] = "assistant"
    content: str = ""
    tool_calls: List[ToolCall] = attrs.Factory(list)
    stop_reason: Optional[str] = None


@attrs.frozen
class BlockAssistantMessage(SessionMessage):
    """An assistant reply as typed blocks (text, reasoning, tool use): the form 0.5.0 sends."""

    role: ClassVar[str] = "block_assistant"
    blocks: List[AssistantBlock] = attrs.Factory(list)
    stop_reason: Optional[str] = None

    @property
    def text(self) -> str:
        """The reply's text blocks joined, without reasoning or tool calls."""
        return "".join(b.text for b in self.blocks if isinstance(b, TextBlock))


@attrs.frozen
class ToolResultsMessage(SessionMessage):
    """The results of the tool calls of the preceding assistant message."""

    role: ClassVar[str] = "tool_results"
    results: List[ToolResult] = attrs.Factory(list)


@attrs.frozen
class UnknownMessage(SessionMessage):
    """A message role this client does not know; ``raw`` keeps what the server sent."""

    kind: str = ""
    raw: Dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class SessionHistory:
    """One page of a session transcript, oldest message first."""

    session_id: str
    session_ref: Optional[str] = None
    message_count: int = 0
    offset: int = 0
    limit: Optional[int] = None
    has_more: bool = False
    messages: List[SessionMessage] = attrs.Factory(list)


# The 0.5.0 method families below each keep their result types in their own section and
# extend ``__all__`` there.

# --- subscriptions ----------------------------------------------------------------------

# --- callback tools ---------------------------------------------------------------------

# --- config, models, skills, MCP --------------------------------------------------------

# --- session inputs, runtime, comms, blobs ----------------------------------------------

# --- mobs -------------------------------------------------------------------------------
