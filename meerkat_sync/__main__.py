"""``meerkat-sync "prompt"`` (or ``python -m meerkat_sync``): stream one turn to the terminal.

It never pretends. A runtime the user asked for (``MEERKAT_BIN_PATH``, ``--rkat-path``,
``--download``) that cannot be found or started is an error with a non-zero exit. Only
when nothing was asked for and no rkat-rpc is installed does it fall back to the bundled
scripted runtime, saying so in one line on stderr. ``--which`` reports that same choice.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from typing import List, Optional, Tuple

import attrs

from ._binary import DEFAULT_RKAT_PATH, locate_rkat_rpc, resolve_rkat_rpc
from ._client import MeerkatClient, contract_compatible
from ._digests import RKAT_RPC_VERSION
from .errors import MeerkatError
from .events import RunFailed, TextDelta, ToolCallRequested
from .testing import scripted_client

# No rkat-rpc installed: the two codes after which the scripted runtime may stand in.
_NOTHING_INSTALLED = ("BINARY_NOT_FOUND", "UNSUPPORTED_PLATFORM")
_VERSION_PROBE_SECONDS = 10.0


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m meerkat_sync" if name in ("", "__main__.py", "-c", "-m") else name


def _timeout(text: str) -> Optional[float]:
    """``--timeout``: seconds, or ``none`` to wait without limit."""
    if text.strip().lower() in ("none", "inf", "infinite"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0; use e.g. --timeout 30, or --timeout none "
            "to wait without limit"
        )
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Stream one Meerkat agent turn to the terminal.",
        epilog="Without MEERKAT_BIN_PATH, --rkat-path or --download, an rkat-rpc on PATH or in the "
        "download cache is used, else the bundled scripted runtime (it replies without a model).",
    )
    parser.add_argument("prompt", nargs="?", help="what to ask the agent")
    parser.add_argument("--model", help="model id, e.g. claude-sonnet-4-5 (default: the realm's)")
    parser.add_argument("--realm", help="join or create this realm instead of an isolated one")
    parser.add_argument("--rkat-path", metavar="PATH", help="run this rkat-rpc executable")
    parser.add_argument(
        "--scripted", action="store_true", help="use the bundled scripted runtime even if rkat-rpc exists"
    )
    parser.add_argument(
        "--download", action="store_true", help="download rkat-rpc if it is not installed (verified)"
    )
    parser.add_argument(
        "--which", action="store_true",
        help="print which runtime this command would use, and why; exit 1 if it cannot run",
    )
    parser.add_argument(
        "--timeout", type=_timeout, default=None, metavar="SECONDS",
        help="seconds to wait for the turn, or 'none' (the default) to wait without limit",
    )
    return parser


@attrs.frozen
class _Choice:
    """The runtime the CLI will use: an rkat-rpc path, else the scripted runtime (or a download)."""

    path: Optional[str]
    report: str
    notice: Optional[str] = None


def _asked_for(args: argparse.Namespace) -> bool:
    return "MEERKAT_BIN_PATH" in os.environ or args.rkat_path is not None or args.download


def _choose(args: argparse.Namespace, prog: str, *, dry_run: bool) -> _Choice:
    """What this command runs; raises when a runtime the user asked for is not there.

    ``dry_run`` (``--which``) never downloads or deletes anything.
    """
    if args.scripted:
        return _Choice(None, "the bundled scripted runtime\n  source: --scripted")
    rkat_path = args.rkat_path or DEFAULT_RKAT_PATH
    try:
        found = locate_rkat_rpc(rkat_path) if dry_run else resolve_rkat_rpc(rkat_path, download=args.download)
    except MeerkatError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        plan = details.get("would_download")
        if dry_run and args.download and isinstance(plan, dict):
            return _Choice(None, "\n".join([
                f"rkat-rpc would be downloaded (--download) from {plan['url']}",
                f"  into: {plan['into']}",
                f"  verified against: {plan['digest']}",
            ]))
        if _asked_for(args) or exc.code not in _NOTHING_INSTALLED:
            raise
        tried = details.get("tried")
        lines = [
            "the bundled scripted runtime (it replies without calling a model)",
            "  source: fallback, because no rkat-rpc was asked for and none is installed",
            "  for a real one: set MEERKAT_BIN_PATH, or pass --rkat-path PATH or --download",
        ]
        if isinstance(tried, list):
            lines += ["  tried:", *(f"    - {line}" for line in tried)]
        notice = (f"note: no rkat-rpc found (`{prog} --which` says where it looked); using the "
                  "bundled scripted runtime, which replies without calling a model")
        return _Choice(None, "\n".join(lines), notice)
    return _Choice(found.path, "\n".join([found.path, f"  source: {found.source}", f"  why: {found.detail}"]))


def _probe(path: str) -> Tuple[Optional[str], Optional[str]]:
    """Ask ``path`` for its version: (the version, None) if it can serve this client, else (.., why not)."""
    try:
        done = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=_VERSION_PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return None, f"`{path} --version` did not answer within {_VERSION_PROBE_SECONDS:g} s"
    except OSError as exc:
        return None, f"it cannot be started: {exc}"
    said = (done.stdout.strip() or done.stderr.strip()).partition("\n")[0][:200]
    words = said.split()
    if done.returncode != 0 or len(words) != 2 or words[0] != "rkat-rpc":
        return None, (f"`{path} --version` exited {done.returncode} saying {said!r}, "
                      f"where rkat-rpc says 'rkat-rpc {RKAT_RPC_VERSION}'")
    if not contract_compatible(words[1]):
        return said, (f"it is rkat-rpc {words[1]}, but this meerkat-sync speaks {RKAT_RPC_VERSION}; "
                      f"install rkat-rpc {RKAT_RPC_VERSION}")
    return said, None


def _which(args: argparse.Namespace, prog: str) -> int:
    """Report the CLI's own choice; exit 1 when that choice cannot run."""
    try:
        choice = _choose(args, prog, dry_run=True)
    except MeerkatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(choice.report)
    if choice.path is None:
        return 0
    version, problem = _probe(choice.path)
    if version is not None:
        print(f"  version: {version}")
    if problem is not None:
        print(f"error: {choice.path} cannot run: {problem}", file=sys.stderr)
        return 1
    return 0


