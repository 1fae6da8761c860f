"""The pytest plugin (``meerkat_sync.testing.pytest_plugin``), run the way users run it.

Each test writes a small test suite and runs pytest on it with ``pytester``: the inner
suite gets the plugin from the installed ``pytest11`` entry point alone, and its clients
are real child processes (the scripted runtime, or the real rkat-rpc when
``MEERKAT_BIN_PATH`` names one).
"""

from __future__ import annotations

import os
import stat
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from _binary_support import stand_in_script
from conftest import REAL_BIN, requires_real

from meerkat_sync.testing import pytest_plugin

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def no_real_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs inherit the environment: only the test that says so picks a binary."""
    monkeypatch.delenv("MEERKAT_BIN_PATH", raising=False)


#: A suite written once and run on either backend: the promotion the plugin promises.
PORTABLE_CONFTEST = """
import pytest

@pytest.fixture
def meerkat_script():
    return {"rules": [{"match": "weather", "reply": {"text": "Sunny", "chunks": ["Su", "nny"]}}],
            "default": {"text": "from the conftest"}}
"""

PORTABLE_TESTS = """
import os
import pytest
from meerkat_sync import MeerkatClient
from meerkat_sync.testing import RealRuntimeClient

seen = {}

def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False

def test_conftest_script(meerkat_client, meerkat_backend):
    assert isinstance(meerkat_client, MeerkatClient)
    assert meerkat_client.create_session("What's the weather?").text == "Sunny"
    assert meerkat_client.create_session("Anything else").text == "from the conftest"
    seen["client"], seen["pid"] = meerkat_client, meerkat_client.pid
    if meerkat_backend == "real":
        assert isinstance(meerkat_client, RealRuntimeClient)
        assert [r.prompt for r in meerkat_client.model.requests] == ["What's the weather?", "Anything else"]
        seen["state_root"] = meerkat_client.state_root

@pytest.mark.meerkat_script({"default": {"text": "from the marker"}})
def test_marker_beats_conftest(meerkat_client, meerkat_script):
    assert meerkat_client.create_session("What's the weather?").text == "from the marker"
    # The override still gives its own value; only the client takes the marker's.
    assert meerkat_script["default"] == {"text": "from the conftest"}

def test_previous_client_closed_and_child_gone():
    assert seen["client"].closed
    assert gone(seen["pid"])
    if "state_root" in seen:
        assert not os.path.exists(seen["state_root"])

def test_backend(meerkat_backend):
    print("BACKEND=" + meerkat_backend)
"""


def run_fresh(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in a new interpreter (hypothesis's plugin, slow to load there, left out)."""
    return pytester.runpytest_subprocess("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def write_portable(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PORTABLE_CONFTEST)
    pytester.makepyfile(test_portable=PORTABLE_TESTS)


def scripted_wrapper(directory: Path) -> Path:
    """An executable that runs the scripted runtime, as a user's MEERKAT_BIN_PATH might name."""
    path = directory / "rkat-rpc-scripted"
    path.write_bytes(stand_in_script())
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_entry_point_registers_the_plugin() -> None:
    if sys.version_info >= (3, 10):
        found = list(entry_points(group="pytest11"))
    else:
        found = list(entry_points().get("pytest11", []))
    assert ("meerkat_sync", "meerkat_sync.testing.pytest_plugin") in {(ep.name, ep.value) for ep in found}


def test_default_script_in_a_fresh_interpreter(pytester: pytest.Pytester) -> None:
    """Nothing but the installed package: fixtures, marker (strict) and header are there."""
    pytester.makepyfile(
        """
        import pytest
        from meerkat_sync import MeerkatClient

        def test_echo(meerkat_client, meerkat_script, meerkat_backend):
            assert meerkat_script == {}
            assert meerkat_backend == "scripted"
            assert isinstance(meerkat_client, MeerkatClient) and not meerkat_client.closed
            session = meerkat_client.create_session("hello there")
            assert session.text == "Echo: hello there"
            assert session.turn("again").text == "Echo: again"

        @pytest.mark.meerkat_script({"default": {"text": "marked"}})
        def test_marker(meerkat_client):
            assert meerkat_client.create_session("hi").text == "marked"
        """
    )
    result = run_fresh(pytester, "--strict-markers")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["meerkat-sync fixtures: scripted runtime (pass --meerkat-bin PATH*"])


