"""The child process and its pipes: one reader thread, one stderr drain, one locked writer.

The reader never blocks on a consumer: it parses a line and hands the message to a
callback that only does dictionary work and queue puts. stderr is drained continuously
into a bounded tail so a chatty child can never fill the pipe and stall.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import subprocess
import threading
from typing import IO, Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from .errors import MeerkatError

log = logging.getLogger("meerkat_sync")

#: Bytes of stderr kept per line and lines kept in the tail shown in errors.
_STDERR_LINE_CAP = 2000
_STDERR_TAIL_LINES = 40
_STDERR_CHUNK = 65536

MessageHandler = Callable[[Dict[str, Any]], None]
CloseHandler = Callable[["ExitInfo"], None]


class ExitInfo:
    """Why the child's stdout ended: its exit status (if known) and the stderr tail."""

    __slots__ = ("returncode", "stderr_tail")

    def __init__(self, returncode: Optional[int], stderr_tail: List[str]) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def describe(self) -> str:
        status = "still running" if self.returncode is None else f"exit code {self.returncode}"
        tail = "\n".join(self.stderr_tail[-10:])
        return f"rkat-rpc stdout closed ({status})" + (f"; stderr tail:\n{tail}" if tail else "")


def _decoder() -> Callable[[bytes], Any]:
    """``orjson.loads`` when the ``fast`` extra is installed, else a prebuilt stdlib decoder."""
    try:
        import orjson  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        decode = json.JSONDecoder().decode

        def loads(line: bytes) -> Any:
            return decode(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError too

        return loads
    fast: Callable[[bytes], Any] = orjson.loads
    return fast


def encode(message: Mapping[str, Any]) -> bytes:
    """One compact JSON line; raises ``TypeError``/``ValueError`` for values JSON cannot hold."""
    return (
        json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
        + b"\n"
    )


class Transport:
    """Spawns the child and moves lines; knows nothing about JSON-RPC semantics."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]],
        cwd: Optional[str],
        on_message: MessageHandler,
        on_close: CloseHandler,
    ) -> None:
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._on_message = on_message
        self._on_close = on_close
        self._write_lock = threading.Lock()
        self._stderr_tail: Deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._stderr_reader: Optional[threading.Thread] = None

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
            )
        except OSError as exc:
            raise MeerkatError(
                "BINARY_NOT_FOUND",
                f"could not start {self._argv[0]!r}: {exc}; check the path and that it is executable",
            ) from exc
        self._stderr_reader = threading.Thread(
            target=self._drain_stderr, name=f"meerkat-stderr-{self._proc.pid}", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_stdout, name=f"meerkat-reader-{self._proc.pid}", daemon=True
        )
        self._stderr_reader.start()
        self._reader.start()

    def stderr_tail(self) -> List[str]:
        return list(self._stderr_tail)

    def send(self, data: bytes) -> None:
        """Write one encoded line; raises ``CONNECTION_CLOSED`` if the child cannot take it."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise MeerkatError("NOT_CONNECTED", "the client is not connected; call connect() first")
        with self._write_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise MeerkatError(
                    "CONNECTION_CLOSED",
                    f"could not write to rkat-rpc ({exc}); the process has gone away",
                ) from exc

    # --- threads ---------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        stdout: IO[bytes] = proc.stdout
        on_message = self._on_message
        loads = _decoder()
        try:
            for line in stdout:
                try:
                    message = loads(line)
                except ValueError:
                    if line.strip():
                        # The server logs to stdout (PROTOCOL.md §1.4): noise, never fatal.
                        log.info("rkat-rpc stdout: %s", line.decode("utf-8", "replace").rstrip())
                    continue
                if not isinstance(message, dict):
                    log.warning("ignoring a non-object JSON line from rkat-rpc: %.200r", line)
                    continue
                try:
                    on_message(message)
                except Exception:  # the reader must survive any routing bug
                    log.exception("failed to route a message from rkat-rpc: %.200r", line)
        except (OSError, ValueError) as exc:
            log.debug("rkat-rpc stdout read ended: %s", exc)
        finally:
            self._on_close(self._exit_info())

    def _exit_info(self) -> ExitInfo:
        proc = self._proc
        assert proc is not None
        try:
            returncode: Optional[int] = proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            returncode = None
        if self._stderr_reader is not None and returncode is not None:
            # Let the drain catch the child's last words (a panic message) for the error text.
            self._stderr_reader.join(timeout=0.3)
        return ExitInfo(returncode, self.stderr_tail())

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
        """Close stdin (the server's graceful shutdown), then terminate, then kill."""
        proc = self._proc
        if proc is None:
            return None
        with self._write_lock, contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        returncode: Optional[int] = None
        for step in (None, proc.terminate, proc.kill):
            if step is not None:
                with contextlib.suppress(OSError):
                    step()
            try:
                returncode = proc.wait(timeout=timeout if step is None else 2.0)
                break
            except subprocess.TimeoutExpired:
                continue
        for thread in (self._reader, self._stderr_reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=2.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None and not self._thread_alive():
                with contextlib.suppress(OSError):
                    pipe.close()
        return returncode

    def _thread_alive(self) -> bool:
        return any(t is not None and t.is_alive() for t in (self._reader, self._stderr_reader))

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
