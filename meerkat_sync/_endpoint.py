"""JSON-RPC semantics over a :class:`Transport`: ids, pending answers, server requests.

Responses settle a one-shot :class:`Slot` (or a callback) by id. Notifications go to one
callback (the event router). Requests *from* the server are answered off the reader
thread, on a bounded pool (``_server_requests``), so a handler may itself call the client
without deadlocking the reader.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple, Union

from ._codec import encode, line_decoder
from ._deadline import Slot
from ._server_requests import ServerRequests, TimedHandler
from ._writer import WRITING, WRITTEN, Ticket
from .errors import MeerkatError, error_from_rpc

log = logging.getLogger("meerkat_sync")

#: Methods the server answers with ``"id": null`` when their params are malformed (§8.1).
_NULL_ID_METHODS = frozenset(
    {"comms/send", "comms/peers", "session/external_event", "mob/stream_open", "mob/stream_close"}
)
#: rkat-rpc's answer to a line it cannot parse, whose id it therefore cannot name.
_PARSE_ERROR = -32700
#: Methods the ``cancel`` notification can stop (§1.7).
LONG_RUNNING = frozenset({"session/create", "turn/start"})

NotificationHandler = Callable[[str, Dict[str, Any]], None]


class Events(Protocol):
    """Where ``session/event`` notifications go (the router), read by chunks of lines."""

    def begin_chunk(self) -> None: ...

    def end_chunk(self) -> None: ...

    def route_lines(self, lines: List[bytes], start: int) -> int: ...


Sender = Callable[[Ticket], None]
Dropper = Callable[[Ticket], bool]

#: The id near the start of a response; a notification or request names its method first.
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*(-?\d+)')


#: What a response is handed to: ``(result, None)`` or ``(None, error)``.
OnAnswer = Callable[[Any, Optional[BaseException]], None]


class _Pending:
    __slots__ = ("answer", "maybe_lost", "method", "ticket")

    def __init__(self, method: str, answer: OnAnswer) -> None:
        self.method = method
        self.answer = answer
        self.ticket: Optional[Ticket] = None
        self.maybe_lost = False  # one of several that rkat-rpc may have cut (see below)


class Endpoint:
    """Matches responses to requests and dispatches everything else."""

    def __init__(
        self,
        send: Sender,
        drop: Dropper,
        events: Events,
        on_notification: NotificationHandler,
        max_message_bytes: int,
        workers: int = 8,
    ) -> None:
        self._send = send
        self._drop = drop
        self._events = events
        self._loads = line_decoder()
        self._max_message_bytes = max_message_bytes
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._order_lock = threading.Lock()
        self._pending: Dict[int, _Pending] = {}
        self._closed: Optional[MeerkatError] = None
        self._server_requests = ServerRequests(send, workers)
        #: Request lines longer than this may reach rkat-rpc cut in two (see _pipes).
        self.tearable_above = 0

    # --- outgoing --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        params: Mapping[str, Any],
        before_send: Optional[Callable[[int], None]] = None,
        on_answer: Optional[OnAnswer] = None,
    ) -> Tuple[int, Slot[Any]]:
        """Queue a request; returns its id and the slot its response settles.

        Nothing here blocks on the child: the line is queued for the writer thread, and
        the caller bounds its wait on the slot. ``on_answer``, when given, is called with
        the response instead (on the thread that receives it). ``before_send`` runs under
        the order lock, so whatever it registers (an event sink) is ordered as the
        requests are.
        """
        slot: Slot[Any] = Slot()
        pending = _Pending(method, on_answer or slot.settle)
        # The order lock keeps id order == write order; it is only held to queue a line.
        with self._order_lock:
            with self._lock:
                if self._closed is not None:
                    raise self._closed
                request_id = next(self._ids)
            try:
                data = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            except (TypeError, ValueError, RecursionError) as exc:
                raise MeerkatError(
                    "INVALID_ARGS", f"{method} arguments cannot be sent as JSON: {exc}"
                ) from None
            # The ticket is known before a byte is written: the answer may come at once.
            pending.ticket = Ticket(data)
            with self._lock:
                if self._closed is not None:  # fail_all ran while we encoded
                    raise self._closed
                self._pending[request_id] = pending
            try:
                if before_send is not None:
                    before_send(request_id)
                self._send(pending.ticket)
            except BaseException:
                self.forget(request_id)
                raise
        return request_id, slot

    def notify(self, method: str, params: Mapping[str, Any]) -> None:
        """Fire-and-forget; a dead connection is not an error here (used for cleanup)."""
        try:
            self._send(Ticket(encode({"jsonrpc": "2.0", "method": method, "params": params})))
        except MeerkatError as exc:
            log.debug("could not send %s notification: %s", method, exc)

    def forget(self, request_id: int) -> None:
        """Stop waiting for a response (a late one is discarded); an unsent request never goes."""
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is not None and pending.ticket is not None:
            self._drop(pending.ticket)

    def cancel(self, request_id: int, method: str) -> None:
        """Call off a request its caller no longer waits for (§1.7).

        One still queued is withdrawn: it never reaches the server. A turn already sent
        gets a ``cancel`` and stays pending, so its response still settles the session (and
        frees it for its next turn); anything else sent is forgotten.
        """
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is not None and pending.ticket is not None and self._drop(pending.ticket):
            with self._lock:
                self._pending.pop(request_id, None)
            pending.answer(None, MeerkatError("NOT_SENT", f"{method} was withdrawn before it was written"))
        elif method in LONG_RUNNING:
            self.notify("cancel", {"request_id": request_id})
            if pending is not None and pending.maybe_lost:
                # Perhaps the line rkat-rpc cut: then no answer will ever free its session.
                # Settle it now, as a failure whose input may be queued (so the session's
                # next turn first resets the runtime's queue, in case it was not lost).
                with self._lock:
                    unanswered = self._pending.pop(request_id, None)
                if unanswered is not None:
                    unanswered.answer(None, _maybe_lost_error(method))
        else:
            self.forget(request_id)

    def pending_long_running(self) -> Dict[int, str]:
        with self._lock:
            return {i: p.method for i, p in self._pending.items() if p.method in LONG_RUNNING}

    # --- incoming --------------------------------------------------------------------------

    def handle_lines(self, lines: List[bytes]) -> None:
        """One read's lines, on the reader thread: routed, then handed over at once."""
        events = self._events
        events.begin_chunk()
        try:
            done, count = 0, len(lines)
            while done < count:
                done = events.route_lines(lines, done)  # most lines: routed without a decode
                if done < count:
                    self._handle_line(lines[done])
                    done += 1
        finally:
            events.end_chunk()

    def _handle_line(self, line: bytes) -> None:
        try:
            message = self._loads(line)
        except Exception:  # any line that does not decode is skipped, never fatal
            if line.strip():
                # The server logs to stdout (PROTOCOL.md §1.4): noise, never fatal.
                log.info("rkat-rpc stdout: %.2000s", line.decode("utf-8", "replace").rstrip())
            return
        if not isinstance(message, dict):
            log.warning("ignoring a non-object JSON line from rkat-rpc: %.200r", line)
            return
        try:
            self.handle(message)
        except Exception:  # one bad message never stops the others
            log.exception("failed to route a message from rkat-rpc: %.200r", line)

    def handle(self, message: Dict[str, Any]) -> None:
        """Route one parsed message; runs on the reader thread, so it never blocks."""
        method = message.get("method")
        if method is None:
            self._handle_response(message)
        elif not isinstance(method, str):
            log.warning("ignoring a message with a non-string method: %.200r", message)
        elif "id" in message and message["id"] is not None:
            self._dispatch_request(method, message["id"], message.get("params"))
        else:
            params = message.get("params")
            self._on_notification(method, params if isinstance(params, dict) else {})

    def _handle_response(self, message: Dict[str, Any]) -> None:
        request_id = message.get("id")
        with self._lock:
            lost = self._lost_line_candidate(message) if request_id is None else None
            pending: Optional[_Pending]
            if lost is not None:
                pending = lost
            elif request_id is None:
                pending = self._oldest_null_id_candidate()
            elif isinstance(request_id, int) and not isinstance(request_id, bool):
                pending = self._pending.pop(request_id, None)
            else:
                pending = None
        if pending is None:
            if request_id is None:
                log.warning("rkat-rpc sent an error without a request id: %.300r", message.get("error"))
            else:
                log.debug("discarding a response to unknown or abandoned request %r", request_id)
            return
        if lost is not None:
            if lost.ticket is not None:
                # Taken back if it had not started after all: then it will certainly never run.
                self._drop(lost.ticket)
            pending.answer(None, _lost_error(pending.method, message["error"]))
        elif "error" in message:
            pending.answer(None, error_from_rpc(message["error"]))
        elif "result" in message:
            pending.answer(message["result"], None)
        else:
            problem = f"response to {pending.method} has neither result nor error"
            pending.answer(None, MeerkatError("INVALID_RESPONSE", problem))

    def _lost_line_candidate(self, message: Dict[str, Any]) -> Optional[_Pending]:
        """The request whose line rkat-rpc cut and could not parse, if only one can be it.

        Called with the lock held. Only a line sent (in part at least) and longer than
        ``tearable_above`` can have been cut; when several could, none is guessed at (each
        caller's timeout still holds) and the warning below says so.
        """
        if not _is_parse_error(message):
            return None
        suspects = [
            request_id
            for request_id, pending in self._pending.items()
            if pending.ticket is not None
            and pending.ticket.state in (WRITING, WRITTEN)
            and len(pending.ticket.data) > self.tearable_above
        ]
        if len(suspects) > 1:
            for request_id in suspects:
                self._pending[request_id].maybe_lost = True
            log.warning(
                "rkat-rpc could not parse a request line (%s); it lost one of %d requests "
                "in flight, which cannot be told apart: their timeouts still hold",
                message["error"].get("message"),
                len(suspects),
            )
        return self._pending.pop(suspects[0]) if len(suspects) == 1 else None

    def _oldest_null_id_candidate(self) -> Optional[_Pending]:
        # Called with the lock held. ids grow, so the smallest matching id is the oldest.
        for request_id in sorted(self._pending):
            if self._pending[request_id].method in _NULL_ID_METHODS:
                return self._pending.pop(request_id)
        return None

    # --- server -> client requests ---------------------------------------------------------

    def register_handler(self, method: str, handler: Union[TimedHandler, Callable[[Any], Any]]) -> None:
        """Answer ``method`` with ``handler``: a ``TimedHandler`` or ``fn(params) -> result``."""
        self._server_requests.register(method, handler)

    def _dispatch_request(self, method: str, request_id: Any, params: Any) -> None:
        if self._closed is not None:
            return
        self._server_requests.dispatch(method, request_id, params)

    # --- shutdown --------------------------------------------------------------------------

    def fail_oversized(self, head: bytes, size: int) -> None:
        """A line over ``max_message_bytes`` was dropped: fail its request if it was a response."""
        match = _RESPONSE_ID.search(head)
        if match is None or b'"method"' in head[: match.start()]:
            return
        with self._lock:
            pending = self._pending.pop(int(match.group(1)), None)
        if pending is not None:
            pending.answer(
                None,
                MeerkatError(
                    "MESSAGE_TOO_LARGE",
                    f"the response to {pending.method} was {size} bytes, more than "
                    f"max_message_bytes={self._max_message_bytes}; pass a larger "
                    "MeerkatClient(max_message_bytes=...) if replies this big are expected",
                    details={"size": size, "max_message_bytes": self._max_message_bytes},
                ),
            )

    def fail_all(self, error: MeerkatError) -> None:
        """Wake every waiter with ``error``; later requests fail at once with it."""
        with self._lock:
            if self._closed is None:
                self._closed = error
            pending, self._pending = self._pending, {}
        for item in pending.values():
            item.answer(None, error)
        self._server_requests.close()

    @property
    def closed_error(self) -> Optional[MeerkatError]:
        return self._closed


def _is_parse_error(message: Dict[str, Any]) -> bool:
    error = message.get("error")
    return isinstance(error, dict) and error.get("code") == _PARSE_ERROR


def _lost_error(method: str, error: Dict[str, Any]) -> MeerkatError:
    return MeerkatError(
        "REQUEST_LOST",
        f"rkat-rpc lost this {method} request and did not run it: it read the line in two "
        f"pieces and dropped the first ({error.get('message')}), a known rkat-rpc 0.5.0 "
        "fault for long lines sent while it is writing events; send it again",
        details={"rpc_code": _PARSE_ERROR, "rpc_message": error.get("message")},
    )


def _maybe_lost_error(method: str) -> MeerkatError:
    # rpc_code set: the input may sit in the runtime's queue, so the next turn resets it.
    return MeerkatError(
        "REQUEST_LOST",
        f"this {method} request may be the one rkat-rpc lost (it could not parse a line while "
        "several long requests were in flight); it was cancelled in case it was not",
        rpc_code=_PARSE_ERROR,
    )
