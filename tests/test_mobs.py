"""Mobs (PROTOCOL.md §4.16, §5.4): every mob_* call and every Mob/Member handle method, end to end.

Most tests run on both backends (``backend``): the scripted runtime, and a real rkat-rpc 0.5.0
when ``MEERKAT_BIN_PATH`` names one. The real binary decides what "right" is: prefab
profiles (builtins on) cannot spawn members, so the mobs here use a definition with builtins,
mob and mob_tasks off and comms on, the one shape that spawns on 0.5.0.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from conftest import Backend, fake

from meerkat_sync import (
    CapabilityUnavailableError,
    EventSubscription,
    MeerkatClient,
    MeerkatError,
    Member,
    Mob,
    MobKickoffMemberSnapshot,
    MobMember,
    MobMemberSnapshot,
    MobSpawnReceipt,
    RunCompleted,
    RunStarted,
)
from meerkat_sync.testing import fake_rkat_command, scripted_client

TAP = Path(__file__).parent / "_wire_tap.py"
OPTIONS: Dict[str, Any] = {"request_timeout": 20.0, "turn_timeout": 60.0}

#: The tool flags a member needs to spawn on rkat-rpc 0.5.0 (comms on; nothing needing ops binding).
TOOLS = {"builtins": False, "shell": False, "comms": True, "mob": False, "mob_tasks": False}
JSON_STEP = fake(text='{"ok": 1}')


def definition(mob_id: str = "crew", **extra: Any) -> Dict[str, Any]:
    """A mob with a worker profile ``w`` and an externally addressable ``lead``, and one flow."""
    return {
        "id": mob_id,
        "profiles": {
            "w": {"model": "claude-sonnet-4-5", "tools": TOOLS},
            "lead": {"model": "claude-sonnet-4-5", "tools": TOOLS, "external_addressable": True},
        },
        "flows": {"f": {"description": "one step", "steps": {"s1": {"role": "w", "message": JSON_STEP}}}},
        **extra,
    }


def server_error(call: Callable[[], Any]) -> MeerkatError:
    with pytest.raises(MeerkatError) as caught:
        call()
    assert caught.value.rpc_code == -32602, caught.value
    return caught.value


def until(events: Iterator[Any], done: Callable[[Any], bool]) -> List[Any]:
    seen: List[Any] = []
    for item in events:
        seen.append(item)
        if done(item):
            return seen
    raise AssertionError(f"the stream ended before the awaited event: {seen}")


# --- catalogue, tools, create -----------------------------------------------------------------


def test_prefabs_tools_and_tool_calls(backend: Backend) -> None:
    with backend.connect() as client:
        prefabs = client.list_mob_prefabs()
        assert [p.key for p in prefabs] == ["coding_swarm", "code_review", "research_team", "pipeline"]
        assert all(
            "[profiles.lead]" in p.toml_template and "[profiles.worker]" in p.toml_template for p in prefabs
        )
        assert "[flows.pipeline]" in prefabs[-1].toml_template
        tools = client.list_mob_tools()
        by_name = {t["name"]: t for t in tools}
        assert {"mob_create", "mob_list", "mob_lifecycle", "meerkat_spawn", "meerkat_status"} <= set(by_name)
        assert by_name["mob_lifecycle"]["inputSchema"]["required"] == ["mob_id", "action"]
        assert client.call_mob_tool("mob_list") == {"mobs": []}
        assert client.call_mob_tool("mob_create", {"definition": definition("via-tool")}) == {
            "mob_id": "via-tool"
        }
        assert client.call_mob_tool("mob_list", {"mob_id": "via-tool"}) == {"status": "Running"}
        assert "Tool not found: nope" in server_error(lambda: client.call_mob_tool("nope")).message


def test_create_mob_from_prefab_or_definition_and_its_errors(backend: Backend) -> None:
    with backend.connect() as client:
        swarm = client.create_mob(prefab="coding_swarm")
        assert isinstance(swarm, Mob) and swarm.id == "coding_swarm"
        error = server_error(lambda: client.create_mob(prefab="coding_swarm"))
        assert error.message == "internal error: mob already exists: coding_swarm"
        assert server_error(lambda: client.create_mob(prefab="nope")).message == "Unknown prefab: nope"
        bad = server_error(lambda: client.create_mob(definition={"id": "empty"}))
        assert bad.message.startswith("definition error: empty_profiles")
        crew = client.create_mob(definition=definition())
        assert crew == client.mob("crew") and crew.id == "crew"
        assert sorted((m.mob_id, m.status) for m in client.list_mobs()) == [
            ("coding_swarm", "Running"),
            ("crew", "Running"),
        ]


def test_prefab_members_cannot_spawn_on_050(backend: Backend) -> None:
    """rkat-rpc 0.5.0 fails every profile with builtins on; the scripted runtime does the same."""
    with backend.connect() as client:
        swarm = client.create_mob(prefab="coding_swarm")
        for profile in ("lead", "worker"):
            error = server_error(
                lambda p=profile: swarm.spawn(profile=p, meerkat_id=f"{p}-1", runtime_mode="turn_driven")
            )
            assert "Ops lifecycle binding failed" in error.message
        assert client.list_mob_members("coding_swarm") == []


# --- roster -----------------------------------------------------------------------------------


def test_spawn_members_status_and_retire(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        receipt = client.spawn_mob_member(
            "crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven", labels={"team": "a"}
        )
        assert isinstance(receipt, MobSpawnReceipt)
        assert (receipt.mob_id, receipt.meerkat_id) == ("crew", "w-1")
        assert receipt.member_ref == {"kind": "session", "session_id": receipt.session_id}
        assert (
            "meerkat already exists: w-1"
            in server_error(lambda: client.spawn_mob_member("crew", profile="w", meerkat_id="w-1")).message
        )
        assert (
            "profile not found: nope"
            in server_error(lambda: client.spawn_mob_member("crew", profile="nope", meerkat_id="x")).message
        )
        assert (
            "mob not found: ghost"
            in server_error(lambda: client.spawn_mob_member("ghost", profile="w", meerkat_id="x")).message
        )
        [member] = client.list_mob_members("crew")
        assert isinstance(member, MobMember)
        assert (member.meerkat_id, member.profile, member.runtime_mode) == ("w-1", "w", "turn_driven")
        assert (member.state, member.status, member.is_final) == ("Active", "active", False)
        assert member.session_id == receipt.session_id and member.labels == {"team": "a"}
        assert member.peer_id is not None and member.peer_id.startswith("ed25519:")
        status = client.mob_member_status("crew", "w-1")
        assert isinstance(status, MobMemberSnapshot)
        assert (status.status, status.is_final, status.current_session_id) == (
            "active",
            False,
            receipt.session_id,
        )
        assert status.peer_connectivity is not None and status.peer_connectivity.reachable_peer_count == 0
        unknown = client.mob_member_status("crew", "ghost")  # an unknown member is no error
        assert (unknown.status, unknown.is_final, unknown.current_session_id) == ("unknown", True, None)
        # The member's session is an ordinary session for the session methods.
        assert client.session(receipt.session_id).turn(fake(text="direct")).text == "direct"
        after = client.mob_member_status("crew", "w-1")
        assert after.output_preview == "direct" and after.tokens_used > 0
        client.retire_mob_member("crew", "w-1")
        client.retire_mob_member("crew", "ghost")  # not in the roster: still no error
        assert client.list_mob_members("crew") == []
        kinds = [e.type for e in client.list_mob_events("crew")]
        assert kinds == ["mob_created", "meerkat_spawned", "meerkat_retired"]


def test_spawn_many_reports_each_spec(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        results = client.spawn_mob_members(
            "crew",
            [
                {"profile": "w", "meerkat_id": "w-1", "runtime_mode": "turn_driven"},
                {"profile": "w", "meerkat_id": "w-1", "runtime_mode": "turn_driven"},
                {"profile": "nope", "meerkat_id": "x-1"},
            ],
        )
        assert [r.ok for r in results] == [True, False, False]
        assert results[0].session_id is not None and results[0].member_ref is not None
        assert results[1].error == "meerkat already exists: w-1"
        assert results[2].error == "profile not found: nope"


def test_wire_and_unwire_members(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        for mid, profile in (("lead-1", "lead"), ("w-1", "w")):
            client.spawn_mob_member("crew", profile=profile, meerkat_id=mid, runtime_mode="turn_driven")
        client.wire_mob_members("crew", "lead-1", "w-1")
        assert {m.meerkat_id: m.wired_to for m in client.list_mob_members("crew")} == {
            "lead-1": ["w-1"],
            "w-1": ["lead-1"],
        }
        connectivity = client.mob_member_status("crew", "lead-1").peer_connectivity
        assert connectivity is not None and connectivity.reachable_peer_count == 1
        assert (
            "meerkat not found: ghost"
            in server_error(lambda: client.wire_mob_members("crew", "lead-1", {"local": "ghost"})).message
        )
        client.unwire_mob_members("crew", "lead-1", {"local": "w-1"})
        client.unwire_mob_members("crew", "lead-1", "w-1")  # already apart: no error
        assert [m.wired_to for m in client.list_mob_members("crew")] == [[], []]
        events = client.list_mob_events("crew", after_cursor=3)
        assert [(e.type, e.kind["a"], e.kind["b"]) for e in events] == [
            ("peers_wired", "lead-1", "w-1"),
            ("peers_unwired", "lead-1", "w-1"),
        ]
        assert [e.cursor for e in events] == [4, 5] and all(
            e.mob_id == "crew" and e.timestamp for e in events
        )
        assert [e.cursor for e in client.list_mob_events("crew", limit=2)] == [1, 2]


def test_respawn_force_cancel_and_kickoff(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        first = client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        result = client.respawn_mob_member("crew", "w-1")
        assert result.status == "completed" and result.failed_peer_ids == []
        receipt = result.receipt
        assert receipt.member_id == "w-1" and receipt.old_session_id == first.session_id
        assert receipt.new_session_id not in (None, first.session_id)
        assert (
            "meerkat not found: ghost"
            in server_error(lambda: client.respawn_mob_member("crew", "ghost")).message
        )
        client.force_cancel_mob_member("crew", "w-1")
        assert (
            "meerkat not found: ghost"
            in server_error(lambda: client.force_cancel_mob_member("crew", "ghost")).message
        )
        snapshots = client.wait_mob_kickoff("crew", member_ids=["w-1", "ghost"], timeout_ms=2000)
        assert all(isinstance(s, MobKickoffMemberSnapshot) for s in snapshots)
        assert [(s.meerkat_id, s.status) for s in snapshots] == [("w-1", "active"), ("ghost", "unknown")]
        assert [s.meerkat_id for s in client.wait_mob_kickoff("crew", timeout_ms=500)] == ["w-1"]


def test_autonomous_member_runs_its_kickoff(backend: Backend) -> None:
    """An autonomous_host member runs ``initial_message`` as its kickoff; turn_driven ones do not."""
    with backend.connect() as client:
        client.create_mob(definition=definition())
        client.spawn_mob_member(
            "crew", profile="w", meerkat_id="quiet", runtime_mode="turn_driven", initial_message="x"
        )
        client.spawn_mob_member(
            "crew",
            profile="lead",
            meerkat_id="auto",
            runtime_mode="autonomous_host",
            initial_message=fake(text="kicked off"),
        )
        [done] = client.wait_mob_kickoff("crew", member_ids=["auto"], timeout_ms=20000)
        assert done.output_preview == "kicked off" and done.tokens_used > 0
        assert client.mob_member_status("crew", "quiet").tokens_used == 0


def test_send_content_to_an_addressable_member(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        lead = client.spawn_mob_member(
            "crew", profile="lead", meerkat_id="lead-1", runtime_mode="turn_driven"
        )
        client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        with client.subscribe_mob_member_events("crew", "lead-1") as events:
            delivery = client.send_mob_member_content("crew", "lead-1", fake(text="lead answers"))
            assert (delivery.member_id, delivery.session_id, delivery.handling_mode) == (
                "lead-1",
                lead.session_id,
                "queue",
            )
            finished = until(iter(events), lambda e: isinstance(e, RunCompleted))[-1]
            assert finished.result == "lead answers"
        assert client.mob_member_status("crew", "lead-1").output_preview == "lead answers"
        error = server_error(lambda: client.send_mob_member_content("crew", "w-1", "hi"))
        assert error.message == "meerkat is not externally addressable: w-1"
        assert server_error(lambda: client.send_mob_member_content("crew", "ghost", "hi")).message == (
            "meerkat not found: ghost"
        )
        steer = server_error(
            lambda: client.send_mob_member_content("crew", "lead-1", "hi", handling_mode="steer")
        )
        assert "handling_mode Steer requires a runtime-backed surface" in steer.message


def test_send_to_an_autonomous_member_arrives_as_an_external_event(backend: Backend) -> None:
    """A host-mode member runs sent content as ``[EVENT via rpc] <content>``: a ``fake:`` prefix is lost."""
    with backend.connect({"default": {"text": "default-reply"}}) as client:
        client.create_mob(definition=definition())
        client.spawn_mob_member(
            "crew",
            profile="lead",
            meerkat_id="auto",
            runtime_mode="autonomous_host",
            initial_message=fake(text="up"),
        )
        client.wait_mob_kickoff("crew", member_ids=["auto"], timeout_ms=20000)
        with client.mob("crew").member("auto").events() as events:
            client.send_mob_member_content("crew", "auto", fake(text="answer"))
            seen = until(iter(events), lambda e: isinstance(e, RunCompleted))
        assert isinstance(seen[0], RunStarted) and seen[0].prompt == '[EVENT via rpc] fake:{"text": "answer"}'
        assert seen[-1].result == "default-reply"


def test_append_system_context(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        member = client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        staged = client.append_mob_system_context("crew", "w-1", "CTX", source="probe", idempotency_key="k")
        assert (staged.mob_id, staged.meerkat_id, staged.session_id, staged.status) == (
            "crew",
            "w-1",
            member.session_id,
            "staged",
        )
        again = client.append_mob_system_context("crew", "w-1", "CTX", source="probe", idempotency_key="k")
        assert again.status == "duplicate"
        error = server_error(lambda: client.append_mob_system_context("crew", "ghost", "CTX"))
        assert error.message == "invalid system-context request: member has no session: ghost"


def test_helpers_are_spawned_and_retired(backend: Backend) -> None:
    """On 0.5.0 a helper's prompt does not run: no output, no tokens, and it is retired at once."""
    with backend.connect() as client:
        client.create_mob(definition=definition())
        client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        helped = client.spawn_mob_helper("crew", fake(text="helped"), profile_name="w")
        assert (helped.output, helped.tokens_used) == (None, 0) and helped.session_id
        forked = client.fork_mob_helper(
            "crew",
            "w-1",
            fake(text="forked"),
            meerkat_id="fork-1",
            fork_context={"type": "last_messages", "count": 1},
        )
        assert (forked.output, forked.tokens_used) == (None, 0) and forked.session_id
        assert (
            "meerkat not found: ghost"
            in server_error(lambda: client.fork_mob_helper("crew", "ghost", "x")).message
        )
        assert [m.meerkat_id for m in client.list_mob_members("crew")] == ["w-1"]
        spawned = [e.kind for e in client.list_mob_events("crew") if e.type == "meerkat_spawned"]
        assert spawned[1]["role"] == "w" and spawned[1]["meerkat_id"].startswith("helper-")
        assert spawned[2]["meerkat_id"] == "fork-1"


