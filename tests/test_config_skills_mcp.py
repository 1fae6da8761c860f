"""Realm config, models catalog, skills and live MCP: end to end on both backends."""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, List, Tuple

import pytest
from conftest import Backend, fake

from meerkat_sync import (
    CapabilityUnavailableError,
    ConfigConflictError,
    ConfigEnvelope,
    McpLiveOpResponse,
    MeerkatClient,
    MeerkatError,
    Session,
    SessionNotFoundError,
    SkillNotFoundError,
    ToolConfigChanged,
)
from meerkat_sync.testing import scripted_client

#: The top-level keys of a 0.5.0 realm config.
CONFIG_KEYS = {
    "agent", "budget", "comms", "compaction", "hooks", "limits", "max_tokens", "models", "provider",
    "providers", "rest", "retry", "shell", "skills", "storage", "store", "tools",
}  # fmt: skip

BUILTIN_SKILLS = [
    "multi-agent-comms",
    "mcp-server-setup",
    "task-workflow",
    "shell-patterns",
    "session-management",
    "hook-authoring",
    "mob-communication",
]

UNKNOWN_SESSION = "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11"
UNTAGGED = "invalid server_config: data did not match any variant of untagged enum McpTransportConfig"


# --- config ------------------------------------------------------------------------------------


def test_get_config_returns_the_envelope(backend: Backend) -> None:
    with backend.connect() as client:
        envelope = client.get_config()
    assert isinstance(envelope, ConfigEnvelope)
    assert set(envelope.config) == CONFIG_KEYS
    assert envelope.generation == 0 and envelope.backend == "sqlite" and envelope.instance_id is None
    assert envelope.realm_id and envelope.resolved_paths["root"].endswith(envelope.realm_id)
    assert {"config_path", "manifest_path", "sessions_jsonl_dir"} <= set(envelope.resolved_paths)
    assert envelope.config["max_tokens"] == 16384 and envelope.config["agent"]["model"] == "claude-opus-4-6"


def test_patch_merges_and_null_resets_a_key_to_its_default(backend: Backend) -> None:
    with backend.connect() as client:
        before = client.get_config()
        patched = client.patch_config({"max_tokens": 1234, "retry": {"max_retries": 7}})
        assert patched.generation == before.generation + 1
        assert patched.config["max_tokens"] == 1234
        assert patched.config["retry"] == dict(before.config["retry"], max_retries=7)  # nested merge
        assert patched.config["providers"] == before.config["providers"]  # untouched keys kept
        reset = client.patch_config(
            {"max_tokens": None, "retry": None}, expected_generation=patched.generation
        )
        assert reset.config["max_tokens"] == 16384 and reset.config["retry"] == before.config["retry"]
        dropped = client.patch_config({"nonsense_key": 1})
        assert "nonsense_key" not in dropped.config and dropped.generation == reset.generation + 1
        assert client.get_config() == dropped


def test_a_patch_of_the_wrong_type_changes_nothing(backend: Backend) -> None:
    with backend.connect() as client:
        before = client.get_config()
        with pytest.raises(MeerkatError) as info:
            client.patch_config({"max_tokens": "lots"})
        assert client.get_config() == before
    assert info.value.code == "INVALID_PARAMS" and info.value.rpc_code == -32602
    assert (
        info.value.message
        == 'Failed to apply config patch preview: invalid type: string "lots", expected u32'
    )


def test_set_replaces_the_config_with_the_one_given(backend: Backend) -> None:
    with backend.connect() as client:
        before = client.get_config()
        changed = copy.deepcopy(before.config)
        changed["max_tokens"] = 777
        changed["agent"]["model"] = "claude-sonnet-4-6"
        after = client.set_config(changed, expected_generation=before.generation)
        assert after.generation == before.generation + 1 and after.config == changed
        # Setting the full config back restores it, model endpoint wiring included.
        restored = client.set_config(before.config)
        assert restored.config == before.config and restored.generation == before.generation + 2
        if backend.real:
            assert client.create_session(fake(text="still wired")).text == "still wired"


def test_a_partial_set_resets_every_other_key_to_its_default(backend: Backend) -> None:
    with backend.connect() as client:
        before = client.patch_config({"max_tokens": 1234})
        after = client.set_config({"agent": {"model": "claude-sonnet-4-6"}})
        assert after.config["agent"]["model"] == "claude-sonnet-4-6"
        assert after.config["agent"]["max_tokens_per_turn"] == before.config["agent"]["max_tokens_per_turn"]
        assert after.config["max_tokens"] == 16384  # the patch is gone
        assert after.config["providers"]["base_urls"] is None  # so is the realm's endpoint wiring
        client.set_config(before.config)


