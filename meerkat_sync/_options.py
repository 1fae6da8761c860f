"""Keyword options of session creation and turns, as TypedDicts for ``**options``.

They exist for type checkers and IDEs (``Unpack[CreateOptions]``); at run time the
checks in ``_params`` are the authority, and must name exactly these keys.
"""

from __future__ import annotations

from typing import Any, Dict, List, TypedDict

from .types import SkillRef


class TurnOptions(TypedDict, total=False):
    """Overrides ``turn/start`` accepts (PROTOCOL.md §4.2). ``None`` means "not sent"."""

    skill_refs: List[SkillRef]
    skill_references: List[str]
    flow_tool_overlay: Dict[str, Any]
    additional_instructions: List[str]
    keep_alive: bool
    model: str
    provider: str
    provider_params: Any


class DeferredTurnOptions(TypedDict, total=False):
    """The first turn of a deferred session: ``keep_alive`` cannot work there yet."""

    skill_refs: List[SkillRef]
    skill_references: List[str]
    flow_tool_overlay: Dict[str, Any]
    additional_instructions: List[str]
    model: str
    provider: str
    provider_params: Any


class CreateOptions(TypedDict, total=False):
    """Every ``session/create`` parameter (PROTOCOL.md §4.1). ``None`` means "not sent"."""

    model: str
    provider: str
    system_prompt: str
    max_tokens: int
    output_schema: Dict[str, Any]
    structured_output_retries: int
    hooks_override: Dict[str, Any]
    enable_builtins: bool
    enable_shell: bool
    enable_memory: bool
    enable_mob: bool
    keep_alive: bool
    comms_name: str
    peer_meta: Dict[str, Any]
    budget_limits: Dict[str, Any]
    provider_params: Any
    preload_skills: List[str]
    skill_refs: List[SkillRef]
    skill_references: List[str]
    labels: Dict[str, str]
    additional_instructions: List[str]
    app_context: Any
    shell_env: Dict[str, str]
    external_tools: List[Dict[str, Any]]
