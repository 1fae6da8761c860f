"""From raw results to the report: summary, paired ratios, server check, targets, table,
results.json and RESULTS.md.

Every ratio is the median of per-repetition ratios: repetition r of one contender ran
right next to repetition r of the others, so a machine that drifts during the run moves
both sides of each ratio together.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _contenders import FLOOR, JSON_FLOOR, ORJSON_FLOOR, SDK, SYNC, SYNC_ORJSON
from _workloads import LABELS, WORKLOADS, Workload, params_of, short_of, title_of

Result = Dict[str, Any]
Raw = Dict[str, Dict[str, List[Result]]]
Report = Dict[str, Any]

#: The memory verdict: a slow consumer's stream may grow the client's RSS by at most this.
MEMORY_BOUND_MIB = 64.0
#: The server check: the floor at least this many times the best contender (concurrency
#: workloads), and the server's CPU per unit at most this share of the fastest client's.
FLOOR_FACTOR = 2.0
SERVER_SHARE = 0.2
CLIENTS = (SYNC, SYNC_ORJSON, SDK)
#: Issue 9's targets: (workload, what, ratio key, goal, higher is better) per build.
TARGETS: Dict[str, List[Tuple[str, str, str, float, bool]]] = {
    "stdlib": [
        ("turns", "64 threads x turn(): turns/s vs the SDK", "sync/sdk", 1.5, True),
        ("streams", "64 threads x stream(): turns/s vs the SDK", "sync/sdk", 1.5, True),
        ("stream", "one stream: events/s vs the SDK", "sync/sdk", 2.0, True),
        ("stream", "one stream: events/s vs the json floor", "sync/json-floor", 0.8, True),
        ("rtt", "round trip p50 vs the SDK", "sync/sdk", 0.8, False),
    ],
    "orjson": [
        ("turns", "64 threads x turn(): turns/s vs the SDK", "sync+orjson/sdk", 2.0, True),
        ("streams", "64 threads x stream(): turns/s vs the SDK", "sync+orjson/sdk", 2.0, True),
        ("stream", "one stream: events/s vs the SDK", "sync+orjson/sdk", 2.5, True),
        ("rtt", "round trip p50 vs the SDK", "sync+orjson/sdk", 0.8, False),
    ],
}


# --- summary ------------------------------------------------------------------------------


def _ok(runs: List[Result]) -> List[Result]:
    return [r for r in runs if "failed" not in r]


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(kept) if kept else None


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _per(result: Result, key: str, unit: str) -> Optional[float]:
    """``key`` (CPU seconds) per ``unit`` in microseconds."""
    value, count = result.get(key), result.get(unit)
    if not isinstance(value, (int, float)) or not count:
        return None
    return value / count * 1e6


def metric_of(result: Result, metric: str) -> Optional[float]:
    if "failed" in result or result.get("errors"):
        return None
    if metric in ("p50_us", "p99_us"):
        samples = result.get("samples_us")
        return percentile(samples, 50 if metric == "p50_us" else 99) if samples else None
    value = result.get(metric)
    return value if isinstance(value, (int, float)) else None


def summarise_one(workload: Workload, runs: List[Result]) -> Dict[str, Any]:
    ok = _ok(runs)
    entry: Dict[str, Any] = {"runs": len(runs), "ok_runs": len(ok)}
    entry["foreign_cores_max"] = max((r.get("foreign_cores", 0.0) for r in runs), default=0.0)
    failures = [r["failed"] for r in runs if "failed" in r]
    if failures:
        entry["failed"] = failures[0]
    notes = sorted({n for r in runs for n in r.get("notes", [])})
    if notes:
        entry["notes"] = notes
    errors: Dict[str, int] = {}
    for r in runs:
        for error, n in r.get("errors", {}).items():
            errors[error] = errors.get(error, 0) + n
    if errors:
        entry["errors"] = errors
    entry["orjson_loaded"] = sorted({bool(r.get("orjson_loaded")) for r in runs})
    if not ok:
        return entry
    if "samples_us" in ok[0]:
        for key in ("p50_us", "p99_us"):
            entry[key] = _median([metric_of(r, key) for r in ok])
        entry["calls"] = sum(r["calls"] for r in ok)
        entry["cpu_us_per_call"] = _median([_per(r, "client_cpu_s", "calls") for r in ok])
        entry["server_us_per_call"] = _median([_per(r, "server_cpu_s", "calls") for r in ok])
    if "peak_rss_mib" in ok[0]:
        r = ok[0]
        for key in (
            "baseline_rss_mib",
            "peak_rss_mib",
            "growth_mib",
            "events",
            "deltas",
            "dropped",
            "wall_s",
        ):
            entry[key] = r.get(key)
        return entry
    for key in ("events_per_s", "turns_per_s"):
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        if values:
            entry[key] = statistics.median(values)
            entry[key + "_range"] = [min(values), max(values)]
    if "wire_events" in ok[0]:
        entry["cpu_us_per_event"] = _median([_per(r, "client_cpu_s", "wire_events") for r in ok])
        entry["cpu_us_per_turn"] = _median([_per(r, "client_cpu_s", "turns") for r in ok])
        entry["server_us_per_event"] = _median([_per(r, "server_cpu_s", "wire_events") for r in ok])
        entry["server_us_per_turn"] = _median([_per(r, "server_cpu_s", "turns") for r in ok])
        entry["client_cores"] = _median([r["client_cpu_s"] / r["wall_s"] for r in ok if r.get("wall_s")])
    per_turn = sorted({n for r in ok for n in (r.get("events_per_turn") or [])})
    if per_turn:
        entry["events_per_turn"] = per_turn
    dropped = sum(r.get("dropped") or 0 for r in ok)
    if dropped:
        entry["dropped"] = dropped
    return entry


def paired(mine: List[Result], theirs: List[Result], metric: str) -> List[float]:
    """mine / theirs, repetition by repetition (each pair ran back to back)."""
    by_rep = {r.get("rep"): r for r in theirs}
    out = []
    for a in mine:
        b = by_rep.get(a.get("rep"))
        x, y = metric_of(a, metric), metric_of(b, metric) if b is not None else None
        if x is not None and y:
            out.append(x / y)
    return out


def ratios_of(workload: Workload, by: Dict[str, List[Result]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    pairs = [(SYNC, SDK), (SYNC_ORJSON, SDK), (SYNC, JSON_FLOOR), (SYNC_ORJSON, ORJSON_FLOOR)]
    metrics = [(workload.metric, "")] + ([("p99_us", ":p99")] if workload.metric == "p50_us" else [])
    for metric, suffix in metrics:
        for mine, theirs in pairs:
            if mine in by and theirs in by:
                per_rep = paired(by[mine], by[theirs], metric)
                if per_rep:
                    out[f"{mine}/{theirs}{suffix}"] = {
                        "median": statistics.median(per_rep),
                        "per_rep": per_rep,
                    }
        # How many times better than the best contender the floor is, repetition by repetition.
        per_rep = []
        for floor_run in by.get(FLOOR, []):
            rep = floor_run.get("rep")
            f = metric_of(floor_run, metric)
            others = [metric_of(r, metric) for c in CLIENTS for r in by.get(c, []) if r.get("rep") == rep]
            best = [o for o in others if o]
            if f and best:
                per_rep.append(f / max(best) if workload.higher_is_better else min(best) / f)
        if per_rep:
            out["floor/best" + suffix] = {"median": statistics.median(per_rep), "per_rep": per_rep}
    return out


# --- the server check and the targets ---------------------------------------------------------


def server_check(
    workload: Workload, summary: Dict[str, Any], ratios: Dict[str, Any]
) -> Optional[Dict[str, Any]]:
    """Is the server out of the way? Floor vs the best contender, server CPU vs the fastest client's."""
    if FLOOR not in summary:
        return None
    unit = {"rtt": "call", "stream": "event"}.get(workload.kind, "turn")
    cpu_key, server_key = f"cpu_us_per_{unit}", f"server_us_per_{unit}"
    clients = [(c, summary[c]) for c in CLIENTS if c in summary and summary[c].get(cpu_key)]
    fastest = min(clients, key=lambda c: c[1][cpu_key]) if clients else None
    # The server's cost while it served that client (the same runs), and the worst under any.
    server_us = fastest[1].get(server_key) if fastest else None
    worst = [e[server_key] for _c, e in clients if e.get(server_key) is not None]
    share = server_us / fastest[1][cpu_key] if fastest and server_us is not None else None
    floor = ratios.get("floor/best", {}).get("median")
    # The real runtime is allowed to be the bottleneck: that row shows what users would see.
    required = workload.server == "replay" and (workload.concurrency or workload.kind == "stream")
    met = None
    if floor is not None and share is not None:
        met = share <= SERVER_SHARE and (floor >= FLOOR_FACTOR or not workload.concurrency)
    return {
        "workload": workload.name,
        "unit": unit,
        "floor": summary[FLOOR].get(workload.metric),
        "floor_over_best": floor,
        "floor_required": required and workload.concurrency,
        "server_us": server_us,
        "server_us_worst": max(worst) if worst else None,
        "fastest_client": fastest[0] if fastest else None,
        "fastest_client_us": fastest[1][cpu_key] if fastest else None,
        "server_share": share,
        "required": required,
        "met": met,
    }