def test_a_stale_generation_raises_config_conflict(backend: Backend) -> None:
    with backend.connect() as client:
        current = client.get_config()
        with pytest.raises(ConfigConflictError) as on_set:
            client.set_config(current.config, expected_generation=current.generation + 5)
        client.patch_config({"max_tokens": 2000}, expected_generation=current.generation)
        with pytest.raises(ConfigConflictError) as on_patch:
            client.patch_config({"max_tokens": 3000}, expected_generation=current.generation)
        assert client.get_config().config["max_tokens"] == 2000
    assert on_set.value.code == "CONFIG_CONFLICT" and on_set.value.rpc_code == -32602
    assert on_set.value.details == {"expected": current.generation + 5, "current": current.generation}
    assert on_patch.value.details == {"expected": current.generation, "current": current.generation + 1}
    expected = f"Generation conflict: expected {current.generation}, current {current.generation + 1}"
    assert isinstance(on_patch.value, MeerkatError) and on_patch.value.message == expected


# --- models catalog ------------------------------------------------------------------------------


def test_models_catalog(backend: Backend) -> None:
    with backend.connect() as client:
        catalog = client.get_models_catalog()
    assert catalog.contract_version == {"major": 0, "minor": 5, "patch": 0}
    by_provider = {p.provider: p for p in catalog.providers}
    assert set(by_provider) == {"anthropic", "gemini", "openai"}
    assert by_provider["anthropic"].default_model_id == "claude-opus-4-6"
    assert by_provider["openai"].default_model_id == "gpt-5.4"
    for provider in catalog.providers:
        ids = [m.id for m in provider.models]
        assert provider.default_model_id in ids
        assert {m.tier for m in provider.models} <= {"recommended", "supported"}
    opus = by_provider["anthropic"].models[0]
    assert (opus.id, opus.display_name, opus.context_window, opus.max_output_tokens) == (
        "claude-opus-4-6",
        "Claude Opus 4.6",
        200000,
        32768,
    )
    assert opus.profile is not None and opus.profile.supports_thinking and not opus.profile.supports_reasoning
    assert opus.profile.params_schema["title"] == "AnthropicOpus46Params"


# --- skills ---------------------------------------------------------------------------------------


def test_list_skills_shows_the_builtin_skills(backend: Backend) -> None:
    with backend.connect() as client:
        skills = client.list_skills()
    assert [s.id for s in skills] == BUILTIN_SKILLS
    assert all(s.name == s.id and s.scope == "builtin" and s.source == "embedded" for s in skills)
    assert all(s.is_active and s.shadowed_by is None and s.description for s in skills)


def test_inspect_skill(backend: Backend) -> None:
    with backend.connect() as client:
        listed = {s.id: s for s in client.list_skills()}
        skill = client.inspect_skill("task-workflow")
        same = client.inspect_skill("task-workflow", source="embedded")
        with pytest.raises(SkillNotFoundError) as unknown:
            client.inspect_skill("no-such-skill")
        with pytest.raises(SkillNotFoundError) as elsewhere:
            client.inspect_skill("task-workflow", source="nowhere")
    assert skill == same and skill.description == listed["task-workflow"].description
    assert skill.scope == "builtin" and skill.source is None  # inspect leaves the source out
    assert skill.body.startswith("---\nname: Task Workflow\n")
    assert unknown.value.code == "SKILL_NOT_FOUND" and unknown.value.rpc_code == -32603
    assert unknown.value.details == {"skill": "no-such-skill"}
    assert elsewhere.value.details == {"skill": "task-workflow"}


# --- MCP ------------------------------------------------------------------------------------------


