"""The verified download against a real HTTPS release server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from _binary_support import (
    ASSET,
    LINUX,
    RELEASE,
    REPO_ROOT,
    WINDOWS,
    ZIP_ASSET,
    Certs,
    ReleaseServer,
    Route,
    file_member,
    host_target,
    isolated_env,
    leftovers,
    make_settings,
    make_tar,
    make_tar_with_zeros_first,
    make_zip,
    seed_cache,
    sha256,
    stand_in_script,
)

from meerkat_sync._binary import DownloadSettings, Resolution, cache_entry, resolve_rkat_rpc
from meerkat_sync._digests import PinnedDigest
from meerkat_sync._download import TEMP_PREFIX
from meerkat_sync.errors import MeerkatError


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests reads proxy variables from os.environ: keep 127.0.0.1 direct."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def plain_server() -> Iterator[ReleaseServer]:
    srv = ReleaseServer(None)
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    return isolated_env(empty)


@pytest.fixture
def settings(tmp_path: Path, server: ReleaseServer, certs: Certs) -> DownloadSettings:
    return make_settings(tmp_path / "cache", server.base_url, certs.ca)


BINARY = stand_in_script()


def good_archive(binary: bytes = BINARY) -> bytes:
    return make_tar([file_member("rkat-rpc", binary)])


MIB = 1024 * 1024
GIB = 1024 * MIB


def resolve(env: dict[str, str], settings: DownloadSettings, **options: Any) -> Resolution:
    return resolve_rkat_rpc(environ=env, settings=settings, **options)


def fails(
    env: dict[str, str], settings: DownloadSettings, code: str, **options: Any
) -> MeerkatError:
    with pytest.raises(MeerkatError) as info:
        resolve(env, settings, **options)
    assert info.value.code == code, info.value
    assert not os.path.exists(cache_entry(settings, LINUX).binary)
    assert leftovers(settings, LINUX) == [], "a failed download left files behind"
    return info.value


# --------------------------------------------------------------------------- success


def test_download_verifies_installs_and_then_uses_the_cache(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    first = resolve(env, settings)
    assert first.source == "download"
    assert first.path == cache_entry(settings, LINUX).binary
    assert Path(first.path).read_bytes() == BINARY
    assert os.access(first.path, os.X_OK)
    assert sha256(good_archive()) in first.detail
    assert (server.checksum_hits(), server.archive_hits()) == (1, 1)
    assert leftovers(settings, LINUX) == ["rkat-rpc", "rkat-rpc.manifest.json"]

    second = resolve(env, settings)
    assert (second.path, second.source) == (first.path, "cache")
    assert (server.checksum_hits(), server.archive_hits()) == (1, 1)


def test_https_redirects_are_followed(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive()
    server.publish(archive)
    server.routes["/storage/blob"] = Route(body=archive)
    server.routes[RELEASE + ASSET] = Route(redirect=server.url("/storage/blob"))
    assert resolve(env, settings).source == "download"
    assert server.hits["/storage/blob"] == 1


def test_windows_zip_archive(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = make_zip([file_member("rkat-rpc.exe", b"MZ fake exe")])
    server.publish(archive, asset=ZIP_ASSET)
    windows = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                            system="Windows", machine="AMD64")
    found = resolve(env, windows)
    assert found.path == cache_entry(windows, WINDOWS).binary
    assert found.path.endswith("rkat-rpc.exe")
    assert Path(found.path).read_bytes() == b"MZ fake exe"


def test_other_archive_members_are_ignored(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(make_tar([
        ("./", b"", "dir", ""),
        file_member("./rkat-rpc", BINARY),
        file_member("LICENSE", b"MIT"),
    ]))
    found = resolve(env, settings)
    assert Path(found.path).read_bytes() == BINARY
    assert not (Path(found.path).parent / "LICENSE").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str], tmp_path: Path
) -> None:
    big = os.urandom(3 * 1024 * 1024)  # random data does not compress: a 3 MiB archive
    server.publish(good_archive(big))
    terminal = _Terminal()
    with_tty = make_settings(tmp_path / "c1", settings.base_url, settings.verify,
                             progress_stream=terminal)
    resolve(env, with_tty)
    shown = terminal.getvalue()
    assert "Downloading rkat-rpc 0.5.0" in shown and "100%" in shown and shown.endswith("\n")

    pipe = io.StringIO()
    resolve(env, make_settings(tmp_path / "c2", settings.base_url, settings.verify,
                               progress_stream=pipe))
    assert pipe.getvalue() == ""


# --------------------------------------------------------------------------- integrity


def test_digest_mismatch_installs_and_runs_nothing(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    archive = good_archive(stand_in_script(marker))
    server.publish(archive, listed={ASSET: "f" * 64})
    error = fails(env, settings, "BINARY_INTEGRITY_MISMATCH")
    assert error.details["expected_sha256"] == "f" * 64
    assert error.details["actual_sha256"] == sha256(archive)
    assert error.details["url"] == server.url(RELEASE + ASSET)
    assert "f" * 64 in error.message and sha256(archive) in error.message
    assert not marker.exists()


def test_missing_checksum_entry_downloads_nothing(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive(), listed={"rkat-rpc-0.5.0-aarch64-apple-darwin.tar.gz": "a" * 64})
    error = fails(env, settings, "BINARY_DIGEST_UNAVAILABLE")
    assert error.details["url"] == server.url(RELEASE + "checksums.sha256")
    assert ASSET in error.message
    assert server.archive_hits() == 0


def test_missing_checksums_file(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    del server.routes[RELEASE + "checksums.sha256"]
    error = fails(env, settings, "BINARY_DIGEST_UNAVAILABLE")
    assert error.details["status"] == 404
    assert server.archive_hits() == 0


def test_conflicting_checksum_entries(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive()
    server.publish(archive)
    server.routes[RELEASE + "checksums.sha256"] = Route(
        body=f"{sha256(archive)}  ./a/{ASSET}\n{'e' * 64}  ./b/{ASSET}\n".encode())
    fails(env, settings, "BINARY_DIGEST_UNAVAILABLE")


def test_pinned_digest_wins_over_checksums(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str], tmp_path: Path
) -> None:
    archive = good_archive()
    server.publish(archive, listed={ASSET: "0" * 64})  # checksums.sha256 is wrong
    pinned = {LINUX.triple: PinnedDigest(ASSET, sha256(archive), sha256(BINARY))}
    good = make_settings(tmp_path / "c1", settings.base_url, settings.verify, pinned=pinned)
    assert resolve(env, good).source == "download"
    assert server.checksum_hits() == 0

    server.publish(archive)  # checksums.sha256 is right, the pin says otherwise
    wrong = {LINUX.triple: PinnedDigest(ASSET, "9" * 64)}
    bad = make_settings(tmp_path / "c2", settings.base_url, settings.verify, pinned=wrong)
    error = fails(env, bad, "BINARY_INTEGRITY_MISMATCH")
    assert error.details["digest_source"] == "pinned"


def test_pinned_binary_digest_is_checked_too(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive()
    server.publish(archive)
    pinned = {LINUX.triple: PinnedDigest(ASSET, sha256(archive), "7" * 64)}
    strict = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                           pinned=pinned)
    error = fails(env, strict, "BINARY_INTEGRITY_MISMATCH")
    assert error.details["actual_sha256"] == sha256(BINARY)


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ([file_member("../rkat-rpc", BINARY)], "outside"),
        ([file_member("rkat-rpc", BINARY), file_member("../../escaped", b"x")], "outside"),
        ([file_member("/tmp/rkat-rpc", BINARY)], "absolute"),
        ([("rkat-rpc", b"", "symlink", "/bin/sh")], "link"),
        ([file_member("rkat-rpc", BINARY), ("evil", b"", "symlink", "../../x")], "link"),
        ([file_member("other", BINARY), ("rkat-rpc", b"", "hardlink", "other")], "link"),
        ([("rkat-rpc", b"", "fifo", "")], "not a regular file"),
        ([file_member("bin/rkat-rpc", BINARY)], "no 'rkat-rpc'"),
        ([file_member("rkat-rpc", BINARY), file_member("./rkat-rpc", BINARY)], "more than once"),
        ([file_member("rkat-rpc", b"")], "empty"),
    ],
    ids=["traversal", "traversal-beside", "absolute", "symlink", "symlink-beside", "hardlink",
         "fifo", "nested", "duplicate", "empty"],
)
def test_unsafe_or_unexpected_archives_are_refused(
    members: List[Any], problem: str, server: ReleaseServer, settings: DownloadSettings,
    env: dict[str, str], tmp_path: Path,
) -> None:
    server.publish(make_tar(members))  # the digest matches: only the layout is wrong
    error = fails(env, settings, "BINARY_ARCHIVE_INVALID")
    assert problem in error.message
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "rkat-rpc").exists()
    assert not Path(settings.cache_root, "bin", "rkat-rpc", "escaped").exists()


def test_zip_symlink_and_traversal_are_refused(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    windows = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                            system="Windows", machine="AMD64")
    for members in ([("rkat-rpc.exe", b"", "symlink", "C:/Windows/notepad.exe")],
                    [file_member("..\\rkat-rpc.exe", b"MZ")]):
        server.publish(make_zip(members), asset=ZIP_ASSET)
        with pytest.raises(MeerkatError) as info:
            resolve(env, windows)
        assert info.value.code == "BINARY_ARCHIVE_INVALID"
        assert leftovers(windows, WINDOWS) == []


def test_corrupt_archive_with_matching_digest(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(b"\x1f\x8b not really gzip")
    fails(env, settings, "BINARY_ARCHIVE_INVALID")


# --------------------------------------------------------------------------- unpacking work


def test_a_huge_member_before_the_binary_is_refused_from_its_header(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    """3 GiB of zeros ahead of the binary, in a 3 MiB archive (skipping it took 11.6 s of CPU)."""
    server.publish(make_tar_with_zeros_first("decoy", 3 * GIB, [file_member("rkat-rpc", BINARY)]))
    cpu = time.process_time()
    error = fails(env, settings, "BINARY_ARCHIVE_INVALID")
    assert time.process_time() - cpu < 1.0
    assert "member 'decoy' unpacks past the" in error.message
    assert error.details["max_unpacked_bytes"] == settings.max_unpacked_bytes


@pytest.mark.parametrize(("decoy_mib", "installed"), [(4, True), (16, False)])
def test_members_before_the_binary_count_towards_the_unpacking_limit(
    decoy_mib: int, installed: bool, server: ReleaseServer, settings: DownloadSettings,
    env: dict[str, str],
) -> None:
    server.publish(make_tar_with_zeros_first(
        "docs.bin", decoy_mib * MIB, [file_member("rkat-rpc", BINARY)]))
    small = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_unpacked_bytes=8 * MIB)
    if installed:
        assert Path(resolve(env, small).path).read_bytes() == BINARY
    else:
        error = fails(env, small, "BINARY_ARCHIVE_INVALID")
        assert f"{8 * MIB}-byte limit on unpacked data" in error.message


def test_data_hidden_in_headers_counts_towards_the_unpacking_limit(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    """A 2 MiB member name lives in a pax header, read before the member is even seen."""
    server.publish(make_tar([file_member("x" * (2 * MIB), b""), file_member("rkat-rpc", BINARY)]))
    small = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_unpacked_bytes=1 * MIB)
    error = fails(env, small, "BINARY_ARCHIVE_INVALID")
    assert "the archive unpacks past the" in error.message


def test_zip_members_other_than_the_binary_are_never_read(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    readme = b"R" * 100_000
    archive = make_zip([file_member("README.txt", readme), file_member("rkat-rpc.exe", b"MZ")])
    server.publish(archive.replace(readme, b"X" * len(readme)), asset=ZIP_ASSET)  # bad CRC
    windows = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                            system="Windows", machine="AMD64")
    assert Path(resolve(env, windows).path).read_bytes() == b"MZ"


# --------------------------------------------------------------------------- size, time, HTTP


def test_oversized_archive_by_declared_length(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive()
    server.publish(archive)
    small = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_archive_bytes=len(archive) - 1)
    error = fails(env, small, "BINARY_DOWNLOAD_TOO_LARGE")
    assert error.details["declared"] == len(archive)


def test_oversized_archive_without_declared_length(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive(os.urandom(256 * 1024))
    server.publish(archive, content_length=-1)
    small = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_archive_bytes=64 * 1024)
    error = fails(env, small, "BINARY_DOWNLOAD_TOO_LARGE")
    assert error.details["declared"] is None


def test_oversized_binary_inside_the_archive(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(make_tar([file_member("rkat-rpc", b"\0" * 100_000)]))  # compresses well
    small = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_binary_bytes=50_000)
    error = fails(env, small, "BINARY_ARCHIVE_INVALID")
    assert "100000 bytes" in error.message


def test_truncated_body(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive(os.urandom(100_000))
    server.publish(archive, close_after=1000)
    error = fails(env, settings, "BINARY_DOWNLOAD_FAILED")
    assert error.details["url"] == server.url(RELEASE + ASSET)


@pytest.mark.parametrize("where", ["headers", "body"])
def test_stalled_server_times_out(
    where: str, server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    archive = good_archive(os.urandom(100_000))
    if where == "headers":
        server.publish(archive, stall_before_headers=True)
    else:
        server.publish(archive, stall_after=1000)
    quick = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          read_timeout=0.5)
    started = time.monotonic()
    error = fails(env, quick, "BINARY_DOWNLOAD_FAILED")
    assert time.monotonic() - started < 5
    assert error.details["reason"] == "timeout"
    assert "MEERKAT_DOWNLOAD_TIMEOUT" in error.message


def test_http_redirect_is_refused(
    server: ReleaseServer, plain_server: ReleaseServer, settings: DownloadSettings,
    env: dict[str, str],
) -> None:
    archive = good_archive()
    server.publish(archive)
    plain_server.routes["/blob"] = Route(body=archive)
    server.routes[RELEASE + ASSET] = Route(redirect=plain_server.url("/blob"), status=302)
    error = fails(env, settings, "BINARY_DOWNLOAD_FAILED")
    assert error.details["reason"] == "insecure_redirect"
    assert error.details["redirect"] == plain_server.url("/blob")
    assert plain_server.hits["/blob"] == 0


def test_redirect_loop_is_bounded(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    server.routes[RELEASE + ASSET] = Route(redirect=server.url(RELEASE + ASSET))
    error = fails(env, settings, "BINARY_DOWNLOAD_FAILED")
    assert error.details["reason"] == "redirects"


def test_missing_asset(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    del server.routes[RELEASE + ASSET]
    error = fails(env, settings, "BINARY_DOWNLOAD_FAILED")
    assert error.details["status"] == 404
    assert "MEERKAT_DOWNLOAD_BASE_URL" in error.message


def test_untrusted_certificate(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server.publish(good_archive())
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    system_cas = make_settings(Path(settings.cache_root), settings.base_url, True)
    error = fails(env, system_cas, "BINARY_DOWNLOAD_FAILED")
    assert error.details["reason"] == "tls"
    assert "REQUESTS_CA_BUNDLE" in error.message


def test_connection_refused(settings: DownloadSettings, env: dict[str, str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = make_settings(Path(settings.cache_root), f"https://127.0.0.1:{port}",
                            settings.verify)
    error = fails(env, nowhere, "BINARY_DOWNLOAD_FAILED")
    assert str(port) in error.details["url"] and error.details["cause"]


# --------------------------------------------------------------------------- cache


def test_tampered_cache_is_deleted_and_fetched_again(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    path = Path(resolve(env, settings).path)
    path.write_bytes(b"#!/bin/sh\necho pwned\n")
    again = resolve(env, settings)
    assert (again.path, again.source) == (str(path), "download")
    assert path.read_bytes() == BINARY
    assert server.archive_hits() == 2


def test_leftovers_of_a_killed_download_are_removed(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    directory = Path(cache_entry(settings, LINUX).directory)
    directory.mkdir(parents=True)
    (directory / f"{TEMP_PREFIX}abc.archive").write_bytes(b"half")
    resolve(env, settings)
    assert leftovers(settings, LINUX) == ["rkat-rpc", "rkat-rpc.manifest.json"]


def test_threads_share_one_download(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive(), delay=0.3)
    results: List[Resolution] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            results.append(resolve(env, settings))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert server.archive_hits() == 1
    assert {r.path for r in results} == {cache_entry(settings, LINUX).binary}
    assert sorted(r.source for r in results) == ["cache"] * 7 + ["download"]


# --------------------------------------------------------------------------- locks


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, filelock
    lock = filelock.FileLock(sys.argv[1])
    lock.acquire()
    open(sys.argv[2], "wb").write(b"half-written archive")
    print("locked", flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def _lock_held(settings: DownloadSettings) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the cache lock, until the block ends (or it is killed)."""
    entry = cache_entry(settings, LINUX)
    os.makedirs(entry.directory, exist_ok=True)
    temp = os.path.join(entry.directory, f"{TEMP_PREFIX}killed.archive")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, entry.lock, temp],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO_ROOT),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_stale_lock_of_a_killed_process_does_not_wedge(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    server.publish(good_archive())
    with _lock_held(settings) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    quick = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          lock_timeout=5.0)
    started = time.monotonic()
    assert resolve(env, quick).source == "download"
    assert time.monotonic() - started < 5
    assert leftovers(settings, LINUX) == ["rkat-rpc", "rkat-rpc.manifest.json"]