def test_conftest_override_marker_precedence_and_closing(pytester: pytest.Pytester) -> None:
    write_portable(pytester)
    result = pytester.runpytest("-s", "--strict-markers")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*BACKEND=scripted*"])


def test_module_override_beats_conftest_and_closest_marker_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PORTABLE_CONFTEST)
    pytester.makepyfile(
        test_module="""
        import pytest

        @pytest.fixture
        def meerkat_script():
            return {"default": {"text": "from the module"}}

        def test_module_fixture(meerkat_client):
            assert meerkat_client.create_session("What's the weather?").text == "from the module"

        @pytest.mark.meerkat_script({"default": {"text": "class"}})
        class TestMarked:
            def test_class_marker(self, meerkat_client):
                assert meerkat_client.create_session("x").text == "class"

            @pytest.mark.meerkat_script({"replies": [{"text": "one"}, {"text": "two"}]})
            def test_function_marker(self, meerkat_client):
                session = meerkat_client.create_session("x")
                assert [session.text, session.turn("y").text] == ["one", "two"]
        """,
        test_plain="""
        def test_conftest_fixture(meerkat_client):
            assert meerkat_client.create_session("What's the weather?").text == "Sunny"
        """,
    )
    pytester.runpytest("--strict-markers").assert_outcomes(passed=4)


def test_options_fixture_reaches_the_client(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from meerkat_sync import MeerkatError

        @pytest.fixture
        def meerkat_client_options():
            return {"restart": True}

        def test_restart(meerkat_client):
            with pytest.raises(MeerkatError) as caught:
                meerkat_client.create_session('fake:{"exit_after_events": 1}')
            assert caught.value.code == "CONNECTION_CLOSED"
            assert meerkat_client.create_session("back").text == "Echo: back"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_failures_are_ordinary_test_failures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from meerkat_sync import MeerkatError

        seen = []

        def test_wrong_reply(meerkat_client):
            seen.append(meerkat_client)
            assert meerkat_client.create_session("hi").text == "Hello"

        def test_failed_run(meerkat_client):
            seen.append(meerkat_client)
            meerkat_client.create_session('fake:{"provider_error": {"status": 401}}')

        @pytest.mark.meerkat_script()
        def test_bad_marker(meerkat_client):
            pass

        def test_both_clients_closed():
            assert len(seen) == 2 and all(c.closed for c in seen)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_bad_marker*",
            "@pytest.mark.meerkat_script takes one argument, the reply script*gives args=() kwargs={}",
            "*_ test_wrong_reply _*",
            "E       AssertionError: assert 'Echo: hi' == 'Hello'",
            "*_ test_failed_run _*",
            "E *.MeerkatError: [[]PROVIDER_ERROR[]] *",
            "FAILED *::test_wrong_reply*",
            "FAILED *::test_failed_run*",
            "ERROR *::test_bad_marker*",
        ]
    )


