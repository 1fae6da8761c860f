"""Replays a recorded rkat-rpc transcript to a live client, over a real pipe.

    python _transcript_peer.py TRANSCRIPT

Each line the client writes must be the next client line of the transcript (same method,
same params once ids are mapped); the peer then writes the server lines that followed it
in the recording, with response ids mapped to the live request ids. A client that says
something else gets nothing more: the peer explains the divergence on stderr and exits 3,
so the test fails with the reason in its CONNECTION_CLOSED error.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Tuple


def load(path: str) -> List[Tuple[str, str]]:
    entries: List[Tuple[str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            item = json.loads(raw)
            if "dir" in item:
                entries.append((item["dir"], item["line"]))
    return entries


def _shape(message: Any, ids: Dict[Any, Any]) -> Any:
    """A client message with its id left out and ``cancel``'s request id mapped."""
    if not isinstance(message, dict):
        return message
    out = {k: v for k, v in message.items() if k != "id"}
    params = out.get("params")
    if isinstance(params, dict) and "request_id" in params:
        out["params"] = dict(params, request_id=ids.get(params["request_id"], params["request_id"]))
    return out


def diverged(expected: str, got: str) -> None:
    sys.stderr.write(f"replay diverged:\n  recorded: {expected[:500]}\n  live:     {got[:500]}\n")
    sys.stderr.flush()
    sys.exit(3)


def main() -> int:
    entries = load(sys.argv[1])
    out = sys.stdout.buffer
    ids: Dict[Any, Any] = {}  # recorded request id -> live request id
    position = 0

    def emit_server_lines() -> None:
        nonlocal position
        while position < len(entries) and entries[position][0] == "<":
            line = entries[position][1]
            position += 1
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and "method" not in message and message.get("id") in ids:
                message["id"] = ids[message["id"]]
                line = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
            out.write(line.encode("utf-8") + b"\n")
        out.flush()

    emit_server_lines()
    for raw in sys.stdin.buffer:
        got = raw.decode("utf-8").rstrip("\n")
        if position >= len(entries):
            diverged("<end of recording>", got)
        expected = entries[position][1]
        position += 1
        live, recorded = json.loads(got), json.loads(expected)
        if isinstance(recorded, dict) and "id" in recorded and "method" in recorded:
            ids[recorded["id"]] = live.get("id") if isinstance(live, dict) else None
        if _shape(live, {}) != _shape(recorded, ids):
            diverged(expected, got)
        emit_server_lines()
    return 0


if __name__ == "__main__":
    sys.exit(main())
