"""Attributing ``session/event`` notifications to the run each caller is waiting for.

The wire gives events a session id but no request id (PROTOCOL.md §5.2), so:

* Turns on a known session wait in a FIFO per session, registered in the order their
  requests were written. A run is delimited by ``run_started`` ... ``run_completed`` /
  ``run_failed``; a ``run_started`` whose prompt equals a waiting turn's prompt goes to
  that turn, otherwise to the oldest. A run nobody waits for (server-initiated) is
  swallowed whole, so it never leaks into a stream.
* Events of an immediate ``session/create`` carry a session id nobody knows yet. They are
  bound live to a pending create only when their ``run_started`` prompt identifies exactly
  one; otherwise they wait in a bounded orphan buffer until a create response names the
  session. Attribution is therefore always correct, and live whenever it is unambiguous.
* A sink whose caller is done (finished, broke out early, timed out) stays in place and
  swallows the rest of its run, so stragglers never reach the next turn's stream.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Set

from ._codec import is_delta, mid_run_tail, tail_session
from .errors import MeerkatError

log = logging.getLogger("meerkat_sync")

TERMINAL = frozenset({"run_completed", "run_failed"})

#: What a full stream buffer may drop: the high-volume deltas, never the run's structure.
_DROPPABLE = frozenset({"text_delta", "reasoning_delta"})
OVERFLOW = "stream buffer full: the consumer fell behind"
#: A run whose terminal event never came: its last events were lost by the server (§5.5).
TAIL_LOST = "the server dropped the run's last events; its result is complete"

#: Events kept for not-yet-attributable sessions, across all of them.
ORPHAN_LIMIT = 20000

#: Default bound of one stream's queue, in events (see ``MeerkatClient(stream_buffer=)``).
STREAM_BUFFER = 10000


class Marker:
    """Control items a sink's queue carries besides event envelopes."""

    __slots__ = ("error", "name")

    def __init__(self, name: str, error: Optional[MeerkatError] = None) -> None:
        self.name = name
        self.error = error


RUN_END = Marker("run_end")
RESPONSE = Marker("response")


def same_prompt(key: Optional[str], prompt: Any) -> bool:
    """Does a run's ``run_started.prompt`` belong to the request with this prompt key?

    The runtime puts per-turn skill bodies and ``additional_instructions`` notices in
    front of the prompt, separated by a blank line (PROTOCOL.md §6).
    """
    if key is None or not isinstance(prompt, str):
        return False
    return prompt == key or prompt.endswith("\n\n" + key)


def bare_session_id(session_id: str) -> str:
    """Notifications carry the bare UUID; a ``realm:uuid`` locator is reduced to it."""
    return session_id.rsplit(":", 1)[-1]


