"""The undecoded fast path agrees with the full decode, fuzzed with hypothesis.

The reader's routing (``mid_run_tail``, read as a session) may only ever be a shortcut:
whenever it names a session, the full
decode of that line must be a ``session/event`` of that session whose type neither starts
nor ends a run (or not JSON at all, which a stream then drops, as the reader would).
"""

from __future__ import annotations

import json
from typing import Any, Dict

from hypothesis import given, settings
from hypothesis import strategies as st

from meerkat_sync._codec import (
    _stdlib_loads,
    is_delta,
    line_decoder,
    mid_run_tail,
    tail_session,
    text_delta_reader,
)
from meerkat_sync._converter import structure_event
from meerkat_sync.events import TextDelta

UUID = st.uuids().map(str)
KINDS = [
    "text_delta",
    "reasoning_delta",
    "turn_started",
    "text_complete",
    "tool_call_requested",
    "turn_completed",
    "run_started",
    "run_completed",
    "run_failed",
    "tool_config_changed",
]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def events(draw: Any) -> Dict[str, Any]:
    session = draw(UUID)
    payload = {"type": draw(st.sampled_from(KINDS))}
    if payload["type"].endswith("_delta"):
        payload["delta"] = draw(TEXT)
    payload.update(draw(st.dictionaries(st.sampled_from(["args", "usage", "content", "type2"]), JSON_VALUES)))
    envelope = {
        "event_id": draw(UUID),
        "payload": payload,
        "seq": draw(st.integers(0, 2**63 - 1)),
        "source_id": f"session:{session}",
        "timestamp_ms": draw(st.integers(0, 2**63 - 1)),
    }
    return {"jsonrpc": "2.0", "method": "session/event", "params": {"event": envelope, "session_id": session}}


def mid_run_session(line: bytes) -> Any:
    """What the reader's routing takes from a line: its session, or None (full decode)."""
    tail = mid_run_tail(line)
    return None if tail is None else tail_session(tail)


def wire(message: Dict[str, Any]) -> bytes:
    """As rkat-rpc 0.5.0 writes it: compact, keys sorted (serde's BTreeMap order)."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def expected_session(line: bytes) -> Any:
    """What routing needs from the full decode: the session, if the event is mid-run."""
    message = json.loads(line)
    if message.get("method") != "session/event":
        return None
    params = message["params"]
    kind = params["event"]["payload"]["type"]
    return None if kind.startswith("run_") else params["session_id"]


@settings(max_examples=400, deadline=None)
@given(events())
def test_exact_event_lines_are_read_as_the_full_decode_reads_them(message: Dict[str, Any]) -> None:
    line = wire(message)
    kind = message["params"]["event"]["payload"]["type"]
    assert mid_run_session(line) == (None if kind.startswith("run_") else message["params"]["session_id"])
    if mid_run_session(line) is not None:  # droppable when full: the payload leads with its delta
        assert is_delta(line) == (min(message["params"]["event"]["payload"]) == "delta")


@settings(max_examples=400, deadline=None)
@given(events(), st.integers(0, 10_000), st.binary(min_size=0, max_size=4), st.integers(0, 4))
def test_any_edit_of_a_line_is_either_still_right_or_left_to_the_full_decode(
    message: Dict[str, Any], where: int, insert: bytes, delete: int
) -> None:
    line = wire(message)
    at = where % (len(line) + 1)
    edited = line[:at] + insert + line[at + delete :]
    session = mid_run_session(edited)
    if session is None:
        return  # the full decode handles it
    try:
        decoded = expected_session(edited)
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # not a valid event: a stream reading it drops it, as the reader would
    assert decoded == session


def general_delta(line: bytes) -> Any:
    """What a stream's general path makes of a line: ``(seq, delta)`` if a text delta."""
    try:
        envelope = json.loads(line)["params"]["event"]
    except (ValueError, KeyError, TypeError):
        return None
    payload = envelope.get("payload") if type(envelope) is dict else None
    event = structure_event(payload if type(payload) is dict else {})
    seq = envelope.get("seq") if type(envelope) is dict else None
    return (seq, event.delta) if type(event) is TextDelta and type(seq) is int else None


READERS = [text_delta_reader(_stdlib_loads()), text_delta_reader(line_decoder())]


@settings(max_examples=400, deadline=None)
@given(events(), st.integers(0, 10_000), st.binary(min_size=0, max_size=4), st.integers(0, 4))
def test_a_streams_delta_shortcut_types_a_line_as_the_general_path_does(
    message: Dict[str, Any], where: int, insert: bytes, delete: int
) -> None:
    line = wire(message)
    at = where % (len(line) + 1)
    for candidate in (line, line[:at] + insert + line[at + delete :]):
        expected = general_delta(candidate)
        for read in READERS:
            got = read(candidate)
            assert got is None or got == expected
    if is_delta(line) and message["params"]["event"]["payload"]["type"] == "text_delta":
        assert all(read(line) == general_delta(line) for read in READERS)  # exact lines: taken


@settings(max_examples=200, deadline=None)
@given(events())
def test_other_spellings_take_the_full_decode(message: Dict[str, Any]) -> None:
    spaced = json.dumps(message, sort_keys=True).encode()  # spaces after separators
    unsorted = json.dumps(dict(reversed(list(message.items()))), separators=(",", ":")).encode()
    escaped = wire(message).replace(b'"session_id"', b'"session\\u005fid"')
    for line in (spaced, unsorted, escaped):
        assert mid_run_session(line) is None


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from(["", " ", "\t", "\r"]))
def test_the_stdlib_line_decoder_is_json_loads(value: Any, pad: str) -> None:
    text = pad + json.dumps(value, ensure_ascii=False) + pad
    assert _stdlib_loads()(text.encode()) == json.loads(text)


def test_the_real_servers_lines_take_the_fast_path() -> None:
    from pathlib import Path

    fast = slow = 0
    for path in (Path(__file__).parent / "transcripts").glob("*.jsonl"):
        for raw in path.read_text(encoding="utf-8").splitlines()[1:]:
            entry = json.loads(raw)
            line = entry["line"].encode()
            if entry["dir"] != "<" or not line.startswith(b'{"jsonrpc":"2.0","method":"session/event"'):
                continue
            got = mid_run_session(line)
            assert got == expected_session(line)
            fast, slow = fast + (got is not None), slow + (got is None)
    assert fast > slow > 0  # most real event lines skip the decode (here: short runs)
    assert line_decoder()(b'{"a": 1}') == {"a": 1}
