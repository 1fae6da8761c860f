"""Timeouts: validating them, and waiting in short slices so Ctrl+C is never stuck.

On POSIX a lock wait is interrupted by signals anyway; on Windows it is not, so every
blocking wait here sleeps at most ``_SLICE`` seconds at a time and re-checks.
"""

from __future__ import annotations

import enum
import math
import queue
import threading
import time
from typing import Any, Generic, Optional, TypeVar, Union

from .errors import MeerkatError, MeerkatTimeoutError

_SLICE = 0.25

T = TypeVar("T")


class _UseDefault(enum.Enum):
    TOKEN = "use the client's default"


#: ``timeout=`` left out: the client's default applies. ``None`` waits without limit.
USE_DEFAULT = _UseDefault.TOKEN
Timeout = Union[float, None, _UseDefault]


def resolve_timeout(value: Timeout, default: Optional[float]) -> Optional[float]:
    return default if value is USE_DEFAULT else check_timeout(value)


def check_timeout(value: Any, name: str = "timeout") -> Optional[float]:
    """``None`` (wait forever) or a positive finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MeerkatError(
            "INVALID_ARGS",
            f"{name} must be a number of seconds or None, not {type(value).__name__}",
        )
    if not value > 0 or not math.isfinite(value):
        raise MeerkatError(
            "INVALID_ARGS",
            f"{name} must be a positive number of seconds (got {value!r}); use None to wait without limit",
        )
    return float(value)


class Deadline:
    """A point in monotonic time, or none."""

    __slots__ = ("_at", "timeout")

    def __init__(self, timeout: Optional[float]) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        return None if self._at is None else self._at - time.monotonic()

    def slice(self) -> float:
        """How long the next wait may sleep; 0 when expired."""
        left = self.remaining()
        return _SLICE if left is None else max(0.0, min(_SLICE, left))

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


class Slot(Generic[T]):
    """A one-shot answer: settled once by one thread, waited on through a plain lock.

    Cheaper than a ``concurrent.futures.Future`` (one lock, no condition): the lock is held
    from creation until the answer is in, so a waiter simply tries to take it.
    """

    __slots__ = ("_gate", "error", "settled", "value")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self.settled = False
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None

    def settle(self, value: Optional[T], error: Optional[BaseException]) -> None:
        """Called exactly once (whoever pops the pending request settles it)."""
        self.value, self.error = value, error
        self.settled = True
        self._gate.release()

    def wait(self, timeout: float) -> bool:
        if self.settled:
            return True
        if self._gate.acquire(timeout=timeout):
            self._gate.release()  # and so on, for any other waiter
            return True
        return self.settled

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def wait_slot(slot: Slot[T], deadline: Deadline, what: str) -> T:
    """The slot's answer, raising ``MeerkatTimeoutError`` when the deadline passes."""
    while not slot.wait(deadline.slice()):
        if deadline.expired():
            raise MeerkatTimeoutError(
                f"{what} did not finish within {deadline.timeout:g} s; "
                "pass a larger timeout= or set the client's default"
            ) from None
    return slot.result()


def wait_queue(items: queue.SimpleQueue[T], deadline: Deadline, what: str) -> T:
    """The next item, raising ``MeerkatTimeoutError`` when the deadline passes."""
    while True:
        try:
            return items.get(timeout=deadline.slice() or 0.0)
        except queue.Empty:
            if deadline.expired():
                raise MeerkatTimeoutError(
                    f"{what} did not finish within {deadline.timeout:g} s; "
                    "pass a larger timeout= or set the client's default"
                ) from None
