"""Shared fixtures: every client test runs the scripted runtime as a real child process."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Tuple

import pytest

from meerkat_sync import MeerkatClient, MeerkatError, Session
from meerkat_sync.testing import ModelEndpoint, RealRuntimeClient, real_client, scripted_client

#: A real rkat-rpc 0.5.0 for the real-runtime tests; without it they skip and say why.
REAL_BIN = os.environ.get("MEERKAT_BIN_PATH", "").strip()
HAVE_REAL = bool(REAL_BIN) and os.path.isfile(REAL_BIN)
NO_REAL_REASON = (
    "no real rkat-rpc: set MEERKAT_BIN_PATH to an rkat-rpc 0.5.0 binary to run the real-runtime tests"
)
requires_real = pytest.mark.skipif(not HAVE_REAL, reason=NO_REAL_REASON)


def fake(**spec: Any) -> str:
    """A prompt that scripts its own reply (the runtime's inline ``fake:`` directive)."""
    return "fake:" + json.dumps(spec)


@contextlib.contextmanager
def busy_threads(count: int = 3) -> Iterator[None]:
    """Threads that spin for the GIL, so a thread that releases it waits to get it back.

    That widens the races between the writer, the reader and callers that a quiet machine
    never shows (found by CI running several suites at once).
    """
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(count)]
    for thread in spinners:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in spinners:
            thread.join()


def hang_in_background(session: Session) -> Tuple[threading.Thread, List[MeerkatError]]:
    """Start a never-ending turn on another thread; the list gets its error when it fails."""
    errors: List[MeerkatError] = []

    def wait() -> None:
        try:
            session.turn(fake(hang=True))
        except MeerkatError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)  # let the turn reach the server
    return thread, errors


class Backend:
    """Either runtime behind one interface, so a test states the real behaviour once.

    ``connect(script)`` gives a connected client; on the real backend ``model`` is the
    scripted model endpoint the runtime calls (None on the scripted one).
    """

    def __init__(self, name: str, factory: Callable[..., MeerkatClient]) -> None:
        self.name = name
        self._factory = factory
        self.model: Optional[ModelEndpoint] = None

    @property
    def real(self) -> bool:
        return self.name == "real"

    def connect(self, script: Any = None, **options: Any) -> ContextManager[MeerkatClient]:
        options.setdefault("request_timeout", 20.0)
        options.setdefault("turn_timeout", 60.0)
        client = self._factory(script, **options)
        if isinstance(client, RealRuntimeClient):
            self.model = client.model
        return contextlib.closing(client.connect() if not self.real else client)


def _scripted(script: Any = None, **options: Any) -> MeerkatClient:
    return scripted_client(script, **options)


@pytest.fixture(params=["scripted", pytest.param("real", marks=[pytest.mark.real_binary, requires_real])])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Run a test against the scripted runtime and, when one is available, the real one."""
    return Backend(request.param, real_client if request.param == "real" else _scripted)


@pytest.fixture
def client() -> Iterator[MeerkatClient]:
    with scripted_client(request_timeout=10.0, turn_timeout=30.0) as c:
        yield c


# ``match`` is Python 3.10 syntax: the file would not even parse on 3.9.
collect_ignore = ["test_pattern_matching.py"] if sys.version_info < (3, 10) else []


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A throwaway CA and localhost certificate for the HTTPS release server."""
    from _binary_support import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server(certs: Any) -> Iterator[Any]:
    """A real HTTPS server on 127.0.0.1 serving release archives."""
    from _binary_support import ReleaseServer

    srv = ReleaseServer(certs)
    yield srv
    srv.close()
