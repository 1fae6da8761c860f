"""The child process and its pipes: a reader thread, a writer thread, a stderr drain.

The reader never blocks on a consumer: it hands each read's lines to a callback that
only parses, routes and queues. The writer is the only thread
that can block on the child's stdin. stderr is drained continuously into a bounded
tail so a chatty child can never fill the pipe and stall.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from ._pipes import size_pipes
from ._reader import read_lines
from ._writer import Ticket, Writer
from .errors import MeerkatError

log = logging.getLogger("meerkat_sync")

#: Bytes of stderr kept per line and lines kept in the tail shown in errors.
_STDERR_LINE_CAP = 2000
_STDERR_TAIL_LINES = 40
_STDERR_CHUNK = 65536

LinesHandler = Callable[[List[bytes]], None]
CloseHandler = Callable[["ExitInfo"], None]
OversizeCallback = Callable[[bytes, int], None]

#: The child gets its own session (process group), so a terminal's Ctrl+C reaches only us;
#: it still never outlives us, since our death closes its stdin.
_DETACHED: Dict[str, Any] = (
    {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    if sys.platform == "win32"
    else {"start_new_session": True}
)


class ExitInfo:
    """Why the child's stdout ended: its exit status (if known) and the stderr tail."""

    __slots__ = ("returncode", "stderr_tail", "stopped")

    def __init__(self, returncode: Optional[int], stderr_tail: List[str], stopped: bool = False) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.stopped = stopped

    def describe(self) -> str:
        if self.stopped:
            status = "while still running; it was stopped"
        else:
            status = "still running" if self.returncode is None else f"exit code {self.returncode}"
        tail = "\n".join(self.stderr_tail[-10:])
        return f"rkat-rpc stdout closed ({status})" + (f"; stderr tail:\n{tail}" if tail else "")


