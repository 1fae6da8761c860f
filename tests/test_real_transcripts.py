"""Real rkat-rpc output, replayed through the client in CI after the binary is gone.

Each file in ``tests/transcripts`` is a wire transcript of a scenario run against a real
rkat-rpc 0.5.0 (both directions, recorded by ``test_differential``), headed by what the
client observed then. The replay peer answers the client with exactly those server
lines; the scenario must observe exactly the same again, so any change in how the client
reads real output shows up here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _scenarios import SCENARIOS

from meerkat_sync import MeerkatClient

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.jsonl"))
PEER = Path(__file__).parent / "_transcript_peer.py"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_recorded_real_output_gives_the_same_observations(path: Path) -> None:
    with open(path, encoding="utf-8") as handle:
        header = json.loads(handle.readline())
    assert header["server_version"] == "0.5.0"
    command = [sys.executable, str(PEER), str(path)]
    with MeerkatClient(command=command, request_timeout=20, turn_timeout=60) as client:
        assert client.server_version == "0.5.0"
        observed = SCENARIOS[header["scenario"]](client)
    assert observed == header["observation"]
