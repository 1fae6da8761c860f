"""The scripted runtime's mob catalogue: prefabs, the mob tool list, definition defaults.

The prefab templates are shorter than rkat-rpc 0.5.0's but have the same keys, profiles
and tool flags; the definitions built from them are what ``mob/events`` reports.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from meerkat_sync.testing._fake_wire import JsonDict

#: (key, what the lead does, what a worker does), in the real server's order.
_PREFABS: List[Tuple[str, str, str]] = [
    ("coding_swarm", "Lead a coding swarm.", "Implement assigned code tasks and report concise diffs."),
    ("code_review", "Coordinate multi-reviewer code audits.", "Review assigned changes and report findings."),
    (
        "research_team",
        "Run structured research with synthesis.",
        "Gather evidence and return sourced summaries.",
    ),
    ("pipeline", "Drive staged pipeline execution.", "Execute your stage and emit handoff artifacts."),
]

_TEMPLATE = """[mob]
id = "{key}"
orchestrator = "lead"

[profiles.lead]
model = "claude-opus-4-6"
skills = ["orchestrator"]
peer_description = "Orchestrator"
external_addressable = true

[profiles.lead.tools]
builtins = true
comms = true
mob = true
mob_tasks = true

[profiles.worker]
model = "claude-sonnet-4-5"
skills = ["worker"]
peer_description = "Worker"
external_addressable = false

[profiles.worker.tools]
builtins = true
shell = true
comms = true
mob_tasks = true

[wiring]
auto_wire_orchestrator = true

[skills.orchestrator]
source = "inline"
content = "## Role\\n{lead}"

[skills.worker]
source = "inline"
content = "{worker}"
"""

_PIPELINE_FLOW = """
[flows.pipeline]
description = "pipeline flow"

[flows.pipeline.steps.start]
role = "lead"
message = "go"
dispatch_mode = "one_to_one"
"""


def prefab_list() -> List[JsonDict]:
    """``mob/prefabs``' entries."""
    out = []
    for key, lead, worker in _PREFABS:
        text = _TEMPLATE.format(key=key, lead=lead, worker=worker)
        out.append({"key": key, "toml_template": text + (_PIPELINE_FLOW if key == "pipeline" else "")})
    return out


def _tools(**flags: bool) -> JsonDict:
    return {"builtins": False, "comms": False, "mob": False, "mob_tasks": False, "shell": False, **flags}


def prefab_definition(key: str) -> Optional[JsonDict]:
    """The definition a prefab creates (before defaults), or None for an unknown key."""
    found = next((p for p in _PREFABS if p[0] == key), None)
    if found is None:
        return None
    _, lead, worker = found
    definition: JsonDict = {
        "id": key,
        "orchestrator": {"profile": "lead"},
        "profiles": {
            "lead": {
                "model": "claude-opus-4-6",
                "skills": ["orchestrator"],
                "peer_description": "Orchestrator",
                "external_addressable": True,
                "tools": _tools(builtins=True, comms=True, mob=True, mob_tasks=True),
            },
            "worker": {
                "model": "claude-sonnet-4-5",
                "skills": ["worker"],
                "peer_description": "Worker",
                "tools": _tools(builtins=True, shell=True, comms=True, mob_tasks=True),
            },
        },
        "wiring": {"auto_wire_orchestrator": True, "role_wiring": []},
        "skills": {
            "orchestrator": {"source": "inline", "content": f"## Role\n{lead}"},
            "worker": {"source": "inline", "content": worker},
        },
    }
    if key == "pipeline":
        definition["flows"] = {
            "pipeline": {
                "description": "pipeline flow",
                "steps": {"start": {"role": "lead", "message": "go", "dispatch_mode": "one_to_one"}},
            }
        }
    return definition


_PROFILE_DEFAULTS: JsonDict = {
    "backend": None,
    "external_addressable": False,
    "max_inline_peer_notifications": None,
    "output_schema": None,
    "peer_description": "",
    "provider_params": None,
    "runtime_mode": "autonomous_host",
    "skills": [],
}
_TOOL_DEFAULTS: JsonDict = {"mcp": [], "memory": False, "rust_bundles": [], **_tools()}
_STEP_DEFAULTS: JsonDict = {
    "allowed_tools": None,
    "blocked_tools": None,
    "branch": None,
    "collection_policy": {"type": "all"},
    "condition": None,
    "depends_on": [],
    "depends_on_mode": "all",
    "dispatch_mode": "fan_out",
    "expected_schema_ref": None,
    "output_format": "json",
    "timeout_ms": None,
}
_DEFINITION_DEFAULTS: JsonDict = {
    "backend": {"default": "session", "external": None},
    "event_router": None,
    "flows": {},
    "limits": None,
    "mcp_servers": {},
    "orchestrator": None,
    "skills": {},
    "spawn_policy": None,
    "supervisor": None,
    "topology": None,
    "wiring": {"auto_wire_orchestrator": False, "role_wiring": []},
}


