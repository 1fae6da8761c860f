"""Method family: session/stream_open|close, mob/stream_open|close: EventSubscription.

A subscription is a server-side stream with an id of its own (PROTOCOL.md §4.10, §5.3,
§5.4). Its notifications name the stream, not a request, so one registry per child
routes ``session/stream_event``/``mob/stream_event`` and their ``..._end`` by
``stream_id``. The server may write a stream's first events (even its end) before the
``stream_open`` response that names it; those are held, boundedly, while an open is in
flight, and handed to the stream when the response arrives.

The server also sends every subscribed event as a plain ``session/event`` (two copies):
the turn router and the subscriptions each see only their own copy, so neither disturbs
the other.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import weakref
from types import TracebackType
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Set, Tuple, Type

from ._calls import ClientCalls
from ._converter import structure_envelope, structure_event
from ._deadline import USE_DEFAULT, Deadline, Slot, Timeout, resolve_timeout, wait_slot
from ._endpoint import Endpoint
from ._params import session_id_arg
from ._routing import _DROPPABLE, OVERFLOW, STREAM_BUFFER, truncated
from ._streaming import SEQ_GAP
from .errors import MeerkatError, MeerkatTimeoutError
from .events import AttributedEvent, Event, EventEnvelope

log = logging.getLogger("meerkat_sync")

#: Notifications of streams whose open is not answered yet, kept across all of them.
EARLY_LIMIT = 10000
#: Ids of streams this client let go of, whose stragglers are dropped without a word.
_RECENT = 1024

_STREAM_NOT_FOUND = "stream not found"


class _End:
    """Queue item: the stream is over (the server's end, a close, or a broken connection)."""

    __slots__ = ("error",)

    def __init__(self, error: Optional[MeerkatError] = None) -> None:
        self.error = error


_CLOSED = _End()


def _envelope_of(event: Dict[str, Any]) -> Dict[str, Any]:
    """A wire event's envelope: the event itself, or the ``envelope`` of an attributed one."""
    inner = event.get("envelope")
    if type(inner) is dict and "payload" not in event:
        return inner
    return event


def _kind(event: Dict[str, Any]) -> Any:
    payload = _envelope_of(event).get("payload")
    return payload.get("type") if type(payload) is dict else None


class StreamSink:
    """One stream's queue and end state; written by the reader, read by its subscription.

    Items are wire events (dicts) and :class:`_End` markers. ``pushed`` is written by the
    reader, ``taken`` by the consumer; their difference is the backlog the bound applies to.
    """

    __slots__ = ("dropped", "end_params", "ended", "error", "items", "limit", "outcome", "pushed", "taken")

    def __init__(self, limit: int) -> None:
        self.items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.limit = limit
        self.pushed = 0
        self.taken = 0
        self.dropped = 0
        self.ended = threading.Event()
        self.outcome: Optional[str] = None
        self.error: Optional[MeerkatError] = None
        self.end_params: Optional[Dict[str, Any]] = None

    def push(self, event: Dict[str, Any]) -> None:
        """Queue one event; a full buffer drops the newest deltas (never blocks the reader)."""
        if self.pushed - self.taken >= self.limit and _kind(event) in _DROPPABLE:
            self.dropped += 1
            return
        self._flush_dropped()
        self.pushed += 1
        self.items.put(event)

    def _flush_dropped(self) -> None:
        if self.dropped:
            self.pushed += 1
            self.items.put(truncated(self.dropped, OVERFLOW))
            self.dropped = 0

    def end(self, params: Dict[str, Any]) -> None:
        """The server's ``stream_end``: record how it ended, behind the events before it."""
        if self.ended.is_set():
            return
        outcome = params.get("outcome")
        self.outcome = outcome if isinstance(outcome, str) else "remote_end"
        self.end_params = dict(params)
        raw = params.get("error")
        if raw is not None or self.outcome == "terminal_error":
            self.error = _terminal_error(raw)
        self._flush_dropped()
        self.ended.set()
        self.items.put(_End())

    def fail(self, error: MeerkatError) -> None:
        """The connection is gone: the consumer raises ``error`` after what it has."""
        if not self.ended.is_set():
            self._flush_dropped()
            self.ended.set()
            self.items.put(_End(error))


def _terminal_error(raw: Any) -> MeerkatError:
    if isinstance(raw, dict):
        code = raw.get("code")
        message = raw.get("message")
        name = code if isinstance(code, str) and code else "stream_terminal_error"
        text = message if isinstance(message, str) else "the server ended the stream with an error"
    else:
        name, text = "stream_terminal_error", "the server ended the stream with an error"
    if name == "stream_queue_overflow":
        text += (
            " (the server could not keep up with a burst of events and closed the stream; "
            "the run itself is unaffected: subscribe again for the next events)"
        )
    return MeerkatError(name, text, details=raw)


class SubscriptionRegistry:
    """Per child process: stream id -> sink. Its ``on_*`` methods run on the reader thread."""

    def __init__(self, limit: int = STREAM_BUFFER) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._sinks: Dict[str, StreamSink] = {}
        self._early: Dict[str, List[Tuple[bool, Dict[str, Any]]]] = {}
        self._early_count = 0
        self._opening = 0
        self._recent: Deque[str] = collections.deque(maxlen=_RECENT)
        self._recent_set: Set[str] = set()
        self._failed: Optional[MeerkatError] = None

    @property
    def failed(self) -> Optional[MeerkatError]:
        return self._failed

    # --- opening ---------------------------------------------------------------------------

    def begin_open(self) -> None:
        """An open is about to be written: from now on, unknown stream ids are held."""
        with self._lock:
            if self._failed is not None:
                raise self._failed
            self._opening += 1

    def opened(self, stream_id: Optional[str]) -> Optional[StreamSink]:
        """An open was answered (``stream_id`` None: it failed); the new stream's sink."""
        with self._lock:
            self._opening = max(0, self._opening - 1)
            sink: Optional[StreamSink] = None
            if stream_id is not None and self._failed is None:
                sink = StreamSink(self._limit)
                self._sinks[stream_id] = sink
                early = self._early.pop(stream_id, [])
                self._early_count -= len(early)
                for is_end, params in early:
                    self._route(sink, stream_id, is_end, params)
            if self._opening == 0 and self._early:
                log.debug("dropping notifications of %d unknown stream(s)", len(self._early))
                self._early.clear()
                self._early_count = 0
            return sink

    # --- notifications ---------------------------------------------------------------------

    def on_event(self, params: Dict[str, Any]) -> None:
        self._notify(False, params)

    def on_end(self, params: Dict[str, Any]) -> None:
        self._notify(True, params)

    def _notify(self, is_end: bool, params: Dict[str, Any]) -> None:
        stream_id = params.get("stream_id")
        if not isinstance(stream_id, str) or (not is_end and not isinstance(params.get("event"), dict)):
            log.warning("malformed stream notification: %.200r", params)
            return
        with self._lock:
            sink = self._sinks.get(stream_id)
            if sink is not None:
                self._route(sink, stream_id, is_end, params)
            elif stream_id in self._recent_set:
                pass  # a straggler of a stream this client already let go of
            elif self._opening > 0 and self._early_count < EARLY_LIMIT:
                # Perhaps a stream whose open response is still on its way (§4.10).
                self._early.setdefault(stream_id, []).append((is_end, params))
                self._early_count += 1
            else:
                log.debug("dropping a notification of unknown stream %s", stream_id)

    def _route(self, sink: StreamSink, stream_id: str, is_end: bool, params: Dict[str, Any]) -> None:
        if is_end:
            sink.end(params)
            self._let_go(stream_id)
        else:
            sink.push(params["event"])

    def _let_go(self, stream_id: str) -> None:
        self._sinks.pop(stream_id, None)
        if stream_id not in self._recent_set:
            if len(self._recent) == self._recent.maxlen:
                self._recent_set.discard(self._recent[0])
            self._recent.append(stream_id)
            self._recent_set.add(stream_id)

    # --- release ---------------------------------------------------------------------------

    def forget(self, stream_id: str) -> None:
        """The client is done with a stream: later notifications for it are dropped."""
        with self._lock:
            self._let_go(stream_id)

    def fail_all(self, error: MeerkatError) -> None:
        """The child is gone (or the client closed): end every stream with ``error``."""
        with self._lock:
            if self._failed is None:
                self._failed = error
            sinks, self._sinks = self._sinks, {}
            self._early.clear()
            self._early_count = 0
            for sink in sinks.values():
                sink.fail(error)


#: Registries by the endpoint of the child they belong to (one per child generation).
_REGISTRIES: weakref.WeakKeyDictionary[Endpoint, SubscriptionRegistry] = weakref.WeakKeyDictionary()


class EventSubscription:
    """A live event stream of a session, a mob or a mob member, until it ends or is closed.

    Iterate it for typed events (``envelopes()`` for their delivery metadata, ``attributed()``
    for a mob stream's member attribution); use it as a context manager so leaving the block
    closes it. Iteration ends when the server ends the stream (``outcome`` says how) or when
    :meth:`close` is called, from any thread. A broken connection raises its error from the
    iteration, after the events that arrived before it.

    Each wait for the next event is bounded by ``idle_timeout`` (the client's
    ``turn_timeout`` unless given; ``None`` waits without limit). It raises
    :class:`MeerkatTimeoutError` but leaves the subscription open: iterate again to keep
    waiting. Waits are sliced, so Ctrl+C interrupts them at once.
    """

    def __init__(
        self,
        stream_id: str,
        sink: StreamSink,
        *,
        close_remote: Callable[[Timeout], Any],
        forget: Callable[[], None],
        idle_timeout: Optional[float],
        grace: float,
        session_id: Optional[str] = None,
    ) -> None:
        self._stream_id = stream_id
        self._sink = sink
        self._close_remote = close_remote
        self._forget = forget
        self._idle_timeout = idle_timeout
        self._grace = grace
        self._session_id = session_id
        self._lock = threading.Lock()
        self._closed = False
        self._done = False
        self._held: Optional[Dict[str, Any]] = None
        self._last_seq: Dict[Any, int] = {}
        # Dropped without close(): the server's stream must not outlive the object.
        self._finalizer = weakref.finalize(self, _abandon, sink, close_remote, forget)

    def __repr__(self) -> str:
        state = self.outcome or ("closed" if self._closed else "open")
        return f"<EventSubscription {self._stream_id} {state}>"

    # --- state -----------------------------------------------------------------------------

    @property
    def stream_id(self) -> str:
        """The server's id of this stream."""
        return self._stream_id

    @property
    def session_id(self) -> Optional[str]:
        """The subscribed session; None for mob streams."""
        return self._session_id

    @property
    def outcome(self) -> Optional[str]:
        """None while the stream is open, then ``"explicit_close"``, ``"remote_end"`` or
        ``"terminal_error"``; set as soon as the end arrives (earlier events stay readable)."""
        return self._sink.outcome

    @property
    def error(self) -> Optional[MeerkatError]:
        """The server's error for a ``terminal_error`` end (its ``code`` is the wire code,
        e.g. ``"stream_queue_overflow"``; ``details`` the raw error object); else None."""
        return self._sink.error

    @property
    def terminal_outcome(self) -> Optional[Dict[str, Any]]:
        """The raw ``stream_end`` params once the server ended the stream (the SDK's name)."""
        params = self._sink.end_params
        return dict(params) if params is not None else None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the stream ended."""
        return self._closed or self._sink.ended.is_set()

    # --- closing ---------------------------------------------------------------------------

    def close(self, *, timeout: Timeout = USE_DEFAULT) -> None:
        """Close the stream on the server (once; later calls do nothing) and end iteration.

        Events not read yet are dropped. ``timeout`` bounds the close request (the client's
        ``request_timeout`` by default): when it runs out, :class:`MeerkatTimeoutError` is
        raised, and the subscription is closed on this side all the same. On a connection
        that is already gone there is nothing to close, and nothing is raised.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        sink = self._sink
        self._finalizer.detach()
        try:
            if not sink.ended.is_set():
                self._close_remote(timeout)
                # The server's stream_end may trail its close response (they are queued apart).
                if not sink.ended.wait(self._grace) and sink.outcome is None:
                    sink.outcome = "explicit_close"
        except MeerkatError as exc:
            if exc.code not in ("CONNECTION_CLOSED", "CLIENT_CLOSED", "NOT_CONNECTED", "FORKED"):
                raise
            log.debug("stream %s: nothing to close (%s)", self._stream_id, exc.code)
        finally:
            self._forget()
            _drain(sink)
            sink.items.put(_CLOSED)

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the block's own exception matters more than a failed close
            self.close()
        except Exception:
            log.warning("closing stream %s failed", self._stream_id, exc_info=True)

    # --- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        raw = self._next_raw()
        if raw is None:
            raise StopIteration
        payload = _envelope_of(raw).get("payload")
        return structure_event(payload if type(payload) is dict else {})

    def envelopes(self) -> Iterator[EventEnvelope]:
        """The same events with their metadata (``event_id``, ``seq``, ``source_id``, ...)."""
        while True:
            raw = self._next_raw()
            if raw is None:
                return
            yield structure_envelope(_envelope_of(raw))

    def attributed(self) -> Iterator[AttributedEvent]:
        """The same events with the member that sent them (mob-wide streams; else ``""``)."""
        while True:
            raw = self._next_raw()
            if raw is None:
                return
            envelope = structure_envelope(_envelope_of(raw))
            source, profile = raw.get("source"), raw.get("profile")
            yield AttributedEvent(
                source=source if isinstance(source, str) and raw is not _envelope_of(raw) else "",
                profile=profile if isinstance(profile, str) and raw is not _envelope_of(raw) else "",
                envelope=envelope,
            )

    def _next_raw(self) -> Optional[Dict[str, Any]]:
        """The next wire event (a ``stream_truncated`` one where envelope ``seq`` skips)."""
        held, self._held = self._held, None
        if held is not None:
            return held
        item = self._take()
        if item is None:
            return None
        envelope = _envelope_of(item)
        payload = envelope.get("payload")
        kind = payload.get("type") if type(payload) is dict else None
        seq = envelope.get("seq")
        if kind == "stream_truncated" and type(payload) is dict and payload.get("reason") == OVERFLOW:
            self._last_seq.clear()  # our own drops are reported already; no gap for them
        elif type(seq) is int and kind != "tool_config_changed":
            # (An MCP change before a run has a counter of its own, §5.1.)
            source = envelope.get("source_id")
            last = self._last_seq.get(source)
            self._last_seq[source] = seq
            if last is not None and seq > last + 1:
                self._held = item
                return truncated(seq - last - 1, SEQ_GAP)
        return item

    def _take(self) -> Optional[Dict[str, Any]]:
        if self._done:
            return None
        sink = self._sink
        deadline = Deadline(self._idle_timeout)
        while True:
            try:
                item = sink.items.get(timeout=deadline.slice() or 0.0)
            except queue.Empty:
                if self._closed and not self._done:
                    self._done = True
                    return None
                if deadline.expired():
                    raise MeerkatTimeoutError(
                        f"no event arrived on stream {self._stream_id} within "
                        f"{deadline.timeout:g} s; iterate again to keep waiting, or pass a "
                        "larger idle_timeout= (None: no limit)"
                    ) from None
                continue
            sink.taken += 1
            if type(item) is dict:
                if self._closed:
                    continue  # closed meanwhile: what was not read is dropped
                return item
            if isinstance(item, _End):
                self._done = True
                if item.error is not None:
                    self._closed = True
                    self._finalizer.detach()
                    raise item.error
                return None


def _drain(sink: StreamSink) -> None:
    while True:
        try:
            sink.items.get_nowait()
        except queue.Empty:
            return
        sink.taken += 1


def _abandon(sink: StreamSink, close_remote: Callable[[Timeout], Any], forget: Callable[[], None]) -> None:
    """A subscription garbage-collected while open: close it on the server, without waiting."""
    forget()
    _drain(sink)
    if not sink.ended.is_set():
        try:
            close_remote(None)
        except Exception:  # best effort, possibly at interpreter exit
            log.debug("could not close an abandoned stream", exc_info=True)


class SubscriptionMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""

    _stream_buffer: int
    _stream_grace: float
    _turn_timeout: Optional[float]

    def subscribe_session_events(
        self, session_id: str, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """Open a live stream of every run's events on a session, whoever started the run.

        There is no replay: only events published after the open arrive. The session must be
        live in this rkat-rpc process (it has run a turn; not deferred, not archived), else
        ``SESSION_NOT_LIVE``. ``timeout`` bounds the open; ``idle_timeout`` each wait for an
        event (see :class:`EventSubscription`).
        """
        sid = session_id_arg(session_id)
        try:
            return self._open_subscription(
                "session/stream_open",
                {"session_id": sid},
                close_method="session/stream_close",
                timeout=timeout,
                idle_timeout=idle_timeout,
                session_id=sid,
            )
        except MeerkatError as exc:
            if exc.rpc_code == -32602 and _STREAM_NOT_FOUND in exc.message:
                raise MeerkatError(
                    "SESSION_NOT_LIVE",
                    f"session {sid} has no live runtime in this rkat-rpc process, so it cannot be "
                    "subscribed to: it is deferred and has not run a turn yet, or it was archived, "
                    "or it was loaded from storage without running; run a turn on it first",
                    details={"session_id": sid, "rpc_message": exc.message},
                    rpc_code=exc.rpc_code,
                    data=exc.data,
                ) from None
            raise

    def _open_subscription(
        self,
        open_method: str,
        params: Mapping[str, Any],
        *,
        close_method: str,
        timeout: Timeout = USE_DEFAULT,
        idle_timeout: Timeout = USE_DEFAULT,
        capability: Optional[str] = None,
        session_id: Optional[str] = None,
    ) -> EventSubscription:
        """Open any kind of stream (session, mob, member) and wrap it; shared by the mob calls."""
        idle = resolve_timeout(idle_timeout, self._turn_timeout)
        deadline = Deadline(resolve_timeout(timeout, self._request_timeout))
        self._require_method(open_method, capability)
        endpoint, _ = self._parts()
        registry = _REGISTRIES.get(endpoint)
        if registry is None:
            raise MeerkatError("NOT_CONNECTED", "the client has no subscription registry; connect() first")
        opened: Slot[Tuple[str, StreamSink]] = Slot()
        state = {"abandoned": False}
        state_lock = threading.Lock()

        def close_remote(close_timeout: Timeout, stream_id: str = "") -> Any:
            if registry.failed is not None:
                return None  # the child is gone: so is its stream
            close_params = {"stream_id": stream_id}
            if close_timeout is None:  # fire and forget (an abandoned stream)
                endpoint.request(close_method, close_params, on_answer=lambda _r, _e: None)
                return None
            limit = resolve_timeout(close_timeout, self._request_timeout)
            return self._call_until(close_method, close_params, Deadline(limit), endpoint)

        def settle(answer: Any, error: Optional[BaseException]) -> None:
            # On the reader thread: the sink exists before the next notification is routed.
            stream_id = answer.get("stream_id") if isinstance(answer, dict) else None
            if error is None and not isinstance(stream_id, str):
                problem = f"{open_method} returned {answer!r}, without a stream_id"
                error = MeerkatError("INVALID_RESPONSE", problem)
            sink = registry.opened(stream_id if error is None else None)
            if error is None and sink is None:
                error = registry.failed or MeerkatError("CONNECTION_CLOSED", "the connection is gone")
            with state_lock:  # settled under the lock: exactly one side closes a stream nobody wants
                if error is not None or sink is None:
                    opened.settle(None, error)
                    return
                assert isinstance(stream_id, str)
                opened.settle((stream_id, sink), None)
                late = state["abandoned"]
            if late:  # its caller gave up waiting: nobody will ever read or close it
                registry.forget(stream_id)
                log.debug("closing stream %s, whose open was answered after its caller gave up", stream_id)
                close_remote(None, stream_id)

        counted = []

        def before_send(_request_id: int) -> None:
            registry.begin_open()
            counted.append(True)

        try:
            endpoint.request(open_method, params, before_send=before_send, on_answer=settle)
        except BaseException:
            if counted:  # registered, but never sent: no answer will come to uncount it
                registry.opened(None)
            raise
        try:
            stream_id, sink = wait_slot(opened, deadline, open_method)
        except (MeerkatTimeoutError, KeyboardInterrupt):
            with state_lock:
                state["abandoned"] = True
                won = opened.value if opened.settled else None
            if won is not None:  # answered just now: this side closes it
                registry.forget(won[0])
                close_remote(None, won[0])
            raise
        return EventSubscription(
            stream_id,
            sink,
            close_remote=lambda t: close_remote(t, stream_id),
            forget=lambda: registry.forget(stream_id),
            idle_timeout=idle,
            grace=self._stream_grace,
            session_id=session_id,
        )

    # --- wiring (called by MeerkatClient for each child generation) ------------------------

    def _new_subscriptions(self) -> SubscriptionRegistry:
        return SubscriptionRegistry(self._stream_buffer)

    @staticmethod
    def _bind_subscriptions(endpoint: Endpoint, registry: SubscriptionRegistry) -> None:
        _REGISTRIES[endpoint] = registry

    @staticmethod
    def _fail_subscriptions(endpoint: Optional[Endpoint], error: MeerkatError) -> None:
        registry = _REGISTRIES.get(endpoint) if endpoint is not None else None
        if registry is not None:
            registry.fail_all(error)


def route_stream_notification(registry: SubscriptionRegistry, method: str, params: Dict[str, Any]) -> bool:
    """Hand a stream notification to ``registry``; False if ``method`` is none of them."""
    if method in ("session/stream_event", "mob/stream_event"):
        registry.on_event(params)
    elif method in ("session/stream_end", "mob/stream_end"):
        registry.on_end(params)
    else:
        return False
    return True


__all__ = ["EventSubscription", "SubscriptionMethods", "SubscriptionRegistry"]
