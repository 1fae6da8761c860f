#!/usr/bin/env python
"""meerkat_sync vs the official async SDK (``meerkat-sdk==0.5.0``), against a replay server.

Run from the repository root, in an environment with ``pip install -e ".[bench,fast]"``::

    python benchmarks/bench.py              # the full run; also rewrites benchmarks/RESULTS.md
    python benchmarks/bench.py --quick      # smaller counts, one repetition
    python benchmarks/bench.py --write-results   # RESULTS.md again from results.json

Every measurement is a child process (``--child SPEC``) with a fresh server, so nothing
warms up, slows down or leaks from one to the next. The parent prints the table and writes
``benchmarks/results.json``. ``--profile WORKLOAD`` samples one meerkat_sync workload with
py-spy instead. benchmarks/README.md says what every row and column means.

Modules: _replay.py (the replay server), _servers.py (starting it, and the real rkat-rpc
row), _contenders.py (meerkat_sync, the SDK, the floors), _workloads.py (what runs),
_runner.py (child processes, quiet machine), _report.py (table, JSON, RESULTS.md),
_profile.py (py-spy).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"


def child_main(raw: str) -> int:
    """One measurement: one workload, one contender, one server; one JSON line on stdout."""
    spec = json.loads(raw)
    if not spec["orjson"]:
        sys.modules["orjson"] = None  # type: ignore[assignment]  # import orjson now raises ImportError

    def on_term(_signum: int, _frame: Any) -> None:
        raise SystemExit(143)  # unwinds the with-blocks, so the clients stop their servers

    signal.signal(signal.SIGTERM, on_term)
    from _contenders import RUNNERS, Failed
    from _runner import RESULT_MARK
    from _servers import start

    params = spec["params"]
    longest = {"stream": params["stream_count"] * params["stream_deltas"], "memory": params["mem_events"]}
    try:
        with start(spec["server"], longest.get(spec["kind"], 0) + 10_000) as server:
            result = RUNNERS[spec["contender"]][spec["kind"]](server, params)
    except Failed as exc:
        result = {"failed": str(exc)}
    except Exception as exc:
        result = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
    result["orjson_loaded"] = sys.modules.get("orjson") is not None
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def preflight() -> List[str]:
    problems = []
    for module, hint in (("meerkat_sync", "pip install -e ."), ("meerkat", 'pip install -e ".[bench]"')):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"cannot import {module!r}; run: {hint}")
    if not problems:
        from _servers import check_replay

        problems += [f"replay server: {p}" for p in check_replay()]
    return problems


def have_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


def parent_main(args: argparse.Namespace) -> int:
    from _report import build_report, render_text, write_results_md
    from _runner import run_quietly, stop_current
    from _servers import real_binary, real_spec, replay_spec, write_launcher
    from _workloads import BY_NAME, FULL, QUICK, plan

    problems = preflight()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    only = args.only.split(",") if args.only else None
    unknown = [name for name in only or [] if name not in BY_NAME]
    if unknown:
        print(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    from _contenders import FLOOR, JSON_FLOOR, ORJSON_FLOOR, SDK, SYNC, SYNC_ORJSON

    contenders = [SYNC, SDK, FLOOR, JSON_FLOOR]
    skipped: List[str] = []
    if have_orjson():
        contenders += [SYNC_ORJSON, ORJSON_FLOOR]
    else:
        skipped.append('orjson is not installed (pip install -e ".[fast]"): no orjson rows')
    binary = real_binary()
    if binary is None:
        skipped.append("MEERKAT_BIN_PATH names no rkat-rpc binary: the real-runtime rows were skipped")

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meerkat-bench-") as tmp:
        servers = {"replay": replay_spec(write_launcher(tmp)), "real": real_spec(binary) if binary else None}
        jobs = plan(cfg, servers, only, contenders)
        try:
            for index, job in enumerate(jobs, 1):
                label = f"[{index:>3}/{len(jobs)}] {job.workload:<15} {job.contender:<12} rep {job.rep + 1}"
                print(label + " ...", end="", file=sys.stderr, flush=True)
                result = run_quietly(job, cfg, lambda r, job=job: short(job.workload, r))
                result["rep"] = job.rep
                raw.setdefault(job.workload, {}).setdefault(job.contender, []).append(result)
        except KeyboardInterrupt:
            stop_current()
            print("\ninterrupted; children stopped", file=sys.stderr)
            return 130
    report = build_report(raw, cfg, mode="quick" if args.quick else "full", only=only, skipped=skipped)
    report["wall_s"] = time.perf_counter() - started
    print(render_text(report))
    output = Path(args.output)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {output}")
    if not args.quick and not only and output.resolve() == RESULTS_JSON.resolve():
        write_results_md(report, RESULTS_MD)
        print(f"wrote {RESULTS_MD}")
    return 0


def short(workload: str, result: Dict[str, Any]) -> str:
    """One job's figure for the progress lines."""
    if "failed" in result:
        return "FAILED: " + str(result["failed"])[:150]
    errors = sum(result.get("errors", {}).values())
    tail = f" ({errors} errors)" if errors else ""
    if result.get("dropped"):
        tail += f" ({result['dropped']:,} events dropped)"
    if "peak_rss_mib" in result:
        return f"{result['peak_rss_mib']:,.1f} MiB peak, +{result['growth_mib']:,.1f} MiB" + tail
    if "samples_us" in result:
        ordered = sorted(result["samples_us"])
        return f"p50 {ordered[len(ordered) // 2]:,.0f} us" + tail
    if "events_per_s" in result:
        return f"{result['events_per_s']:,.0f} events/s" + tail
    if "turns_per_s" in result:
        return f"{result['turns_per_s']:,.1f} turns/s" + tail
    return "ok" + tail


def write_results_main(path: str) -> int:
    from _report import write_results_md

    report = json.loads(Path(path).read_text())
    write_results_md(report, RESULTS_MD)
    print(f"wrote {RESULTS_MD} from {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, one repetition")
    parser.add_argument("--repeats", type=int, help="repetitions of each repeated workload")
    parser.add_argument("--only", help="comma-separated workloads (rtt,stream,turns,streams,creates,...)")
    parser.add_argument("--output", default=str(RESULTS_JSON), help="the JSON results file")
    parser.add_argument(
        "--write-results",
        nargs="?",
        const=str(RESULTS_JSON),
        metavar="JSON",
        help="only regenerate RESULTS.md from a results file (default benchmarks/results.json)",
    )
    parser.add_argument("--profile", metavar="WORKLOAD", help="sample one meerkat_sync workload with py-spy")
    parser.add_argument("--orjson", action="store_true", help="with --profile: let meerkat_sync use orjson")
    parser.add_argument("--top", type=int, default=15, help="functions shown per thread with --profile")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second with --profile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.write_results:
        return write_results_main(args.write_results)
    if args.profile:
        from _profile import profile_main

        return profile_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
