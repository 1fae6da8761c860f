"""Resolution order, configuration and the cache check, without any network."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest
from _binary_support import LINUX, isolated_env, leftovers, make_settings, seed_cache

from meerkat_sync._binary import (
    DownloadSettings,
    cache_entry,
    describe_resolution,
    resolve_rkat_rpc,
)
from meerkat_sync._download import (
    DEFAULT_BASE_URL,
    default_cache_root,
    parse_checksums,
    platform_target,
)
from meerkat_sync.errors import MeerkatError


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def dead_url() -> Iterator[str]:
    """An https URL on a port nobody listens on: any attempt to download fails loudly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"https://127.0.0.1:{port}"


@pytest.fixture
def empty_path(tmp_path: Path) -> Path:
    directory = tmp_path / "empty-path"
    directory.mkdir()
    return directory


@pytest.fixture
def settings(tmp_path: Path, dead_url: str) -> DownloadSettings:
    return make_settings(tmp_path / "cache", dead_url, lock_timeout=5.0)


# --------------------------------------------------------------------------- platforms


@pytest.mark.parametrize(
    ("system", "machine", "triple", "ext", "binary"),
    [
        ("Linux", "x86_64", "x86_64-unknown-linux-gnu", "tar.gz", "rkat-rpc"),
        ("Linux", "amd64", "x86_64-unknown-linux-gnu", "tar.gz", "rkat-rpc"),
        ("Linux", "aarch64", "aarch64-unknown-linux-gnu", "tar.gz", "rkat-rpc"),
        ("Linux", "arm64", "aarch64-unknown-linux-gnu", "tar.gz", "rkat-rpc"),
        ("Darwin", "arm64", "aarch64-apple-darwin", "tar.gz", "rkat-rpc"),
        ("Darwin", "x86_64", "x86_64-apple-darwin", "tar.gz", "rkat-rpc"),
        ("Windows", "AMD64", "x86_64-pc-windows-msvc", "zip", "rkat-rpc.exe"),
    ],
)
def test_platform_targets(system: str, machine: str, triple: str, ext: str, binary: str) -> None:
    target = platform_target(system, machine, musl=False)
    assert (target.triple, target.ext, target.binary_name) == (triple, ext, binary)


@pytest.mark.parametrize(
    ("system", "machine"),
    [("FreeBSD", "amd64"), ("Linux", "riscv64"), ("Linux", "i686"), ("Windows", "ARM64"),
     ("Darwin", "ppc")],
)
def test_unsupported_platforms(system: str, machine: str) -> None:
    with pytest.raises(MeerkatError) as info:
        platform_target(system, machine, musl=False)
    assert info.value.code == "UNSUPPORTED_PLATFORM"
    assert "MEERKAT_BIN_PATH" in info.value.message
    assert info.value.details["machine"] == machine


def test_musl_linux_is_unsupported() -> None:
    with pytest.raises(MeerkatError) as info:
        platform_target("Linux", "x86_64", musl=True)
    assert info.value.code == "UNSUPPORTED_PLATFORM"
    assert "musl" in info.value.message


def test_unsupported_platform_through_resolution_lists_what_was_tried(
    tmp_path: Path, empty_path: Path, dead_url: str
) -> None:
    settings = make_settings(tmp_path / "cache", dead_url, system="FreeBSD", machine="amd64")
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path), settings=settings)
    assert info.value.code == "UNSUPPORTED_PLATFORM"
    assert any("PATH" in line for line in info.value.details["tried"])


# --------------------------------------------------------------------------- step 1


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_bin_path_is_an_error_naming_the_variable(value: str, empty_path: Path) -> None:
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path, MEERKAT_BIN_PATH=value))
    assert info.value.code == "BINARY_NOT_FOUND"
    assert "MEERKAT_BIN_PATH" in info.value.message


def test_bin_path_pointing_at_nothing(tmp_path: Path, empty_path: Path) -> None:
    missing = tmp_path / "nowhere" / "rkat-rpc"
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path, MEERKAT_BIN_PATH=str(missing)))
    assert info.value.code == "BINARY_NOT_FOUND"
    assert "MEERKAT_BIN_PATH" in info.value.message and str(missing) in info.value.message
    assert "does not exist" in info.value.message


def test_bin_path_not_executable_or_a_directory(tmp_path: Path, empty_path: Path) -> None:
    plain = tmp_path / "rkat-rpc"
    plain.write_text("not executable")
    plain.chmod(0o644)
    for value, problem in ((plain, "not executable"), (tmp_path, "not a file")):
        with pytest.raises(MeerkatError) as info:
            resolve_rkat_rpc(environ=isolated_env(empty_path, MEERKAT_BIN_PATH=str(value)))
        assert info.value.code == "BINARY_NOT_FOUND"
        assert problem in info.value.message


