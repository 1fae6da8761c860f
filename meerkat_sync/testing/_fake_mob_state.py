"""The scripted runtime's mobs: rosters, member sessions, the event log and flow runs.

Semantics follow rkat-rpc 0.5.0 as probed (the real server wins over PROTOCOL.md):

- Spawning a profile with ``builtins``, ``mob`` or ``mob_tasks`` on fails with the real
  server's "Ops lifecycle binding failed" error, so prefab mobs cannot spawn members here
  either; ``comms`` off is a wiring error. Definitions with those flags off spawn.
- A member's session emits no plain ``session/event``: its events reach only subscriptions
  (the session's streams, the member stream, the mob-wide stream attributed).
- A ``turn_driven`` member ignores ``initial_message``; an ``autonomous_host`` one runs it as
  its kickoff turn. Helpers are spawned and retired at once without running their prompt
  (``output`` null, ``tokens_used`` 0), as on the real binary.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from meerkat_sync.testing._fake_constants import (
    DEFAULT_STRUCTURED_OUTPUT_RETRIES,
    DEFAULT_SYSTEM_PROMPT,
    INVALID_PARAMS,
)
from meerkat_sync.testing._fake_mob_data import with_defaults
from meerkat_sync.testing._fake_params import Content, admit
from meerkat_sync.testing._fake_runtime import Input, RunOutcome
from meerkat_sync.testing._fake_sessions import Session, SessionConfig, infer_provider
from meerkat_sync.testing._fake_streams import session_topic
from meerkat_sync.testing._fake_wire import JsonDict, RpcError

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Server

#: What the 0.5.0 binary says when a member's profile needs the ops lifecycle (builtins etc.).
OPS_BINDING_FAILED = (
    "session error: agent error: Build error: Config error: Ops lifecycle binding failed: "
    "dispatcher has shared ownership and cannot be rebound"
)
STEER_UNSUPPORTED = (
    "internal error: turn abandoned: apply failed: Apply failed: agent error: Configuration error: "
    "handling_mode Steer requires a runtime-backed surface; direct session-service path supports Queue only"
)
FLOW_MEMBER = "__flow_system_member__"


def mob_error(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def stamp() -> str:
    """An RFC 3339 UTC timestamp with nanoseconds, as the mob event log writes them."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}{os.urandom(1)[0] % 1000:03d}Z"


def mob_topic(mob_id: str, member_id: Optional[str] = None) -> str:
    return f"mob:{mob_id}" if member_id is None else f"mob:{mob_id}/{member_id}"


