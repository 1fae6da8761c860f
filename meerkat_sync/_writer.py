"""The child's stdin, written by one thread so no caller ever blocks on a full pipe.

A caller only queues its line and waits for the *response* with its own deadline. If the
child stops reading (frozen, stopped, swamped), the writer thread is the one that blocks:
every call still times out on time, a line that was never started can be taken back
(``drop``), and a line that was started is always finished, so the stream is never torn.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Callable, Deque, Optional

log = logging.getLogger("meerkat_sync")

QUEUED, WRITING, WRITTEN, DROPPED = range(4)


class Ticket:
    """One queued line; ``state`` says how far it got."""

    __slots__ = ("data", "state")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.state = QUEUED


class Writer:
    """Writes queued lines to ``fd`` in order; ``finish`` closes it once they are out."""

    def __init__(self, fd: int, close_fd: Callable[[], None], name: str) -> None:
        self._fd = fd
        self._close_fd = close_fd
        self._cond = threading.Condition()
        self._queue: Deque[Ticket] = collections.deque()
        self._finishing = False
        self.error: Optional[OSError] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, data: bytes) -> Optional[Ticket]:
        """Queue a line; None when the pipe is already broken or closing."""
        with self._cond:
            if self.error is not None or self._finishing:
                return None
            ticket = Ticket(data)
            self._queue.append(ticket)
            self._cond.notify()
            return ticket

    def drop(self, ticket: Ticket) -> bool:
        """Take back a line nobody waits for; True if it was never started (so never sent)."""
        with self._cond:
            if ticket.state != QUEUED:
                return False
            ticket.state = DROPPED
            self._queue.remove(ticket)
            return True

    @property
    def blocked(self) -> bool:
        """Lines are waiting: the child is not taking what is written."""
        with self._cond:
            return bool(self._queue)

    def finish(self) -> None:
        """Close the pipe after the queued lines (the child's EOF shutdown starts then)."""
        with self._cond:
            self._finishing = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _next(self) -> Optional[Ticket]:
        with self._cond:
            while not self._queue and not self._finishing:
                self._cond.wait()
            if not self._queue:
                return None
            ticket = self._queue.popleft()
            ticket.state = WRITING
            return ticket

    def _run(self) -> None:
        try:
            while True:
                ticket = self._next()
                if ticket is None:
                    break
                view = memoryview(ticket.data)
                while view:
                    view = view[os.write(self._fd, view) :]
                ticket.state = WRITTEN
        except OSError as exc:  # EPIPE: the child is gone; the reader reports why
            log.debug("rkat-rpc stdin closed: %s", exc)
            with self._cond:
                self.error = exc
                self._queue.clear()
        finally:
            self._close_fd()