def targets(ratios: Dict[str, Dict[str, Any]], summary: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for build, rows in TARGETS.items():
        for workload, what, key, goal, higher in rows:
            entry = ratios.get(workload, {}).get(key)
            value = entry["median"] if entry else None
            met = None if value is None else (value >= goal if higher else value <= goal)
            out.append(
                {
                    "build": build,
                    "workload": workload,
                    "target": what,
                    "goal": f"{'>=' if higher else '<='} {goal:g}x",
                    "value": value,
                    "per_rep": entry["per_rep"] if entry else [],
                    "met": met,
                }
            )
        contender = SYNC if build == "stdlib" else SYNC_ORJSON
        growth = summary.get("memory", {}).get(contender, {}).get("growth_mib")
        out.append(
            {
                "build": build,
                "workload": "memory",
                "target": "slow consumer: client RSS growth",
                "goal": f"<= {MEMORY_BOUND_MIB:g} MiB",
                "value": growth,
                "per_rep": [],
                "met": None if growth is None else growth <= MEMORY_BOUND_MIB,
            }
        )
    return out


# --- the report ---------------------------------------------------------------------------


def build_report(
    raw: Raw, cfg: Dict[str, Any], mode: str, only: Optional[List[str]], skipped: List[str]
) -> Report:
    summary: Dict[str, Dict[str, Any]] = {}
    ratios: Dict[str, Dict[str, Any]] = {}
    checks = []
    for workload in WORKLOADS:
        by = raw.get(workload.name)
        if not by:
            continue
        summary[workload.name] = {c: summarise_one(workload, runs) for c, runs in by.items()}
        ratios[workload.name] = ratios_of(workload, by)
        check = server_check(workload, summary[workload.name], ratios[workload.name])
        if check is not None:
            checks.append(check)
    return {
        "machine": machine(),
        "mode": mode,
        "only": only,
        "params": cfg,
        "skipped": skipped,
        "labels": LABELS,
        "workloads": {
            w.name: {
                "title": title_of(w, cfg),
                "short": short_of(w, cfg),
                "metric": w.metric,
                "higher_is_better": w.higher_is_better,
                "server": w.server,
                "probe": w.probe,
                "params": params_of(w, cfg),
            }
            for w in WORKLOADS
            if w.name in summary
        },
        "summary": summary,
        "ratios": ratios,
        "server_check": checks,
        "targets": targets(ratios, summary),
        "notes": notes_of(summary, cfg),
        "raw": strip_samples(raw),
    }


def notes_of(summary: Dict[str, Dict[str, Any]], cfg: Dict[str, Any]) -> List[str]:
    notes: List[str] = []
    if SDK in summary.get("creates", {}):
        notes.append(
            f"creates / {LABELS[SDK]}: one streaming create at a time (an asyncio.Lock), all the SDK allows;"
            " the creates_at_once probe shows what happens without the lock"
        )
    for workload, by in summary.items():
        for contender, entry in by.items():
            who = f"{workload} / {LABELS.get(contender, contender)}"
            if "failed" in entry:
                notes.append(f"{who}: FAILED: {entry['failed']}")
            for error, n in entry.get("errors", {}).items():
                notes.append(f"{who}: {n} x {error}")
            for note in entry.get("notes", []):
                notes.append(f"{who}: {note}")
            if entry.get("dropped"):
                notes.append(f"{who}: the client dropped {entry['dropped']:,} events (StreamTruncated)")
            if entry["foreign_cores_max"] > cfg["max_foreign_cores"]:
                notes.append(
                    f"! {who}: other processes kept {entry['foreign_cores_max']:.2f} CPUs busy during a "
                    "repetition even after retries: noisy"
                )
            loaded = entry.get("orjson_loaded", [])
            if contender == SYNC_ORJSON and loaded != [True]:
                notes.append(f"! {who}: meerkat_sync did not load orjson although it could")
            if contender == SYNC and True in loaded:
                notes.append(f"! {who}: orjson was loaded although it was blocked")
    return notes


def strip_samples(raw: Raw) -> Raw:
    """Keep results.json small: latency samples become a few percentiles."""
    out: Raw = {}
    for workload, by in raw.items():
        for contender, runs in by.items():
            kept = []
            for r in runs:
                r = dict(r)
                samples = r.pop("samples_us", None)
                if samples:
                    r["percentiles_us"] = {str(q): percentile(samples, q) for q in (0, 50, 90, 99, 100)}
                kept.append(r)
            out.setdefault(workload, {})[contender] = kept
    return out


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "source": source_state(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "meerkat_sync": version("meerkat-sync"),
        "meerkat_sdk": version("meerkat-sdk"),
        "orjson": version("orjson"),
    }


def source_state() -> Dict[str, Any]:
    """Which meerkat_sync was measured: the commit, and files changed since (if any)."""
    import meerkat_sync

    repo = Path(meerkat_sync.__file__).resolve().parent.parent

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "meerkat_sync")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line[3:] for line in changed.splitlines()] if changed else [],
    }


