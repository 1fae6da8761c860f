"""A minimal rkat-rpc stand-in that writes raw lines the test chooses, then answers.

It speaks just enough of the wire for a client to connect. For ``session/list`` whose
``labels`` hold ``{"junk": <JSON list of base64 lines>}``, it writes those bytes to stdout
verbatim (``{id}`` becomes the request id) before the real response, so tests can put
anything at all on the wire, through the public API, over a real pipe.
"""

from __future__ import annotations

import base64
import json
import sys


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
        elif method == "capabilities/get":
            result = {"contract_version": {"major": 0, "minor": 5, "patch": 0}, "capabilities": []}
        else:
            labels = (message.get("params") or {}).get("labels") or {}
            for line in json.loads(labels.get("junk", "[]")):
                data = base64.b64decode(line).replace(b"{id}", str(request_id).encode())
                out.write(data + b"\n")
            result = {"sessions": []}
        out.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
