"""One turn at a time per session from this client, and no replay of a failed turn.

rkat-rpc 0.5.0 queues concurrent turns of a session itself, but its queue has hazards a
client cannot see on the wire (docs/real-runtime.rst):

* a failed, interrupted or cancelled turn is put back at the head of the queue and run
  again before the next turn, with no response, and again and again if it keeps failing;
* ``cancel`` of a turn still waiting in that queue interrupts the turn that is running.

So this client keeps its own queue: a session's turns are sent one after the other, in
order, each once the previous one is answered. After a failed turn, the next one first
drops the failed input from the runtime's queue (``runtime/reset``), so a turn is never
retried behind the caller's back.
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, Dict

from ._deadline import Deadline
from .errors import MeerkatTimeoutError


class _Slot:
    __slots__ = ("busy", "cond", "needs_reset", "queue")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.queue: Deque[object] = collections.deque()
        self.busy = False
        self.needs_reset = False


class TurnGate:
    """Per-session FIFO of this client's turns; waits are sliced, so Ctrl+C gets through."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: Dict[str, _Slot] = {}

    def acquire(self, session_id: str, deadline: Deadline) -> bool:
        """Wait for the session's turn; True when the runtime's queue must be reset first."""
        ticket = object()
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None:
                slot = self._slots[session_id] = _Slot(self._lock)
            slot.queue.append(ticket)
            try:
                while slot.busy or slot.queue[0] is not ticket:
                    if deadline.expired():
                        raise MeerkatTimeoutError(
                            f"the turn did not start within {deadline.timeout:g} s: an earlier turn "
                            "on this session is still running on the server; pass a larger timeout= "
                            "or interrupt() the session"
                        )
                    slot.cond.wait(deadline.slice())
            except BaseException:
                slot.queue.remove(ticket)
                slot.cond.notify_all()
                self._drop_if_idle(session_id, slot)
                raise
            slot.queue.popleft()
            slot.busy = True
            reset, slot.needs_reset = slot.needs_reset, False
            return reset

    def release(self, session_id: str, failed: bool) -> None:
        """The session's turn was answered (never blocks: runs on the reader thread)."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None:
                return
            slot.busy = False
            slot.needs_reset = slot.needs_reset or failed
            slot.cond.notify_all()
            self._drop_if_idle(session_id, slot)

    def forget(self, session_id: str) -> None:
        """The session was archived: nothing of it is left to reset."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is not None:
                slot.needs_reset = False
                self._drop_if_idle(session_id, slot)

    def _drop_if_idle(self, session_id: str, slot: _Slot) -> None:
        # Called with the lock held; a slot that remembers a failure must stay.
        if not slot.busy and not slot.queue and not slot.needs_reset:
            self._slots.pop(session_id, None)
