"""``EventStream``: one run's events as a plain iterator that is also a context manager.

Nothing is sent until the stream is entered, iterated or collected, so a stream that is
created and dropped costs nothing. Leaving early releases the run's sink: the rest of the
run is discarded by the router, and the response still settles the session's state.
"""

from __future__ import annotations

import logging
import queue
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

from ._codec import line_decoder, text_delta_reader
from ._converter import structure_envelope, structure_event
from ._deadline import Deadline, Slot, wait_queue
from ._routing import OVERFLOW, RESPONSE, RUN_END, TAIL_LOST, Marker, RunSink, truncated
from .errors import MeerkatError, MeerkatTimeoutError
from .events import Event, EventEnvelope, TextDelta
from .types import RunResult

if TYPE_CHECKING:
    from ._session import Session

log = logging.getLogger("meerkat_sync")

SEQ_GAP = "the server dropped events (seq gap)"


class RunHandle:
    """A run in flight: its sink, its settled result, and how to call it off."""

    __slots__ = ("cancel", "release", "result", "sink")

    def __init__(
        self,
        sink: RunSink,
        result: Slot[RunResult],
        cancel: Callable[[], None],
        release: Callable[[], None],
    ) -> None:
        self.sink = sink
        self.result = result
        self.cancel = cancel
        self.release = release