def test_flows_run_to_completion_on_the_mob_stream(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        assert client.list_mob_flows("crew") == ["f"]
        with client.subscribe_mob_events("crew") as stream:
            run_id = client.run_mob_flow("crew", "f")
            attributed = until(stream.attributed(), lambda a: isinstance(a.event, RunCompleted))
        assert {(a.source, a.profile) for a in attributed} == {("w-1", "w")}
        assert attributed[-1].event.result == '{"ok": 1}' or json.loads(attributed[-1].event.result) == {
            "ok": 1
        }
        run = wait_for_run(client, run_id)
        assert run["status"] == "completed" and run["flow_id"] == "f" and run["mob_id"] == "crew"
        assert [e["status"] for e in run["step_ledger"] if e["meerkat_id"] == "w-1"] == [
            "dispatched",
            "completed",
        ]
        client.cancel_mob_flow("crew", run_id)  # finished already: still acknowledged
        assert client.get_mob_flow_status("crew", "01933b7e-0000-7000-8000-000000000000") is None
        assert server_error(lambda: client.run_mob_flow("crew", "nope")).message == "flow not found: nope"
        assert server_error(lambda: client.get_mob_flow_status("crew", "nope")).message.startswith(
            "Invalid run_id"
        )


def wait_for_run(client: MeerkatClient, run_id: str, within: float = 20.0) -> Dict[str, Any]:
    """The run once it is terminal. Flow state has no notification (mob events are not
    streamed), so this polls ``mob/flow_status``, the way a user would."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        run = client.get_mob_flow_status("crew", run_id)
        assert run is not None
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.02)
    raise AssertionError("the flow run did not finish")


def test_lifecycle_states(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        client.mob_lifecycle("crew", "stop")
        assert client.mob_status("crew").status == "Stopped"
        error = server_error(lambda: client.spawn_mob_member("crew", profile="w", meerkat_id="w-2"))
        assert error.message == "invalid state transition: Stopped -> Running"
        client.mob_lifecycle("crew", "resume")
        client.mob_lifecycle("crew", "complete")
        assert client.mob_status("crew").status == "Completed"
        client.mob_lifecycle("crew", "reset")
        assert client.mob_status("crew").status == "Running" and client.list_mob_members("crew") == []
        client.mob_lifecycle("crew", "destroy")
        assert client.list_mobs() == []
        assert (
            server_error(lambda: client.mob_status("crew")).message == "internal error: mob not found: crew"
        )
        assert "mob not found: crew" in server_error(lambda: client.mob_lifecycle("crew", "destroy")).message


# --- mob streams ------------------------------------------------------------------------------


def test_member_stream_sees_the_members_turns_and_ends_on_retire(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        receipt = client.spawn_mob_member("crew", profile="w", meerkat_id="w-1", runtime_mode="turn_driven")
        stream = client.mob("crew").member("w-1").events()
        assert isinstance(stream, EventSubscription) and stream.session_id is None and stream.outcome is None
        client.session(receipt.session_id).turn(fake(text="direct"))
        envelopes = until(stream.envelopes(), lambda e: isinstance(e.payload, RunCompleted))
        assert (
            envelopes[0].source_id == f"session:{receipt.session_id}"
            and envelopes[-1].payload.result == "direct"
        )
        client.retire_mob_member("crew", "w-1")
        assert list(stream) == [] and stream.outcome == "remote_end"
        stream.close()  # already ended: nothing more to do


def test_mob_stream_open_errors(backend: Backend) -> None:
    with backend.connect() as client:
        error = server_error(lambda: client.subscribe_mob_events("ghost"))
        assert error.message == "Mob not found: internal error: mob not found: ghost"
        client.create_mob(definition=definition())
        error = server_error(lambda: client.subscribe_mob_member_events("crew", "ghost"))
        assert error.message == "Failed to subscribe to member events: meerkat not found: ghost"
        with client.subscribe_mob_events("crew") as stream:
            assert stream.stream_id
        assert stream.outcome == "explicit_close"


# --- the handles ------------------------------------------------------------------------------


def test_every_mob_and_member_handle_method(backend: Backend) -> None:
    """Each handle method is its client call with the ids filled in."""
    with backend.connect() as client:
        mob = client.create_mob(definition=definition())
        assert mob.status().status == "Running"
        lead = mob.spawn(profile="lead", meerkat_id="lead-1", runtime_mode="turn_driven")
        assert [
            r.ok
            for r in mob.spawn_many([{"profile": "w", "meerkat_id": "w-1", "runtime_mode": "turn_driven"}])
        ] == [True]
        assert [m.meerkat_id for m in mob.members()] == ["lead-1", "w-1"]
        mob.wire("lead-1", "w-1")
        assert mob.member_status("lead-1").peer_connectivity.reachable_peer_count == 1  # type: ignore[union-attr]
        mob.unwire("lead-1", "w-1")
        member = mob.member("lead-1")
        assert isinstance(member, Member) and (member.mob, member.meerkat_id) == (mob, "lead-1")
        with (
            member.events() as own,
            mob.subscribe_member_events("lead-1") as other,
            mob.subscribe_member("lead-1") as third,
        ):
            assert member.send(fake(text="one")).session_id == lead.session_id
            for stream in (own, other, third):
                assert until(iter(stream), lambda e: isinstance(e, RunCompleted))[-1].result == "one"
            assert mob.send("lead-1", fake(text="two")).member_id == "lead-1"
            assert until(iter(own), lambda e: isinstance(e, RunCompleted))[-1].result == "two"
        assert mob.append_system_context("w-1", "CTX").status == "staged"
        assert mob.respawn("w-1").receipt.member_id == "w-1"
        mob.force_cancel("w-1")
        assert [s.meerkat_id for s in mob.wait_for_kickoff_complete(member_ids=["w-1"], timeout_ms=500)] == [
            "w-1"
        ]
        assert mob.spawn_helper(fake(text="h"), profile_name="w").tokens_used == 0
        assert mob.fork_helper("w-1", fake(text="h"), profile_name="w").tokens_used == 0
        assert mob.flows() == ["f"]
        with mob.subscribe_events() as everything, mob.subscribe_all() as alias:
            run_id = mob.run_flow("f", {"why": "test"})
            for stream in (everything, alias):
                until(stream.attributed(), lambda a: isinstance(a.event, RunCompleted))
        status = mob.flow_status(run_id)
        assert (
            status is not None
            and status["run_id"] == run_id
            and status["activation_params"] == {"why": "test"}
        )
        mob.cancel_flow(run_id)
        assert mob.events(after_cursor=1, limit=1)[0].cursor == 2
        mob.retire("w-1")
        mob.lifecycle("destroy")
        assert client.list_mobs() == []


# --- before anything is sent ------------------------------------------------------------------


@contextlib.contextmanager
def tapped_client() -> Iterator[Tuple[MeerkatClient, Path]]:
    """A scripted client whose wire is recorded (JSON lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        transcript = Path(tmp) / "wire.jsonl"
        command = [sys.executable, str(TAP), str(transcript), "--", *fake_rkat_command()]
        with MeerkatClient(command=command, **OPTIONS) as client:
            yield client, transcript


def sent_methods(transcript: Path) -> List[str]:
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    return [json.loads(e["line"]).get("method", "") for e in entries if e["dir"] == ">"]


BAD_CALLS: List[Tuple[str, Callable[[MeerkatClient], Any], str]] = [
    ("create neither", lambda c: c.create_mob(), "exactly one of prefab= or definition="),
    ("create both", lambda c: c.create_mob(prefab="p", definition={"id": "x"}), "exactly one"),
    ("create bad definition", lambda c: c.create_mob(definition=["id"]), "definition must be a dict"),  # type: ignore[arg-type]
    ("empty mob id", lambda c: c.mob_status(""), "mob_id must be a non-empty string"),
    ("mob handle id", lambda c: c.mob(None), "mob_id must be a non-empty string"),  # type: ignore[arg-type]
    ("tool name", lambda c: c.call_mob_tool(""), "name must be a non-empty string"),
    ("tool arguments", lambda c: c.call_mob_tool("mob_list", ["x"]), "arguments must be a dict"),  # type: ignore[arg-type]
    ("spawn profile", lambda c: c.spawn_mob_member("m", profile="", meerkat_id="a"), "profile must be"),
    (
        "spawn mode",
        lambda c: c.spawn_mob_member("m", profile="w", meerkat_id="a", runtime_mode="x"),
        "runtime_mode",
    ),
    ("spawn backend", lambda c: c.spawn_mob_member("m", profile="w", meerkat_id="a", backend="x"), "backend"),
    (
        "spawn labels",
        lambda c: c.spawn_mob_member("m", profile="w", meerkat_id="a", labels={"a": 1}),
        "labels",
    ),
    (
        "spawn message",
        lambda c: c.spawn_mob_member("m", profile="w", meerkat_id="a", initial_message=5),
        "initial_message",
    ),
    ("spawn many empty", lambda c: c.spawn_mob_members("m", []), "non-empty list"),
    (
        "spawn many key",
        lambda c: c.spawn_mob_members("m", [{"profile": "w", "meerkat_id": "a", "x": 1}]),
        "unknown",
    ),
    ("spawn many spec", lambda c: c.spawn_mob_members("m", ["w"]), "specs[0] must be a dict"),  # type: ignore[list-item]
    ("lifecycle action", lambda c: c.mob_lifecycle("m", "explode"), "action must be one of"),
    ("send mode", lambda c: c.send_mob_member_content("m", "a", "hi", handling_mode="now"), "handling_mode"),
    ("send content", lambda c: c.send_mob_member_content("m", "a", []), "content"),
    (
        "render class",
        lambda c: c.send_mob_member_content("m", "a", "hi", render_metadata={"class": "x"}),
        "class",
    ),
    ("peer shape", lambda c: c.wire_mob_members("m", "a", {"remote": "b"}), "peer must be"),
    ("external peer", lambda c: c.unwire_mob_members("m", "a", {"external": {"name": "n"}}), "peer_id"),
    ("kickoff timeout", lambda c: c.wait_mob_kickoff("m", timeout_ms=0), "timeout_ms"),
    ("kickoff ids", lambda c: c.wait_mob_kickoff("m", member_ids="a"), "member_ids"),  # type: ignore[arg-type]
    ("fork context", lambda c: c.fork_mob_helper("m", "a", "p", fork_context={"type": "x"}), "fork_context"),
    ("helper prompt", lambda c: c.spawn_mob_helper("m", ""), "prompt must be"),
    ("events cursor", lambda c: c.list_mob_events("m", after_cursor=-1), "after_cursor"),
    ("events limit", lambda c: c.list_mob_events("m", limit=0), "limit"),
    ("flow params", lambda c: c.run_mob_flow("m", "f", "x"), "params must be a dict"),  # type: ignore[arg-type]
    ("context text", lambda c: c.append_mob_system_context("m", "a", " "), "text must be"),
    ("member stream id", lambda c: c.subscribe_mob_member_events("m", ""), "meerkat_id must be"),
]


@pytest.mark.parametrize(("label", "call", "problem"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_invalid_args_before_anything_is_sent(
    label: str, call: Callable[[MeerkatClient], Any], problem: str
) -> None:
    with tapped_client() as (client, transcript):
        with pytest.raises(MeerkatError) as caught:
            call(client)
        assert caught.value.code == "INVALID_ARGS" and problem in caught.value.message, caught.value
        client.list_sessions()  # a marker: everything before it has been written
        sent = sent_methods(transcript)
    assert "session/list" in sent and not any(m.startswith("mob/") for m in sent)


#: One call per client method, with arguments that would be valid.
EVERY_CALL: List[Tuple[str, Callable[[MeerkatClient], Any]]] = [
    ("list_mob_prefabs", lambda c: c.list_mob_prefabs()),
    ("list_mob_tools", lambda c: c.list_mob_tools()),
    ("call_mob_tool", lambda c: c.call_mob_tool("mob_list")),
    ("create_mob", lambda c: c.create_mob(prefab="coding_swarm")),
    ("list_mobs", lambda c: c.list_mobs()),
    ("mob_status", lambda c: c.mob_status("m")),
    ("list_mob_members", lambda c: c.list_mob_members("m")),
    ("list_mob_events", lambda c: c.list_mob_events("m")),
    ("spawn_mob_member", lambda c: c.spawn_mob_member("m", profile="w", meerkat_id="a")),
    ("spawn_mob_members", lambda c: c.spawn_mob_members("m", [{"profile": "w", "meerkat_id": "a"}])),
    ("retire_mob_member", lambda c: c.retire_mob_member("m", "a")),
    ("respawn_mob_member", lambda c: c.respawn_mob_member("m", "a")),
    ("force_cancel_mob_member", lambda c: c.force_cancel_mob_member("m", "a")),
    ("mob_member_status", lambda c: c.mob_member_status("m", "a")),
    ("wait_mob_kickoff", lambda c: c.wait_mob_kickoff("m")),
    ("spawn_mob_helper", lambda c: c.spawn_mob_helper("m", "p")),
    ("fork_mob_helper", lambda c: c.fork_mob_helper("m", "a", "p")),
    ("wire_mob_members", lambda c: c.wire_mob_members("m", "a", "b")),
    ("unwire_mob_members", lambda c: c.unwire_mob_members("m", "a", "b")),
    ("mob_lifecycle", lambda c: c.mob_lifecycle("m", "stop")),
    ("send_mob_member_content", lambda c: c.send_mob_member_content("m", "a", "hi")),
    ("append_mob_system_context", lambda c: c.append_mob_system_context("m", "a", "t")),
    ("list_mob_flows", lambda c: c.list_mob_flows("m")),
    ("run_mob_flow", lambda c: c.run_mob_flow("m", "f")),
    ("get_mob_flow_status", lambda c: c.get_mob_flow_status("m", "r")),
    ("cancel_mob_flow", lambda c: c.cancel_mob_flow("m", "r")),
    ("subscribe_mob_events", lambda c: c.subscribe_mob_events("m")),
    ("subscribe_mob_member_events", lambda c: c.subscribe_mob_member_events("m", "a")),
    ("Mob.status", lambda c: c.mob("m").status()),
    ("Member.send", lambda c: c.mob("m").member("a").send("hi")),
]

WITHOUT_MOBS = [
    "--without-method",
    "mob/create",
    "--without-method",
    "mob/list",
    "--without-method",
    "mob/call",
]


def test_without_mobs_every_mob_call_raises_capability_unavailable_before_sending() -> None:
    with scripted_client(args=WITHOUT_MOBS, request_timeout=10.0) as client:
        assert not client.has_capability("mob")
        for name, call in EVERY_CALL:
            with pytest.raises(CapabilityUnavailableError) as caught:
                call(client)
            assert caught.value.code == "CAPABILITY_UNAVAILABLE", name
            assert "mob" in caught.value.message, name


def test_a_mob_method_left_out_is_refused_though_mobs_are_there() -> None:
    with scripted_client(
        args=["--without-method", "mob/flow_run", "--without-method", "mob/status"]
    ) as client:
        assert client.has_capability("mob")
        with pytest.raises(CapabilityUnavailableError, match="mob/flow_run"):
            client.run_mob_flow("m", "f")
        # mob/wait_kickoff is not listed by 0.5.0 at all; it is offered where mob/status is.
        with pytest.raises(CapabilityUnavailableError, match="mob/wait_kickoff"):
            client.wait_mob_kickoff("m")
        client.create_mob(definition=definition())
        assert client.list_mob_flows("crew") == ["f"]


def test_wait_kickoff_works_though_initialize_does_not_list_it(backend: Backend) -> None:
    with backend.connect() as client:
        client.create_mob(definition=definition())
        assert client.wait_mob_kickoff("crew", timeout_ms=500) == []


def test_mob_handles_are_plain_values(client: MeerkatClient) -> None:
    """A handle is an id bound to the client: made without a call, equal by id, usable at once."""
    mob = client.mob("pipeline")
    assert (
        repr(mob) == "Mob('pipeline')"
        and mob == client.mob("pipeline")
        and hash(mob) == hash(client.mob("pipeline"))
    )
    assert repr(mob.member("w-1")) == "Member('pipeline', 'w-1')"
    assert client.create_mob(prefab="pipeline") == mob
    assert mob.flows() == ["pipeline"] and mob.status().mob_id == "pipeline"