def with_defaults(definition: JsonDict) -> JsonDict:
    """The definition as the runtime stores it (and ``mob_created`` reports it): every default filled."""
    out: Dict[str, Any] = {**copy.deepcopy(_DEFINITION_DEFAULTS), **copy.deepcopy(definition)}
    profiles = {}
    for name, profile in sorted((out.get("profiles") or {}).items()):
        filled = {**copy.deepcopy(_PROFILE_DEFAULTS), **profile}
        filled["tools"] = {**copy.deepcopy(_TOOL_DEFAULTS), **(profile.get("tools") or {})}
        profiles[name] = filled
    out["profiles"] = profiles
    flows = {}
    for flow_id, flow in sorted((out.get("flows") or {}).items()):
        steps = {
            sid: {**copy.deepcopy(_STEP_DEFAULTS), **step} for sid, step in (flow.get("steps") or {}).items()
        }
        flows[flow_id] = {**flow, "steps": steps}
    out["flows"] = flows
    return dict(sorted(out.items()))


def _schema(properties: JsonDict, required: Tuple[str, ...] = ()) -> JsonDict:
    schema: JsonDict = {"properties": properties, "type": "object"}
    if required:
        schema["required"] = list(required)
    return schema


_STR: JsonDict = {"type": "string"}
_MEMBER = _schema({"meerkat_id": _STR, "mob_id": _STR}, ("mob_id", "meerkat_id"))
_RUN = _schema({"mob_id": _STR, "run_id": _STR}, ("mob_id", "run_id"))

#: ``mob/tools``: the names, order and schemas of rkat-rpc 0.5.0 (descriptions shortened).
MOB_TOOLS: List[JsonDict] = [
    {"name": name, "description": description, "inputSchema": schema}
    for name, description, schema in [
        (
            "mob_create",
            "Create a mob from a prefab or a definition.",
            _schema({"definition": {"type": "object"}, "prefab": _STR}),
        ),
        ("mob_list", "List mobs, or one mob's status with mob_id.", _schema({"mob_id": _STR})),
        (
            "mob_lifecycle",
            "Lifecycle action on a mob. action: stop | resume | reset | complete | destroy.",
            _schema(
                {
                    "action": {"enum": ["stop", "resume", "reset", "complete", "destroy"], "type": "string"},
                    "mob_id": _STR,
                },
                ("mob_id", "action"),
            ),
        ),
        (
            "mob_events",
            "Fetch mob lifecycle events. Optional: after_cursor, limit.",
            _schema(
                {"after_cursor": {"type": "integer"}, "limit": {"type": "integer"}, "mob_id": _STR},
                ("mob_id",),
            ),
        ),
        (
            "mob_run_flow",
            "Start a configured flow run.",
            _schema({"flow_id": _STR, "mob_id": _STR, "params": {"type": "object"}}, ("mob_id", "flow_id")),
        ),
        ("mob_flow_status", "Read flow run status and ledgers by run_id.", _RUN),
        ("mob_cancel_flow", "Cancel an in-flight flow run by run_id.", _RUN),
        (
            "meerkat_spawn",
            "Spawn one or more meerkats. Required: mob_id, specs[].profile, specs[].meerkat_id.",
            _schema(
                {
                    "mob_id": _STR,
                    "specs": {
                        "items": _schema({"meerkat_id": _STR, "profile": _STR}, ("profile", "meerkat_id")),
                        "type": "array",
                    },
                },
                ("mob_id", "specs"),
            ),
        ),
        ("meerkat_retire", "Retire a spawned meerkat by ID.", _MEMBER),
        ("meerkat_list", "List current meerkats in a mob.", _schema({"mob_id": _STR}, ("mob_id",))),
        (
            "meerkat_wire",
            "Wire or unwire bidirectional trust between two meerkats. action: wire | unwire.",
            _schema(
                {
                    "a": _STR,
                    "action": {"enum": ["wire", "unwire"], "type": "string"},
                    "b": _STR,
                    "mob_id": _STR,
                },
                ("mob_id", "a", "b", "action"),
            ),
        ),
        (
            "meerkat_message",
            "Send typed external content to a spawned meerkat.",
            _schema(
                {"content": _STR, "meerkat_id": _STR, "mob_id": _STR}, ("mob_id", "meerkat_id", "content")
            ),
        ),
        ("mob_respawn", "Retire and re-spawn a meerkat with the same profile.", _MEMBER),
        ("meerkat_force_cancel", "Force-cancel a meerkat's in-flight turn.", _MEMBER),
        ("meerkat_status", "Get execution status snapshot for a meerkat.", _MEMBER),
        (
            "mob_wait_kickoff",
            "Wait until autonomous kickoff turns complete. Optional: member_ids, timeout_ms.",
            _schema(
                {
                    "member_ids": {"items": _STR, "type": "array"},
                    "mob_id": _STR,
                    "timeout_ms": {"minimum": 1, "type": "integer"},
                },
                ("mob_id",),
            ),
        ),
    ]
]
