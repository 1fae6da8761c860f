"""The servers a measurement runs against: the replay server, and optionally the real rkat-rpc.

The parent describes a server with a small JSON-able spec (``replay_spec`` /
``real_spec``); the child that runs one measurement turns it into a :class:`Server` with
:func:`start`, which gives every contender the same executable, flags, environment and
prompts. ``python benchmarks/_servers.py model-endpoint`` is the helper process that hosts
the scripted model endpoint for the real row, so its CPU is never the client's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from _replay import PRESIZE_ENV, TOKENS

HERE = Path(__file__).resolve().parent
REPLAY = HERE / "_replay.py"
TRANSCRIPT = HERE.parent / "tests" / "transcripts" / "plain_stream.jsonl"
REAL_REALM = "meerkat-bench"

Spec = Dict[str, Any]


def write_launcher(directory: str) -> str:
    """One executable file that starts the replay server (the SDK wants a single path)."""
    path = Path(directory) / "rkat-rpc"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPLAY}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def replay_spec(launcher: str) -> Spec:
    return {"kind": "replay", "binary": launcher}


def real_binary() -> Optional[str]:
    """The real rkat-rpc named by ``MEERKAT_BIN_PATH``, if that names a file."""
    path = os.environ.get("MEERKAT_BIN_PATH", "").strip()
    return path if path and os.path.isfile(path) else None


def real_spec(binary: str) -> Spec:
    return {"kind": "real", "binary": binary}


class Server:
    """What the contenders of one measurement share: how to start the server, what to ask."""

    def __init__(self, spec: Spec) -> None:
        self.kind: str = spec["kind"]
        self.binary: str = spec["binary"]
        self.connect: Dict[str, str] = {}  # connect() keyword arguments (both clients)
        self.flags: List[str] = []  # the same as command-line flags (the floors)
        self.env: Optional[Dict[str, str]] = None  # the server's environment (None: inherit)
        self.helper_pids: List[int] = []  # processes besides the server that serve the run

    @property
    def argv(self) -> List[str]:
        return [self.binary, *self.flags]

    def prompt(self, deltas: int, delta: Optional[str] = None, tag: Optional[str] = None) -> str:
        """A prompt whose reply streams ``deltas`` text deltas (each ``delta``, if given)."""
        if self.kind == "replay":
            spec: Dict[str, Any] = {"deltas": deltas}
            if delta is not None:
                spec["delta"] = delta
            return "replay:" + json.dumps(spec) + (f" #{tag}" if tag else "")
        if delta is not None:
            reply: Dict[str, Any] = {"bulk": {"count": deltas, "delta": delta}}
        else:
            reply = {"chunks": [TOKENS[i % len(TOKENS)] for i in range(deltas)]}
        return "fake:" + json.dumps(reply)  # the real row runs no workload that needs a tag


@contextlib.contextmanager
def start(spec: Spec, longest_run: int = 0) -> Iterator[Server]:
    """The server of one measurement; for the real row, its model endpoint and realm too.

    ``longest_run`` (events) lets the replay server encode that many seqs before it serves.
    """
    server = Server(spec)
    if server.kind == "replay":
        os.environ["MEERKAT_BIN_PATH"] = server.binary  # the SDK prefers it over rkat_path
        os.environ[PRESIZE_ENV] = str(longest_run)  # both clients pass their environment on
        yield server
        return
    root = tempfile.mkdtemp(prefix="meerkat-bench-real-")
    helper = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "model-endpoint"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert helper.stdout is not None
        url = helper.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the model endpoint helper did not start (said {url!r})")
        dirs = {name: os.path.join(root, name) for name in ("state", "context", "user-config")}
        realm = os.path.join(dirs["state"], REAL_REALM)
        os.makedirs(realm)
        with open(os.path.join(realm, "config.toml"), "w", encoding="utf-8") as out:
            out.write(f'\n[providers.base_urls]\n"anthropic" = "{url}"\n')
        server.connect = {
            "realm_id": REAL_REALM,
            "state_root": dirs["state"],
            "context_root": dirs["context"],
            "user_config_root": dirs["user-config"],
        }
        server.flags = ["--realm", REAL_REALM, "--state-root", dirs["state"]]
        server.flags += ["--context-root", dirs["context"], "--user-config-root", dirs["user-config"]]
        # This process is one measurement's: its environment is the server's (the SDK passes
        # its own on), without what would change the runtime's behaviour behind our back.
        for name in ("RUST_LOG", "RKAT_TEST_CLIENT", "RKAT_ANTHROPIC_API_KEY"):
            os.environ.pop(name, None)
        os.environ["ANTHROPIC_API_KEY"] = "meerkat-bench-dummy-key"
        os.environ["MEERKAT_BIN_PATH"] = server.binary
        server.env = dict(os.environ)
        server.helper_pids = [helper.pid]
        yield server
    finally:
        if helper.stdin is not None:
            with contextlib.suppress(OSError):
                helper.stdin.close()
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
        shutil.rmtree(root, ignore_errors=True)


def check_replay() -> List[str]:
    """Differences between the replay server's lines and the recorded real ones (none: [])."""

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return [(k, shape(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [shape(v) for v in value[:1]]
        return type(value).__name__

    def kind(message: Dict[str, Any]) -> str:
        if message.get("method") == "session/event":
            return str(message["params"]["event"]["payload"]["type"])
        result = message.get("result")
        return (
            "RunResult" if isinstance(result, dict) and "text" in result else f"response {message.get('id')}"
        )

    recorded: Dict[str, Any] = {}
    with TRANSCRIPT.open(encoding="utf-8") as lines:
        next(lines)
        for raw in lines:
            entry = json.loads(raw)
            if entry["dir"] == "<":
                message = json.loads(entry["line"])
                recorded.setdefault(kind(message), (entry["line"], message))
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "capabilities/get", "params": {}},
        {"jsonrpc": "2.0", "id": 3, "method": "session/create", "params": {"prompt": 'replay:{"deltas": 3}'}},
    ]
    data = "".join(json.dumps(r) + "\n" for r in requests).encode()
    done = subprocess.run(
        [sys.executable, str(REPLAY)], input=data, capture_output=True, timeout=30, check=False
    )
    problems: List[str] = []
    seen = set()
    expected_seq = 1
    for line in done.stdout.decode().splitlines():
        message = json.loads(line)
        name = kind(message)
        seen.add(name)
        if json.dumps(message, separators=(",", ":"), ensure_ascii=False) != line:
            problems.append(f"{name}: not in compact form")
        if name not in recorded:
            problems.append(f"{name}: no such line in {TRANSCRIPT.name}")
            continue
        real_line, real = recorded[name]
        if name.startswith("response"):
            if line != real_line:
                problems.append(f"{name}: differs from the recorded line")
        elif shape(message) != shape(real):
            problems.append(f"{name}: keys or types differ from the recorded line")
        if message.get("method") == "session/event":
            if message["params"]["event"]["seq"] != expected_seq:
                problems.append(f"{name}: seq {message['params']['event']['seq']}, expected {expected_seq}")
            expected_seq += 1
    missing = set(recorded) - seen
    problems += [f"{name}: never written" for name in sorted(missing) if not name.startswith("response")]
    if done.returncode != 0:
        problems.append(f"the replay server exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return problems


def _serve_model_endpoint() -> int:
    """Host a ModelEndpoint until stdin closes; print its URL first."""
    from meerkat_sync.testing import ModelEndpoint

    with ModelEndpoint() as endpoint:
        print(endpoint.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["model-endpoint"]:
        sys.exit(_serve_model_endpoint())
    problems = check_replay()
    print("\n".join(problems) if problems else "the replay server writes the recorded shapes")
    sys.exit(1 if problems else 0)
