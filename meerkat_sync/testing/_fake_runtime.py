"""A session's input queue, run the way rkat-rpc 0.5.0's runtime loop runs it.

* Inputs run one at a time, in order, on the session's loop thread.
* A failed, interrupted or cancelled input goes back to the **head** of the queue. Its
  request already got its answer, so when it runs again (a *replay*) nobody is answered.
* After a failure the loop goes on only if another input is queued; it then replays the
  failed one first, and a failure that always happens replays for as long as that other
  input waits (``session/archive`` ends it; ``runtime/reset`` is refused while running).
* ``cancel`` of a request interrupts whatever input of its session is running; when none
  is, the request's own input is dropped as it comes up, without running.
"""

from __future__ import annotations

import collections
import datetime
import threading
from typing import Callable, Deque, Dict, List, Optional, Tuple

from meerkat_sync.testing._fake_constants import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    REPLAY_PAUSE_S,
    RUNTIME_NOT_READY,
    RUNTIME_UNREGISTERED,
)
from meerkat_sync.testing._fake_params import Content
from meerkat_sync.testing._fake_script import ReplySpec
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, uuid7

#: How the runtime refuses new work after ``runtime/retire`` (until ``runtime/reset``).
RUNTIME_RETIRED = "runtime accept failed: Runtime not ready: retired"


def rfc3339() -> str:
    """An input-state timestamp, as the runtime's input ledger writes them."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class RunOutcome:
    """A run's result (a RunResult) or the error its request is answered with."""

    def __init__(
        self,
        result: Optional[JsonDict] = None,
        error: Optional[RpcError] = None,
        after_response: Optional[Callable[[], None]] = None,
        follow_up: Optional[ReplySpec] = None,
    ) -> None:
        self.result = result
        self.error = error
        self.after_response = after_response
        self.follow_up = follow_up

    @property
    def failed(self) -> bool:
        return self.result is None


Respond = Callable[[RunOutcome], None]


class Input:
    """One queued prompt; ``respond`` answers its request the first time it runs."""

    def __init__(
        self,
        prompt: Content,
        respond: Optional[Respond],
        turn: Optional[JsonDict] = None,
        spec: Optional[ReplySpec] = None,
    ) -> None:
        self.id = uuid7()
        self.prompt = prompt
        self.respond = respond
        self.turn = turn or {}
        self.spec = spec
        self.interrupt = threading.Event()
        self.cancel_at_start = False
        self.started = threading.Event()
        # The input ledger's view (``input/state``): lifecycle state and its transitions.
        self.persisted: Optional[JsonDict] = None  # persisted_input; None: a plain prompt
        self.wake_mode = "wake_if_idle"
        self.current_state = "accepted"
        self.transitions: List[JsonDict] = []
        self.terminal: Optional[JsonDict] = None
        self.last_run_id: Optional[str] = None
        self.last_boundary_sequence: Optional[int] = None  # set once applied at a boundary
        self.created_at = self.updated_at = rfc3339()

    def move(self, to: str, reason: str) -> None:
        stamp = rfc3339()
        self.transitions.append({"timestamp": stamp, "from": self.current_state, "to": to, "reason": reason})
        self.current_state = to
        self.updated_at = stamp