def test_bin_path_wins_over_everything(
    tmp_path: Path, settings: DownloadSettings
) -> None:
    mine = executable(tmp_path / "mine" / "rkat-rpc")
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    explicit = executable(tmp_path / "explicit" / "rkat-rpc")
    seed_cache(settings, LINUX, b"cached")
    env = isolated_env(on_path.parent, MEERKAT_BIN_PATH=str(mine))
    found = resolve_rkat_rpc(str(explicit), environ=env, settings=settings)
    assert (found.path, found.source) == (str(mine), "MEERKAT_BIN_PATH")


def test_bin_path_may_name_a_command_on_path(tmp_path: Path) -> None:
    tool = executable(tmp_path / "bin" / "my-rkat-rpc")
    found = resolve_rkat_rpc(environ=isolated_env(tool.parent, MEERKAT_BIN_PATH="my-rkat-rpc"))
    assert (found.path, found.source) == (str(tool), "MEERKAT_BIN_PATH")


def test_bin_path_relative_and_home_paths_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_path: Path
) -> None:
    tool = executable(tmp_path / "sub" / "rkat-rpc")
    monkeypatch.chdir(tmp_path)
    found = resolve_rkat_rpc(environ=isolated_env(empty_path, MEERKAT_BIN_PATH="sub/rkat-rpc"))
    assert found.path == str(tool)


def test_legacy_rkat_is_refused(tmp_path: Path, empty_path: Path) -> None:
    legacy = executable(tmp_path / "rkat")
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path, MEERKAT_BIN_PATH=str(legacy)))
    assert info.value.code == "LEGACY_BINARY_UNSUPPORTED"
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(str(legacy), environ=isolated_env(empty_path))
    assert info.value.code == "LEGACY_BINARY_UNSUPPORTED"


# --------------------------------------------------------------------------- step 2


def test_explicit_path_wins_over_path_and_cache(
    tmp_path: Path, settings: DownloadSettings
) -> None:
    explicit = executable(tmp_path / "explicit" / "rkat-rpc")
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    seed_cache(settings, LINUX, b"cached")
    found = resolve_rkat_rpc(str(explicit), environ=isolated_env(on_path.parent),
                             settings=settings)
    assert (found.path, found.source) == (str(explicit), "rkat_path")


def test_missing_explicit_path_is_an_error_not_a_fallback(
    tmp_path: Path, settings: DownloadSettings
) -> None:
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    seed_cache(settings, LINUX, b"cached")
    missing = str(tmp_path / "missing" / "rkat-rpc")
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(missing, environ=isolated_env(on_path.parent), settings=settings)
    assert info.value.code == "BINARY_NOT_FOUND"
    assert missing in info.value.message and "rkat_path" in info.value.message


def test_explicit_command_name_is_looked_up_on_path(tmp_path: Path) -> None:
    tool = executable(tmp_path / "bin" / "rkat-rpc-0.5")
    found = resolve_rkat_rpc("rkat-rpc-0.5", environ=isolated_env(tool.parent))
    assert (found.path, found.source) == (str(tool), "rkat_path")


# --------------------------------------------------------------------------- steps 3-4


def test_path_wins_over_cache(tmp_path: Path, settings: DownloadSettings) -> None:
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    seed_cache(settings, LINUX, b"cached")
    found = resolve_rkat_rpc(environ=isolated_env(on_path.parent), settings=settings)
    assert (found.path, found.source) == (str(on_path), "PATH")


def test_non_executable_on_path_is_skipped(
    tmp_path: Path, settings: DownloadSettings
) -> None:
    plain = tmp_path / "bin" / "rkat-rpc"
    plain.parent.mkdir()
    plain.write_text("x")
    plain.chmod(0o644)
    cached = seed_cache(settings, LINUX, b"cached")
    found = resolve_rkat_rpc(environ=isolated_env(plain.parent), settings=settings)
    assert (found.path, found.source) == (str(cached), "cache")


def test_verified_cache_is_used_without_network(
    empty_path: Path, settings: DownloadSettings
) -> None:
    cached = seed_cache(settings, LINUX, b"#!/bin/sh\n")
    found = resolve_rkat_rpc(environ=isolated_env(empty_path), settings=settings)
    assert (found.path, found.source) == (str(cached), "cache")
    assert "re-verified" in found.detail


