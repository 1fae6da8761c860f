"""The child's stdin: written without ever blocking a caller on a full pipe.

A caller queues its line and waits for the *response* with its own deadline. When the
pipe has room (the usual case), the line is written at once by the caller, without a
thread hop; whatever does not fit is finished by the writer thread, which is the only
thread that ever waits for the child to read. If the child stops reading (frozen,
stopped, swamped), every call still times out on time, a line that was never started can
be taken back (``drop``), and a line that was started is always finished, so the stream
is never torn.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import sys
import threading
from typing import Callable, Deque, Optional

log = logging.getLogger("meerkat_sync")

QUEUED, WRITING, WRITTEN, DROPPED = range(4)

#: Writing straight from the caller needs a non-blocking pipe (POSIX, or Windows 3.12+).
_DIRECT = sys.platform != "win32" or sys.version_info >= (3, 12)


class Ticket:
    """One queued line; ``state`` says how far it got, ``sent`` how many bytes are out."""

    __slots__ = ("data", "sent", "state")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = 0
        self.state = QUEUED


class Writer:
    """Writes lines to ``fd`` in order; ``finish`` closes it once they are out."""

    def __init__(self, fd: int, close_fd: Callable[[], None], name: str) -> None:
        self._fd = fd
        self._close_fd = close_fd
        self._cond = threading.Condition()
        self._queue: Deque[Ticket] = collections.deque()
        self._busy = False  # the thread is writing a line outside the lock
        self._finishing = False
        self._direct = _DIRECT
        if self._direct:
            os.set_blocking(fd, False)
        self.error: Optional[OSError] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> bool:
        """Send a line (now if the pipe has room); False when the pipe is broken or closing."""
        with self._cond:
            if self.error is not None or self._finishing:
                return False
            if self._direct and not self._queue and not self._busy and self._write_some(ticket):
                return True
            self._queue.append(ticket)
            self._cond.notify()
            return True

    def _write_some(self, ticket: Ticket) -> bool:
        """Write what the pipe takes now (lock held); True when the whole line is out.

        WRITING is set before the write: the child may read and answer the bytes before
        this thread runs again, and the endpoint must already see the line as sent.
        """
        ticket.state = WRITING
        try:
            ticket.sent += os.write(self._fd, memoryview(ticket.data)[ticket.sent :])
        except BlockingIOError:
            if not ticket.sent:
                ticket.state = QUEUED  # the pipe was full: not a byte went out
            return False
        except OSError as exc:
            self._broken(exc)
            return True  # nothing more will be written; the reader reports why
        if ticket.sent == len(ticket.data):
            ticket.state = WRITTEN
            return True
        return False

    def drop(self, ticket: Ticket) -> bool:
        """Take back a line nobody waits for; True if it was never started (so never sent)."""
        with self._cond:
            if ticket.state != QUEUED:
                return False
            ticket.state = DROPPED
            self._queue.remove(ticket)
            return True

    def finish(self) -> None:
        """Close the pipe after the queued lines (the child's EOF shutdown starts then)."""
        with self._cond:
            self._finishing = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _broken(self, exc: OSError) -> None:
        """The pipe is gone (lock held): nothing more is written; the reader reports why."""
        log.debug("rkat-rpc stdin closed: %s", exc)
        self.error = exc
        self._queue.clear()
        self._cond.notify()

    def _next(self) -> Optional[Ticket]:
        with self._cond:
            self._busy = False
            while not self._queue and not self._finishing and self.error is None:
                self._cond.wait()
            if not self._queue:
                return None
            self._busy = True
            ticket = self._queue.popleft()
            if ticket.state == QUEUED:
                ticket.state = WRITING
            return ticket

    def _run(self) -> None:
        try:
            while True:
                ticket = self._next()
                if ticket is None:
                    break
                self._finish_line(ticket)
        except OSError as exc:  # EPIPE: the child is gone
            with self._cond:
                self._broken(exc)
        finally:
            self._close_fd()

    def _finish_line(self, ticket: Ticket) -> None:
        """Write the rest of one line, waiting for room as long as it takes."""
        data = memoryview(ticket.data)
        while ticket.sent < len(data):
            try:
                ticket.sent += os.write(self._fd, data[ticket.sent :])
            except BlockingIOError:
                select.select([], [self._fd], [])
        ticket.state = WRITTEN
