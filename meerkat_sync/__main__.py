"""``python -m meerkat_sync "prompt"``: stream one turn to the terminal.

Uses a real rkat-rpc when one is found (MEERKAT_BIN_PATH, PATH or the download cache)
and otherwise the bundled scripted runtime, saying so in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ._binary import describe_resolution, resolve_rkat_rpc
from ._client import MeerkatClient
from .errors import MeerkatError
from .events import RunFailed, TextDelta, ToolCallRequested
from .testing import scripted_client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meerkat_sync",
        description="Stream one Meerkat agent turn to the terminal.",
    )
    parser.add_argument("prompt", nargs="?", help="what to ask the agent")
    parser.add_argument("--model", help="model id, e.g. claude-sonnet-4-5 (default: the realm's)")
    parser.add_argument("--realm", help="join or create this realm instead of an isolated one")
    parser.add_argument(
        "--scripted", action="store_true", help="use the bundled scripted runtime even if rkat-rpc exists"
    )
    parser.add_argument(
        "--download", action="store_true", help="download rkat-rpc if it is not installed (verified)"
    )
    parser.add_argument("--which", action="store_true", help="print which rkat-rpc would run, and why")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the turn")
    return parser


def _client(args: argparse.Namespace) -> MeerkatClient:
    if not args.scripted:
        try:
            resolve_rkat_rpc(download=args.download)
            return MeerkatClient()
        except MeerkatError:
            print(
                "note: rkat-rpc not found (`python -m meerkat_sync --which` says where it looked); "
                "using the bundled scripted runtime, which replies without calling a model",
                file=sys.stderr,
            )
    return scripted_client()


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.which:
        print(describe_resolution())
        return 0
    if not args.prompt:
        _parser().print_usage(sys.stderr)
        print("error: give a prompt, e.g. python -m meerkat_sync \"What is a meerkat?\"", file=sys.stderr)
        return 2
    try:
        with _client(args).connect(realm_id=args.realm) as client:
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
    except MeerkatError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
