"""End to end: ``MeerkatClient()`` downloads, verifies and caches rkat-rpc, then runs a turn.

The release archive holds a shell script standing in for rkat-rpc that starts the scripted
fake runtime and records each start in a marker file, so the tests can tell whether a
binary was ever run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _binary_support import (
    Certs,
    ReleaseServer,
    Target,
    file_member,
    host_target,
    make_tar,
    stand_in_script,
)

from meerkat_sync.errors import MeerkatError

try:
    from meerkat_sync import MeerkatClient
except ImportError as exc:  # pragma: no cover - only while the client is being written
    pytest.skip(f"the client is not importable yet: {exc}", allow_module_level=True)


@pytest.fixture
def target(tmp_path: Path, certs: Certs, server: ReleaseServer, monkeypatch: pytest.MonkeyPatch) -> Target:
    """A process environment where only the download can provide rkat-rpc."""
    found = host_target()
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.delenv("MEERKAT_BIN_PATH", raising=False)
    monkeypatch.delenv("MEERKAT_NO_DOWNLOAD", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("MEERKAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEERKAT_DOWNLOAD_BASE_URL", server.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certs.ca)
    return found


def publish(server: ReleaseServer, target: Target, marker: Path, **kwargs: Any) -> str:
    asset = f"rkat-rpc-0.5.0-{target.triple}.{target.ext}"
    archive = make_tar([file_member(target.binary_name, stand_in_script(marker))])
    server.publish(archive, asset=asset, **kwargs)
    return asset


def cached_files(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_client_downloads_verifies_caches_and_runs_a_turn(
    tmp_path: Path, server: ReleaseServer, target: Target
) -> None:
    marker = tmp_path / "runs"
    asset = publish(server, target, marker)

    with MeerkatClient() as client:
        session = client.create_session("hi")
        assert session.text
    assert server.archive_hits(asset) == 1
    assert runs(marker) == 1
    cached = cached_files(tmp_path / "cache", target.binary_name)
    assert len(cached) == 1

    with MeerkatClient() as client:  # the second client reuses the verified cache
        assert client.create_session("again").text
    assert server.archive_hits(asset) == 1
    assert runs(marker) == 2


def test_client_never_runs_a_binary_that_failed_verification(
    tmp_path: Path, server: ReleaseServer, target: Target
) -> None:
    marker = tmp_path / "runs"
    publish(server, target, marker, listed={})  # checksums.sha256 without our asset
    with pytest.raises(MeerkatError) as info, MeerkatClient():
        pass  # pragma: no cover - connecting must fail
    assert info.value.code == "BINARY_DIGEST_UNAVAILABLE"

    asset = f"rkat-rpc-0.5.0-{target.triple}.{target.ext}"
    publish(server, target, marker, listed={asset: "0" * 64})
    with pytest.raises(MeerkatError) as info, MeerkatClient():
        pass  # pragma: no cover
    assert info.value.code == "BINARY_INTEGRITY_MISMATCH"
    assert runs(marker) == 0
    assert not cached_files(tmp_path / "cache", target.binary_name)


def test_client_replaces_a_tampered_cache_before_running(
    tmp_path: Path, server: ReleaseServer, target: Target
) -> None:
    marker = tmp_path / "runs"
    asset = publish(server, target, marker)
    with MeerkatClient() as client:
        assert client.create_session("hi").text
    (cached,) = cached_files(tmp_path / "cache", target.binary_name)
    evil = tmp_path / "evil-ran"
    cached.write_text(f"#!/bin/sh\ntouch {evil}\nexit 1\n")

    with MeerkatClient() as client:
        assert client.create_session("hi").text
    assert not evil.exists()
    assert server.archive_hits(asset) == 2
    assert runs(marker) == 2


def test_connect_timeout_bounds_a_first_run_download(
    target: Target, server: ReleaseServer, tmp_path: Path
) -> None:
    import time

    publish(server, target, tmp_path / "starts.log", trickle=0.2)  # a byte every 0.2 s
    started = time.monotonic()
    with pytest.raises(MeerkatError) as info:
        MeerkatClient().connect(timeout=1.5)
    assert time.monotonic() - started < 3.5
    assert info.value.code == "BINARY_DOWNLOAD_FAILED" and info.value.details["reason"] == "deadline"
