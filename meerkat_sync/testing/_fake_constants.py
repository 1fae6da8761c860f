"""What the scripted runtime reports, as the real rkat-rpc 0.5.0 does (docs/scripted-runtime.rst)."""

from __future__ import annotations

from typing import Any, Dict, Tuple

SERVER_NAME = "meerkat-rpc"
SERVER_VERSION = "0.5.0"
CONTRACT_VERSION = "0.5.0"
MAX_SESSIONS = 64
CALLBACK_TIMEOUT_S = 30.0
EOF_GRACE_S = 5.0
KEEP_ALIVE_WAIT_S = 0.25
DEFAULT_MODEL = "claude-opus-4-6"
DEFAULT_STRUCTURED_OUTPUT_RETRIES = 2

#: Model calls per LLM turn: one call and three retries of a retryable provider error.
LLM_ATTEMPTS = 4
#: The real backoff (0.5 s, 1 s, 2 s; 30 s for rate limits) is not worth waiting for in tests.
RETRY_PAUSE_S = 0.01
#: Pause before each replay of a failed input, so a deterministic failure loops slowly.
REPLAY_PAUSE_S = 0.05

#: The scripted runtime's own system prompt (the real one's prose is its own).
DEFAULT_SYSTEM_PROMPT = (
    "You are a scripted Meerkat agent running in meerkat-sync's test runtime.\n\n"
    "Your replies come from a reply script or from a `fake:{...}` directive at the start "
    "of the prompt; with neither, you echo the prompt back."
)
EXTRACTION_PROMPT = (
    "Provide the final output as valid JSON matching the required schema. Output ONLY the JSON, "
    "no additional text or markdown formatting."
)
EXTRACTION_RETRY_PROMPT = (
    "The previous output was invalid: {error}. Please provide valid JSON matching the schema. "
    "Output ONLY the JSON, no additional text."
)

# The exact list and order `initialize` returns at 0.5.0 (60 entries).
METHODS: Tuple[str, ...] = (
    "initialized",
    "initialize",
    "session/create",
    "session/list",
    "session/read",
    "session/history",
    "blob/get",
    "session/archive",
    "session/external_event",
    "session/inject_context",
    "session/stream_open",
    "session/stream_close",
    "turn/start",
    "turn/interrupt",
    "config/get",
    "config/set",
    "config/patch",
    "capabilities/get",
    "models/catalog",
    "skills/list",
    "skills/inspect",
    "tools/register",
    "runtime/state",
    "runtime/accept",
    "runtime/retire",
    "runtime/reset",
    "input/state",
    "input/list",
    "mob/prefabs",
    "mob/create",
    "mob/list",
    "mob/status",
    "mob/lifecycle",
    "mob/spawn",
    "mob/spawn_many",
    "mob/retire",
    "mob/respawn",
    "mob/wire",
    "mob/unwire",
    "mob/members",
    "mob/send",
    "mob/events",
    "mob/append_system_context",
    "mob/flows",
    "mob/flow_run",
    "mob/flow_status",
    "mob/flow_cancel",
    "mob/spawn_helper",
    "mob/fork_helper",
    "mob/force_cancel",
    "mob/member_status",
    "mob/tools",
    "mob/call",
    "mob/stream_open",
    "mob/stream_close",
    "mcp/add",
    "mcp/remove",
    "mcp/reload",
    "comms/send",
    "comms/peers",
)

# `capabilities/get` of the 0.5.0 binary: 11 entries (no memory_store), in this order.
CAPABILITIES: Tuple[Tuple[str, str], ...] = (
    ("sessions", "Agent loop and session lifecycle"),
    ("streaming", "Event streaming during agent execution"),
    ("structured_output", "Schema-validated JSON output extraction"),
    ("hooks", "7 hook points, 3 runtimes (in-process/command/HTTP), deny/allow/rewrite semantics"),
    (
        "builtins",
        "Built-in tools: task_list, task_create, task_get, task_update, wait, datetime, apply_patch",
    ),
    ("shell", "Shell tool with job management: shell, shell_jobs, shell_job_status, shell_job_cancel"),
    ("comms", "Inter-agent communication: send, request, response, list peers + keep-alive"),
    ("session_store", "PersistentSessionService, RedbEventStore, SessionProjector"),
    ("session_compaction", "DefaultCompactor: auto-compact at token threshold, LLM summary, history rebuild"),
    ("skills", "Skill loading, resolution, and injection"),
    ("mcp_live", "Live MCP server mutation (add/remove/reload on running sessions)"),
)

# What a default realm config yields: both keys default to false.
DEFAULT_CAPABILITY_STATUS: Dict[str, Any] = {
    "builtins": {"DisabledByPolicy": {"description": "tools.builtins_enabled = false"}},
    "shell": {"DisabledByPolicy": {"description": "tools.shell_enabled = false"}},
}

#: The tools a session is given, in the order the real runtime offers them.
BUILTIN_TOOLS = (
    "task_list",
    "task_get",
    "task_create",
    "task_update",
    "wait",
    "datetime",
    "apply_patch",
    "view_image",
)
SHELL_TOOLS = ("shell", "shell_job_status", "shell_jobs", "shell_job_cancel")
SKILL_TOOLS = (
    "browse_skills",
    "load_skill",
    "skill_list_resources",
    "skill_read_resource",
    "skill_invoke_function",
)


def skill_diagnostics() -> Dict[str, Any]:
    """The ``skill_diagnostics`` a RunResult carries with the embedded skill source only."""
    return {
        "source_health": {
            "state": "healthy",
            "invalid_ratio": 0.0,
            "invalid_count": 0,
            "total_count": 0,
            "failure_streak": 0,
            "handshake_failed": False,
        },
        "quarantined": [],
    }


# turn/start fields rejected on every turn at 0.5.0, in the order the message lists them.
TURN_OVERRIDES: Tuple[str, ...] = (
    "max_tokens",
    "system_prompt",
    "output_schema",
    "structured_output_retries",
)
TURN_OVERRIDE_MESSAGE = (
    "Cannot override {fields} on a runtime-routed turn; set these at session/create time or use a "
    "deferred session"
)
KEEP_ALIVE_MESSAGE = "keep_alive requires a session created with comms_name"
RESERVED_PEER_LABELS = ("mob_id", "role", "meerkat_id")

# JSON-RPC / Meerkat error codes the fake sends.
PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SESSION_NOT_FOUND = -32001
REQUEST_CANCELLED = -32005

CANCELLED_BEFORE_PUBLISH = "request cancelled before response publish"
RUN_CANCELLED = "Run was cancelled"
RUNTIME_UNREGISTERED = "runtime terminated: runtime session unregistered"
RUNTIME_NOT_READY = "Runtime not ready: running"
ABANDONED_PREFIX = "turn abandoned: apply failed: Apply failed: "
