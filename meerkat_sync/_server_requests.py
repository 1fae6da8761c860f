"""Requests *from* rkat-rpc (``tool/execute``, §7): a bounded pool, and one answer for each.

The reader thread only hands a request over, so it never waits for user code. Handlers run
on at most ``workers`` threads; a handler may call the client (a nested turn on another
session), because the responses it waits for are read by the reader thread, which no
handler ever holds. A handler can give each request a time limit, counted from its arrival:
at the limit its ``timed_out`` answer is sent (whether the request was still queued or its
handler still running) and whatever the handler returns later is discarded. A Python
thread cannot be killed, so a handler past its limit keeps its worker until it returns.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._codec import encode
from ._writer import Ticket
from .errors import MeerkatError

log = logging.getLogger("meerkat_sync")

#: The worker threads' name prefix (shown in tracebacks and thread dumps).
THREAD_PREFIX = "meerkat-callback"

Sender = Callable[[Ticket], None]


class TimedHandler:
    """What the pool runs for one method; a plain ``fn(params) -> result`` has no time limit."""

    def run(self, params: Any) -> Any:
        """The result to answer with (on a worker thread); an exception answers -32603."""
        raise NotImplementedError

    def time_limit(self, params: Any) -> Optional[float]:
        """Seconds from arrival after which ``timed_out`` answers instead; None: no limit."""
        return None

    def timed_out(self, params: Any, limit: float, started: bool) -> Any:
        """The result sent at the limit (``started``: whether the handler had begun)."""
        raise NotImplementedError


class _Plain(TimedHandler):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    def run(self, params: Any) -> Any:
        return self._fn(params)


class _Request:
    __slots__ = ("answered", "deadline", "handler", "id", "limit", "method", "params", "started")

    def __init__(self, method: str, request_id: Any, params: Any, handler: TimedHandler) -> None:
        self.method = method
        self.id = request_id
        self.params = params
        self.handler = handler
        self.limit: Optional[float] = None
        self.deadline = 0.0
        self.started = False
        self.answered = False


class ServerRequests:
    """Runs server requests on a bounded pool; each gets exactly one well-formed answer."""

    def __init__(self, send: Sender, workers: int) -> None:
        self._send = send
        self._workers = workers
        self._handlers: Dict[str, TimedHandler] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._timers: List[Tuple[float, int, _Request]] = []
        self._order = itertools.count()
        self._watcher: Optional[threading.Thread] = None
        self._closed = False

    def register(self, method: str, handler: Union[TimedHandler, Callable[[Any], Any]]) -> None:
        """Serve ``method`` with a :class:`TimedHandler` or a plain ``fn(params) -> result``."""
        self._handlers[method] = handler if isinstance(handler, TimedHandler) else _Plain(handler)

    def dispatch(self, method: str, request_id: Any, params: Any) -> None:
        """Hand one request over; called on the reader thread, so it never blocks."""
        handler = self._handlers.get(method)
        if handler is None:
            self._reply(request_id, method, error={"code": -32601, "message": f"Method not found: {method}"})
            return
        request = _Request(method, request_id, params, handler)
        try:
            request.limit = handler.time_limit(params)
        except Exception:  # a handler bug must not stop the reader
            log.exception("time_limit of the %s handler failed", method)
        with self._lock:
            if self._closed:
                return
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix=THREAD_PREFIX
                )
            if request.limit is not None:
                request.deadline = time.monotonic() + request.limit
                heapq.heappush(self._timers, (request.deadline, next(self._order), request))
                self._start_watcher()
                self._wake.notify()
            executor = self._executor
        try:
            executor.submit(self._work, request)
        except RuntimeError:  # shut down while we were here: the connection is gone
            log.debug("not answering %s %r: the client is closing", method, request_id)

    def close(self) -> None:
        """Stop taking requests; queued ones are dropped, running handlers finish unheard."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            self._timers.clear()
            self._wake.notify_all()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # --- answering -------------------------------------------------------------------------

    def _claim(self, request: _Request) -> bool:
        """True for the one caller (handler or timer) whose answer is sent."""
        with self._lock:
            if request.answered:
                return False
            request.answered = True
            return True

    def _work(self, request: _Request) -> None:
        with self._lock:
            if request.answered:  # its time ran out while it waited for a worker
                log.warning(
                    "server request %s %r was answered at its time limit before a worker was free "
                    "(all %d busy); its handler was not run",
                    request.method, request.id, self._workers,
                )
                return
            request.started = True
        result: Any = None
        error: Optional[Dict[str, Any]] = None
        try:
            result = request.handler.run(request.params)
        except Exception as exc:
            log.exception("handler for server request %s failed", request.method)
            error = {"code": -32603, "message": f"{type(exc).__name__}: {exc}"}
        if not self._claim(request):
            log.warning(
                "the %s handler for request %r returned after its %gs time limit; its answer was "
                "already sent and this result is discarded",
                request.method, request.id, request.limit or 0.0,
            )
            return
        if error is not None:
            self._reply(request.id, request.method, error=error)
        else:
            self._reply(request.id, request.method, result=result)

    def _expire(self, request: _Request) -> None:
        if not self._claim(request):
            return
        try:
            assert request.limit is not None
            result = request.handler.timed_out(request.params, request.limit, request.started)
        except Exception as exc:
            log.exception("timed_out of the %s handler failed", request.method)
            self._reply(request.id, request.method, error={"code": -32603, "message": f"timed out: {exc}"})
            return
        self._reply(request.id, request.method, result=result)

    def _reply(
        self, request_id: Any, method: str, *, result: Any = None, error: Optional[Dict[str, Any]] = None
    ) -> None:
        # Always "jsonrpc" and the id exactly as sent: rkat-rpc waits out its 30 s timeout
        # for a call whose answer it cannot parse.
        reply: Dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if error is not None:
            reply["error"] = error
        else:
            reply["result"] = result
        try:
            data = encode(reply)
        except (TypeError, ValueError) as exc:
            problem = {"code": -32603, "message": f"unencodable result: {exc}"}
            data = encode({"jsonrpc": "2.0", "id": request_id, "error": problem})
        try:
            self._send(Ticket(data))
        except MeerkatError as exc:
            log.debug("could not answer server request %s: %s", method, exc)

    # --- the time limits -------------------------------------------------------------------

    def _start_watcher(self) -> None:
        # Called with the lock held.
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"{THREAD_PREFIX}-timer", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                while not self._closed:
                    while self._timers and self._timers[0][2].answered:
                        heapq.heappop(self._timers)  # answered in time: nothing to do
                    if not self._timers:
                        self._wake.wait()
                        continue
                    left = self._timers[0][0] - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._closed:
                    return
                request = heapq.heappop(self._timers)[2]
            self._expire(request)