class EventStream:
    """Typed events of one run; ``result`` holds the :class:`RunResult` once consumed.

    Use it as ``with session.stream(prompt) as events: for event in events: ...``, or call
    :meth:`collect` / :meth:`collect_text`. A failed run raises its :class:`MeerkatError`
    from the iteration, after the events that preceded the failure.
    """

    def __init__(
        self,
        start: Callable[[Deadline], RunHandle],
        *,
        timeout: Optional[float],
        grace: float,
        session_id: Optional[str] = None,
        session: Optional[Session] = None,
    ) -> None:
        self._start = start
        self._timeout = timeout
        self._grace = grace
        self._session_id = session_id
        self._session = session
        self._handle: Optional[RunHandle] = None
        self._deadline: Optional[Deadline] = None
        self._answered = False
        self._run_ended = False
        self._done = False
        self._result: Optional[RunResult] = None
        self._error: Optional[BaseException] = None
        self._batch: List[Any] = []
        self._pos = 0
        self._decode = line_decoder()
        self._text_delta = text_delta_reader(self._decode)
        self._held: Optional[Dict[str, Any]] = None
        self._last_seq = 0
        self._excused = 0

    # --- public surface --------------------------------------------------------------------

    @property
    def session_id(self) -> Optional[str]:
        """The session's id; for a streaming create, known once the run is attributed."""
        if self._result is not None:
            return self._result.session_id
        if self._handle is not None and self._handle.sink.session_id is not None:
            return self._handle.sink.session_id
        return self._session_id

    @property
    def session(self) -> Optional[Session]:
        """The session this run belongs to; for a streaming create, set once it is answered."""
        return self._session

    @property
    def result(self) -> RunResult:
        """The run's :class:`RunResult`, once the stream is consumed.

        Before that it raises ``STREAM_NOT_CONSUMED``; so does a failed run, whose error was
        raised from the iteration instead.
        """
        if self._result is None:
            raise MeerkatError(
                "STREAM_NOT_CONSUMED",
                "the stream has not been consumed yet; iterate it to the end "
                "(or call collect()) before reading .result",
            )
        return self._result

    def __enter__(self) -> EventStream:
        self._ensure_started()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        # The hot path: an undecoded text delta in seq order, typed without the layers
        # below (which give the same event for it; tests/test_codec.py checks they agree).
        pos, batch = self._pos, self._batch
        if pos < len(batch) and self._held is None:
            line = batch[pos]
            if type(line) is bytes:
                delta = self._text_delta(line)
                if delta is not None:
                    seq, text = delta
                    last = self._last_seq
                    if not last or seq == last + 1:
                        self._pos, self._last_seq = pos + 1, seq
                        return TextDelta(text)
        envelope = self._next_envelope()
        if envelope is None:
            raise StopIteration
        payload = envelope.get("payload")
        return structure_event(payload if isinstance(payload, dict) else {})

    def envelopes(self) -> Iterator[EventEnvelope]:
        """The same events with their delivery metadata (``event_id``, ``seq``, ...)."""
        while True:
            envelope = self._next_envelope()
            if envelope is None:
                return
            yield structure_envelope(envelope)

    def collect(self) -> RunResult:
        """Consume every event silently; return the result."""
        with self:
            for _ in self:
                pass
        return self.result

    def collect_text(self) -> Tuple[str, RunResult]:
        """Consume every event; return the concatenated text deltas and the result."""
        parts: List[str] = []
        with self:
            for event in self:
                if type(event) is TextDelta:
                    parts.append(event.delta)
        return "".join(parts), self.result

    def close(self, *, cancel: bool = True) -> None:
        """Stop consuming; the events not yet read are dropped at once. Idempotent.

        A run still going is called off (it costs tokens and nobody reads it), as when the
        stream is left early or garbage-collected. ``cancel=False`` lets it finish on the
        server instead: its result still updates the session.
        """
        if self._handle is not None and not self._done:
            self._done = True
            if cancel:
                self._abandoned()
            else:
                self._abandoned.detach()
                self._handle.release()

    # --- machinery -------------------------------------------------------------------------

    def _ensure_started(self) -> RunHandle:
        if self._handle is None:
            if self._done:
                raise MeerkatError("INVALID_ARGS", "this stream was closed before it started")
            self._deadline = Deadline(self._timeout)
            self._handle = self._start(self._deadline)
            # A stream dropped without close() must not keep its buffer, nor its run going.
            self._abandoned = weakref.finalize(self, _call_off, self._handle)
        return self._handle

    def _next_envelope(self) -> Optional[Dict[str, Any]]:
        """The next envelope, with a ``stream_truncated`` one wherever ``seq`` skips.

        The stream sees its run's events in order, so it is where the server's drops show
        (§5.5); the deltas this client dropped itself (a full buffer) are excused, having
        been reported already.
        """
        held, self._held = self._held, None
        if held is not None:
            return held
        while True:
            item = self._next_item()
            if item is None:
                return None
            envelope = self._envelope(item)
            if envelope is None:
                continue
            seq = envelope.get("seq")
            payload = envelope.get("payload")
            if type(payload) is not dict:
                payload = {}
            kind = payload.get("type")
            if kind == "run_started":
                self._last_seq = 0  # what was lost before the run is not the run's
            if type(seq) is int and (self._last_seq or kind != "tool_config_changed"):
                # (An MCP change before the run has a counter of its own, §5.1.)
                last, self._last_seq = self._last_seq, seq
                if last and seq > last + 1:
                    lost, self._excused = seq - last - 1 - self._excused, 0
                    if lost > 0:
                        self._held = envelope
                        return truncated(lost, SEQ_GAP)
            elif kind == "stream_truncated" and payload.get("reason") == OVERFLOW:
                self._excused += payload["dropped"]
            return envelope

    def _envelope(self, item: Any) -> Optional[Dict[str, Any]]:
        if type(item) is dict:
            return item
        try:  # an undecoded event line (see _codec.mid_run_tail): decoded only now
            envelope = self._decode(item)["params"]["event"]
        except Exception:
            log.info("skipping a line from rkat-rpc that is not JSON: %.200r", item)
            return None
        return envelope if type(envelope) is dict else None

    def _next_item(self) -> Any:
        """The next queued event (an envelope or an undecoded line), or None at the end."""
        self._ensure_started()
        batch = self._batch
        while True:
            if self._pos < len(batch):
                item = batch[self._pos]
                self._pos += 1
                if type(item) is bytes or type(item) is dict:
                    return item
                self._control(item)
            elif self._done:
                break
            else:
                taken = self._next_batch()
                if taken is None:
                    break
                batch = taken
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return None

    def _next_batch(self) -> Optional[List[Any]]:
        """Wait for the reader's next batch; None when the stream is over."""
        handle = self._handle
        assert handle is not None and self._deadline is not None
        sink = handle.sink
        while not (self._answered and self._run_ended):
            try:
                try:
                    batch = sink.items.get_nowait()  # a busy stream: no deadline arithmetic
                except queue.Empty:
                    batch = wait_queue(sink.items, self._deadline, "the turn")
            except MeerkatTimeoutError:
                if not self._answered:
                    self._abandon()
                    raise
                # The run's terminal event never came (dropped, §5.5): the result stands,
                # and the loss is said where it happened rather than kept quiet.
                self._finish()
                tail = [truncated(0, TAIL_LOST)] if sink.started and self._error is None else []
                return self._take(tail)
            except KeyboardInterrupt:
                self._abandon()
                raise
            sink.taken += len(batch)
            return self._take(batch)
        self._finish()
        return None

    def _take(self, batch: List[Any]) -> List[Any]:
        self._batch, self._pos = batch, 0
        return batch

    def _control(self, item: Any) -> None:
        handle = self._handle
        assert handle is not None
        if item is RUN_END:
            self._run_ended = True
        elif item is RESPONSE:
            self._answered = True
            if handle.result.error is not None:
                # A failed run's events precede its error, and an interrupted one sends
                # no terminal event at all (PROTOCOL.md §8.3): nothing more to wait for.
                self._run_ended = True
            else:
                self._deadline = Deadline(self._grace)
        elif isinstance(item, Marker) and item.error is not None:
            self._done = True
            self._abandoned.detach()
            handle.release()
            raise item.error

    def _finish(self) -> None:
        handle = self._handle
        assert handle is not None
        self._done = True
        self._abandoned.detach()
        handle.release()
        if handle.result.error is not None:
            self._error = handle.result.error
        else:
            self._result = handle.result.value

    def _abandon(self) -> None:
        self._done = True
        self._abandoned()


def _call_off(handle: RunHandle) -> None:
    """Cancel a run nobody consumes any more (if it is still going) and free its events."""
    if not handle.result.settled:
        handle.cancel()
    handle.release()
