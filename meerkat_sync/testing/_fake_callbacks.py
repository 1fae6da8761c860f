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
        """Match a client response by exact id (a string); unknown ids are dropped (§1.5)."""
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
        """The tool outcome ``(content, is_error)``, or None if the run was interrupted."""
        deadline = time.monotonic() + timeout_s
        while not pending.done.is_set():
            remaining = deadline - time.monotonic()
            if interrupt.is_set() or remaining <= 0:
                with self._lock:
                    self._pending.pop(pending.id, None)
                if interrupt.is_set():
                    return None
                return f"Callback tool '{name}' timed out after {_secs(timeout_s)}", True
            pending.done.wait(min(_POLL_S, remaining))
        assert pending.answer is not None
        return _outcome(pending.answer)


def _secs(timeout_s: float) -> str:
    return f"{int(timeout_s)}s" if timeout_s == int(timeout_s) else f"{timeout_s:g}s"


def _outcome(answer: IncomingResponse) -> Tuple[str, bool]:
    if answer.error is not None:
        failed = {"error": "execution_failed", "message": f"Tool execution failed: {answer.error['message']}"}
        return json.dumps(failed, ensure_ascii=False, separators=(",", ":")), True
    if not answer.has_result:
        return "Callback response has neither result nor error", True
    result: Any = answer.result
    if not isinstance(result, dict):
        return (
            f"Failed to parse callback result: invalid type: {json_kind(result)}, "
            "expected struct CallbackResult",
            True,
        )
    content = result.get("content", "")
    is_error = result.get("is_error", False)
    if content is None:
        content = ""
    if not isinstance(content, str):
        return (
            f"Failed to parse callback result: invalid type: {json_kind(content)}, expected a string",
            True,
        )
    if not isinstance(is_error, bool):
        return (
            f"Failed to parse callback result: invalid type: {json_kind(is_error)}, expected a boolean",
            True,
        )
    return content, is_error