class Member:
    """One roster entry and the session its turns run on."""

    def __init__(
        self, meerkat_id: str, profile: str, runtime_mode: str, session: Session, labels: Dict[str, str]
    ):
        self.meerkat_id = meerkat_id
        self.profile = profile
        self.runtime_mode = runtime_mode
        self.session = session
        self.labels = labels
        self.peer_id = "ed25519:" + base64.b64encode(os.urandom(32)).decode()
        self.wired_to: List[str] = []
        self.kickoff: Optional[threading.Event] = None

    @property
    def ref(self) -> JsonDict:
        return {"kind": "session", "session_id": self.session.session_id}

    def entry(self) -> JsonDict:
        """Its ``mob/members`` entry."""
        out: JsonDict = {
            "current_session_id": self.session.session_id,
            "is_final": False,
            "meerkat_id": self.meerkat_id,
            "member_ref": self.ref,
            "peer_id": self.peer_id,
            "profile": self.profile,
            "runtime_mode": self.runtime_mode,
            "state": "Active",
            "status": "active",
            "wired_to": sorted(self.wired_to),
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


def snapshot(member: Optional[Member]) -> JsonDict:
    """``mob/member_status``: an id not in the roster is ``unknown``, never an error."""
    if member is None:
        return {
            "current_session_id": None,
            "error": None,
            "is_final": True,
            "output_preview": None,
            "status": "unknown",
            "tokens_used": 0,
        }
    session = member.session
    return {
        "current_session_id": session.session_id,
        "error": None,
        "is_final": False,
        "output_preview": session.last_text,
        "peer_connectivity": {
            "reachable_peer_count": len(member.wired_to),
            "unknown_peer_count": 0,
            "unreachable_peers": [],
        },
        "status": "active",
        "tokens_used": session.usage.total,
    }


class Mob:
    """One mob: its definition, lifecycle state, roster, event log and flow runs."""

    def __init__(self, definition: JsonDict) -> None:
        self.mob_id: str = definition["id"]
        self.definition = with_defaults(definition)
        self.status = "Running"
        self.members: Dict[str, Member] = {}
        self.events: List[JsonDict] = []
        self.runs: Dict[str, JsonDict] = {}
        self.record({"definition": self.definition, "type": "mob_created"})

    def record(self, kind: JsonDict) -> None:
        self.events.append(
            {
                "cursor": len(self.events) + 1,
                "kind": dict(sorted(kind.items())),
                "mob_id": self.mob_id,
                "timestamp": stamp(),
            }
        )

    def member(self, meerkat_id: str) -> Member:
        found = self.members.get(meerkat_id)
        if found is None:
            raise mob_error(f"meerkat not found: {meerkat_id}")
        return found

    def roster(self) -> List[Member]:
        return [self.members[k] for k in sorted(self.members)]


class MobRegistry:
    """Every mob of the process (``mob_id`` order, as the real BTreeMap lists them)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.mobs: Dict[str, Mob] = {}

    def get(self, mob_id: str) -> Mob:
        found = self.mobs.get(mob_id)
        if found is None:
            raise mob_error(f"internal error: mob not found: {mob_id}")
        return found

    def create(self, definition: JsonDict) -> str:
        if not definition.get("profiles"):
            raise mob_error(
                "definition error: empty_profiles: mob definition must define at least one profile"
            )
        with self.lock:
            if definition["id"] in self.mobs:
                raise mob_error(f"internal error: mob already exists: {definition['id']}")
            mob = Mob(definition)
            self.mobs[mob.mob_id] = mob
            return mob.mob_id

    # -- members -------------------------------------------------------------------------

    def spawn(self, mob: Mob, spec: JsonDict) -> Member:
        """Add a member (the checks in the real order); its kickoff runs if autonomous."""
        if mob.status != "Running":
            raise mob_error(f"invalid state transition: {mob.status} -> Running")
        name = spec["profile"]
        profile = mob.definition["profiles"].get(name)
        if profile is None:
            raise mob_error(f"profile not found: {name}")
        meerkat_id = spec["meerkat_id"]
        if meerkat_id in mob.members:
            raise mob_error(f"meerkat already exists: {meerkat_id}")
        tools = profile["tools"]
        if not tools.get("comms"):
            raise mob_error(
                f"wiring error: profile '{name}' has tools.comms=false; mob meerkats require comms=true"
            )
        if tools.get("builtins") or tools.get("mob") or tools.get("mob_tasks"):
            raise mob_error(OPS_BINDING_FAILED)
        mode = spec.get("runtime_mode") or profile.get("runtime_mode") or "autonomous_host"
        member = Member(meerkat_id, name, mode, self._session(profile, spec), spec.get("labels") or {})
        mob.members[meerkat_id] = member
        self.server.streams.watch(member.session.session_id, self._fan_out(mob, member), silence=True)
        kind: JsonDict = {
            "meerkat_id": meerkat_id,
            "member_ref": member.ref,
            "role": name,
            "runtime_mode": mode,
            "type": "meerkat_spawned",
        }
        if member.labels:
            kind["labels"] = dict(member.labels)
        mob.record(kind)
        if mode == "autonomous_host" and spec.get("initial_message") is not None:
            member.kickoff = self.run(member, admit(spec["initial_message"]))
        return member

    def _session(self, profile: JsonDict, spec: JsonDict) -> Session:
        resumed = spec.get("resume_session_id")
        if resumed is not None:
            try:
                found = self.server.store.find(str(uuid.UUID(resumed)))
            except ValueError:
                raise mob_error(f"Invalid resume_session_id: invalid session id: {resumed}") from None
            if found is not None and not found.archived:
                return found
        model = profile.get("model") or "claude-sonnet-4-5"
        system_prompt = DEFAULT_SYSTEM_PROMPT
        for section in spec.get("additional_instructions") or ():
            system_prompt += "\n\n" + section
        config = SessionConfig(
            model=model,
            provider=infer_provider(model, None),
            labels={},
            system_prompt=system_prompt,
            comms_name=None,
            tools=[],
            output_schema=None,
            structured_output_retries=DEFAULT_STRUCTURED_OUTPUT_RETRIES,
            budget_limits=None,
        )
        session = self.server.store.create(config, None)
        session.materialize()  # its event source exists at once: session/stream_open works on it
        return session

    def _fan_out(self, mob: Mob, member: Member) -> Any:
        """Each event of the member's session: bare on its member stream, attributed on the mob's."""
        hub = self.server.streams

        def publish(envelope: JsonDict) -> None:
            hub.publish(mob_topic(mob.mob_id, member.meerkat_id), envelope)
            hub.publish(
                mob_topic(mob.mob_id),
                {"envelope": envelope, "profile": member.profile, "source": member.meerkat_id},
            )

        return publish

    def run(self, member: Member, prompt: Content, done: Optional[Any] = None) -> threading.Event:
        """Queue a turn on the member's session; the event is set when it is over."""
        finished = threading.Event()

        def respond(outcome: RunOutcome) -> None:
            if done is not None:
                done(outcome)
            finished.set()

        member.session.runtime.submit(Input(prompt, respond))
        return finished

    def retire(self, mob: Mob, meerkat_id: str) -> Optional[Member]:
        """Remove a member: its streams end (``remote_end``), its session is archived."""
        member = mob.members.pop(meerkat_id, None)
        if member is None:
            return None
        for other in mob.members.values():
            if meerkat_id in other.wired_to:
                other.wired_to.remove(meerkat_id)
        mob.record(
            {
                "meerkat_id": meerkat_id,
                "member_ref": member.ref,
                "role": member.profile,
                "type": "meerkat_retired",
            }
        )
        session = member.session
        hub = self.server.streams
        hub.unwatch(session.session_id)
        hub.end(mob_topic(mob.mob_id, meerkat_id), "remote_end")
        hub.end(session_topic(session.session_id), "remote_end")
        session.store_snapshot()
        session.archived = True
        session.runtime.unregister()
        return member

    def wire(self, mob: Mob, member: Member, peer: JsonDict, on: bool) -> None:
        if "local" in peer:
            other = mob.member(peer["local"])
            linked = other.meerkat_id in member.wired_to
            if on and not linked:
                member.wired_to.append(other.meerkat_id)
                other.wired_to.append(member.meerkat_id)
                mob.record({"a": member.meerkat_id, "b": other.meerkat_id, "type": "peers_wired"})
            elif not on and linked:
                member.wired_to.remove(other.meerkat_id)
                if member.meerkat_id in other.wired_to:
                    other.wired_to.remove(member.meerkat_id)
                mob.record({"a": member.meerkat_id, "b": other.meerkat_id, "type": "peers_unwired"})
            return
        spec = peer["external"]
        name = spec["name"]
        if on and name not in member.wired_to:
            member.wired_to.append(name)
            mob.record({"local": member.meerkat_id, "spec": spec, "type": "external_peer_wired"})
        elif not on and name in member.wired_to:
            member.wired_to.remove(name)
            mob.record({"local": member.meerkat_id, "peer_name": name, "type": "external_peer_unwired"})

    def lifecycle(self, mob: Mob, action: str) -> None:
        allowed = {"stop": ("Running",), "resume": ("Stopped",), "complete": ("Running", "Stopped")}
        target = {"stop": "Stopped", "resume": "Running", "complete": "Completed"}
        if action in allowed:
            if mob.status not in allowed[action]:
                raise mob_error(f"invalid state transition: {mob.status} -> {target[action]}")
            mob.status = target[action]
            if action == "complete":
                mob.record({"type": "mob_completed"})
        elif action == "reset":
            for member_id in list(mob.members):
                self.retire(mob, member_id)
            mob.status = "Running"
            mob.record({"type": "mob_reset"})
        elif action == "destroy":
            for member_id in list(mob.members):
                self.retire(mob, member_id)
            del self.mobs[mob.mob_id]
        else:
            raise mob_error(f"Unknown mob lifecycle action: {action}")

    # -- flows ---------------------------------------------------------------------------

    def start_flow(self, mob: Mob, flow_id: str, params: Any) -> str:
        flow = mob.definition["flows"].get(flow_id)
        if flow is None:
            raise mob_error(f"flow not found: {flow_id}")
        run_id = str(uuid.uuid4())
        run: JsonDict = {
            "activation_params": params,
            "completed_at": None,
            "created_at": stamp(),
            "failure_ledger": [],
            "flow_id": flow_id,
            "flow_state": {"fields": {}, "phase": "Running"},
            "mob_id": mob.mob_id,
            "run_id": run_id,
            "status": "running",
            "step_ledger": [],
        }
        mob.runs[run_id] = run
        mob.record({"flow_id": flow_id, "params": params, "run_id": run_id, "type": "flow_started"})
        thread = threading.Thread(
            target=self._run_flow, args=(mob, flow, run), name="fake-mob-flow", daemon=True
        )
        thread.start()
        return run_id

    def cancel_flow(self, mob: Mob, run_id: str) -> None:
        with self.lock:
            run = mob.runs.get(run_id)
            if run is not None and run["status"] == "running":
                self._finish(mob, run, "canceled", {"flow_id": run["flow_id"], "type": "flow_canceled"})

    def _finish(self, mob: Mob, run: JsonDict, status: str, kind: JsonDict) -> None:
        run["status"] = status
        run["completed_at"] = stamp()
        run["flow_state"]["phase"] = status.capitalize()
        mob.record({**kind, "run_id": run["run_id"]})

    def _run_flow(self, mob: Mob, flow: JsonDict, run: JsonDict) -> None:
        """Steps in dependency order; each target runs the step message as a turn on its member."""
        failed = False
        done: List[str] = []
        steps: Dict[str, JsonDict] = dict(flow.get("steps") or {})
        while steps and not failed:
            ready = [
                sid for sid, step in steps.items() if all(d in done for d in step.get("depends_on") or ())
            ]
            if not ready:
                break
            sid = ready[0]
            step = steps.pop(sid)
            failed = not self._run_step(mob, run, sid, step)
            done.append(sid)
        with self.lock:
            if run["status"] != "running":
                return
            if failed:
                reason = "one or more flow steps failed"
                self._finish(
                    mob, run, "failed", {"flow_id": run["flow_id"], "reason": reason, "type": "flow_failed"}
                )
            else:
                self._finish(mob, run, "completed", {"flow_id": run["flow_id"], "type": "flow_completed"})

    def _run_step(self, mob: Mob, run: JsonDict, sid: str, step: JsonDict) -> bool:
        run_id = run["run_id"]
        with self.lock:
            targets = [m for m in mob.roster() if m.profile == step.get("role")]
        if step.get("dispatch_mode") == "one_to_one":
            targets = targets[:1]
        if not targets:
            reason = f"insufficient targets for step {sid}: required 1, available 0"
            self._step_failed(mob, run, sid, reason)
            return False
        outputs: JsonDict = {}
        for member in targets:
            mid = member.meerkat_id
            self._ledger(run, sid, mid, "dispatched", None)
            mob.record({"meerkat_id": mid, "run_id": run_id, "step_id": sid, "type": "step_dispatched"})
            result: List[RunOutcome] = []
            self.run(member, str(step.get("message", "")), result.append).wait()
            text = result[0].result.get("text", "") if result and result[0].result is not None else ""
            try:
                output = json.loads(text) if step.get("output_format", "json") == "json" else text
            except ValueError:
                reason = (
                    f"malformed JSON output for step '{sid}' target '{mid}': "
                    f"expected value at line 1 column 1; raw_output={json.dumps(text)}"
                )
                self._ledger(run, sid, mid, "failed", None)
                mob.record(
                    {
                        "meerkat_id": mid,
                        "reason": reason,
                        "run_id": run_id,
                        "step_id": sid,
                        "type": "step_target_failed",
                    }
                )
                self._step_failed(mob, run, sid, reason)
                return False
            outputs[mid] = output
            self._ledger(run, sid, mid, "completed", output)
            mob.record({"meerkat_id": mid, "run_id": run_id, "step_id": sid, "type": "step_target_completed"})
        self._ledger(run, sid, FLOW_MEMBER, "completed", outputs)
        mob.record({"run_id": run_id, "step_id": sid, "type": "step_completed"})
        return True

    def _step_failed(self, mob: Mob, run: JsonDict, sid: str, reason: str) -> None:
        run["failure_ledger"].append({"reason": reason, "step_id": sid, "timestamp": stamp()})
        mob.record({"reason": reason, "run_id": run["run_id"], "step_id": sid, "type": "step_failed"})

    @staticmethod
    def _ledger(run: JsonDict, sid: str, mid: str, status: str, output: Any) -> None:
        run["step_ledger"].append(
            {"meerkat_id": mid, "output": output, "status": status, "step_id": sid, "timestamp": stamp()}
        )
