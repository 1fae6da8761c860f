"""The command line, run as users run it: a real process, a controlled environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import pytest
from _binary_support import stand_in_script

CONSOLE_SCRIPT = Path(sys.executable).parent / "meerkat-sync"
REAL_BIN = os.environ.get("MEERKAT_BIN_PATH")


@pytest.fixture
def env(tmp_path: Path) -> Dict[str, str]:
    """No rkat-rpc anywhere: an empty PATH, an empty cache, and downloads that cannot connect."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "path").mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEERKAT_")}
    environ.update(
        PATH=str(tmp_path / "path"),
        MEERKAT_CACHE_DIR=str(tmp_path / "cache"),
        MEERKAT_DOWNLOAD_BASE_URL=f"https://127.0.0.1:{port}",
        MEERKAT_DOWNLOAD_DEADLINE="20",
    )
    return environ


MODULE = (sys.executable, "-m", "meerkat_sync")


def run(env: Dict[str, str], *args: str, via: Sequence[str] = MODULE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*via, *args], env=env, capture_output=True, text=True, timeout=120)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def fake_binary(tmp_path: Path) -> Path:
    """The scripted runtime as an executable file, as a user would point MEERKAT_BIN_PATH at one."""
    path = tmp_path / "rkat-rpc"
    path.write_bytes(stand_in_script())
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- runs


def test_nothing_asked_for_and_nothing_installed_falls_back_with_one_notice(env: Dict[str, str]) -> None:
    out = run(env, "hi")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Echo: hi")
    notices = [line for line in out.stderr.splitlines() if line.startswith("note:")]
    assert len(notices) == 1 and "scripted runtime" in notices[0], out.stderr


def test_a_missing_meerkat_bin_path_is_an_error_not_a_fallback(env: Dict[str, str]) -> None:
    out = run({**env, "MEERKAT_BIN_PATH": "/nonexistent/rkat-rpc"}, "hi")
    assert out.returncode == 1
    assert "Echo" not in out.stdout and "note:" not in out.stderr
    assert "[BINARY_NOT_FOUND] MEERKAT_BIN_PATH='/nonexistent/rkat-rpc' does not exist" in out.stderr


def test_a_failed_download_is_an_error_not_a_fallback(env: Dict[str, str]) -> None:
    out = run(env, "--download", "hi")
    assert out.returncode == 1
    assert "Echo" not in out.stdout and "note:" not in out.stderr
    assert "[BINARY_DOWNLOAD_FAILED]" in out.stderr and "check the network" in out.stderr


def test_a_missing_rkat_path_is_an_error(env: Dict[str, str], tmp_path: Path) -> None:
    out = run(env, "--rkat-path", str(tmp_path / "nope"), "hi")
    assert out.returncode == 1 and "Echo" not in out.stdout
    assert "[BINARY_NOT_FOUND] rkat_path=" in out.stderr and "does not exist" in out.stderr


def test_an_rkat_path_that_does_not_start_is_an_error_with_its_stderr(
    env: Dict[str, str], tmp_path: Path
) -> None:
    broken = script(tmp_path / "broken", "echo 'no config here' >&2\nexit 3\n")
    out = run(env, "--rkat-path", str(broken), "hi")
    assert out.returncode == 1 and "Echo" not in out.stdout
    assert "[CONNECTION_CLOSED]" in out.stderr and "exit code 3" in out.stderr
    assert "no config here" in out.stderr


