"""The scripted runtime's subscriptions: session/stream_* and mob/stream_*, their events and ends.

As on the real server (issue-10 probe §2):

* every ``session/event`` goes out as usual **and** as a ``session/stream_event`` on each
  stream open on its session, with a per-stream ``sequence`` from 1; there is no replay;
* ``stream_end`` ``explicit_close`` follows the close response; archiving a session ends
  its streams with ``remote_end`` before the archive response;
* a burst of more than :data:`STREAM_QUEUE` events on one stream (one write of a ``bulk``
  directive) overflows its queue: the events that fit are sent, then ``stream_end``
  ``terminal_error`` / ``stream_queue_overflow``, and the stream is gone. (The real server
  overflowed after 58 events of a 3,000-delta burst; its queue is shared with everything
  else, so the exact point varies. Single events never overflow here.)

Mob code publishes on topics of its own through :class:`StreamHub` (``server.streams``).
"""

from __future__ import annotations

import collections
import json
import threading
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from meerkat_sync.testing._fake_constants import INVALID_PARAMS
from meerkat_sync.testing._fake_params import Struct, parse, parse_session_id, string
from meerkat_sync.testing._fake_sessions import not_found
from meerkat_sync.testing._fake_wire import (
    HANDLED,
    IncomingRequest,
    JsonDict,
    RpcError,
    encode,
    response,
)

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Handler, RequestCtx, Server

#: Events one burst may put on one stream before it overflows (the real channels hold 256).
STREAM_QUEUE = 256
#: How many ended stream ids a close still recognises (``already_closed: true``, once).
CLOSED_MEMORY = 1024

OVERFLOW_ERROR = {"code": "stream_queue_overflow", "message": "transport stream notification queue overflow"}

_STREAM_ONLY = Struct("StreamCloseParams", {"stream_id": string}, ("stream_id",))
_EVENT_HEAD = b'{"jsonrpc":"2.0","method":"session/event",'


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


class _Stream:
    __slots__ = ("kind", "sequence", "session_id", "stream_id", "topic")

    def __init__(self, stream_id: str, topic: str, kind: str, session_id: Optional[str]) -> None:
        self.stream_id = stream_id
        self.topic = topic
        self.kind = kind
        self.session_id = session_id
        self.sequence = 0


class StreamHub:
    """Every open stream of the process, by id and by topic (``server.streams``)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._lock = threading.RLock()
        self._streams: Dict[str, _Stream] = {}
        self._topics: Dict[str, List[_Stream]] = {}
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._watchers: Dict[str, Tuple[Callable[[JsonDict], None], bool]] = {}
        server.writer.tap = self._tap

    # --- the API for stream owners (session streams here, mob streams in _fake_mobs) ---------

    def open(self, topic: str, *, kind: str = "mob", session_id: Optional[str] = None) -> str:
        """A new stream on ``topic``; it gets what is published there from now on."""
        stream = _Stream(str(uuid.uuid4()), topic, kind, session_id)
        with self._lock:
            self._streams[stream.stream_id] = stream
            self._topics.setdefault(topic, []).append(stream)
        return stream.stream_id

    def publish(self, topic: str, event: JsonDict) -> None:
        """Send ``event`` (``params.event`` as sent) on every stream of ``topic``."""
        self._publish_many(topic, [event])

    def end(self, topic: str, outcome: str = "remote_end", error: Optional[JsonDict] = None) -> int:
        """End every stream of ``topic`` (each gets its ``stream_end``); how many ended."""
        with self._lock:
            streams = list(self._topics.get(topic, ()))
            for stream in streams:
                self._finish(stream, outcome, error)
        return len(streams)

    def close(self, stream_id: str) -> Tuple[JsonDict, Optional[bytes]]:
        """A client's close: the result, and the ``stream_end`` line to write after it."""
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._remove(stream)
                return _close_result(stream_id, False), _end_line(stream, "explicit_close", None)
            if stream_id in self._ended:
                del self._ended[stream_id]  # recognised once (PROTOCOL.md §4.10)
                return _close_result(stream_id, True), None
            return _close_result(stream_id, False), None

    def watch(self, session_id: str, callback: Callable[[JsonDict], None], *, silence: bool = False) -> None:
        """``callback(envelope)`` for each event of that session; ``silence``: no plain session/event."""
        with self._lock:
            self._watchers[session_id] = (callback, silence)

    def unwatch(self, session_id: str) -> None:
        with self._lock:
            self._watchers.pop(session_id, None)

    # --- machinery ----------------------------------------------------------------------------

    def _publish_many(self, topic: str, events: List[JsonDict]) -> None:
        with self._lock:
            for stream in list(self._topics.get(topic, ())):
                room = STREAM_QUEUE
                lines: List[bytes] = []
                for event in events:
                    if room == 0:
                        break
                    stream.sequence += 1
                    room -= 1
                    lines.append(_event_line(stream, event))
                if lines:
                    self._server.writer.write(b"".join(lines))
                if len(events) > STREAM_QUEUE:
                    self._finish(stream, "terminal_error", OVERFLOW_ERROR)

    def _finish(self, stream: _Stream, outcome: str, error: Optional[JsonDict]) -> None:
        self._remove(stream)
        self._server.writer.write(_end_line(stream, outcome, error))

    def _remove(self, stream: _Stream) -> None:
        self._streams.pop(stream.stream_id, None)
        peers = self._topics.get(stream.topic)
        if peers is not None and stream in peers:
            peers.remove(stream)
            if not peers:
                del self._topics[stream.topic]
        self._ended[stream.stream_id] = None
        while len(self._ended) > CLOSED_MEMORY:
            self._ended.popitem(last=False)

    def _tap(self, lines: List[bytes]) -> List[bytes]:
        """Every notification batch the writer is given: the plain lines still to write.

        Cheap while nothing is subscribed or watched; otherwise each ``session/event`` is
        decoded and copied to its session's streams (and watcher).
        """
        if not self._topics and not self._watchers:
            return lines
        keep: List[bytes] = []
        by_session: Dict[str, List[JsonDict]] = {}
        for line in lines:
            params = _event_params(line)
            if params is None:
                keep.append(line)
                continue
            session_id, envelope = params["session_id"], params["event"]
            by_session.setdefault(session_id, []).append(envelope)
            watcher = self._watchers.get(session_id)
            if watcher is None or not watcher[1]:
                keep.append(line)
        for session_id, envelopes in by_session.items():
            self._publish_many(session_topic(session_id), envelopes)
            watcher = self._watchers.get(session_id)
            if watcher is not None:
                for envelope in envelopes:
                    watcher[0](envelope)
        return keep


