"""Runs a server command and records every line between it and its client.

    python _wire_tap.py TRANSCRIPT -- rkat-rpc --realm x

stdin lines go to the server and are logged as ``">"``; stdout lines come back and are
logged as ``"<"``; stderr passes through untouched. The transcript is JSON lines
``{"dir": ">"|"<", "line": <the line as text>}``. Used to record what the real rkat-rpc
sends, so CI can replay it after the binary is gone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from typing import IO, Any


def main() -> int:
    split = sys.argv.index("--")
    path, argv = sys.argv[1], sys.argv[split + 1 :]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    lock = threading.Lock()
    log = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed when both pumps end)

    def record(direction: str, raw: bytes) -> None:
        with lock:
            log.write(
                json.dumps({"dir": direction, "line": raw.decode("utf-8", "replace").rstrip("\n")}) + "\n"
            )
            log.flush()

    def pump(src: IO[bytes], dst: IO[bytes], direction: str) -> None:
        for raw in iter(src.readline, b""):
            record(direction, raw)
            try:
                dst.write(raw)
                dst.flush()
            except (BrokenPipeError, ValueError):
                break
        if direction == ">":
            dst.close()  # the client closed stdin: the server's EOF shutdown begins

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    inbound = threading.Thread(target=pump, args=(sys.stdin.buffer, child.stdin, ">"), daemon=True)
    inbound.start()
    pump(child.stdout, sys.stdout.buffer, "<")
    status = child.wait()
    log.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