def test_lock_timeout_is_a_clear_error(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    with _lock_held(settings):
        quick = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                              lock_timeout=0.5)
        with pytest.raises(MeerkatError) as info:
            resolve(env, quick)
    assert info.value.code == "BINARY_LOCK_TIMEOUT"
    assert info.value.details["lock_path"] == cache_entry(settings, LINUX).lock
    assert "MEERKAT_LOCK_TIMEOUT" in info.value.message
    assert server.archive_hits() == 0


def test_valid_cache_needs_no_lock(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    """A read-only fast path: a verified cache entry is used even while the lock is held."""
    seed_cache(settings, LINUX, BINARY)
    with _lock_held(settings):
        assert resolve(env, settings).source == "cache"


# --------------------------------------------------------------------------- the deadline


def deadline_failure(
    env: dict[str, str], settings: DownloadSettings, timeout: float, stage: str
) -> MeerkatError:
    """Resolve with ``timeout=``, expecting the deadline to end it during ``stage``."""
    started = time.monotonic()
    error = fails(env, settings, "BINARY_DOWNLOAD_FAILED", timeout=timeout)
    assert timeout <= time.monotonic() - started < timeout + 1.0
    assert (error.details["reason"], error.details["stage"]) == ("deadline", stage)
    assert error.details["timeout"] == timeout
    assert f"did not finish within {timeout:g} s" in error.message
    assert "MEERKAT_DOWNLOAD_DEADLINE" in error.message
    return error


def download_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "meerkat-sync download"]


