"""``bench.py --profile WORKLOAD``: where meerkat_sync spends a workload, by thread.

It runs one meerkat_sync measurement (the same child as a real run, against the replay
server) under ``py-spy record --gil`` (samples of whichever thread holds the GIL, so
waiting is not counted) and ranks functions per thread role, self and inclusive. Imports,
connecting and session set-up are left out. Profiled runs are slower than real ones; the
shares are what matters.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Optional

from _contenders import SYNC, SYNC_ORJSON
from _runner import RESULT_MARK, child_command
from _servers import replay_spec, write_launcher
from _workloads import BY_NAME, FULL, QUICK, params_of

#: Stacks outside the measured part of a workload.
_SETUP_FRAMES = (
    "_find_and_load",
    "_sync_client (",
    "_sync_sessions (",
    "create_session (",
    "MeerkatClient.close",
    "MeerkatClient.connect",
    "Thread.start",
    "Thread.__init__",
)


def pyspy_path() -> Optional[str]:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_main(args: argparse.Namespace) -> int:
    names = [w.name for w in BY_NAME.values() if w.server == "replay" and not w.probe]
    workload = BY_NAME.get(args.profile)
    if workload is None or workload.name not in names:
        print(f"--profile takes one of: {', '.join(names)}", file=sys.stderr)
        return 2
    spy = pyspy_path()
    if spy is None:
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    contender = SYNC_ORJSON if args.orjson else SYNC
    with tempfile.TemporaryDirectory(prefix="meerkat-bench-") as tmp:
        spec = {
            "workload": workload.name,
            "kind": workload.kind,
            "contender": contender,
            "orjson": args.orjson,
            "server": replay_spec(write_launcher(tmp)),
            "params": params_of(workload, QUICK if args.quick else FULL),
        }
        raw = Path(tmp) / "profile.txt"
        cmd = [spy, "record", "--rate", str(args.rate), "--gil", "--threads", "--format", "raw"]
        cmd += ["--output", str(raw), "--", *child_command(spec)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if not raw.exists() or not lines:
            print(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-800:]}", file=sys.stderr)
            return 1
        result = json.loads(lines[-1][len(RESULT_MARK) :])
        figure = {k: v for k, v in result.items() if k.endswith("_per_s") or k in ("failed", "orjson_loaded")}
        print(f"{workload.name} ({contender}) under py-spy, slower than unprofiled: {figure}")
        print(rank_stacks(raw.read_text(), args.top))
    return 0


def _role(thread: str, joined: str) -> str:
    if "worker (" in joined or "_count (" in joined:
        return "caller threads (the workload's)"
    if "sync_" in joined and "_contenders" in joined:
        return "caller (main thread)"
    return f"thread {thread!r}"


def rank_stacks(collapsed: str, top: int) -> str:
    """Self and inclusive shares per thread role, from py-spy's raw (collapsed) stacks."""
    here = str(Path(__file__).resolve().parent) + "/"

    def clean(frame: str) -> str:
        return re.sub(r":\d+\)", ")", frame).replace(here, "")

    roles: Counter[str] = Counter()
    own: Dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: Dict[str, Counter[str]] = defaultdict(Counter)
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or any(s in f for f in frames for s in _SETUP_FRAMES):
            continue
        # "thread (4619): meerkat-reader-4616" -> "meerkat-reader"
        thread = re.sub(r"-\d+$", "", frames[0].rsplit(": ", 1)[-1].strip().strip('"'))
        frames = frames[1:]
        joined = ";".join(frames)
        if "meerkat_sync" not in joined and "_contenders" not in joined:
            continue
        role = _role(thread, joined)
        n = int(count)
        roles[role] += n
        names = [clean(f) for f in frames]
        own[role][names[-1]] += n
        for name in set(names):
            inclusive[role][name] += n
    total = sum(roles.values()) or 1
    out = [f"{total} samples of a thread holding the GIL, inside the measured part of the workload"]
    for role, n in roles.most_common():
        out.append(f"\n== {role}: {n / total:.1%} of the samples")
        out.append("  self time (the function itself):")
        out += [f"    {c / total:6.1%}  {name}" for name, c in own[role].most_common(top)]
        out.append("  inclusive (meerkat_sync and json functions with their callees):")
        ranked = [
            (name, c)
            for name, c in inclusive[role].most_common()
            if ("meerkat_sync" in name or "json" in name) and c / total >= 0.005
        ]
        out += [f"    {c / total:6.1%}  {name}" for name, c in ranked[:top]]
    return "\n".join(out)
