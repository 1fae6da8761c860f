"""The scripted runtime against the real rkat-rpc 0.5.0: the same scenario, the same observations.

Each scenario of ``_scenarios`` runs on the scripted runtime and is compared, after
normalising ids, timestamps and seq bases, with the real runtime's observation: live
when ``MEERKAT_BIN_PATH`` names a real binary, else the one recorded with the real
transcript in ``tests/transcripts`` (so CI keeps the fake honest without the binary).
Set ``MEERKAT_RECORD_TRANSCRIPTS=1`` with a real binary to record them anew.
Differences found and how each was resolved: ``docs/scripted-runtime.rst``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from _observe import differences
from _scenarios import SCENARIOS
from conftest import HAVE_REAL, REAL_BIN

from meerkat_sync.testing import real_client, scripted_client
from meerkat_sync.testing._real_runtime import DEFAULT_REALM

TRANSCRIPTS = Path(__file__).parent / "transcripts"
TAP = Path(__file__).parent / "_wire_tap.py"
RECORD = os.environ.get("MEERKAT_RECORD_TRANSCRIPTS") == "1"
TIMEOUTS: Dict[str, Any] = {"request_timeout": 20.0, "turn_timeout": 60.0}


def scripted_observation(name: str) -> Any:
    with scripted_client(**TIMEOUTS).connect(realm_id=DEFAULT_REALM) as client:
        return SCENARIOS[name](client)


def live_observation(name: str) -> Any:
    """Run the scenario on the real runtime; record its transcript when asked to."""
    if not RECORD:
        with real_client(**TIMEOUTS) as client:
            return SCENARIOS[name](client)
    TRANSCRIPTS.mkdir(exist_ok=True)
    wire = TRANSCRIPTS / f"{name}.wire"
    with real_client(command=[sys.executable, str(TAP), str(wire), "--", REAL_BIN], **TIMEOUTS) as client:
        observation = SCENARIOS[name](client)
        version = client.server_version
    header = {
        "scenario": name,
        "server_version": version,
        "recorded": datetime.date.today().isoformat(),
        "note": "output of a real rkat-rpc, recorded by tests/test_differential.py; data, not code",
        "observation": observation,
    }
    with open(TRANSCRIPTS / f"{name}.jsonl", "w", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        out.write(wire.read_text(encoding="utf-8"))
    wire.unlink()
    return observation


def recorded_observation(name: str) -> Any:
    path = TRANSCRIPTS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"no recorded real transcript for {name!r} and no real rkat-rpc (MEERKAT_BIN_PATH)")
    with open(path, encoding="utf-8") as handle:
        return json.loads(handle.readline())["observation"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_scripted_runtime_observes_what_the_real_one_does(name: str) -> None:
    real = live_observation(name) if HAVE_REAL else recorded_observation(name)
    found = differences(scripted_observation(name), real)
    assert not found, "the scripted runtime differs from the real one:\n" + "\n".join(found)


def test_every_scenario_has_a_recorded_real_transcript() -> None:
    missing = [n for n in SCENARIOS if not (TRANSCRIPTS / f"{n}.jsonl").exists()]
    assert not missing, f"record them with a real binary: MEERKAT_RECORD_TRANSCRIPTS=1 ({missing})"