@pytest.mark.parametrize("where", ["checksums", "archive headers", "archive body"])
def test_a_trickling_server_is_cut_off_at_the_deadline(
    where: str, server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    """A byte every 0.2 s never trips the 5 s read timeout: only the deadline ends it."""
    archive = good_archive()
    server.publish(archive)
    path = RELEASE + ("checksums.sha256" if where == "checksums" else ASSET)
    server.routes[path].trickle = 0.2
    server.routes[path].trickle_headers = where == "archive headers"
    stage = "fetching the checksums" if where == "checksums" else "receiving the archive"
    deadline_failure(env, settings, 1.0, stage)
    if where != "archive headers":  # the socket was shut down: the reading thread ended
        give_up = time.monotonic() + 2
        while download_threads() and time.monotonic() < give_up:
            time.sleep(0.01)
        assert download_threads() == []

    server.publish(archive)  # the lock was released: the next call downloads at once
    assert resolve(env, settings, timeout=5).source == "download"


def test_meerkat_download_deadline_applies_without_timeout(
    server: ReleaseServer, certs: Certs, tmp_path: Path, env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = host_target()  # settings from the environment: this machine's platform
    server.publish(good_archive(), asset=f"rkat-rpc-0.5.0-{target.triple}.{target.ext}",
                   trickle=0.2)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certs.ca)
    env = dict(env, MEERKAT_DOWNLOAD_DEADLINE="1", MEERKAT_CACHE_DIR=str(tmp_path / "cache"),
               MEERKAT_DOWNLOAD_BASE_URL=server.base_url)
    started = time.monotonic()
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=env)
    assert 1.0 <= time.monotonic() - started < 2.0
    assert (info.value.details["reason"], info.value.details["timeout"]) == ("deadline", 1.0)
    assert leftovers(DownloadSettings.from_environ(env), target) == []


def test_waiting_for_the_cache_lock_counts_towards_the_deadline(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    server.publish(good_archive())
    with _lock_held(settings):  # settings.lock_timeout is 20 s
        started = time.monotonic()
        with pytest.raises(MeerkatError) as info:
            resolve(env, settings, timeout=1.0)
        assert 1.0 <= time.monotonic() - started < 2.0
    assert info.value.code == "BINARY_DOWNLOAD_FAILED"
    assert info.value.details["stage"] == "waiting for the cache lock"
    assert server.archive_hits() == 0


def test_unpacking_stops_at_the_deadline(
    server: ReleaseServer, settings: DownloadSettings, env: dict[str, str]
) -> None:
    """6 GiB of zeros within a raised unpacking limit: seconds of work, cut off at 1.5 s."""
    server.publish(make_tar_with_zeros_first("decoy", 6 * GIB, [file_member("rkat-rpc", BINARY)]))
    roomy = make_settings(Path(settings.cache_root), settings.base_url, settings.verify,
                          max_unpacked_bytes=8 * GIB)
    deadline_failure(env, roomy, 1.5, "unpacking the archive")
