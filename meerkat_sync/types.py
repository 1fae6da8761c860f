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

# --- config, models, skills, MCP --------------------------------------------------------


@attrs.frozen
class ConfigEnvelope:
    """The realm config as ``config/get``, ``config/set`` and ``config/patch`` return it.

    ``config`` is the whole realm config (an open dict: its keys follow the runtime's
    version); ``generation`` counts successful writes, for ``expected_generation=``.
    """

    config: Dict[str, Any] = attrs.Factory(dict)
    generation: int = 0
    realm_id: Optional[str] = None
    instance_id: Optional[str] = None
    backend: Optional[str] = None
    #: Where the realm lives: ``root``, ``config_path``, ``manifest_path``, ``sessions_*``.
    resolved_paths: Dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class ModelProfile:
    """What a catalog model supports, and the JSON schema of its ``provider_params``."""

    model_family: str = ""
    supports_temperature: bool = False
    supports_thinking: bool = False
    supports_reasoning: bool = False
    params_schema: Dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class CatalogModel:
    """One model of the catalog; ``tier`` is ``"recommended"`` or ``"supported"``."""

    id: str
    display_name: str = ""
    tier: str = ""
    context_window: Optional[int] = None
    max_output_tokens: Optional[int] = None
    profile: Optional[ModelProfile] = None


@attrs.frozen
class CatalogProvider:
    """A provider's models and the one it uses when a session names none."""

    provider: str
    default_model_id: str = ""
    models: List[CatalogModel] = attrs.Factory(list)


@attrs.frozen
class ModelsCatalog:
    """``models/catalog``: the models compiled into the runtime, by provider.

    ``contract_version`` is ``{"major", "minor", "patch"}``, as the server sends it.
    """

    contract_version: Dict[str, int] = attrs.Factory(dict)
    providers: List[CatalogProvider] = attrs.Factory(list)


@attrs.frozen
class SkillInfo:
    """A skill as ``skills/list`` shows it; ``scope`` is ``builtin``, ``project`` or ``user``.

    ``shadowed_by`` names the skill that hides this one (then ``is_active`` is False).
    """

    id: str
    name: str = ""
    description: str = ""
    scope: str = ""
    source: Optional[str] = None
    is_active: bool = True
    shadowed_by: Optional[str] = None


@attrs.frozen
class SkillDetails:
    """A skill as ``skills/inspect`` shows it: its ``body`` is the full SKILL.md text."""

    id: str
    name: str = ""
    description: str = ""
    scope: str = ""
    source: Optional[str] = None
    body: str = ""


@attrs.frozen
class McpLiveOpResponse:
    """What ``mcp/add``, ``mcp/remove`` and ``mcp/reload`` report.

    At 0.5.0 ``status`` is always ``"staged"``: the change applies at the session's next
    turn, where ``tool_config_changed`` events report how it went. ``server_name`` is None
    for a reload of every server; ``persisted`` is False (0.5.0 does not persist).
    """

    session_id: str
    operation: str
    status: str
    persisted: bool = False
    server_name: Optional[str] = None
    applied_at_turn: Optional[int] = None


__all__ += [
    "CatalogModel",
    "CatalogProvider",
    "ConfigEnvelope",
    "McpLiveOpResponse",
    "ModelProfile",
    "ModelsCatalog",
    "SkillDetails",
    "SkillInfo",
]

# --- session inputs, runtime, comms, blobs ----------------------------------------------


@attrs.frozen
class InjectContextResult:
    """``status`` is ``"staged"`` (applied to the next run) or ``"duplicate"`` (key already used)."""

    status: str

    @property
    def duplicate(self) -> bool:
        """The same ``idempotency_key`` was already staged with this text and source: nothing new."""
        return self.status == "duplicate"


@attrs.frozen
class RuntimeAcceptResult:
    """How the runtime took an input (``runtime_accept``, ``send_external_event``).

    ``outcome_type`` is ``"accepted"`` (with ``input_id``, ``policy`` and ``state``, the
    input's :meth:`~MeerkatClient.input_state` at acceptance), ``"deduplicated"`` (with
    ``existing_id``) or ``"rejected"`` (with ``reason``, e.g. a retired runtime).
    ``policy`` and ``state`` are plain dicts: their 0.5.0 shape is open.
    """

    outcome_type: str
    input_id: Optional[str] = None
    existing_id: Optional[str] = None
    reason: Optional[str] = None
    policy: Optional[Dict[str, Any]] = None
    state: Optional[Dict[str, Any]] = None

    @property
    def accepted(self) -> bool:
        """The input was queued (a run may already be under way)."""
        return self.outcome_type == "accepted"


@attrs.frozen
class RuntimeStateResult:
    """``state``: ``attached``, ``idle``, ``running``, ``retired``, ... (PROTOCOL.md §4.15)."""

    state: str


@attrs.frozen
class RuntimeRetireResult:
    """Inputs dropped, and inputs still queued that the retired runtime will yet run."""

    inputs_abandoned: int = 0
    inputs_pending_drain: int = 0


@attrs.frozen
class RuntimeResetResult:
    """How many queued (or stuck) inputs the reset dropped."""

    inputs_abandoned: int = 0