def test_missing_meerkat_bin_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_never_runs(meerkat_client):
            raise AssertionError("INNER-TEST-RAN")

        def test_unrelated():
            raise AssertionError("INNER-TEST-RAN")
        """
    )
    missing = pytester.path / "no-such-rkat-rpc"
    result = run_fresh(pytester, "--meerkat-bin", str(missing))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --meerkat-bin={str(missing)!r} does not exist: meerkat_client needs an rkat-rpc*"
         "to run the tests on the scripted runtime"]
    )
    assert "INNER-TEST-RAN" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("kind", ["directory", "not executable", "empty"])
def test_unusable_meerkat_bin_is_a_usage_error(pytester: pytest.Pytester, kind: str) -> None:
    pytester.makepyfile("def test_unrelated():\n    pass\n")
    target = pytester.path / "rkat-rpc"
    if kind == "directory":
        target.mkdir()
    elif kind == "not executable":
        target.write_text("#!/bin/sh\n")
    result = pytester.runpytest("--meerkat-bin", "" if kind == "empty" else str(target))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    problem = {"directory": "is not a file", "not executable": "is not executable", "empty": "is empty"}
    assert problem[kind] in result.stderr.str()


def test_missing_env_path_stops_only_sessions_that_use_the_fixtures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(pytester.path / "no-such-rkat-rpc")
    monkeypatch.setenv("MEERKAT_BIN_PATH", missing)
    pytester.makepyfile(
        test_plain="def test_unrelated():\n    pass\n",
        test_client="def test_uses_client(meerkat_client):\n    raise AssertionError('INNER-TEST-RAN')\n",
    )
    # A suite that reads MEERKAT_BIN_PATH for itself (as this project's does) is left alone.
    run_fresh(pytester, "test_plain.py").assert_outcomes(passed=1)
    result = run_fresh(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: MEERKAT_BIN_PATH={missing!r} does not exist: *"])
    assert "INNER-TEST-RAN" not in result.stdout.str()
    # Deselecting the tests that use the fixtures lets the rest run.
    run_fresh(pytester, "-k", "unrelated").assert_outcomes(passed=1, deselected=1)


def test_blank_env_path_means_the_scripted_runtime(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEERKAT_BIN_PATH", "  ")
    write_portable(pytester)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*BACKEND=scripted*"])


def test_option_wins_over_env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The option's binary is the one used, even when MEERKAT_BIN_PATH names a missing one."""
    monkeypatch.setenv("MEERKAT_BIN_PATH", str(pytester.path / "no-such-rkat-rpc"))
    chosen = scripted_wrapper(pytester.path)
    pytester.makepyfile(
        f"""
        def test_backend(meerkat_backend, pytestconfig):
            from meerkat_sync.testing.pytest_plugin import backend_for
            assert meerkat_backend == "real"
            assert backend_for(pytestconfig).path == {str(chosen)!r}
            assert backend_for(pytestconfig).origin == "--meerkat-bin"
        """
    )
    result = pytester.runpytest("--meerkat-bin", str(chosen))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"meerkat-sync fixtures: real rkat-rpc {chosen} (from --meerkat-bin)*"])


def test_backend_for_is_the_fixtures_backend(pytester: pytest.Pytester) -> None:
    """A conftest can act at collection time (e.g. skip scripted-only tests on a real binary)."""
    pytester.makeconftest(
        """
        from meerkat_sync.testing.pytest_plugin import backend_for

        def pytest_collection_modifyitems(config, items):
            assert backend_for(config).name == "scripted"
            assert backend_for(config).path is None
        """
    )
    pytester.makepyfile("def test_backend(meerkat_backend):\n    assert meerkat_backend == 'scripted'\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_backend_choice_unit() -> None:
    """The pure part of the choice: precedence and blank values, without running pytest."""
    choose: Any = pytest_plugin._choose
    assert choose(None, {}).name == "scripted"
    assert choose(None, {"MEERKAT_BIN_PATH": ""}) == pytest_plugin.Backend("scripted")
    real = choose(sys.executable, {"MEERKAT_BIN_PATH": "/elsewhere"})
    assert (real.name, real.origin, real.problem) == ("real", "--meerkat-bin", None)
    assert real.path == os.path.abspath(sys.executable)
    env = choose(None, {"MEERKAT_BIN_PATH": "/no/such/rkat-rpc"})
    assert (env.name, env.origin, env.problem) == ("real", "MEERKAT_BIN_PATH", "does not exist")


@pytest.mark.real_binary
@requires_real
@pytest.mark.parametrize("how", ["option", "env"])
def test_real_backend_runs_the_same_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    write_portable(pytester)
    pytester.makepyfile(
        test_runtime_only="""
        import pytest

        @pytest.mark.meerkat_script({"default": {"noise": ["not json"]}})
        def test_runtime_only_field(meerkat_client):
            pass
        """
    )
    args = ["-s"]
    if how == "option":
        monkeypatch.setenv("MEERKAT_BIN_PATH", str(pytester.path / "no-such-rkat-rpc"))
        args += ["--meerkat-bin", REAL_BIN]
    else:
        monkeypatch.setenv("MEERKAT_BIN_PATH", REAL_BIN)
    result = run_fresh(pytester, *args)
    result.assert_outcomes(passed=4, errors=1)
    origin = "--meerkat-bin" if how == "option" else "MEERKAT_BIN_PATH"
    result.stdout.fnmatch_lines(
        [
            f"meerkat-sync fixtures: real rkat-rpc {os.path.abspath(REAL_BIN)} (from {origin})*",
            "*BACKEND=real*",
            "*noise*only the scripted runtime can do*",
        ],
        consecutive=False,
    )

