"""Users migrate from the official async SDK 0.5.0: every one of its names exists here, blocking.

The names are listed here (issue 10), so the check runs without the SDK installed; where the
SDK is importable (the ``bench`` extra), its classes are compared too, so a name it has and
this list forgot is caught.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

import meerkat_sync
from meerkat_sync import DeferredSession, EventSubscription, MeerkatClient, Member, Mob, Session, _options

CLIENT_NAMES = [
    "tool",
    "register_tool",
    "subscribe_session_events",
    "inject_context",
    "read_session_history",
    "get_blob",
    "get_config",
    "set_config",
    "patch_config",
    "mcp_add",
    "mcp_remove",
    "mcp_reload",
    "list_skills",
    "inspect_skill",
    "list_mob_prefabs",
    "list_mob_tools",
    "call_mob_tool",
    "create_mob",
    "mob",
    "list_mobs",
    "mob_status",
    "list_mob_members",
    "spawn_mob_member",
    "spawn_mob_members",
    "retire_mob_member",
    "respawn_mob_member",
    "force_cancel_mob_member",
    "mob_member_status",
    "wait_mob_kickoff",
    "spawn_mob_helper",
    "fork_mob_helper",
    "wire_mob_members",
    "unwire_mob_members",
    "mob_lifecycle",
    "send_mob_member_content",
    "append_mob_system_context",
    "list_mob_flows",
    "run_mob_flow",
    "get_mob_flow_status",
    "cancel_mob_flow",
    "subscribe_mob_events",
    "subscribe_mob_member_events",
    "send",
    "peers",
    "runtime_state",
    "runtime_accept",
    "runtime_retire",
    "runtime_reset",
    "input_state",
    "input_list",
    "send_external_event",
    "get_models_catalog",
    "create_session",
    "create_session_streaming",
    "create_deferred_session",
    "list_sessions",
    "read_session",
    "has_capability",
    "require_capability",
    "connect",
    "close",
]

SESSION_NAMES = [
    "subscribe_events",
    "inject_context",
    "send",
    "peers",
    "turn",
    "stream",
    "history",
    "interrupt",
    "archive",
]

MOB_NAMES = [
    "send",
    "events",
    "status",
    "members",
    "spawn",
    "spawn_many",
    "retire",
    "respawn",
    "force_cancel",
    "member_status",
    "wait_for_kickoff_complete",
    "spawn_helper",
    "fork_helper",
    "wire",
    "unwire",
    "lifecycle",
    "member",
    "append_system_context",
    "flows",
    "run_flow",
    "flow_status",
    "cancel_flow",
    "subscribe_member_events",
    "subscribe_events",
]

MEMBER_NAMES = ["send", "events"]

SUBSCRIPTION_NAMES = ["close", "stream_id", "outcome", "envelopes"]

#: Names that hand back a local object and so never block, and iterators whose waits are
#: bounded by the ``idle_timeout=``/``timeout=`` given when they were opened: no ``timeout=``.
LOCAL = {"tool", "mob", "member", "connect", "close", "has_capability", "require_capability", "envelopes"}

#: The official SDK's parameters left out on purpose, each with the reason (README, "DeferredSession").
LEFT_OUT = {
    ("DeferredSession.start_turn", name): "rkat-rpc 0.5.0 rejects it on every turn/start"
    for name in ("max_tokens", "system_prompt", "output_schema", "structured_output_retries")
}
LEFT_OUT[("DeferredSession.start_turn", "keep_alive")] = "0.5.0 rejects keep_alive on a pending session"

CASES: List[Tuple[type, List[str]]] = [
    (MeerkatClient, CLIENT_NAMES),
    (Session, SESSION_NAMES),
    (DeferredSession, ["inject_context", "start_turn", "history"]),
    (Mob, MOB_NAMES),
    (Member, MEMBER_NAMES),
    (EventSubscription, SUBSCRIPTION_NAMES),
]


@pytest.mark.parametrize(("cls", "names"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_every_official_name_exists_and_is_documented(cls: type, names: List[str]) -> None:
    missing = [n for n in names if not hasattr(cls, n)]
    assert not missing, f"{cls.__name__} lacks {missing}"
    undocumented = [n for n in names if not (inspect.getdoc(getattr(cls, n)) or "").strip()]
    assert not undocumented, f"{cls.__name__} has no docstring for {undocumented}"


def _methods(cls: type, names: List[str]) -> Dict[str, Callable[..., Any]]:
    found = {n: getattr(cls, n) for n in names}
    return {n: f for n, f in found.items() if callable(f) and not isinstance(f, type)}


@pytest.mark.parametrize(("cls", "names"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_every_blocking_call_takes_a_keyword_only_timeout(cls: type, names: List[str]) -> None:
    for name, method in _methods(cls, names).items():
        if name in LOCAL:
            continue
        params = inspect.signature(method).parameters
        timeout = params.get("timeout")
        assert timeout is not None, f"{cls.__name__}.{name} takes no timeout="
        assert timeout.kind is inspect.Parameter.KEYWORD_ONLY, f"{cls.__name__}.{name}: timeout is positional"


def test_the_new_public_classes_are_exported() -> None:
    for name in ("EventSubscription", "Mob", "Member"):
        assert name in meerkat_sync.__all__


def _typed_options(method: Callable[..., Any]) -> List[str]:
    """The keys of the TypedDict a method's ``**options: Unpack[...]`` names, if any."""
    for param in inspect.signature(method).parameters.values():
        annotation = str(param.annotation)
        if param.kind is inspect.Parameter.VAR_KEYWORD and annotation.startswith("Unpack["):
            typed_dict = getattr(_options, annotation[len("Unpack[") : -1])
            return list(typed_dict.__annotations__)
    return []


