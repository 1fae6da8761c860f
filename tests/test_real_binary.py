"""End to end against a real rkat-rpc, when MEERKAT_BIN_PATH points at one.

The scripted runtime stands in for the binary everywhere else; this test is the check
that the client works unchanged against the real thing. A real turn needs provider
credentials in the environment (e.g. ANTHROPIC_API_KEY); without them the test still
checks the handshake and a deferred session, which call no model.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from meerkat_sync import MeerkatClient, MeerkatError, TextDelta

BIN = os.environ.get("MEERKAT_BIN_PATH", "")

pytestmark = [
    pytest.mark.real_binary,
    pytest.mark.skipif(
        not BIN or not os.path.isfile(BIN),
        reason="no real rkat-rpc: set MEERKAT_BIN_PATH to an rkat-rpc 0.5.0 binary to run this test",
    ),
]


def test_handshake_and_deferred_session_against_the_real_binary() -> None:
    with MeerkatClient(request_timeout=30) as client:
        assert client.server_version and client.has_capability("sessions")
        deferred = client.create_deferred_session("Say hello in one word.")
        assert client.read_session(deferred.id).message_count == 0
        assert deferred.history().messages == []
        deferred.archive()


@pytest.mark.skipif(
    not any(os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")),
    reason="a real turn needs provider credentials (ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY)",
)
def test_a_real_streamed_turn() -> None:
    with MeerkatClient(turn_timeout=180) as client:
        stream = client.create_session_streaming("Reply with the single word: meerkat")
        with stream:
            deltas = [e.delta for e in stream if isinstance(e, TextDelta)]
        assert "".join(deltas).strip() and stream.result.text
        session = stream.session
        assert session is not None
        try:
            assert session.turn("And again, one word.").text
        finally:
            with contextlib.suppress(MeerkatError):
                session.archive()
