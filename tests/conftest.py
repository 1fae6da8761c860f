"""Shared fixtures: every client test runs the scripted runtime as a real child process."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest

from meerkat_sync import MeerkatClient, MeerkatError, Session
from meerkat_sync.testing import scripted_client


def fake(**spec: Any) -> str:
    """A prompt that scripts its own reply (the runtime's inline ``fake:`` directive)."""
    return "fake:" + json.dumps(spec)


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
