"""Framing for the scripted runtime: strict line parsing and one serialised stdout writer.

The real server is serde-based, so inputs Python's json module would accept (NaN, lone
surrogates, out-of-range numbers) are parse errors here too.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import threading
import time
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Union

from meerkat_sync.testing._fake_constants import PARSE_ERROR

JsonDict = Dict[str, Any]

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class RpcError(Exception):
    """An error response a handler wants written for its request.

    ``null_id``: answered with ``"id": null``, as the real handlers that lose the request id
    when its params do not parse (PROTOCOL.md §8.1).
    """

    def __init__(
        self, code: int, message: str, data: Optional[JsonDict] = None, null_id: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.null_id = null_id


#: What a handler returns when it has written its answer itself (or will, later).
HANDLED = object()


class LineError(Exception):
    """A stdin line that is not a well-formed JSON-RPC message (answered with -32700)."""


def uuid7() -> str:
    """A UUIDv7 string, like the ids the Rust server mints (Python 3.9 has no uuid7)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def json_kind(value: Any) -> str:
    """serde's name for the JSON type of ``value``, used in error details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid value: {name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def loads_strict(text: str) -> Any:
    """Parse JSON the way serde_json would accept it; raise ValueError with a short detail."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg.lower()} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(value):
        raise ValueError("lone surrogate in hex escape")
    return value


def encode(message: Any, sort_keys: bool = False) -> bytes:
    """One compact JSON line, UTF-8, no ASCII escaping (like serde_json::to_string).

    Event notifications are written with sorted keys, as the real server writes them.
    """
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    return (text + "\n").encode()


def is_request_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _I64_MIN <= value <= _I64_MAX
    return isinstance(value, str)


def id_key(value: Any) -> Optional[str]:
    """Registry key that keeps the JSON type (``12`` and ``"12"`` differ, §1.7)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"i:{value}"
    if isinstance(value, str):
        return f"s:{value}"
    return None


class IncomingRequest:
    """A client request (``id`` set) or notification (``id`` None)."""

    def __init__(self, method: str, req_id: Any, params: Any, has_params: bool) -> None:
        self.method = method
        self.id = req_id
        self.params = params
        self.has_params = has_params


class IncomingResponse:
    """The client's answer to one of our ``srv-N`` requests."""

    def __init__(self, resp_id: Any, result: Any, has_result: bool, error: Optional[JsonDict]):
        self.id = resp_id
        self.result = result
        self.has_result = has_result
        self.error = error


def parse_message(text: str) -> Union[IncomingRequest, IncomingResponse]:
    """Classify one trimmed line by key presence, as the server does (§1.3)."""
    try:
        obj = loads_strict(text)
    except ValueError as exc:
        raise LineError(str(exc)) from None
    if not isinstance(obj, dict):
        raise LineError(f"invalid type: {json_kind(obj)}, expected a JSON-RPC message object")
    if "jsonrpc" not in obj:
        raise LineError("missing field `jsonrpc`")
    if not isinstance(obj["jsonrpc"], str):
        raise LineError(f"invalid type: {json_kind(obj['jsonrpc'])}, expected a string")
    raw_id = obj.get("id")
    if raw_id is not None and not is_request_id(raw_id):
        raise LineError("data did not match any variant of untagged enum RequestId")
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str):
            raise LineError(f"invalid type: {json_kind(method)}, expected a string")
        return IncomingRequest(method, raw_id, obj.get("params"), "params" in obj)
    error = obj.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise LineError(f"invalid type: {json_kind(error)}, expected struct RpcError")
        code = error.get("code")
        if "code" not in error:
            raise LineError("missing field `code`")
        if isinstance(code, bool) or not isinstance(code, int):
            raise LineError(f"invalid type: {json_kind(code)}, expected i32")
        if "message" not in error:
            raise LineError("missing field `message`")
        if not isinstance(error["message"], str):
            raise LineError(f"invalid type: {json_kind(error['message'])}, expected a string")
    return IncomingResponse(raw_id, obj.get("result"), "result" in obj, error)


def response(req_id: Any, result: Any) -> JsonDict:
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


def error_response(req_id: Any, code: int, message: str, data: Optional[JsonDict] = None) -> JsonDict:
    error: JsonDict = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": error}


def parse_error(detail: str) -> JsonDict:
    return error_response(None, PARSE_ERROR, f"Parse error: {detail}")


class Writer:
    """Serialises every stdout write so lines never interleave; flushes after each.

    With ``event_queue`` set, ``session/event`` notifications go through a bounded queue of
    that many lines that a writer thread drains, and what does not fit is dropped, as the
    real server's 256-slot notification channel does; responses are never queued.
    """

    def __init__(self, stream: IO[bytes], event_queue: Optional[int] = None) -> None:
        self._lock = threading.Lock()
        self._stream = stream
        self._open = True
        self._queue: Optional[Deque[bytes]] = None
        self._capacity = event_queue or 0
        self._queued = threading.Condition()
        #: Sees every notification batch first and returns the lines still to write
        #: (the subscriptions' copies, _fake_streams.StreamHub).
        self.tap: Optional[Callable[[List[bytes]], List[bytes]]] = None
        if event_queue is not None:
            self._queue = collections.deque()
            threading.Thread(target=self._drain, name="notification-writer", daemon=True).start()

    @property
    def is_open(self) -> bool:
        return self._open

    def send(self, message: Any) -> bool:
        return self.write(encode(message))

    def send_event(self, message: Any) -> None:
        """A notification: written at once, or queued (and maybe dropped) with a queue."""
        self.write_events([encode(message, sort_keys=True)])

    def write_events(self, lines: List[bytes]) -> None:
        """Notification lines, in order; with a queue, the ones that do not fit are dropped."""
        if self.tap is not None:
            lines = self.tap(lines)
            if not lines:
                return
        if self._queue is None:
            self.write(b"".join(lines))
            return
        with self._queued:
            room = max(0, self._capacity - len(self._queue))
            self._queue.extend(lines[:room])
            self._queued.notify()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            with self._queued:
                while not self._queue:
                    self._queued.wait()
                line = self._queue.popleft()
            self.write(line)

    def write(self, data: bytes) -> bool:
        """Write bytes (whole lines); False once output is closed or the pipe broke."""
        with self._lock:
            if not self._open:
                return False
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):
                self._open = False
                return False
            return True

    def stop(self) -> None:
        """Drop everything from now on (EOF shutdown writes nothing else, §1.5).

        Lock-free on purpose: a writer blocked on a full pipe must not block shutdown.
        """
        self._open = False

    def close_stdout(self) -> None:
        """Close the pipe for real (the client sees EOF) while the process keeps running."""
        with self._lock:
            if self._open:
                with contextlib.suppress(OSError, ValueError):
                    self._stream.flush()
            self._open = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
            finally:
                os.close(devnull)

    def freeze(self) -> None:
        """Take the lock for good: called right before ``os._exit`` so no line is cut."""
        self._lock.acquire(timeout=1.0)
        self._open = False