class Transport:
    """Spawns the child and moves lines; knows nothing about JSON-RPC semantics."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]],
        cwd: Optional[str],
        on_lines: LinesHandler,
        on_close: CloseHandler,
        on_oversize: OversizeCallback,
        max_message_bytes: int,
    ) -> None:
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._on_lines = on_lines
        self._on_close = on_close
        self._on_oversize = on_oversize
        self._max_bytes = max_message_bytes
        self._stderr_tail: Deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._writer: Optional[Writer] = None
        self._reader: Optional[threading.Thread] = None
        self._stderr_reader: Optional[threading.Thread] = None
        self._stopped_by_us = False
        self._closing = False
        #: Request lines longer than this may be cut by rkat-rpc's reads (see _pipes).
        self.tearable_above = 0

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                **_DETACHED,
            )
        except OSError as exc:
            raise MeerkatError(
                "BINARY_NOT_FOUND",
                f"could not start {self._argv[0]!r}: {exc}; check the path and that it is executable",
            ) from exc
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        self.tearable_above = size_pipes(proc.stdin.fileno(), proc.stdout.fileno())
        stdin = proc.stdin
        self._writer = Writer(stdin.fileno(), lambda: _quietly(stdin.close), f"meerkat-writer-{proc.pid}")
        self._stderr_reader = threading.Thread(
            target=self._drain_stderr, name=f"meerkat-stderr-{proc.pid}", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_stdout, name=f"meerkat-reader-{proc.pid}", daemon=True
        )
        self._stderr_reader.start()
        self._reader.start()

    def stderr_tail(self) -> List[str]:
        return list(self._stderr_tail)

    def send(self, ticket: Ticket) -> None:
        """Queue one encoded line; raises ``CONNECTION_CLOSED`` if the child cannot take it."""
        writer = self._writer
        if writer is None:
            raise MeerkatError("NOT_CONNECTED", "the client is not connected; call connect() first")
        if not writer.submit(ticket):
            raise closed_error(self._exit_info(wait=1.0))

    def drop(self, ticket: Ticket) -> bool:
        """Take back a line that was not started; True if it will never be written."""
        return self._writer is not None and self._writer.drop(ticket)

    # --- threads ---------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        on_lines = self._on_lines

        def handle(lines: List[bytes]) -> None:
            try:
                on_lines(lines)
            except Exception:  # the reader must survive any handling bug
                log.exception("failed to handle %d lines from rkat-rpc", len(lines))

        try:
            read_lines(proc.stdout.fileno(), self._max_bytes, handle, self._oversize)
        except (OSError, ValueError) as exc:
            log.debug("rkat-rpc stdout read ended: %s", exc)
        finally:
            # During close() the child may take its time to exit: close() bounds that itself.
            self._on_close(self._exit_info(wait=0.3, stop=not self._closing))

    def _oversize(self, head: bytes, size: int) -> None:
        log.warning(
            "dropped a %d-byte line from rkat-rpc (max_message_bytes=%d): %.120r", size, self._max_bytes, head
        )
        try:
            self._on_oversize(head, size)
        except Exception:
            log.exception("failed to report an oversized line")

    def _exit_info(self, wait: float, stop: bool = False) -> ExitInfo:
        """The child's status and stderr tail; with ``stop``, a child that lives on is stopped."""
        proc = self._proc
        assert proc is not None
        try:
            returncode: Optional[int] = proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            returncode = None
        if returncode is None and stop:
            # Its stdout is gone, so it can never answer again: do not leave it running.
            self._stopped_by_us = True
            returncode = self._kill(proc)
        if self._stderr_reader is not None and returncode is not None:
            # Let the drain catch the child's last words (a panic message) for the error text.
            self._stderr_reader.join(timeout=0.3)
        return ExitInfo(returncode, self.stderr_tail(), stopped=self._stopped_by_us)

    def _drain_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        stderr = proc.stderr
        partial = b""
        try:
            while True:
                chunk = stderr.read1(_STDERR_CHUNK)  # type: ignore[attr-defined]
                if not chunk:
                    break
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()[:_STDERR_LINE_CAP]
                for raw in lines:
                    self._keep_stderr_line(raw)
        except (OSError, ValueError):
            pass
        if partial:
            self._keep_stderr_line(partial)

    def _keep_stderr_line(self, raw: bytes) -> None:
        text = raw[:_STDERR_LINE_CAP].decode("utf-8", "replace").rstrip()
        if text:
            self._stderr_tail.append(text)
            log.debug("rkat-rpc stderr: %s", text)

    # --- shutdown --------------------------------------------------------------------------

    def close(self, timeout: float) -> Optional[int]:
        """Close stdin (the server's graceful shutdown), then terminate, then kill.

        Returns within ``timeout`` plus about 1.5 s whatever the child does: a frozen child
        that never reads its stdin is killed once ``timeout`` has passed.
        """
        proc = self._proc
        if proc is None:
            return None
        self._closing = True
        if self._writer is not None:
            self._writer.finish()
        try:
            returncode: Optional[int] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stopped_by_us = True
            returncode = self._kill(proc)
        for thread in (self._reader, self._stderr_reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=1.0)
        if self._writer is not None:
            self._writer.join(timeout=0.5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None and not self._thread_alive():
                _quietly(pipe.close)
        return returncode

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> Optional[int]:
        """SIGTERM, then SIGKILL (which also ends a stopped process); bounded to ~1.5 s."""
        for step, wait in ((proc.terminate, 0.5), (proc.kill, 1.0)):
            _quietly(step)
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return None

    def _thread_alive(self) -> bool:
        return any(t is not None and t.is_alive() for t in (self._reader, self._stderr_reader))

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def disown_in_child(self) -> None:
        """In a forked child: let go of the pipes, so the parent's rkat-rpc sees its EOF.

        The descriptors are pointed at /dev/null rather than closed, so the file objects
        that wrap them stay valid and never close someone else's descriptor.
        """
        proc = self._proc
        if proc is None:
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(devnull, pipe.fileno())
        finally:
            os.close(devnull)


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, ValueError):
        call()


def closed_error(info: ExitInfo) -> MeerkatError:
    return MeerkatError(
        "CONNECTION_CLOSED",
        f"{info.describe()}. Create a new client to continue.",
        details={"returncode": info.returncode, "stderr_tail": info.stderr_tail},
    )