def _event_params(line: bytes) -> Optional[JsonDict]:
    if not line.startswith(_EVENT_HEAD):
        return None
    try:
        params = json.loads(line)["params"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(params, dict) or not isinstance(params.get("event"), dict):
        return None
    return params if isinstance(params.get("session_id"), str) else None


def _event_line(stream: _Stream, event: JsonDict) -> bytes:
    params: JsonDict = {"event": event, "sequence": stream.sequence, "stream_id": stream.stream_id}
    if stream.kind == "session":
        params["session_id"] = stream.session_id
    method = "session/stream_event" if stream.kind == "session" else "mob/stream_event"
    return encode({"jsonrpc": "2.0", "method": method, "params": params}, sort_keys=True)


def _end_line(stream: _Stream, outcome: str, error: Optional[JsonDict]) -> bytes:
    params: JsonDict = {"ended": True, "outcome": outcome, "stream_id": stream.stream_id}
    if error is not None:
        params["error"] = dict(error)
    if stream.kind == "session":
        params["session_id"] = stream.session_id
    method = "session/stream_end" if stream.kind == "session" else "mob/stream_end"
    return encode({"jsonrpc": "2.0", "method": method, "params": params}, sort_keys=True)


def _close_result(stream_id: str, already_closed: bool) -> JsonDict:
    return {"already_closed": already_closed, "closed": True, "stream_id": stream_id}


def handlers(server: Server) -> Dict[str, Handler]:
    """This family's methods, bound to server and its ``streams`` hub."""
    hub = server.streams

    def stream_open(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
        params = parse(_SESSION_ONLY, message.params, message.has_params)
        session_id = parse_session_id(params["session_id"], server.config.realm)
        session = server.store.find(session_id)
        if session is None:
            raise not_found(session_id)
        if session.archived or session.pending or not session.materialized:
            # Only a session with a live runtime in this process has an event source.
            raise RpcError(
                INVALID_PARAMS,
                f"Failed to subscribe to session events: stream not found: session {session_id}",
            )
        stream_id = hub.open(session_topic(session_id), kind="session", session_id=session_id)
        return {"opened": True, "session_id": session_id, "stream_id": stream_id}

    def close_handler(null_id_on_bad_params: bool) -> Handler:
        def stream_close(message: IncomingRequest, _ctx: Optional[RequestCtx]) -> Any:
            try:
                raw = parse(_STREAM_ONLY, message.params, message.has_params)["stream_id"]
            except RpcError as exc:
                exc.null_id = null_id_on_bad_params
                raise
            try:
                stream_id = str(uuid.UUID(raw))
            except ValueError:
                raise RpcError(INVALID_PARAMS, f"Invalid stream_id: {raw}") from None
            result, end = hub.close(stream_id)
            server.writer.send(response(message.id, result))
            if end is not None:  # the end trails the response (as it did in every real trial)
                server.writer.write(end)
            return HANDLED

        return stream_close

    return {
        "session/stream_open": stream_open,
        "session/stream_close": close_handler(False),
        "mob/stream_close": close_handler(True),
    }


_SESSION_ONLY = Struct("SessionIdParams", {"session_id": string}, ("session_id",))


__all__ = ["OVERFLOW_ERROR", "STREAM_QUEUE", "StreamHub", "handlers", "session_topic"]