@pytest.mark.parametrize("damage", ["content", "manifest", "symlink", "mode", "target"])
def test_damaged_cache_is_deleted_and_never_returned(
    damage: str, tmp_path: Path, empty_path: Path, settings: DownloadSettings
) -> None:
    cached = seed_cache(settings, LINUX, b"genuine")
    entry = cache_entry(settings, LINUX)
    if damage == "content":
        cached.write_bytes(b"evil")
    elif damage == "manifest":
        os.unlink(entry.manifest)
    elif damage == "symlink":
        cached.unlink()
        cached.symlink_to(executable(tmp_path / "elsewhere"))
    elif damage == "mode":
        cached.chmod(0o644)
    else:
        text = Path(entry.manifest).read_text().replace(LINUX.triple, "aarch64-apple-darwin")
        Path(entry.manifest).write_text(text)
    env = isolated_env(empty_path, MEERKAT_NO_DOWNLOAD="1")
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=env, settings=make_settings(
            Path(settings.cache_root), settings.base_url, no_download=True))
    assert info.value.code == "BINARY_NOT_FOUND"
    assert any("deleted" in line for line in info.value.details["tried"])
    assert not os.path.lexists(cached)
    assert leftovers(settings, LINUX) == []


def test_pinned_digest_change_invalidates_cache(
    empty_path: Path, settings: DownloadSettings
) -> None:
    from meerkat_sync._digests import PinnedDigest

    seed_cache(settings, LINUX, b"genuine")
    pinned = {LINUX.triple: PinnedDigest("rkat-rpc-0.5.0-x86_64-unknown-linux-gnu.tar.gz",
                                         "1" * 64)}
    strict = make_settings(Path(settings.cache_root), settings.base_url, pinned=pinned,
                           no_download=True)
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path), settings=strict)
    assert any("pinned" in line for line in info.value.details["tried"])


# --------------------------------------------------------------------------- step 5 switches


def test_no_download_lists_every_place_tried(
    tmp_path: Path, empty_path: Path, dead_url: str
) -> None:
    env = isolated_env(
        empty_path,
        MEERKAT_NO_DOWNLOAD="1",
        MEERKAT_CACHE_DIR=str(tmp_path / "cache"),
        MEERKAT_DOWNLOAD_BASE_URL=dead_url,
    )
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=env)
    error = info.value
    assert error.code == "BINARY_NOT_FOUND"
    for place in ("MEERKAT_BIN_PATH", "PATH", "cache", "MEERKAT_NO_DOWNLOAD"):
        assert place in error.message
    assert "To fix" in error.message
    assert len(error.details["tried"]) == 4
    assert not (tmp_path / "cache").exists()


def test_download_false_stops_before_the_network(
    empty_path: Path, settings: DownloadSettings
) -> None:
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path), download=False, settings=settings)
    assert info.value.code == "BINARY_NOT_FOUND"
    assert info.value.details["would_download"]["url"].startswith(settings.base_url)


def test_http_base_url_is_refused(tmp_path: Path, empty_path: Path) -> None:
    env = isolated_env(
        empty_path,
        MEERKAT_CACHE_DIR=str(tmp_path / "cache"),
        MEERKAT_DOWNLOAD_BASE_URL="http://127.0.0.1:9/releases",
    )
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=env)
    assert info.value.code == "BINARY_CONFIG_INVALID"
    assert "MEERKAT_DOWNLOAD_BASE_URL" in info.value.message and "https" in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [("MEERKAT_NO_DOWNLOAD", "maybe"), ("MEERKAT_DOWNLOAD_TIMEOUT", "soon"),
     ("MEERKAT_DOWNLOAD_TIMEOUT", "-1"), ("MEERKAT_LOCK_TIMEOUT", "0"),
     ("MEERKAT_DOWNLOAD_DEADLINE", "inf")],
)
def test_bad_variables_are_reported(name: str, value: str, empty_path: Path) -> None:
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(empty_path, **{name: value}))
    assert info.value.code == "BINARY_CONFIG_INVALID"
    assert name in info.value.message


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "30", True])
def test_bad_timeout_argument(timeout: object, tmp_path: Path) -> None:
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    with pytest.raises(MeerkatError) as info:
        resolve_rkat_rpc(environ=isolated_env(on_path.parent), timeout=timeout)
    assert info.value.code == "INVALID_ARGS"
    assert "timeout" in info.value.message


def test_bad_variables_do_not_matter_when_a_binary_is_on_path(tmp_path: Path) -> None:
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    env = isolated_env(on_path.parent, MEERKAT_DOWNLOAD_TIMEOUT="soon")
    assert resolve_rkat_rpc(environ=env).source == "PATH"


