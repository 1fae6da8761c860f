"""What the benchmark runs: the workloads, their sizes, and the plan of child-process jobs.

Every workload pairs meerkat_sync with the official SDK in the same run. meerkat_sync runs
twice per repetition: ``sync`` with orjson blocked from import (the standard library's
json, what a default install uses) and ``sync+orjson`` (the ``fast`` extra). Repetitions
rotate the order of the contenders, so no contender always runs first or last.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from _contenders import FLOOR, JSON_FLOOR, ORJSON_FLOOR, SDK, SYNC, SYNC_ORJSON

Params = Dict[str, Any]

FULL: Params = {
    "repeats": 5,
    "rtt_calls": 2000,
    "rtt_warmup": 200,
    "stream_deltas": 60_000,  # one-character deltas: the final text stays under the SDK's 64 KiB lines
    "stream_delta": "x",
    "stream_count": 3,  # streams measured back to back on one session
    "sessions": 64,
    "turns": 30,
    "deltas": 50,
    "rounds": 5,
    "mem_events": 1_000_000,
    "mem_rate": 20_000,
    "hang_timeout": 120.0,
    "max_foreign_cores": 0.25,
    "retries": 2,
    "quiet_wait": 30.0,
    "quiet_budget": 180.0,
}
QUICK: Params = {
    **FULL,
    "repeats": 1,
    "rtt_calls": 500,
    "rtt_warmup": 50,
    "stream_count": 1,
    "turns": 5,
    "rounds": 2,
    "mem_events": 200_000,
    "retries": 1,
    "quiet_wait": 5.0,
    "quiet_budget": 20.0,
}


class Workload(NamedTuple):
    name: str
    kind: str  # which runner of _contenders.RUNNERS
    short: str  # its name in the CPU table
    title: str
    metric: str  # the headline figure of a result
    higher_is_better: bool
    contenders: Tuple[str, ...]
    server: str = "replay"
    params: Optional[Params] = None  # overrides of FULL/QUICK
    repeated: bool = True  # False: once per run
    concurrency: bool = False  # the server check (floor >= 2x every contender) applies
    probe: bool = False  # a compatibility check: shown as notes, no ratio
    timeout: float = 300.0


CONTENDERS = (SYNC, SYNC_ORJSON, SDK, FLOOR)
LABELS = {
    SYNC: "meerkat_sync (stdlib json)",
    SYNC_ORJSON: "meerkat_sync (orjson)",
    SDK: "meerkat-sdk 0.5.0",
    FLOOR: "wire floor",
    JSON_FLOOR: "json floor (readline + json.loads)",
    ORJSON_FLOOR: "json floor (readline + orjson.loads)",
}
#: Contenders that may import orjson; every other child has it blocked.
ORJSON = (SYNC_ORJSON, ORJSON_FLOOR)

WORKLOADS: Tuple[Workload, ...] = (
    Workload("rtt", "rtt", "rtt", "round trip (session/read), us", "p50_us", False, CONTENDERS),
    Workload(
        "stream",
        "stream",
        "one stream",
        "one stream of {stream_deltas:,} deltas, events/s",
        "events_per_s",
        True,
        (*CONTENDERS, JSON_FLOOR, ORJSON_FLOOR),
    ),
    Workload(
        "turns",
        "turns",
        "{sessions} x turn()",
        "{sessions} threads x {turns} turn() of {deltas} deltas, turns/s",
        "turns_per_s",
        True,
        CONTENDERS,
        concurrency=True,
    ),
    Workload(
        "streams",
        "streams",
        "{sessions} x stream()",
        "{sessions} threads x {turns} stream() of {deltas} deltas, turns/s",
        "turns_per_s",
        True,
        CONTENDERS,
        concurrency=True,
    ),
    Workload(
        "creates",
        "creates",
        "{sessions} x streaming create",
        "{sessions} threads x {rounds} streaming creates at once, creates/s",
        "turns_per_s",
        True,
        CONTENDERS,
        concurrency=True,
    ),
    Workload(
        "memory",
        "memory",
        "slow consumer",
        "slow consumer of {mem_events:,} events: RSS growth, MiB",
        "growth_mib",
        False,
        (SYNC, SYNC_ORJSON, SDK),
        repeated=False,
        timeout=900.0,
    ),
    Workload(
        "long_answer",
        "stream",
        "long answer",
        "one stream with a 190 KB answer (lines over 64 KiB)",
        "events_per_s",
        True,
        (SYNC, SDK),
        params={"stream_deltas": 50_000, "stream_delta": None, "stream_count": 1, "hang_timeout": 15.0},
        repeated=False,
        probe=True,
    ),
    Workload(
        "creates_at_once",
        "creates",
        "creates at once",
        "{sessions} streaming creates at once, not serialised",
        "turns_per_s",
        True,
        (SDK,),
        params={"serialise": False, "rounds": 1, "hang_timeout": 15.0},
        repeated=False,
        probe=True,
    ),
    Workload(
        "real_rtt",
        "rtt",
        "real: rtt",
        "real rkat-rpc: round trip, us",
        "p50_us",
        False,
        CONTENDERS,
        server="real",
    ),
    Workload(
        "real_stream",
        "stream",
        "real: one stream",
        "real rkat-rpc: one stream of {stream_deltas:,} deltas, events/s",
        "events_per_s",
        True,
        CONTENDERS,
        server="real",
        params={"stream_deltas": 10_000, "stream_count": 1},
    ),
    Workload(
        "real_turns",
        "turns",
        "real: {sessions} x turn()",
        "real rkat-rpc: {sessions} threads x {turns} turn() of {deltas} deltas, turns/s",
        "turns_per_s",
        True,
        CONTENDERS,
        server="real",
        params={"turns": 5},
        concurrency=True,
    ),
)
BY_NAME = {w.name: w for w in WORKLOADS}


def params_of(workload: Workload, cfg: Params) -> Params:
    return {**cfg, **(workload.params or {})}


def title_of(workload: Workload, cfg: Params) -> str:
    return workload.title.format(**params_of(workload, cfg))


def short_of(workload: Workload, cfg: Params) -> str:
    return workload.short.format(**params_of(workload, cfg))


class Job(NamedTuple):
    workload: str
    contender: str
    rep: int
    spec: Dict[str, Any]  # what the child gets
    timeout: float


def plan(
    cfg: Params,
    servers: Dict[str, Optional[Dict[str, Any]]],
    only: Optional[Sequence[str]],
    contenders: Sequence[str],
) -> List[Job]:
    """Every job of the run, in order: repetition by repetition, the contenders rotated."""
    jobs: List[Job] = []
    for workload in WORKLOADS:
        server = servers.get(workload.server)
        if server is None or (only and workload.name not in only):
            continue
        who = [c for c in workload.contenders if c in contenders]
        params = params_of(workload, cfg)
        for rep in range(cfg["repeats"] if workload.repeated else 1):
            turn = rep % len(who)
            for contender in who[turn:] + who[:turn]:
                spec = {
                    "workload": workload.name,
                    "kind": workload.kind,
                    "contender": contender,
                    "orjson": contender in ORJSON,
                    "server": server,
                    "params": params,
                }
                timeout = workload.timeout
                if workload.kind == "memory":
                    timeout += params["mem_events"] / params["mem_rate"] * 2
                jobs.append(Job(workload.name, contender, rep, spec, timeout))
    return jobs
