"""A scripted, contract-faithful stand-in for the ``rkat-rpc`` 0.5.0 binary.

It speaks the JSON-RPC 2.0 stdio protocol and behaves as the real binary was observed to
(docs/scripted-runtime.rst), with a deterministic "model" (echo by default, scriptable per
run), so the client can be tested without a real runtime.
Run it as ``python -m meerkat_sync.testing.fake_rkat [flags]`` or ``fake-rkat-rpc``.
Standard library only, so start-up stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
from typing import Any, Dict, Optional, Sequence

from meerkat_sync.testing._fake_command import fake_rkat_command
from meerkat_sync.testing._fake_constants import CONTRACT_VERSION, SERVER_VERSION
from meerkat_sync.testing._fake_script import Script, SpecError, load_script
from meerkat_sync.testing._fake_server import ABSENT, Server, ServerConfig
from meerkat_sync.testing._fake_wire import uuid7

__all__ = ["fake_rkat_command", "main"]

SCRIPT_ENV = "MEERKAT_FAKE_SCRIPT"
_REALM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_STATUS_KINDS = {
    "DisabledByPolicy": "description",
    "NotCompiled": "feature",
    "NotSupportedByProtocol": "reason",
}


class StartupError(Exception):
    """A start-up failure: ``Error: ...`` on stderr and exit status 1, like the real binary."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkat-rpc",
        description="Meerkat JSON-RPC stdio server (scripted fake for tests).",
        epilog="Options marked [fake] are not part of rkat-rpc.",
    )
    parser.add_argument("--version", action="version", version=f"rkat-rpc {SERVER_VERSION}")
    parser.add_argument("--realm", metavar="ID", help="join or create the named realm")
    parser.add_argument("--isolated", action="store_true", help="use a fresh realm-<uuid>")
    parser.add_argument("--instance", metavar="ID", help="instance label")
    parser.add_argument("--realm-backend", choices=("jsonl", "sqlite", "redb"))
    parser.add_argument("--state-root", metavar="PATH")
    parser.add_argument("--context-root", metavar="PATH")
    parser.add_argument("--user-config-root", metavar="PATH")
    fake = parser.add_argument_group("fake-only options")
    fake.add_argument("--script", metavar="PATH", help=f"[fake] reply script (JSON); default ${SCRIPT_ENV}")
    fake.add_argument(
        "--contract-version",
        default=CONTRACT_VERSION,
        metavar="X",
        help="[fake] contract_version reported by initialize",
    )
    fake.add_argument(
        "--exit-before-initialize",
        type=int,
        metavar="CODE",
        help="[fake] write a line to stderr and exit with CODE at once",
    )
    fake.add_argument("--no-answer-initialize", action="store_true", help="[fake] never answer initialize")
    fake.add_argument(
        "--capability-status",
        action="append",
        default=[],
        metavar="ID=STATUS",
        help="[fake] override a capability status (repeatable); STATUS is "
        "Available, DisabledByPolicy[:text], NotCompiled[:feature], "
        "NotSupportedByProtocol[:reason], Absent, or any other string",
    )
    fake.add_argument(
        "--without-method",
        action="append",
        default=[],
        metavar="METHOD",
        help="[fake] leave METHOD out of initialize.methods and answer it -32601, like an "
        "rkat-rpc built without that feature (repeatable)",
    )
    fake.add_argument(
        "--notification-queue",
        type=_positive,
        metavar="N",
        help="[fake] send session/event notifications through a queue of N lines that drops "
        "what does not fit, like the real server's 256-slot channel (default: no queue, no drops)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _validate_realm(realm: str) -> None:
    """The real binary's realm id rules."""
    if not _REALM_RE.fullmatch(realm):
        raise StartupError(
            f"invalid realm id '{realm}': must be 1-64 chars, start with an ASCII letter or "
            "digit and contain only ASCII letters, digits, '_' and '-'"
        )
    try:
        uuid.UUID(realm)
    except ValueError:
        return
    raise StartupError(f"invalid realm id '{realm}': realm ids must not be UUIDs")


def _capability_status(items: Sequence[str], parser: argparse.ArgumentParser) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        cap_id, sep, status = item.partition("=")
        if not sep or not cap_id or not status:
            parser.error(f"--capability-status expects ID=STATUS, got {item!r}")
        kind, _, detail = status.partition(":")
        if kind == "Absent":
            out[cap_id] = ABSENT
        elif kind in _STATUS_KINDS:
            text = detail or (cap_id if kind == "NotCompiled" else "set by fake-rkat-rpc --capability-status")
            out[cap_id] = {kind: {_STATUS_KINDS[kind]: text}}
        else:
            out[cap_id] = status
    return out


def _build_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerConfig:
    if args.realm is not None and args.isolated:
        raise StartupError("--realm and --isolated cannot be used together")
    if args.realm is not None:
        _validate_realm(args.realm)
    realm = args.realm if args.realm is not None else f"realm-{uuid7()}"
    script_path: Optional[str] = args.script or os.environ.get(SCRIPT_ENV) or None
    script = Script()
    if script_path:
        try:
            script = load_script(script_path)
        except OSError as exc:
            raise StartupError(f"cannot read script {script_path!r}: {exc}") from None
        except SpecError as exc:
            raise StartupError(f"invalid script {script_path!r}: {exc}") from None
    return ServerConfig(
        realm=realm,
        script=script,
        contract_version=args.contract_version,
        answer_initialize=not args.no_answer_initialize,
        capability_status=_capability_status(args.capability_status, parser),
        notification_queue=args.notification_queue,
        without_methods=args.without_method,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns only for ``--help``-like paths, otherwise exits the process."""
    parser = _parser()
    args = parser.parse_args(argv)
    stderr = sys.stderr.buffer
    if args.exit_before_initialize is not None:
        stderr.write(
            f"Error: fake start-up failure (--exit-before-initialize {args.exit_before_initialize})"
            "\n".encode()
        )
        stderr.flush()
        os._exit(args.exit_before_initialize)
    try:
        config = _build_config(args, parser)
    except StartupError as exc:
        stderr.write(f"Error: {exc}\n".encode())
        stderr.flush()
        return 1
    server = Server(config, sys.stdin.buffer, sys.stdout.buffer, stderr)
    status = server.serve()
    stderr.flush()
    # Daemon threads may still be blocked on a pipe; interpreter shutdown must not wait.
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
