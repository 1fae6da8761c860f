"""``match`` on typed events (Python 3.10+ syntax; conftest skips this file on 3.9)."""

from __future__ import annotations

from meerkat_sync import TextDelta, TurnCompleted, parse_event

USAGE = {"input_tokens": 5, "output_tokens": 7, "cache_creation_tokens": None, "cache_read_tokens": 2}


def test_pattern_matching_on_events() -> None:
    matched = []
    for raw in (
        {"type": "text_delta", "delta": "chunk"},
        {"type": "turn_completed", "stop_reason": "end_turn", "usage": USAGE},
    ):
        match parse_event(raw):
            case TextDelta(delta=chunk):
                matched.append(chunk)
            case TurnCompleted(usage=u):
                matched.append(u.output_tokens)
    assert matched == ["chunk", 7]
