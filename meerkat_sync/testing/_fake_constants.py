"""Protocol constants the scripted runtime reports (rkat-rpc 0.5.0, PROTOCOL.md §2)."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

SERVER_NAME = "meerkat-rpc"
SERVER_VERSION = "0.5.0"
CONTRACT_VERSION = "0.5.0"
MAX_SESSIONS = 64
CALLBACK_TIMEOUT_S = 30.0
EOF_GRACE_S = 5.0
KEEP_ALIVE_WAIT_S = 0.25
DEFAULT_MODEL = "claude-opus-4-6"

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

# Capability ids in the order the server lists them, with a human description.
CAPABILITIES: Tuple[Tuple[str, str], ...] = (
    ("sessions", "Create, run, list, read and archive agent sessions"),
    ("streaming", "Real-time event streaming of agent runs"),
    ("structured_output", "JSON-schema constrained structured output extraction"),
    ("hooks", "Lifecycle hooks around runs, LLM requests and tool calls"),
    ("builtins", "Built-in tools (task list, wait, datetime, ...)"),
    ("shell", "Shell command execution tool"),
    ("comms", "Inter-agent communication (peers, messages, requests)"),
    ("memory_store", "Semantic memory store"),
    ("session_store", "Persistent session storage"),
    ("session_compaction", "Automatic context compaction of long sessions"),
    ("skills", "Skill discovery and injection"),
    ("mcp_live", "Live MCP server add/remove/reload on running sessions"),
)

# What a default realm config yields (§2.3): both keys default to false.
DEFAULT_CAPABILITY_STATUS: Dict[str, Any] = {
    "builtins": {"DisabledByPolicy": {"description": "tools.builtins_enabled = false"}},
    "shell": {"DisabledByPolicy": {"description": "tools.shell_enabled = false"}},
}

# turn/start fields rejected on every turn at 0.5.0 (§4.2).
TURN_OVERRIDES: List[str] = [
    "max_tokens",
    "system_prompt",
    "output_schema",
    "structured_output_retries",
]
TURN_OVERRIDE_MESSAGE = (
    "Cannot override max_tokens, system_prompt, output_schema, or structured_output_retries"
    " on a runtime-routed turn; set these at session/create time or use a deferred session"
)

# JSON-RPC / Meerkat error codes the fake sends (§8.2).
PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SESSION_NOT_FOUND = -32001
REQUEST_CANCELLED = -32005

CANCELLED_BEFORE_START = "request cancelled before start"
CANCELLED_BEFORE_PUBLISH = "request cancelled before response publish"
RUN_CANCELLED = "Run was cancelled"