def test_meerkat_bin_path_is_used_when_it_names_a_runtime(env: Dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    binary = fake_binary(tmp_path)
    wrapper = script(tmp_path / "wrapper", f": > '{marker}'\nexec '{binary}' \"$@\"\n")
    out = run({**env, "MEERKAT_BIN_PATH": str(wrapper)}, "hi")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Echo: hi") and "note:" not in out.stderr
    assert marker.exists()


# --------------------------------------------------------------------------- --which


def test_which_reports_the_scripted_fallback_the_cli_would_use(env: Dict[str, str]) -> None:
    out = run(env, "--which")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("the bundled scripted runtime")
    assert "  tried:" in lines and any("PATH: no executable rkat-rpc" in line for line in lines)
    assert "would be downloaded" not in out.stdout


def test_which_fails_for_a_missing_meerkat_bin_path(env: Dict[str, str]) -> None:
    out = run({**env, "MEERKAT_BIN_PATH": "/nonexistent/rkat-rpc"}, "--which")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("error: [BINARY_NOT_FOUND] MEERKAT_BIN_PATH=")


def test_which_names_a_working_binary_and_its_version(env: Dict[str, str], tmp_path: Path) -> None:
    binary = fake_binary(tmp_path)
    out = run({**env, "PATH": str(tmp_path)}, "--which")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [str(binary), "  source: PATH"]
    assert "  version: rkat-rpc 0.5.0" in out.stdout.splitlines()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("echo 'rkat-rpc 0.6.1'\n", "it is rkat-rpc 0.6.1, but this meerkat-sync speaks 0.5.0"),
        ("echo 'something else 1.0'\n", "saying 'something else 1.0'"),
        ("echo 'rkat-rpc 0.5.0'\nexit 4\n", "exited 4"),
    ],
)
def test_which_fails_for_a_binary_that_cannot_serve_this_client(
    env: Dict[str, str], tmp_path: Path, body: str, why: str
) -> None:
    binary = script(tmp_path / "rkat-rpc", body)
    out = run({**env, "MEERKAT_BIN_PATH": str(binary)}, "--which")
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == str(binary)
    assert f"error: {binary} cannot run: " in out.stderr and why in out.stderr, out.stderr


def test_which_with_download_plans_the_download_and_touches_nothing(env: Dict[str, str]) -> None:
    out = run(env, "--which", "--download")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rkat-rpc would be downloaded (--download) from https://127.0.0.1:")
    assert not Path(env["MEERKAT_CACHE_DIR"]).exists()


@pytest.mark.real_binary
@pytest.mark.skipif(REAL_BIN is None, reason="needs a real rkat-rpc 0.5.0 via MEERKAT_BIN_PATH")
def test_which_accepts_the_real_rkat_rpc(env: Dict[str, str]) -> None:
    assert REAL_BIN is not None
    out = run({**env, "MEERKAT_BIN_PATH": REAL_BIN}, "--which")
    assert out.returncode == 0, out.stderr
    assert "  version: rkat-rpc 0.5.0" in out.stdout.splitlines()


# --------------------------------------------------------------------------- options


def test_the_console_script_shows_its_own_name(env: Dict[str, str]) -> None:
    out = run(env, "--help", via=[str(CONSOLE_SCRIPT)])
    assert out.returncode == 0
    assert out.stdout.startswith("usage: meerkat-sync ")
    assert run(env, "--help").stdout.startswith("usage: python -m meerkat_sync ")


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_timeout_takes_values_a_shell_user_can_type(env: Dict[str, str], value: str) -> None:
    out = run(env, "--timeout", value, "hi")
    assert out.returncode == 2
    assert "--timeout 30, or --timeout none to wait without limit" in out.stderr
    assert "None" not in out.stderr


def test_timeout_none_and_seconds_work(env: Dict[str, str]) -> None:
    for value in ("none", "30"):
        out = run(env, "--scripted", "--timeout", value, "hi")
        assert out.returncode == 0 and out.stdout.startswith("Echo: hi"), out.stderr


def test_a_turn_past_its_timeout_fails_with_a_non_zero_exit(env: Dict[str, str]) -> None:
    out = run(env, "--scripted", "--timeout", "0.5", 'fake:{"text": "late", "delay_ms": 5000}')
    assert out.returncode == 1
    assert "[TIMEOUT]" in out.stderr
