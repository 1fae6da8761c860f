"""Server -> client requests (``srv-N``, §7): sending them and matching the client's answers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Optional, Tuple

from meerkat_sync.testing._fake_wire import IncomingResponse, JsonDict, Writer, json_kind

_POLL_S = 0.02


class PendingCallback:
    """One outstanding request; ``answer`` is filled by the reader thread."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.done = threading.Event()
        self.answer: Optional[IncomingResponse] = None
        self.sent_at = time.monotonic()


class ServerRequests:
    """Process-wide ``srv-<n>`` counter (from 0) and the table of unanswered requests."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._counter = 0
        self._pending: Dict[str, PendingCallback] = {}

    def send(self, method: str, params: JsonDict) -> PendingCallback:
        with self._lock:
            request_id = f"srv-{self._counter}"
            self._counter += 1
            pending = PendingCallback(request_id)
            self._pending[request_id] = pending
        self._writer.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return pending

    def resolve(self, message: IncomingResponse) -> None:
        """Match a client response by exact id (a string); unknown or late ids are dropped silently."""
        if not isinstance(message.id, str):
            return
        with self._lock:
            pending = self._pending.pop(message.id, None)
        if pending is not None:
            pending.answer = message
            pending.done.set()

    def wait(
        self, pending: PendingCallback, timeout_s: float, interrupt: threading.Event, name: str
    ) -> Optional[Tuple[str, bool]]:
        """The tool outcome ``(content, is_error)``, or None if the run was interrupted.

        The time limit counts from the request's send, as each call's own timer does in
        rkat-rpc (the calls of one reply run in parallel).
        """
        deadline = pending.sent_at + timeout_s
        while not pending.done.is_set():
            remaining = deadline - time.monotonic()
            if interrupt.is_set() or remaining <= 0:
                with self._lock:
                    self._pending.pop(pending.id, None)
                if interrupt.is_set():
                    return None
                return failed(f"Callback tool '{name}' timed out after {_secs(timeout_s)}")
            pending.done.wait(min(_POLL_S, remaining))
        assert pending.answer is not None
        return _outcome(pending.answer)


def failed(message: str) -> Tuple[str, bool]:
    """A failed tool call as the model and ``tool_execution_completed`` see it."""
    body = {"error": "execution_failed", "message": f"Tool execution failed: {message}"}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")), True


def _secs(timeout_s: float) -> str:
    return f"{int(timeout_s)}s" if timeout_s == int(timeout_s) else f"{timeout_s:g}s"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _outcome(answer: IncomingResponse) -> Tuple[str, bool]:
    """What rkat-rpc makes of an answer (``callback_dispatcher``): an error wins, then the
    result is read as ``{content: String = "", is_error: bool = false}`` by serde, whose
    messages (with the position in the result's text) are kept."""
    if answer.error is not None:
        return failed(str(answer.error["message"]))
    if not answer.has_result or answer.result is None:  # `"result": null` is no result either
        return failed("Callback response missing result")
    result: Any = answer.result
    if not isinstance(result, dict):
        return failed(_serde_error(result, "struct CallbackResult", 0, result))
    content = result.get("content", "")
    is_error = result.get("is_error", False)
    for key, value, ok, expected in (
        ("content", content, isinstance(content, str), "a string"),
        ("is_error", is_error, isinstance(is_error, bool), "a boolean"),
    ):
        if not ok:
            text = _compact(result)
            # Where serde stops: the value's start for a map or sequence (peeked), its end otherwise.
            start = text.index(_compact(key) + ":") + len(_compact(key)) + 1
            return failed(_serde_error(value, expected, start, value))
    return content, is_error


def _serde_error(value: Any, expected: str, start: int, token: Any) -> str:
    column = start if isinstance(token, (dict, list)) else start + len(_compact(token))
    return (
        f"Failed to parse callback result: invalid type: {json_kind(value)}, expected {expected} "
        f"at line 1 column {column}"
    )