def test_mcp_operations_are_staged(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="hi"))
        added = client.mcp_add(session.id, "tools", {"command": "/bin/false", "args": []}, persisted=True)
        http = client.mcp_add(session.id, "web", {"url": "http://127.0.0.1:9/mcp", "transport": "sse"})
        reload_all = client.mcp_reload(session.id)
        removed = client.mcp_remove(session.id, "never-added")
        with pytest.raises(MeerkatError) as not_registered:
            client.mcp_reload(session.id, server_name="tools")  # staged, not connected
    assert added == McpLiveOpResponse(session.id, "add", "staged", persisted=False, server_name="tools")
    assert http.server_name == "web" and http.operation == "add"
    assert reload_all == McpLiveOpResponse(session.id, "reload", "staged", persisted=False, server_name=None)
    assert (removed.operation, removed.server_name, removed.status) == ("remove", "never-added", "staged")
    assert not_registered.value.code == "INVALID_PARAMS"
    assert not_registered.value.message == "MCP server 'tools' is not registered on this session"


def test_mcp_errors(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="hi"))
        with pytest.raises(MeerkatError) as unknown_key:
            client.mcp_add(session.id, "x", {"command": "x", "wat": 1})
        with pytest.raises(MeerkatError) as bad_timeout:
            client.mcp_add(session.id, "x", {"url": "http://127.0.0.1:9/", "connect_timeout_secs": "soon"})
        with pytest.raises(SessionNotFoundError):
            client.mcp_add(UNKNOWN_SESSION, "x", {"command": "x", "wat": 1})  # the session is checked first
        with pytest.raises(SessionNotFoundError):
            client.mcp_remove(UNKNOWN_SESSION, "x")
        session.archive()
        with pytest.raises(SessionNotFoundError):
            client.mcp_reload(session.id)
        with pytest.raises(MeerkatError) as other_realm:
            client.mcp_add("elsewhere:" + session.id, "x", {"command": "x"})
    assert unknown_key.value.code == "INVALID_PARAMS" and unknown_key.value.message == UNTAGGED
    assert bad_timeout.value.message == 'invalid server_config: invalid type: string "soon", expected u32'
    assert other_realm.value.message.startswith("Session locator realm 'elsewhere' does not match")


def _mcp_events(envelopes: List[Any]) -> List[Any]:
    return [(e.seq, e.payload.payload) for e in envelopes if isinstance(e.payload, ToolConfigChanged)]


def test_a_staged_add_is_announced_at_the_next_turn(backend: Backend) -> None:
    with backend.connect() as client:
        session = client.create_session(fake(text="hi"))
        client.mcp_add(session.id, "first", {"command": "/nonexistent/mcp-server"})
        client.mcp_add(session.id, "second", {"command": "/nonexistent/mcp-server"})
        client.mcp_add(session.id, "dropped", {"command": "/nonexistent/mcp-server"})
        client.mcp_remove(session.id, "dropped")  # cancels the staged add: never announced
        envelopes = list(session.stream(fake(text="ok")).envelopes())
        later = list(session.stream(fake(text="again")).envelopes())
    kinds = [type(e.payload).__name__ for e in envelopes]
    run_started = kinds.index("RunStarted")
    pending = [p for _, p in _mcp_events(envelopes[:run_started])]
    assert [(p.target, p.status, p.persisted, p.applied_at_turn) for p in pending] == [
        ("first", "pending", False, 2),
        ("second", "pending", False, 2),
    ]
    assert [seq for seq, _ in _mcp_events(envelopes[:run_started])] == [1, 2]  # their own counter
    if backend.real:  # the connection attempt is reported inside the run (the fake connects nothing)
        failed = sorted(p.target for _, p in _mcp_events(envelopes[run_started:]))
        assert failed == ["first", "second"]
    assert _mcp_events(later) == []  # a server that failed to connect is not retried