@attrs.frozen
class BlobPayload:
    """A stored blob, such as an image of a transcript; ``data`` is base64, as on the wire."""

    blob_id: str
    media_type: str = ""
    data: str = ""

    @property
    def data_base64(self) -> str:
        """``data``, under the official SDK's name."""
        return self.data

    def decode(self) -> bytes:
        """The blob's bytes (``data`` base64-decoded)."""
        import base64

        return base64.b64decode(self.data)


__all__ += [
    "BlobPayload",
    "InjectContextResult",
    "RuntimeAcceptResult",
    "RuntimeResetResult",
    "RuntimeRetireResult",
    "RuntimeStateResult",
]

# --- mobs -------------------------------------------------------------------------------


@attrs.frozen
class MobPrefab:
    """A built-in mob template: ``key`` is what ``create_mob(prefab=...)`` takes."""

    key: str
    toml_template: str = ""


@attrs.frozen
class MobSummary:
    """A mob and its lifecycle state, PascalCase as the runtime reports it (``"Running"``)."""

    mob_id: str
    status: str = ""


@attrs.frozen
class MobMember:
    """One member of ``list_mob_members``; ``session_id`` is the session its turns run on."""

    meerkat_id: str
    profile: str = ""
    runtime_mode: str = ""
    state: str = ""
    status: str = ""
    is_final: bool = False
    current_session_id: Optional[str] = None
    peer_id: Optional[str] = None
    wired_to: List[str] = attrs.Factory(list)
    labels: Dict[str, str] = attrs.Factory(dict)
    error: Optional[str] = None
    member_ref: Dict[str, Any] = attrs.Factory(dict)

    @property
    def session_id(self) -> Optional[str]:
        """The member's session (``member_ref.session_id``), for the session methods."""
        sid = self.member_ref.get("session_id", self.current_session_id)
        return sid if isinstance(sid, str) else None


@attrs.frozen
class MobSpawnReceipt:
    """What ``spawn_mob_member`` created: the member and the session its turns run on."""

    mob_id: str
    meerkat_id: str
    session_id: Optional[str] = None
    member_ref: Dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class MobSpawnResult:
    """One entry of ``spawn_mob_members``, in spec order; a failed spec has ``ok=False`` and ``error``."""

    ok: bool
    session_id: Optional[str] = None
    member_ref: Optional[Dict[str, Any]] = None
    error: Optional[str] = None


@attrs.frozen
class MemberRespawnReceipt:
    """The member's session before and after a respawn."""

    member_id: str
    old_session_id: Optional[str] = None
    new_session_id: Optional[str] = None


@attrs.frozen
class MobRespawnResult:
    """``status`` is ``"completed"``, or ``"topology_restore_failed"`` with the peers not rewired."""

    status: str
    receipt: MemberRespawnReceipt
    failed_peer_ids: List[str] = attrs.Factory(list)


@attrs.frozen
class MobUnreachablePeer:
    """A wired peer the member cannot reach, and why when the runtime knows."""

    peer: str
    reason: Optional[str] = None


@attrs.frozen
class MobPeerConnectivity:
    """How many of a member's wired peers are reachable."""

    reachable_peer_count: int = 0
    unknown_peer_count: int = 0
    unreachable_peers: List[MobUnreachablePeer] = attrs.Factory(list)


@attrs.frozen
class MobMemberSnapshot:
    """A member's execution status; an id not in the roster reads ``status="unknown"``, not an error."""

    status: str
    tokens_used: int = 0
    is_final: bool = False
    output_preview: Optional[str] = None
    error: Optional[str] = None
    current_session_id: Optional[str] = None
    peer_connectivity: Optional[MobPeerConnectivity] = None


@attrs.frozen
class MobKickoffMemberSnapshot(MobMemberSnapshot):
    """A member's snapshot once its kickoff turn is over (``wait_mob_kickoff``)."""

    meerkat_id: str = ""


@attrs.frozen
class MobHelperResult:
    """A helper's final answer; the call returns once the helper's turn completed."""

    tokens_used: int = 0
    output: Optional[str] = None
    session_id: Optional[str] = None


@attrs.frozen
class MemberDeliveryReceipt:
    """Where ``send_mob_member_content`` delivered the content, and how it is handled."""

    member_id: str
    session_id: str
    handling_mode: str = "queue"


@attrs.frozen
class MobSystemContextReceipt:
    """``status``: ``"staged"`` (applies at the member's next turn), ``"applied"`` or ``"duplicate"``."""

    mob_id: str
    meerkat_id: str
    session_id: str
    status: str


@attrs.frozen
class MobEvent:
    """One entry of the mob's event log; ``kind`` is the open-shaped record, tagged by ``kind["type"]``."""

    cursor: int
    mob_id: str = ""
    timestamp: str = ""
    kind: Dict[str, Any] = attrs.Factory(dict)

    @property
    def type(self) -> str:
        """``kind["type"]``: ``mob_created``, ``meerkat_spawned``, ``meerkat_retired``, ..."""
        return str(self.kind.get("type", ""))


__all__ += [
    "MemberDeliveryReceipt",
    "MemberRespawnReceipt",
    "MobEvent",
    "MobHelperResult",
    "MobKickoffMemberSnapshot",
    "MobMember",
    "MobMemberSnapshot",
    "MobPeerConnectivity",
    "MobPrefab",
    "MobRespawnResult",
    "MobSpawnReceipt",
    "MobSpawnResult",
    "MobSummary",
    "MobSystemContextReceipt",
    "MobUnreachablePeer",
]
