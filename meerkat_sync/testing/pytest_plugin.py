"""pytest fixtures for testing your own code on the scripted runtime or a real rkat-rpc.

Installing meerkat-sync registers this module as a pytest plugin (the ``pytest11`` entry
point ``meerkat_sync``), so every test session in that environment gets:

* ``meerkat_client``: a connected :class:`~meerkat_sync.MeerkatClient`, closed after the test;
* ``meerkat_script``: its reply script (override the fixture in a test module or conftest);
* ``@pytest.mark.meerkat_script(script)``: one test's script; it wins over the fixture;
* ``meerkat_client_options``: keyword arguments for the client (override it too);
* ``meerkat_backend``: ``"scripted"`` or ``"real"``, the runtime ``meerkat_client`` runs;
* ``--meerkat-bin PATH`` (else ``MEERKAT_BIN_PATH``): run them on that real rkat-rpc, its
  model being the scripted endpoint (``real_client``), so the same tests run for real.

Every pytest run in an environment with meerkat-sync installed loads this module, and
``MEERKAT_BIN_PATH`` also serves the library and other suites (this project's own), so a
bad value in it stops only sessions that use these fixtures (``docs/pytest-plugin.rst``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, Optional

import attrs
import pytest

from .._client import MeerkatClient
from . import Script, real_client, scripted_client

__all__ = ["BACKEND_REAL", "BACKEND_SCRIPTED", "ENV_VAR", "OPTION", "Backend", "backend_for"]

logger = logging.getLogger("meerkat_sync")

BACKEND_SCRIPTED = "scripted"
BACKEND_REAL = "real"
OPTION = "--meerkat-bin"
ENV_VAR = "MEERKAT_BIN_PATH"
MARKER = "meerkat_script"

#: Fixtures that start a runtime; a session using none of them ignores MEERKAT_BIN_PATH.
_RUNTIME_FIXTURES = frozenset({"meerkat_client", "meerkat_backend"})


@attrs.frozen
class Backend:
    """Which runtime the fixtures run, and why.

    ``path`` and ``origin`` (``"--meerkat-bin"`` or ``"MEERKAT_BIN_PATH"``) say where a
    real binary came from; ``problem`` says why that path cannot be used (then no test
    that uses the fixtures runs).
    """

    name: str
    path: Optional[str] = None
    origin: Optional[str] = None
    problem: Optional[str] = None

    def describe(self) -> str:
        if self.problem is not None:
            return (
                f"{self.origin}={self.path!r} {self.problem}: meerkat_client needs an rkat-rpc "
                f"0.5.0 binary there; fix the path, or leave out {OPTION} and unset {ENV_VAR} "
                "to run the tests on the scripted runtime"
            )
        if self.name == BACKEND_REAL:
            return f"real rkat-rpc {self.path} (from {self.origin}), model: scripted endpoint"
        return f"scripted runtime (pass {OPTION} PATH or set {ENV_VAR} to run on a real rkat-rpc)"


_BACKEND = pytest.StashKey[Backend]()


def _problem(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a file"
    if os.name != "nt" and not os.access(path, os.X_OK):
        return f"is not executable (chmod +x {path})"
    return None


def _choose(option: Optional[str], environ: Dict[str, str]) -> Backend:
    if option is not None:
        value, origin = option, OPTION
        if not value.strip():
            return Backend(BACKEND_REAL, value, origin, "is empty")
    else:
        value, origin = environ.get(ENV_VAR, "").strip(), ENV_VAR
        if not value:  # unset or empty: MEERKAT_BIN_PATH= pytest forces the scripted runtime
            return Backend(BACKEND_SCRIPTED)
    path = os.path.abspath(os.path.expanduser(value.strip()))
    return Backend(BACKEND_REAL, path, origin, _problem(path))


def backend_for(config: pytest.Config) -> Backend:
    """The runtime this session's fixtures run (for a conftest that needs it at collection)."""
    return config.stash[_BACKEND]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meerkat-sync")
    group.addoption(
        OPTION,
        dest="meerkat_bin",
        metavar="PATH",
        default=None,
        help=f"run the meerkat_client fixture on this real rkat-rpc (default: ${ENV_VAR}; "
        "without either, on the scripted runtime)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(script): the reply script meerkat_client uses for this test "
        "(a dict in the scripted runtime's format); wins over the meerkat_script fixture",
    )
    backend = _choose(config.getoption("meerkat_bin"), dict(os.environ))
    config.stash[_BACKEND] = backend
    # The option exists only for these fixtures: a bad path is wrong whatever runs.
    if backend.problem is not None and backend.origin == OPTION:
        raise pytest.UsageError(backend.describe())
    logger.debug("pytest plugin: %s", backend.describe())


def pytest_report_header(config: pytest.Config) -> str:
    return "meerkat-sync fixtures: " + backend_for(config).describe()


def pytest_collection_finish(session: pytest.Session) -> None:
    """A bad MEERKAT_BIN_PATH stops the run only if a selected test uses the fixtures.

    The variable also tells the library where rkat-rpc is, and test suites (this
    project's own) read it themselves; they must not be stopped by it.
    """
    backend = backend_for(session.config)
    if backend.problem is None:
        return
    for item in session.items:
        if _RUNTIME_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(backend.describe())


def _marker_script(node: pytest.Item) -> Optional[Script]:
    marker = node.get_closest_marker(MARKER)
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        pytest.fail(
            f"@pytest.mark.{MARKER} takes one argument, the reply script (a dict or a path to "
            f"a JSON file); {node.nodeid} gives args={marker.args!r} kwargs={marker.kwargs!r}",
            pytrace=False,
        )
    script: Script = marker.args[0]
    return script


@pytest.fixture
def meerkat_script(request: pytest.FixtureRequest) -> Script:
    """The reply script: the test's marker, else ``{}`` (echo replies). Override freely."""
    marked = _marker_script(request.node)
    return marked if marked is not None else {}


@pytest.fixture
def meerkat_client_options() -> Dict[str, Any]:
    """Keyword arguments for the client (timeouts, ``restart``...); override to change them."""
    return {}


@pytest.fixture(scope="session")
def meerkat_backend(pytestconfig: pytest.Config) -> str:
    """``"scripted"`` or ``"real"``: what ``meerkat_client`` runs in this session."""
    backend = backend_for(pytestconfig)
    if backend.problem is not None:  # requested through getfixturevalue, after collection
        pytest.fail(backend.describe(), pytrace=False)
    return backend.name


@pytest.fixture
def meerkat_client(
    request: pytest.FixtureRequest,
    meerkat_backend: str,
    meerkat_script: Script,
    meerkat_client_options: Dict[str, Any],
) -> Iterator[MeerkatClient]:
    """A connected client on the session's backend, closed (child stopped) after the test.

    The marker wins over the ``meerkat_script`` fixture, an override included, because
    it is the more specific of the two: it is written on the test itself.
    """
    marked = _marker_script(request.node)
    script = marked if marked is not None else meerkat_script
    options = dict(meerkat_client_options)
    client: MeerkatClient
    if meerkat_backend == BACKEND_REAL:
        path = backend_for(request.config).path
        assert path is not None
        # command= runs exactly this binary even when MEERKAT_BIN_PATH names another one.
        client = real_client(script, rkat_path=path, command=[path], **options)
    else:
        client = scripted_client(script, **options).connect()
    try:
        yield client
    finally:
        client.close()