# --- rendering ----------------------------------------------------------------------------


def fmt(value: Optional[float], spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _cell(entry: Optional[Dict[str, Any]], key: str, spec: str) -> str:
    if entry is None:
        return ""
    if entry.get("errors"):
        return f"FAILED {sum(entry['errors'].values())}x"
    value = entry.get(key)
    if value is None and "failed" in entry:
        return "FAILED"
    return fmt(value, spec)


def _ratio(report: Report, workload: str, key: str) -> str:
    entry = report["ratios"].get(workload, {}).get(key)
    return fmt(entry["median"], ".2f") if entry else ""


Table = Tuple[str, List[str], List[List[str]]]


def tables(report: Report) -> List[Table]:
    """(title, header, rows) of every table, shared by the text and the Markdown output."""
    out = [_main_table(report), _floors_table(report), _cpu_table(report)]
    if "memory" in report["summary"]:
        out.append(_memory_table(report))
    out += [_server_table(report), _targets_table(report)]
    return [t for t in out if t[2]]


def _measured(report: Report) -> List[Tuple[str, Dict[str, Any]]]:
    return [(n, i) for n, i in report["workloads"].items() if not i["probe"] and i["metric"] != "growth_mib"]


def _main_table(report: Report) -> Table:
    rows: List[List[str]] = []
    for name, info in _measured(report):
        by = report["summary"][name]
        keys = [("p50_us", " p50", ""), ("p99_us", " p99", ":p99")] if info["metric"] == "p50_us" else []
        for key, suffix, ratio in keys or [(info["metric"], "", "")]:
            spec = ",.1f" if key == "turns_per_s" else ",.0f"
            rows.append(
                [
                    info["title"] + suffix,
                    *[_cell(by.get(c), key, spec) for c in CLIENTS],
                    _ratio(report, name, "sync/sdk" + ratio),
                    _ratio(report, name, "sync+orjson/sdk" + ratio),
                    _cell(by.get(FLOOR), key, spec),
                    _ratio(report, name, "floor/best" + ratio),
                ]
            )
    header = ["workload", "sync stdlib", "sync orjson", "SDK", "stdlib/SDK", "orjson/SDK", "wire floor"]
    title = "Throughput and latency (medians; ratios: medians of per-repetition ratios)"
    return title, [*header, "floor/best"], rows


def _floors_table(report: Report) -> Table:
    rows = []
    for name, info in _measured(report):
        by = report["summary"][name]
        for floor, mine in ((JSON_FLOOR, SYNC), (ORJSON_FLOOR, SYNC_ORJSON)):
            if floor in by and mine in by:
                rows.append(
                    [
                        f"{info['short']}: {LABELS[mine]}",
                        _cell(by[mine], "events_per_s", ",.0f"),
                        LABELS[floor],
                        _cell(by[floor], "events_per_s", ",.0f"),
                        _ratio(report, name, f"{mine}/{floor}"),
                    ]
                )
    title = "One stream against the json floors, events/s"
    return title, ["client", "events/s", "floor", "events/s", "ratio"], rows


def _cpu_table(report: Report) -> Table:
    rows = []
    for name, info in _measured(report):
        for contender, entry in report["summary"][name].items():
            rtt = info["metric"] == "p50_us"
            rows.append(
                [
                    info["short"],
                    LABELS[contender],
                    "" if rtt else fmt(entry.get("cpu_us_per_event"), ",.2f"),
                    fmt(entry.get("cpu_us_per_call" if rtt else "cpu_us_per_turn"), ",.0f"),
                    "" if rtt else fmt(entry.get("client_cores"), ".2f"),
                    "" if rtt else fmt(entry.get("server_us_per_event"), ",.2f"),
                    fmt(entry.get("server_us_per_call" if rtt else "server_us_per_turn"), ",.0f"),
                ]
            )
    header = ["workload", "contender", "client us/event", "client us/turn", "client cores"]
    title = "CPU time of the client process and of the server over the measured part (rtt: per call)"
    return title, [*header, "server us/event", "server us/turn"], rows


def _memory_table(report: Report) -> Table:
    rows = []
    for contender, entry in report["summary"]["memory"].items():
        rows.append(
            [
                LABELS[contender],
                fmt(entry.get("baseline_rss_mib"), ",.1f"),
                fmt(entry.get("peak_rss_mib"), ",.1f"),
                fmt(entry.get("growth_mib"), ",.1f"),
                fmt(entry.get("events"), ",.0f"),
                fmt(entry.get("dropped"), ",.0f"),
                fmt(entry.get("wall_s"), ",.1f"),
            ]
        )
    p = report["params"]
    title = f"Slow consumer: one stream of {p['mem_events']:,} events read at {p['mem_rate']:,} events/s"
    header = ["contender", "RSS before, MiB", "peak, MiB", "growth, MiB", "events received", "dropped", "s"]
    return title, header, rows


def _server_table(report: Report) -> Table:
    rows = []
    for c in report["server_check"]:
        floor_goal = f" (>= {FLOOR_FACTOR:g} required)" if c["floor_required"] else ""
        share_goal = f" (<= {SERVER_SHARE:g} required)" if c["required"] else ""
        rows.append(
            [
                report["workloads"][c["workload"]]["short"],
                fmt(c["floor_over_best"], ".1f") + "x" + floor_goal,
                f"{fmt(c['server_us'], ',.1f')} us/{c['unit']}",
                f"{fmt(c['fastest_client_us'], ',.1f')} ({LABELS.get(c['fastest_client'] or '', '-')})",
                fmt(c["server_share"], ".2f") + share_goal,
                {True: "yes", False: "NO", None: "-"}[c["met"]] if c["required"] else "(not required)",
            ]
        )
    title = "Server check: the wire floor vs the best contender, the server's CPU vs the fastest client's"
    header = ["workload", "floor/best", "server CPU", "fastest client CPU", "server share", "ok"]
    return title, header, rows


def _targets_table(report: Report) -> Table:
    rows = []
    for t in report["targets"]:
        value, memory = t["value"], "MiB" in t["goal"]
        shown = "-" if value is None else f"{value:.1f} MiB" if memory else f"{value:.2f}x"
        if len(t["per_rep"]) > 1:
            shown += f" ({min(t['per_rep']):.2f}-{max(t['per_rep']):.2f})"
        status = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        rows.append([t["build"], t["target"], t["goal"], shown, status])
    title = "Targets of issue 9 (same run; value: median of per-repetition ratios, and their range)"
    return title, ["build", "target", "goal", "value", "status"], rows


def _text_table(header: List[str], rows: List[List[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for index, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def headline(report: Report) -> List[str]:
    m, src = report["machine"], report["machine"]["source"]
    dirty = f" + uncommitted changes to {', '.join(src['uncommitted'])}" if src["uncommitted"] else ""
    return [
        f"meerkat_sync {m['meerkat_sync']} at {src['commit']}{dirty}; meerkat-sdk {m['meerkat_sdk']}; "
        f"orjson {m['orjson'] or 'not installed'}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, {m['platform']}",
        f"{report['mode']} run, {report['params']['repeats']} repetition(s)"
        + (f", only {','.join(report['only'])}" if report["only"] else "")
        + (f", {report['wall_s']:.0f} s" if "wall_s" in report else ""),
    ]


def render_text(report: Report) -> str:
    out = ["", *headline(report)]
    for title, header, rows in tables(report):
        out += ["", title, _text_table(header, rows)]
    notes = report["notes"] + report["skipped"]
    if notes:
        out += ["", "Notes:", *[f"  {n}" for n in notes]]
    return "\n".join(out)


# --- RESULTS.md ---------------------------------------------------------------------------

ANALYSIS_START = "<!-- analysis: kept as written when RESULTS.md is regenerated -->"
ANALYSIS_END = "<!-- end of analysis -->"
ANALYSIS_PLACEHOLDER = """## Analysis: why, and the next levers

(To be written by whoever works on the client's hot path: for each target that is not
met, the profile (`python benchmarks/bench.py --profile WORKLOAD`) and the next lever.
This section survives `--write-results` and full runs.)"""


def write_results_md(report: Report, path: Path) -> None:
    previous = path.read_text() if path.exists() else ""
    analysis = ANALYSIS_PLACEHOLDER
    if ANALYSIS_START in previous and ANALYSIS_END in previous:
        analysis = previous.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n")
    path.write_text(render_md(report, analysis))


def render_md(report: Report, analysis: str) -> str:
    ran_real = any(w["server"] == "real" for w in report["workloads"].values())
    real = (
        "the real rkat-rpc rows ran too"
        if ran_real
        else "no real rkat-rpc rows (MEERKAT_BIN_PATH was not set)"
    )
    out = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/bench.py` from `benchmarks/results.json` (regenerate with",
        "`python benchmarks/bench.py --write-results`); what every row and column means:",
        "[README.md](README.md). Only the analysis section below is written by hand.",
        "",
        *[f"* {line}" for line in headline(report)],
        f"* server: the replay server (`benchmarks/_replay.py`), a fresh process per measurement; {real}",
        f"* noise: {_noise(report)}",
    ]
    titles = {t[0]: t for t in tables(report)}
    order = [t for t in titles if t.startswith("Targets")] + [
        t for t in titles if not t.startswith("Targets")
    ]
    for title in order:
        _title, header, rows = titles[title]
        out += ["", f"## {title}", "", _md_table(header, rows)]
    notes = report["notes"] + report["skipped"]
    if notes:
        out += ["", "## Notes", "", *[f"* {n}" for n in notes]]
    probes = [w for w, info in report["workloads"].items() if info["probe"]]
    if probes:
        out += ["", "## Compatibility probes (run once)", ""]
        for name in probes:
            for contender, entry in report["summary"][name].items():
                outcome = entry.get("failed") or (
                    ", ".join(f"{n} x {e}" for n, e in ((v, k) for k, v in entry.get("errors", {}).items()))
                    or "completed"
                )
                out.append(f"* {report['workloads'][name]['title']} / {LABELS[contender]}: {outcome}")
    out += ["", ANALYSIS_START, analysis, ANALYSIS_END, ""]
    return "\n".join(out)


def _noise(report: Report) -> str:
    worst = max(
        (e["foreign_cores_max"] for by in report["summary"].values() for e in by.values()),
        default=0.0,
    )
    return (
        f"other processes used at most {worst:.2f} CPUs during any kept measurement "
        f"(`foreign_cores` in results.json; retried above {report['params']['max_foreign_cores']:g})"
    )
