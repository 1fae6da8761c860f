"""What an installed meerkat-sync gives a user's tools: type information, metadata, the CLI."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import meerkat_sync

USER_FILE = '''\
from typing import Optional

from meerkat_sync import MeerkatClient, RunResult, TextDelta
from meerkat_sync.testing import scripted_client


def last_text(client: MeerkatClient) -> Optional[str]:
    result: Optional[RunResult] = client.create_session("hi").last_result
    return result.text if result is not None else None


def deltas() -> int:
    with scripted_client() as client:
        return sum(isinstance(e, TextDelta) for e in client.create_session_streaming("hi"))


reveal_type(MeerkatClient().connect)
wrong: str = MeerkatClient().pid  # the one error: the package's types are real, not Any
'''


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the package is type-checked in mypy's 3.10 mode")
def test_mypy_strict_sees_the_installed_package_from_a_user_project(tmp_path: Path) -> None:
    """Whatever the install mode (CI uses the README's ``pip install -e .``), a type checker
    run from an unrelated directory finds the package and its ``py.typed``."""
    (tmp_path / "app.py").write_text(USER_FILE)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert "import-not-found" not in out.stdout, (
        "mypy cannot see meerkat_sync: reinstall it with `pip install -e .` from this checkout\n" + out.stdout
    )
    assert 'Revealed type is "def (' in out.stdout, out.stdout
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("app.py:18: error: Incompatible types"), out.stdout
    assert (Path(meerkat_sync.__file__).parent / "py.typed").is_file()


def test_the_metadata_promises_what_the_package_ships() -> None:
    dist = metadata.distribution("meerkat-sync")
    assert dist.metadata["License"] == "MIT"
    assert dist.metadata["Requires-Python"] == ">=3.9"
    versions = {c.rsplit(" :: ", 1)[-1] for c in dist.metadata.get_all("Classifier") or []}
    assert {"3.9", "3.10", "3.11", "3.12", "3.13"} <= versions
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts["meerkat-sync"] == "meerkat_sync.__main__:main"
    assert (Path(sys.executable).parent / "meerkat-sync").exists()