def _stream(client: MeerkatClient, args: argparse.Namespace) -> None:
    options = {"model": args.model} if args.model else {}
    stream = client.create_session_streaming(args.prompt, timeout=args.timeout, **options)
    with stream:
        for event in stream:
            if isinstance(event, TextDelta):
                sys.stdout.write(event.delta)
                sys.stdout.flush()
            elif isinstance(event, ToolCallRequested):
                print(f"\n[tool] {event.name}({event.args})", file=sys.stderr)
            elif isinstance(event, RunFailed):
                print(f"\n[run failed] {event.error}", file=sys.stderr)
    result = stream.result
    print()
    usage = result.usage
    print(
        f"[session {result.session_id} · {usage.input_tokens} in / {usage.output_tokens} out tokens]",
        file=sys.stderr,
    )


def main(argv: Optional[List[str]] = None) -> int:
    prog = _prog()
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.which:
        return _which(args, prog)
    if not args.prompt:
        parser.print_usage(sys.stderr)
        print(f'error: give a prompt, e.g. {prog} "What is a meerkat?"', file=sys.stderr)
        return 2
    try:
        choice = _choose(args, prog, dry_run=False)
    except MeerkatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if choice.notice is not None:
        print(choice.notice, file=sys.stderr)
    client = scripted_client() if choice.path is None else MeerkatClient(choice.path)
    try:
        with client.connect(realm_id=args.realm):
            _stream(client, args)
    except MeerkatError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