class SessionRuntime:
    """The queue and loop of one session; ``execute`` runs one input and reports its outcome."""

    def __init__(self, execute: Callable[[Input], RunOutcome]) -> None:
        self._execute = execute
        self._cond = threading.Condition()
        self._serial = threading.Lock()
        self._queue: Deque[Input] = collections.deque()
        self._running: Optional[Input] = None
        self._loop: Optional[threading.Thread] = None
        self._detached = False
        self._closed = False
        self._retired = False
        self._idle_state = "attached"
        self._records: Dict[str, Input] = {}
        # Re-accepted inputs (a header id seen before): listed, never run, dropped by reset.
        self._stuck: List[Input] = []

    # -- queries ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """The loop is working through the queue (running, or between replays)."""
        return self._loop is not None

    @property
    def retired(self) -> bool:
        return self._retired

    def state(self) -> str:
        with self._cond:
            if self._retired:
                return "retired"
            return "running" if self._loop is not None else self._idle_state

    def input_ids(self) -> List[str]:
        with self._cond:
            head = [self._running.id] if self._running is not None else []
            return head + [item.id for item in self._queue] + [item.id for item in self._stuck]

    def record(self, input_id: str) -> Optional[Input]:
        """Any input this runtime was given (``input/state``), finished ones included."""
        with self._cond:
            return self._records.get(input_id)

    # -- control ---------------------------------------------------------------------------

    def submit(self, item: Input, wake: bool = True) -> None:
        """Queue an input at the tail; ``wake`` starts the loop (a detached runtime never runs it)."""
        with self._cond:
            if self._closed:
                answer(item, RunOutcome(error=RpcError(INTERNAL_ERROR, RUNTIME_UNREGISTERED)))
                return
            if self._loop is not None:
                item.wake_mode = "none"
            item.move("queued", "QueueAccepted")
            self._records[item.id] = item
            self._queue.append(item)
        if wake:
            self.wake()

    def wake(self) -> None:
        with self._cond:
            if self._loop is None and self._queue and not (self._detached or self._closed):
                self._loop = threading.Thread(target=self._run_loop, name="session-runtime", daemon=True)
                self._loop.start()

    def interrupt(self) -> None:
        """``turn/interrupt``: the running input only; idle is a no-op."""
        with self._cond:
            if self._running is not None:
                self._running.interrupt.set()

    def cancel(self, item: Input) -> None:
        """``cancel`` of ``item``'s request: interrupts the running input, whichever it is."""
        with self._cond:
            if self._running is not None:
                self._running.interrupt.set()
            elif item in self._queue:
                item.cancel_at_start = True

    def accept_again(self, item: Input) -> None:
        """``runtime/accept`` of a header id seen before: a new record that never runs."""
        with self._cond:
            self._records[item.id] = item
            self._stuck.append(item)

    def retire(self) -> Tuple[int, int]:
        """``runtime/retire``: refuse new inputs; the queued ones still drain."""
        with self._cond:
            if self._retired:
                transition = "Internal error: Invalid runtime state transition: retired -> retired"
                raise RpcError(INVALID_PARAMS, transition)
            self._retired = True
            return 0, len(self._queue)

    def reset(self) -> int:
        """``runtime/reset``: drop every queued input, end a retirement; refused while running."""
        with self._cond:
            if self._loop is not None:
                raise RpcError(INVALID_PARAMS, RUNTIME_NOT_READY)
            dropped = list(self._queue) + self._stuck
            self._queue.clear()
            self._stuck = []
            self._retired = False
            self._idle_state = "idle"
            for item in dropped:
                item.move("abandoned", "Abandon { reason: Reset }")
                item.terminal = {"outcome_type": "abandoned", "reason": "reset"}
        for item in dropped:
            answer(item, RunOutcome(error=RpcError(INTERNAL_ERROR, "runtime terminated: runtime reset")))
        return len(dropped)

    def detach(self) -> None:
        """The runtime is gone but the session lingers: new inputs wait until it is archived."""
        with self._cond:
            self._detached = True

    def unregister(self) -> None:
        """``session/archive``: stop the loop and answer every waiting request."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                waiting.append(self._running)
                self._running.interrupt.set()
            self._cond.notify_all()
        for item in waiting:
            answer(item, RunOutcome(error=RpcError(INTERNAL_ERROR, RUNTIME_UNREGISTERED)))

    def stop_all(self) -> None:
        """EOF: interrupt the running input; nothing more is written anyway."""
        with self._cond:
            self._closed = True
            if self._running is not None:
                self._running.interrupt.set()

    def join(self, timeout: float) -> None:
        loop = self._loop
        if loop is not None:
            loop.join(timeout)

    # -- the loop --------------------------------------------------------------------------

    def _next(self) -> Optional[Input]:
        with self._cond:
            if self._closed or not self._queue:
                self._loop = None
                return None
            self._running = self._queue.popleft()
            self._running.last_run_id = run_id = uuid7()
            self._running.move("staged", f"StageForRun {{ run_id: RunId({run_id}) }}")
            return self._running

    def _run_loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            with self._serial:
                outcome = self._execute(item)
                replay = self._settle(item, outcome)
                answer(item, outcome)
                if outcome.after_response is not None:
                    outcome.after_response()
            if replay is None:
                return
            if replay:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, REPLAY_PAUSE_S)

    def _settle(self, item: Input, outcome: RunOutcome) -> Optional[bool]:
        """Requeue a failed input (True: replay it next); None when the loop stops.

        Decided before the request is answered, so a client that resets right after a
        failure never finds the loop still running.
        """
        with self._cond:
            self._running = None
            if self._closed:
                self._loop = None
                return None
            self._ledger(item, outcome)
            if outcome.failed and not item.cancel_at_start:
                item.interrupt.clear()
                self._queue.appendleft(item)
                if len(self._queue) == 1:
                    self._loop = None
                    return None
                return True
            if outcome.follow_up is not None:
                follow = outcome.follow_up
                self._queue.appendleft(Input(follow.prompt or "unsolicited", None, spec=follow))
            if not self._queue:
                self._loop = None
                return None
            return False


    @staticmethod
    def _ledger(item: Input, outcome: RunOutcome) -> None:
        """The input's lifecycle after a run: consumed, or back to queued for the replay."""
        if outcome.failed:
            if item.cancel_at_start:
                item.move("abandoned", "Abandon { reason: Cancelled }")
                item.terminal = {"outcome_type": "abandoned", "reason": "cancelled"}
            else:
                item.move("queued", "RollbackStaged")
            return
        run = f"run_id: RunId({item.last_run_id})"
        item.move("applied", f"MarkApplied {{ {run} }}")
        item.move("applied_pending_consumption", "MarkAppliedPendingConsumption { boundary_sequence: 0 }")
        item.last_boundary_sequence = 0
        item.move("consumed", "Consume")
        item.terminal = {"outcome_type": "consumed"}


def answer(item: Input, outcome: RunOutcome) -> None:
    """Answer ``item``'s request once; later outcomes (replays) answer nobody."""
    respond, item.respond = item.respond, None
    if respond is not None:
        respond(outcome)