def _sdk_public(cls: Any) -> List[str]:
    return [n for n in vars(cls) if not n.startswith("_")]


@pytest.mark.parametrize(
    ("sdk_path", "ours"),
    [
        ("meerkat.client.MeerkatClient", MeerkatClient),
        ("meerkat.session.Session", Session),
        ("meerkat.session.DeferredSession", DeferredSession),
        ("meerkat.mob.Mob", Mob),
        ("meerkat.mob.Member", Member),
    ],
)
def test_nothing_the_official_sdk_offers_is_missing(sdk_path: str, ours: type) -> None:
    module_name, _, class_name = sdk_path.rpartition(".")
    module = pytest.importorskip(module_name, reason="the official SDK (meerkat-sdk==0.5.0, the bench extra)")
    sdk_cls = getattr(module, class_name)
    missing = [n for n in _sdk_public(sdk_cls) if not hasattr(ours, n)]
    assert not missing, f"{ours.__name__} lacks the official SDK's {missing}"
    # Where both take a parameter, it has the same name and kind (positional stays positional).
    for name in _sdk_public(sdk_cls):
        theirs, mine = getattr(sdk_cls, name), getattr(ours, name)
        if not (callable(theirs) and callable(mine)) or isinstance(theirs, property):
            continue
        their_params = [p for p in inspect.signature(theirs).parameters.values() if p.name != "self"]
        my_params = inspect.signature(mine).parameters
        options = _typed_options(mine)
        for param in their_params:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if param.kind is inspect.Parameter.KEYWORD_ONLY and param.name in options:
                continue  # one of the typed ``**options`` (CreateOptions, TurnOptions, ...)
            if (f"{ours.__name__}.{name}", param.name) in LEFT_OUT:
                continue
            assert param.name in my_params, f"{ours.__name__}.{name} lacks parameter {param.name!r}"
            positional = param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            mine_positional = my_params[param.name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            assert positional == mine_positional, f"{ours.__name__}.{name}({param.name}) differs in kind"


def test_the_readme_api_overview_names_every_one() -> None:
    readme = (Path(__file__).parent.parent / "README.rst").read_text(encoding="utf-8")
    start = readme.index("API overview\n------------")
    overview = readme[start : readme.index("\nErrors\n------", start)]
    names = {n for _, group in CASES for n in group} | {"EventSubscription", "Mob", "Member"}
    missing = sorted(n for n in names if not re.search(rf"``@?(\w+\.)?{n}\b", overview))
    assert not missing, f"README's API overview does not mention {missing}"
