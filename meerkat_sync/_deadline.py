"""Timeouts: validating them, and waiting in short slices so Ctrl+C is never stuck.

On POSIX a lock wait is interrupted by signals anyway; on Windows it is not, so every
blocking wait here sleeps at most ``_SLICE`` seconds at a time and re-checks.
"""

from __future__ import annotations

import concurrent.futures
import enum
import math
import queue
import time
from typing import Any, Optional, TypeVar, Union

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


def wait_future(future: concurrent.futures.Future[T], deadline: Deadline, what: str) -> T:
    """The future's result, raising ``MeerkatTimeoutError`` when the deadline passes."""
    while True:
        try:
            return future.result(timeout=deadline.slice())
        except concurrent.futures.TimeoutError:
            if future.done():
                return future.result()
            if deadline.expired():
                raise MeerkatTimeoutError(
                    f"{what} did not finish within {deadline.timeout:g} s; "
                    "pass a larger timeout= or set the client's default"
                ) from None


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