class RunSink:
    """The events of one run, for one caller.

    The reader collects a sink's items for one read in ``pending`` and hands them over as
    one batch (one queue put, at most one wake-up) when the read's lines are routed.
    ``pushed`` and ``taken`` count what went in and out; each is written by one thread.
    """

    __slots__ = (
        "deliver",
        "dropped",
        "expires_at",
        "items",
        "limit",
        "pending",
        "prompt_key",
        "pushed",
        "run_ended",
        "saw_run_started",
        "session_id",
        "started",
        "taken",
    )

    def __init__(
        self,
        prompt_key: Optional[str],
        deliver: bool,
        session_id: Optional[str],
        limit: int = STREAM_BUFFER,
    ) -> None:
        self.items: queue.SimpleQueue[List[Any]] = queue.SimpleQueue()
        self.pending: List[Any] = []
        self.pushed = 0
        self.taken = 0
        self.limit = limit
        self.dropped = 0
        self.prompt_key = prompt_key
        self.deliver = deliver
        self.session_id = None if session_id is None else bare_session_id(session_id)
        self.started = False
        self.saw_run_started = False
        self.run_ended = False
        # Set once nobody needs this sink's run any more: a never-started sink is then
        # skipped after this moment instead of blocking the session's FIFO forever.
        self.expires_at: Optional[float] = None

    def push(self, item: Any, kind: Any, terminal: bool) -> None:
        """Queue one event (an envelope, or an undecoded line); the router's lock is held."""
        self.started = True
        if self.deliver:
            # What this read collected counts too: one read can bring a whole run.
            if self.pushed + len(self.pending) - self.taken >= self.limit and (
                kind in _DROPPABLE if type(item) is not bytes else is_delta(item)
            ):
                # The consumer fell behind: drop the newest deltas, never block the reader.
                # Other events are rare and carry the run's structure, so they always pass.
                self.dropped += 1
            else:
                self._flush_dropped(OVERFLOW)
                self.pending.append(item)
        if terminal:
            self.end_run()

    def _flush_dropped(self, reason: str) -> None:
        if self.dropped:
            self.pending.append(truncated(self.dropped, reason))
            self.dropped = 0

    def hand_over(self) -> None:
        """Put what this read collected on the queue, as one batch (the lock is held)."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.pushed += len(batch)
            self.items.put(batch)

    def clear(self) -> None:
        """Free the queued events of a sink nobody reads any more."""
        self.pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                self.taken += len(self.items.get_nowait())

    def end_run(self) -> None:
        if not self.run_ended:
            self.run_ended = True
            if self.deliver:
                self._flush_dropped(OVERFLOW)
                self.pending.append(RUN_END)


def truncated(count: int, reason: str) -> Dict[str, Any]:
    """A client-made envelope carrying a ``stream_truncated`` event at the point of loss."""
    return {"payload": {"type": "stream_truncated", "reason": reason, "dropped": count}}


#: Swallows runs nobody waits for.
_UNSOLICITED = RunSink(None, deliver=False, session_id=None)


class _Route:
    """Per-session state: the turns waiting for a run, and the run in progress."""

    __slots__ = ("active", "waiting")

    def __init__(self) -> None:
        self.waiting: Deque[RunSink] = collections.deque()
        self.active: Optional[RunSink] = None

    def target(self, kind: Any, payload: Dict[str, Any]) -> Optional[RunSink]:
        if kind == "run_started":
            current = self.active
            if current is not None and current.saw_run_started:
                current.end_run()  # its terminal event was lost (§5.5)
                self.active = None
            if self.active is None:
                self.active = self._take(payload.get("prompt")) or _UNSOLICITED
            self.active.saw_run_started = True
        elif self.active is None:
            # No run_started seen: it was dropped, or these are stragglers of a run
            # whose sink is gone. Only a waiting turn can claim them.
            self.active = self._take(None)
            if self.active is None:
                return None
        sink = self.active
        if kind in TERMINAL:
            self.active = None
        return sink

    def _take(self, prompt: Any) -> Optional[RunSink]:
        """The waiting turn a run belongs to; None for a run nobody asked for.

        A run whose prompt matches no waiting turn is the server's own: a failed or
        interrupted prompt that 0.5.0 replays before the next one (PROTOCOL.md §8.3).
        """
        now = time.monotonic()
        live = [s for s in self.waiting if s.expires_at is None or s.expires_at > now]
        if len(live) != len(self.waiting):
            self.waiting = collections.deque(live)
        if not live:
            return None
        if prompt is None:  # its run_started was lost: the oldest waiting turn is the best guess
            chosen: Optional[RunSink] = live[0]
        else:
            chosen = next((s for s in live if same_prompt(s.prompt_key, prompt)), None)
            chosen = chosen or next((s for s in live if s.prompt_key is None), None)
        if chosen is not None:
            self.waiting.remove(chosen)
        return chosen


class EventRouter:
    """Owned by the client; ``on_event`` runs on the reader thread and never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: Dict[str, _Route] = {}
        self._creates: List[RunSink] = []
        self._orphans: Dict[str, List[Dict[str, Any]]] = {}
        self._orphan_count = 0
        self._live: Set[RunSink] = set()
        self._failed: Optional[MeerkatError] = None
        self._in_chunk = False
        self._touched: Set[RunSink] = set()

    # --- registration (under the endpoint's send-order lock) -------------------------------

    def add_turn(self, sink: RunSink) -> None:
        assert sink.session_id is not None
        with self._lock:
            self._check_failed()
            self._routes.setdefault(sink.session_id, _Route()).waiting.append(sink)
            self._live.add(sink)

    def add_create(self, sink: RunSink) -> None:
        with self._lock:
            self._check_failed()
            self._creates.append(sink)
            self._live.add(sink)

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    # --- events ----------------------------------------------------------------------------

    def begin_chunk(self) -> None:
        """The reader starts routing one read's lines: hand over only at its end."""
        with self._lock:
            self._in_chunk = True

    def end_chunk(self) -> None:
        with self._lock:
            self._in_chunk = False
            self._hand_over()

    def _hand_over(self) -> None:
        touched, self._touched = self._touched, set()
        for sink in touched:
            sink.hand_over()

    def _touch(self, sink: RunSink) -> None:
        if sink.pending:
            self._touched.add(sink)
            if not self._in_chunk:
                self._hand_over()

    def post(self, sink: RunSink, item: Any) -> None:
        """Queue a control item behind the sink's events (from any thread)."""
        with self._lock:
            sink.pending.append(item)
            self._touch(sink)

    def route_lines(self, lines: List[bytes], start: int) -> int:
        """Route event lines undecoded, from ``start`` on, while they are mid-run events of a
        run in progress (queued as they are, or not at all if nobody reads them); returns
        the index of the first line that needs the full decode, or ``len(lines)``."""
        routes = self._routes
        seen: Dict[bytes, RunSink] = {}  # session tail -> its sink, for this read's lines
        with self._lock:
            for index in range(start, len(lines)):
                line = lines[index]
                tail = mid_run_tail(line)
                if tail is None:
                    return index
                sink = seen.get(tail)
                if sink is None:
                    route = routes.get(tail_session(tail))
                    sink = route.active if route is not None else None
                    if sink is None or not sink.saw_run_started:
                        return index
                    seen[tail] = sink
                    self._touched.add(sink)
                sink.push(line, None, False)
            return len(lines)

    def on_event(self, session_id: str, envelope: Dict[str, Any]) -> None:
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            log.warning("session/event without a payload object for %s: %.200r", session_id, envelope)
            return
        kind = payload.get("type")
        with self._lock:
            route = self._routes.get(session_id)
            if route is None:
                route = self._adopt(session_id, kind, payload, envelope)
                if route is None:
                    return
            self._deliver(route, envelope, payload, kind)

    def _deliver(self, route: _Route, envelope: Dict[str, Any], payload: Dict[str, Any], kind: Any) -> None:
        previous = route.active
        sink = route.target(kind, payload)
        if previous is not None and previous is not sink:
            self._touch(previous)  # a new run_started ended it
        if sink is not None:
            sink.push(envelope, kind, kind in TERMINAL)
            self._touch(sink)

    def _adopt(
        self, session_id: str, kind: Any, payload: Dict[str, Any], envelope: Dict[str, Any]
    ) -> Optional[_Route]:
        """An unknown session: bind it to the one pending create it can belong to, or wait."""
        if not self._creates:
            log.debug("dropping an event of unknown session %s (no create pending)", session_id)
            return None
        if session_id not in self._orphans:
            candidates = self._create_candidates(kind, payload)
            if len(candidates) == 1:
                sink = candidates[0]
                sink.session_id = session_id
                route = self._routes[session_id] = _Route()
                route.active = sink
                return route
        if self._orphan_count >= ORPHAN_LIMIT:
            log.warning("orphan event buffer full (%d); dropping an event of %s", ORPHAN_LIMIT, session_id)
            return None
        self._orphans.setdefault(session_id, []).append(envelope)
        self._orphan_count += 1
        return None

    def _create_candidates(self, kind: Any, payload: Dict[str, Any]) -> List[RunSink]:
        if kind != "run_started":
            return []  # without the run's prompt, whose session this is stays unknown
        unbound = [s for s in self._creates if s.session_id is None]
        prompt = payload.get("prompt")
        exact = [s for s in unbound if same_prompt(s.prompt_key, prompt)]
        return exact or [s for s in unbound if s.prompt_key is None]

    # --- responses and release -------------------------------------------------------------

    def create_answered(self, sink: RunSink, session_id: Optional[str]) -> None:
        """A create response arrived (``session_id`` is None for an error response)."""
        with self._lock:
            if sink in self._creates:
                self._creates.remove(sink)
            if session_id is not None:
                self._bind_answered(sink, bare_session_id(session_id))
            if not self._creates:
                self._orphans.clear()
                self._orphan_count = 0

    def _bind_answered(self, sink: RunSink, session_id: str) -> None:
        if sink.session_id is not None and sink.session_id != session_id:
            log.warning(
                "events of session %s were attributed to the create of %s; discarding the rest",
                sink.session_id,
                session_id,
            )
            wrong = self._routes.get(sink.session_id)
            if wrong is not None and wrong.active is sink:
                wrong.active = _UNSOLICITED
            sink.session_id = None
        if sink.session_id is not None:
            return
        sink.session_id = session_id
        route = self._routes.setdefault(session_id, _Route())
        if route.active is None:
            route.active = sink
        buffered = self._orphans.pop(session_id, [])
        self._orphan_count -= len(buffered)
        for envelope in buffered:
            payload = envelope["payload"]
            self._deliver(route, envelope, payload, payload.get("type"))

    def release(self, sink: RunSink, grace: float) -> None:
        """The caller is done with ``sink``: drop what it holds; let its run drain into nothing."""
        with self._lock:
            sink.deliver = False
            sink.clear()
            if sink.expires_at is None:
                sink.expires_at = time.monotonic() + grace
            if sink in self._creates:
                self._creates.remove(sink)
                if not self._creates:
                    self._orphans.clear()
                    self._orphan_count = 0
            self._live.discard(sink)

    def mark_answered(self, sink: RunSink, grace: float) -> None:
        """Its response is in: if its run never shows up within ``grace``, stop waiting for it."""
        with self._lock:
            if not sink.started and sink.expires_at is None:
                sink.expires_at = time.monotonic() + grace

    def forget_session(self, session_id: str) -> None:
        with self._lock:
            route = self._routes.get(bare_session_id(session_id))
            if route is not None and not route.waiting and route.active is None:
                del self._routes[bare_session_id(session_id)]

    def fail_all(self, error: MeerkatError) -> None:
        with self._lock:
            if self._failed is None:
                self._failed = error
            live, self._live = self._live, set()
            self._creates.clear()
            self._orphans.clear()
            self._orphan_count = 0
            self._hand_over()
            for sink in live:  # behind whatever the reader had collected for it
                sink.pending.append(Marker("failed", error))
                sink.hand_over()
