"""A minimal rkat-rpc stand-in that writes raw lines the test chooses, then answers.

It speaks just enough of the wire for a client to connect. For ``session/list`` whose
``labels`` hold ``{"junk": <JSON list of base64 lines>}``, it writes those bytes to stdout
verbatim (``{id}`` becomes the request id) before the real response, so tests can put
anything at all on the wire, through the public API, over a real pipe. ``{"noise": N}``
first writes a non-JSON line of N bytes, in pieces; ``{"pad": N}`` pads the response
itself to about N bytes; ``{"lose": ...}`` answers as rkat-rpc 0.5.0 does a request line it
read cut in two: with a parse error that has no id, and no response. A ``turn/start``
answers ``"ok"``, unless its prompt starts with ``hold`` (never answered) or ``lose``.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import BinaryIO

LOST_LINE = (
    b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error: expected value at line 1 '
    b'column 1"},"id":null}\n'
)


def main() -> None:
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        message = json.loads(raw)
        request_id, method = message.get("id"), message.get("method")
        if request_id is None:
            continue
        if method == "initialize":
            result: object = {"server_info": {"name": "meerkat-rpc", "version": "0.5.0"},
                              "contract_version": "0.5.0", "methods": ["session/list"]}
        elif method == "turn/start":
            # A prompt starting "hold" is never answered; "lose" as for labels below.
            params = message.get("params") or {}
            prompt = str(params.get("prompt", ""))
            if prompt.startswith(("hold", "lose")):
                if prompt.startswith("lose"):
                    out.write(LOST_LINE)
                    out.flush()
                continue
            result = {"session_id": params.get("session_id"), "text": "ok"}
        elif method == "capabilities/get":
            result = {"contract_version": {"major": 0, "minor": 5, "patch": 0}, "capabilities": []}
        else:
            labels = (message.get("params") or {}).get("labels") or {}
            for line in json.loads(labels.get("junk", "[]")):
                data = base64.b64decode(line).replace(b"{id}", str(request_id).encode())
                out.write(data + b"\n")
            write_noise(out, int(labels.get("noise", "0")))
            if "lose" in labels:
                out.write(LOST_LINE)
                out.flush()
                continue
            result = {"sessions": []}
            if "pad" in labels:
                result["pad"] = "x" * int(labels["pad"])
        out.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n")
        out.flush()


def write_noise(out: BinaryIO, size: int) -> None:
    """A non-JSON line of ``size`` bytes, written a megabyte at a time."""
    if size <= 0:
        return
    piece = b"n" * (1 << 20)
    while size > 0:
        out.write(piece[:size])
        size -= len(piece)
    out.write(b"\n")


if __name__ == "__main__":
    main()
