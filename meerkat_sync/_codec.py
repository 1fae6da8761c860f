"""The wire's JSON: requests encoded, lines decoded, and most event lines routed undecoded.

During a turn almost every line rkat-rpc writes is a ``session/event`` in one exact
compact form (keys sorted, no spaces). To route one, the reader needs only its session
and whether it starts or ends a run. ``mid_run_tail`` reads both off the bytes: the
session is the last field of every such line, and a run's boundaries are the only events
whose type starts with ``run_``. Any line not in that form to the letter, and every
boundary, takes the full decode. The others are decoded only where they are used: by the
stream that reads them (a plain ``turn()`` never decodes its deltas at all).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Optional, Tuple

EVENT_PREFIX = b'{"jsonrpc":"2.0","method":"session/event","params":{"event":{"event_id":"'
#: ``...},"session_id":"<36 chars>"}}``: the envelope closes, then params' last key ends it.
_SESSION = b'},"session_id":"'
_SESSION_AT = len(_SESSION) + 36 + 3
#: An unescaped quote cannot occur inside a JSON string, so this marks an event type.
_BOUNDARY = b'"type":"run_'
_PAYLOAD = b'","payload":{"delta":"'
_PAYLOAD_AT = len(EVENT_PREFIX) + 36


def mid_run_tail(line: bytes) -> Optional[bytes]:
    """The bytes that name the session of an event line in the exact 0.5.0 form that
    neither starts nor ends a run; None for anything else (which the full decode handles).

    Lines of one session share their tail, so a reader decodes it once per read, with
    ``tail_session``. The other fields are not checked: a stream decodes what it reads in
    full (and drops a line, as the reader would, if it is not JSON after all).
    """
    if line.startswith(EVENT_PREFIX) and _BOUNDARY not in line:
        tail = line[-_SESSION_AT:]
        if tail.startswith(_SESSION) and tail.endswith(b'"}}'):
            return tail
    return None


def tail_session(tail: bytes) -> str:
    return tail[-39:-3].decode("ascii", "replace")


def is_delta(line: bytes) -> bool:
    """Whether an event line routed undecoded is a text or reasoning delta (droppable)."""
    return line.startswith(_PAYLOAD, _PAYLOAD_AT)


def _stdlib_loads() -> Callable[[bytes], Any]:
    decoder = json.JSONDecoder()
    scan: Callable[[str, int], Tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    decode = decoder.decode

    def loads(line: bytes) -> Any:
        text = line.decode("utf-8")  # UnicodeDecodeError is a ValueError too
        try:
            value, end = scan(text, 0)
        except StopIteration:
            end = -1
        # Anything unusual (spaces around the value, junk) goes through the ordinary path.
        return value if end == len(text) else decode(text)

    return loads


def line_decoder() -> Callable[[bytes], Any]:
    """``orjson.loads`` when the ``fast`` extra is installed, else the stdlib's scanner."""
    try:
        import orjson  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return _stdlib_loads()
    fast: Callable[[bytes], Any] = orjson.loads
    return fast


def text_delta_reader(decode: Callable[[bytes], Any]) -> Callable[[bytes], Optional[Tuple[int, str]]]:
    """``(seq, delta)`` of an event line whose payload is a plain ``text_delta``, else None.

    It decodes the whole line (so a line that is not JSON is never taken for a delta) and
    reads the two fields a stream needs; every other line goes the general way.
    """

    def read(line: bytes) -> Optional[Tuple[int, str]]:
        if not is_delta(line):
            return None
        try:
            event = decode(line)["params"]["event"]
            payload, seq = event["payload"], event["seq"]
            delta = payload["delta"]
        except Exception:  # not JSON, or not this shape: the general path decides
            return None
        if type(seq) is int and type(delta) is str and payload.get("type") == "text_delta":
            return seq, delta
        return None

    return read


def encode(message: Mapping[str, Any]) -> bytes:
    """One compact JSON line; raises ``TypeError``/``ValueError`` for values JSON cannot hold."""
    return (
        json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        + b"\n"
    )
