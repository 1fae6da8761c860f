"""Eight processes resolving rkat-rpc at once: exactly one download, one file for all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

from _binary_support import (
    REPO_ROOT,
    Certs,
    ReleaseServer,
    file_member,
    host_target,
    make_tar,
    sha256,
    stand_in_script,
)

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from meerkat_sync._binary import resolve_rkat_rpc
    go, ready = sys.argv[1], sys.argv[2]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.005)
    found = resolve_rkat_rpc()
    with open(found.path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    print(json.dumps({"path": found.path, "source": found.source, "sha256": digest}))
    """
)


def test_eight_processes_share_one_download(
    tmp_path: Path, certs: Certs, server: ReleaseServer
) -> None:
    target = host_target()
    asset = f"rkat-rpc-0.5.0-{target.triple}.{target.ext}"
    binary = stand_in_script()
    server.publish(make_tar([file_member(target.binary_name, binary)]), asset=asset, delay=0.5)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    cache = tmp_path / "cache"
    env = {
        "PATH": str(empty),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
        "MEERKAT_CACHE_DIR": str(cache),
        "MEERKAT_DOWNLOAD_BASE_URL": server.base_url,
        "MEERKAT_LOCK_TIMEOUT": "30",
        "REQUESTS_CA_BUNDLE": certs.ca,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if "SYSTEMROOT" in os.environ:  # pragma: no cover - Windows needs it to start Python
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    go = tmp_path / "go"
    workers: List[subprocess.Popen[str]] = []
    try:
        for index in range(8):
            workers.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(go), str(tmp_path / f"ready-{index}")],
                env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            ))
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready-{i}").exists() for i in range(8)):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(w.poll() is None for w in workers), "a worker died while starting"
            time.sleep(0.01)
        go.touch()
        outputs = [w.communicate(timeout=60) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    for worker, (_out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    assert server.archive_hits(asset) == 1
    assert len({r["path"] for r in results}) == 1
    assert {r["sha256"] for r in results} == {sha256(binary)}
    assert sorted(r["source"] for r in results) == ["cache"] * 7 + ["download"]
    assert Path(results[0]["path"]).is_relative_to(cache)