# --- bad input and gating (scripted runtime) ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[Tuple[MeerkatClient, Session]]:
    """One client and session for the bad-argument cases: none of them sends anything."""
    with scripted_client(request_timeout=10.0) as client:
        yield client, client.create_session("hi")


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda c, e, s: c.set_config(5), "config must be a dict"),
        (lambda c, e, s: c.set_config(e), "envelope.config"),
        (lambda c, e, s: c.set_config({"config": e.config, "generation": 0}), "envelope"),
        (lambda c, e, s: c.set_config(e.config, expected_generation="0"), "expected_generation"),
        (lambda c, e, s: c.set_config(e.config, expected_generation=-1), "expected_generation"),
        (lambda c, e, s: c.set_config(e.config, expected_generation=True), "expected_generation"),
        (lambda c, e, s: c.set_config({"max_tokens": float("nan")}), "config"),
        (lambda c, e, s: c.patch_config([]), "patch must be a dict"),
        (lambda c, e, s: c.patch_config(None), "patch must be a dict"),
        (lambda c, e, s: c.patch_config({"max_tokens": 1}, expected_generation=1.0), "expected_generation"),
        (lambda c, e, s: c.patch_config({"max_tokens": 1}, timeout=-1), "timeout"),
    ],
)
def test_bad_config_arguments_are_rejected_before_sending(
    call: Callable[..., Any], needle: str, shared: Tuple[MeerkatClient, Session]
) -> None:
    client, session = shared
    envelope = client.get_config()
    with pytest.raises(MeerkatError) as info:
        call(client, envelope, session)
    assert client.get_config().generation == envelope.generation  # nothing was written
    assert info.value.code == "INVALID_ARGS" and needle in info.value.message


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda c, s: c.mcp_add(s, "x", {}), "server_config needs"),
        (lambda c, s: c.mcp_add(s, "x", "command"), "server_config must be a dict"),
        (lambda c, s: c.mcp_add(s, "", {"command": "x"}), "server_name"),
        (lambda c, s: c.mcp_add(s, "  ", {"command": "x"}), "server_name"),
        (lambda c, s: c.mcp_add(s, 5, {"command": "x"}), "server_name"),
        (lambda c, s: c.mcp_add(s, "x", {"command": "x"}, persisted="yes"), "persisted"),
        (lambda c, s: c.mcp_add("", "x", {"command": "x"}), "session_id"),
        (lambda c, s: c.mcp_remove(s, ""), "server_name"),
        (lambda c, s: c.mcp_reload(s, server_name=""), "server_name"),
        (lambda c, s: c.mcp_reload(None), "session_id"),
        (lambda c, s: c.inspect_skill(""), "skill_id"),
        (lambda c, s: c.inspect_skill("task-workflow", source=5), "source"),
    ],
)
def test_bad_skill_and_mcp_arguments_are_rejected_before_sending(
    call: Callable[..., Any], needle: str, shared: Tuple[MeerkatClient, Session]
) -> None:
    client, session = shared
    with pytest.raises(MeerkatError) as info:
        call(client, session.id)
    events = list(session.stream("next").envelopes())
    assert info.value.code == "INVALID_ARGS" and needle in info.value.message
    assert not any(isinstance(e.payload, ToolConfigChanged) for e in events)  # nothing was staged


@pytest.mark.parametrize(
    "method,call",
    [
        ("config/get", lambda c: c.get_config()),
        ("config/set", lambda c: c.set_config({})),
        ("config/patch", lambda c: c.patch_config({})),
        ("models/catalog", lambda c: c.get_models_catalog()),
        ("skills/list", lambda c: c.list_skills()),
        ("skills/inspect", lambda c: c.inspect_skill("task-workflow")),
        ("mcp/add", lambda c: c.mcp_add(UNKNOWN_SESSION, "x", {"command": "x"})),
        ("mcp/remove", lambda c: c.mcp_remove(UNKNOWN_SESSION, "x")),
        ("mcp/reload", lambda c: c.mcp_reload(UNKNOWN_SESSION)),
    ],
)
def test_a_method_the_server_does_not_list_is_unavailable(method: str, call: Callable[..., Any]) -> None:
    with scripted_client(args=["--without-method", method], request_timeout=10.0) as client:
        with pytest.raises(CapabilityUnavailableError) as info:
            call(client)
        assert client.list_sessions() == []  # the connection is fine
    assert info.value.details == {"method": method}


@pytest.mark.parametrize(
    "status,calls",
    [
        ("skills=Absent", [lambda c: c.list_skills(), lambda c: c.inspect_skill("task-workflow")]),
        ("skills=DisabledByPolicy", [lambda c: c.list_skills()]),
        (
            "mcp_live=Absent",
            [
                lambda c: c.mcp_add(UNKNOWN_SESSION, "x", {"command": "x"}),
                lambda c: c.mcp_remove(UNKNOWN_SESSION, "x"),
                lambda c: c.mcp_reload(UNKNOWN_SESSION),
            ],
        ),
    ],
)
def test_skills_and_mcp_need_their_capability(status: str, calls: List[Callable[..., Any]]) -> None:
    capability = status.split("=")[0]
    with scripted_client(args=["--capability-status", status], request_timeout=10.0) as client:
        for call in calls:
            with pytest.raises(CapabilityUnavailableError) as info:
                call(client)
            assert info.value.details["capability"] == capability
        assert client.get_config().generation == 0  # the rest still works
