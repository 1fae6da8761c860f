"""Running jobs: one child process per measurement, on a machine as quiet as it gets.

Each job is ``bench.py --child SPEC`` in its own process group (the child, its server and
any helper), killed as a group when it hangs or the run is interrupted. Before a job the
runner waits (within a budget) for other processes to stop using the CPUs; during it, it
measures how much CPU other processes used (``foreign_cores``) and repeats a job that ran
on a busy machine, keeping the quietest attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from _workloads import Job

RESULT_MARK = "BENCH-RESULT "
BENCH = Path(__file__).resolve().with_name("bench.py")
Result = Dict[str, Any]

_current: Optional[subprocess.Popen[str]] = None


def system_busy_seconds() -> Optional[float]:
    """CPU seconds all CPUs spent not idle (user..steal), from /proc/stat; None off Linux."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process and every descendant it (transitively) reaped."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group (child, server, helpers), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        return


def stop_current() -> None:
    """Kill the job that is running (on Ctrl+C)."""
    if _current is not None:
        kill_group(_current)


def child_command(spec: Dict[str, Any]) -> list:
    return [sys.executable, str(BENCH), "--child", json.dumps(spec)]


def execute(job: Job) -> Result:
    """Run one job in a child; ``foreign_cores`` is the CPU other processes used meanwhile."""
    busy0, own0, t0 = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    result = _execute(job)
    busy1, own1, wall = system_busy_seconds(), own_cpu_seconds(), time.perf_counter() - t0
    if busy0 is not None and busy1 is not None and wall > 0:
        result["foreign_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return result


def _execute(job: Job) -> Result:
    global _current
    proc = subprocess.Popen(
        child_command(job.spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _current = proc
    try:
        out, err = proc.communicate(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return {"failed": f"killed after {job.timeout:g} s (the child hung)"}
    finally:
        if proc.poll() is None:
            kill_group(proc)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # a server the child failed to stop
        _current = None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: Result = json.loads(line[len(RESULT_MARK) :])
            noise = [ln for ln in err.splitlines() if ln.strip()]
            if noise:
                result["stderr"] = noise[-8:]
            return result
    return {"failed": f"the child exited {proc.returncode} without a result: {err.strip()[-500:]}"}


def run_quietly(job: Job, cfg: Dict[str, Any], describe: Any) -> Result:
    """Run a job; while other processes kept a CPU busy meanwhile, run it again (keep the quietest).

    Memory jobs are not retried: CPU load does not change what they measure.
    """
    best: Optional[Result] = None
    retries = 0 if job.spec["kind"] == "memory" else cfg["retries"]
    for attempt in range(retries + 1):
        limit = min(cfg["quiet_wait"], cfg["quiet_budget"])
        waited = wait_for_quiet(limit, cfg["max_foreign_cores"]) if limit > 0 else 0.0
        cfg["quiet_budget"] -= waited
        if waited >= 1.0:
            print(f" (waited {waited:.0f} s for other load to pass)", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = execute(job)
        result["attempt"] = attempt + 1
        foreign = result.get("foreign_cores", 0.0)
        note = f"  [other load {foreign:.2f} cores]" if foreign > cfg["max_foreign_cores"] else ""
        if attempt:
            print(" " * 50 + "retry", end="", file=sys.stderr)
        print(f" {describe(result)}  ({time.perf_counter() - t0:.1f} s){note}", file=sys.stderr)
        if best is None or foreign < best.get("foreign_cores", 0.0):
            best = result
        if "failed" in result or foreign <= cfg["max_foreign_cores"]:
            break
    assert best is not None
    return best


def wait_for_quiet(limit: float, max_busy: float) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``max_busy`` CPUs; returns the wait."""
    t0 = time.perf_counter()
    while True:
        busy0, own0 = system_busy_seconds(), own_cpu_seconds()
        time.sleep(0.5)
        busy1, own1 = system_busy_seconds(), own_cpu_seconds()
        if busy0 is None or busy1 is None:
            return 0.0
        quiet = (busy1 - busy0 - (own1 - own0)) / 0.5 <= max_busy
        if quiet or time.perf_counter() - t0 >= limit:
            return time.perf_counter() - t0 - 0.5
