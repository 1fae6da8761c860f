"""The scripted runtime's static data: the 0.5.0 models catalog and builtin skills.

Ids, names, tiers, limits and skill descriptions are those rkat-rpc 0.5.0 reports; the
``params_schema`` documents and the skill bodies are short stand-ins of the same shape.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from meerkat_sync.testing._fake_wire import JsonDict


def _params_schema(title: str, properties: Tuple[str, ...]) -> JsonDict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {name: {"description": f"provider parameter {name}"} for name in properties},
    }


_OPUS_46 = _params_schema(
    "AnthropicOpus46Params", ("compaction", "effort", "inference_geo", "thinking", "thinking_budget", "top_k")
)
_ANTHROPIC = _params_schema("AnthropicStandardParams", ("thinking", "thinking_budget", "top_k"))
_GEMINI = _params_schema("GeminiModelParams", ("thinking", "thinking_budget", "top_k", "top_p"))
_GPT5 = _params_schema(
    "OpenAiGpt5Params", ("frequency_penalty", "presence_penalty", "reasoning_effort", "seed")
)


def _model(
    model_id: str,
    display_name: str,
    tier: str,
    limits: Tuple[int, int],
    family: str,
    supports: Tuple[bool, bool, bool],
    schema: JsonDict,
) -> JsonDict:
    return {
        "id": model_id,
        "display_name": display_name,
        "tier": tier,
        "context_window": limits[0],
        "max_output_tokens": limits[1],
        "profile": {
            "model_family": family,
            "supports_temperature": supports[0],
            "supports_thinking": supports[1],
            "supports_reasoning": supports[2],
            "params_schema": schema,
        },
    }


_CLAUDE = (True, True, False)
_GEMINI_SUPPORTS = (True, True, False)
_GPT = (False, True, True)

PROVIDERS: List[JsonDict] = [
    {
        "provider": "anthropic",
        "default_model_id": "claude-opus-4-6",
        "models": [
            _model(
                "claude-opus-4-6",
                "Claude Opus 4.6",
                "recommended",
                (200000, 32768),
                "claude-opus-4",
                _CLAUDE,
                _OPUS_46,
            ),
            _model(
                "claude-sonnet-4-6",
                "Claude Sonnet 4.6",
                "recommended",
                (200000, 16384),
                "claude-sonnet-4",
                _CLAUDE,
                _ANTHROPIC,
            ),
            _model(
                "claude-sonnet-4-5",
                "Claude Sonnet 4.5",
                "supported",
                (200000, 16384),
                "claude-sonnet-4",
                _CLAUDE,
                _ANTHROPIC,
            ),
            _model(
                "claude-opus-4-5",
                "Claude Opus 4.5",
                "supported",
                (200000, 32768),
                "claude-opus-4",
                _CLAUDE,
                _ANTHROPIC,
            ),
        ],
    },
    {
        "provider": "gemini",
        "default_model_id": "gemini-3-flash-preview",
        "models": [
            _model(
                "gemini-3-flash-preview",
                "Gemini 3 Flash Preview",
                "recommended",
                (1000000, 8192),
                "gemini-3",
                _GEMINI_SUPPORTS,
                _GEMINI,
            ),
            _model(
                "gemini-3.1-pro-preview",
                "Gemini 3.1 Pro Preview",
                "supported",
                (1000000, 8192),
                "gemini-3",
                _GEMINI_SUPPORTS,
                _GEMINI,
            ),
            _model(
                "gemini-3.1-flash-lite-preview",
                "Gemini 3.1 Flash Lite Preview",
                "supported",
                (1000000, 8192),
                "gemini-3",
                _GEMINI_SUPPORTS,
                _GEMINI,
            ),
        ],
    },
    {
        "provider": "openai",
        "default_model_id": "gpt-5.4",
        "models": [
            _model("gpt-5.4", "GPT-5.4", "recommended", (128000, 16384), "gpt-5", _GPT, _GPT5),
            _model("gpt-5.3-codex", "GPT-5.3 Codex", "supported", (128000, 16384), "codex", _GPT, _GPT5),
        ],
    },
]

#: The builtin skills: (id, title, description, required capabilities), in list order.
#: The hook-authoring body says "8 hook points" where its description says 7, as in 0.5.0.
_BUILTIN_SKILLS: Tuple[Tuple[str, str, str, str], ...] = (
    (
        "multi-agent-comms",
        "Multi-Agent Comms",
        "Setting up keep-alive, peer trust, send vs request/response patterns",
        "comms",
    ),
    ("mcp-server-setup", "MCP Server Setup", "How to configure MCP servers in .rkat/mcp.toml", ""),
    (
        "task-workflow",
        "Task Workflow",
        "How to use task_create/task_update/task_list for structured work tracking",
        "builtins",
    ),
    (
        "shell-patterns",
        "Shell Patterns",
        "Background job patterns with shell and job management tools",
        "builtins, shell",
    ),
    (
        "session-management",
        "Session Management",
        "Session persistence, resume patterns, event store replay, compaction tuning",
        "session_store",
    ),
    (
        "hook-authoring",
        "Hook Authoring",
        "Writing hooks for the 7 hook points, execution modes, and decision semantics",
        "hooks",
    ),
    (
        "mob-communication",
        "Mob Communication",
        "How to communicate with peers in a collaborative mob",
        "comms",
    ),
)


def _body(title: str, description: str, requires: str) -> str:
    if title == "Hook Authoring":
        description = description.replace("7 hook points", "8 hook points")
    front = f"---\nname: {title}\ndescription: {description}\n"
    if requires:
        front += f"requires_capabilities: [{requires}]\n"
    return f"{front}---\n\n# {title}\n\n(The scripted runtime's stand-in for this builtin skill's text.)\n"


SKILLS: List[JsonDict] = [
    {
        "id": skill_id,
        "name": skill_id,
        "description": description,
        "scope": "builtin",
        "source": "embedded",
        "is_active": True,
    }
    for skill_id, _title, description, _requires in _BUILTIN_SKILLS
]

#: ``skills/inspect`` answers, by id: no ``source`` key (0.5.0 leaves it out here).
SKILL_DETAILS: Dict[str, Dict[str, Any]] = {
    skill_id: {
        "id": skill_id,
        "name": skill_id,
        "description": description,
        "scope": "builtin",
        "body": _body(title, description, requires),
    }
    for skill_id, title, description, requires in _BUILTIN_SKILLS
}