def test_settings_from_environ(tmp_path: Path) -> None:
    env = {
        "MEERKAT_CACHE_DIR": str(tmp_path / "c"),
        "MEERKAT_DOWNLOAD_BASE_URL": "https://mirror.example/meerkat",
        "MEERKAT_NO_DOWNLOAD": "yes",
        "MEERKAT_DOWNLOAD_TIMEOUT": "7.5",
        "MEERKAT_DOWNLOAD_DEADLINE": "90",
        "MEERKAT_LOCK_TIMEOUT": "42",
    }
    settings = DownloadSettings.from_environ(env)
    assert settings.cache_root == str(tmp_path / "c")
    assert settings.base_url == "https://mirror.example/meerkat"
    assert settings.no_download is True
    assert (settings.connect_timeout, settings.read_timeout) == (7.5, 7.5)
    assert settings.lock_timeout == 42
    assert settings.download_deadline == 90
    defaults = DownloadSettings.from_environ({"HOME": str(tmp_path), "MEERKAT_NO_DOWNLOAD": "0"})
    assert defaults.base_url == DEFAULT_BASE_URL and defaults.no_download is False
    assert defaults.download_deadline == 300


def test_default_cache_roots() -> None:
    home = os.path.join(os.sep, "home", "u")
    assert default_cache_root({"HOME": home}, "Linux") == os.path.join(
        home, ".cache", "meerkat-sync")
    xdg = os.path.join(os.sep, "xdg")
    assert default_cache_root({"HOME": home, "XDG_CACHE_HOME": xdg}, "Linux") == os.path.join(
        xdg, "meerkat-sync")
    assert default_cache_root({"HOME": home, "XDG_CACHE_HOME": "rel"}, "Linux").startswith(home)
    assert default_cache_root({"HOME": home}, "Darwin") == os.path.join(
        home, "Library", "Caches", "meerkat-sync")
    local = os.path.join(os.sep, "appdata")
    assert default_cache_root({"LOCALAPPDATA": local}, "Windows") == os.path.join(
        local, "meerkat-sync", "Cache")


def test_release_layout_uses_unprefixed_asset_names(settings: DownloadSettings) -> None:
    from meerkat_sync._download import release_urls

    urls = release_urls(settings, LINUX)
    assert urls.asset == "rkat-rpc-0.5.0-x86_64-unknown-linux-gnu.tar.gz"
    assert urls.archive_url == f"{settings.base_url}/v0.5.0/{urls.asset}"
    assert urls.checksums_url == f"{settings.base_url}/v0.5.0/checksums.sha256"


def test_parse_checksums_matches_by_base_name() -> None:
    a, b = "a" * 64, "B" * 64
    text = (
        f"{a}  ./rkat-rpc-x86_64-unknown-linux-gnu/rkat-rpc-0.5.0-x86_64-unknown-linux-gnu.tar.gz\n"
        f"{b} *./job/rkat-0.5.0-aarch64-apple-darwin.tar.gz\n"
        "garbage line\n"
        "1234  short-digest.tar.gz\n"
        "\n"
    )
    parsed = parse_checksums(text)
    assert parsed == {
        "rkat-rpc-0.5.0-x86_64-unknown-linux-gnu.tar.gz": [a],
        "rkat-0.5.0-aarch64-apple-darwin.tar.gz": ["b" * 64],
    }


# --------------------------------------------------------------------------- --which


def test_describe_path_binary(tmp_path: Path) -> None:
    on_path = executable(tmp_path / "bin" / "rkat-rpc")
    text = describe_resolution(environ=isolated_env(on_path.parent))
    assert text.splitlines()[0] == str(on_path)
    assert "source: PATH" in text


def test_describe_planned_download_is_read_only(
    empty_path: Path, settings: DownloadSettings
) -> None:
    text = describe_resolution(environ=isolated_env(empty_path), settings=settings)
    assert text.startswith("rkat-rpc would be downloaded on first use from https://")
    assert "checksums.sha256" in text and "tried:" in text
    assert not Path(settings.cache_root).exists()


def test_describe_does_not_delete_a_tampered_cache(
    empty_path: Path, settings: DownloadSettings
) -> None:
    cached = seed_cache(settings, LINUX, b"genuine")
    cached.write_bytes(b"tampered")
    text = describe_resolution(environ=isolated_env(empty_path), settings=settings)
    assert "would be deleted" in text
    assert cached.read_bytes() == b"tampered"


def test_describe_reports_errors(empty_path: Path) -> None:
    text = describe_resolution(environ=isolated_env(empty_path, MEERKAT_BIN_PATH=""))
    assert text.startswith("error: [BINARY_NOT_FOUND]")
