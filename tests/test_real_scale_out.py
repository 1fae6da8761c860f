"""Several rkat-rpc processes on one realm: what is shared, what is not, and the session cap.

These tests are the evidence behind the multi-worker pattern in docs/real-runtime.rst
(gunicorn, Celery): persisted sessions are visible to every process of a realm, a
session can be continued by another process, but two processes never share a live
session safely, and the 64-session cap counts the whole realm.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Tuple

import pytest
from conftest import requires_real

from meerkat_sync import MeerkatError, SessionNotFoundError
from meerkat_sync.testing import ModelEndpoint, RealRuntimeClient, real_client

pytestmark = [pytest.mark.real_binary, requires_real]

QUIET = {"enable_builtins": False}
OPTIONS = {"request_timeout": 20.0, "turn_timeout": 60.0}


def fake(**spec: Any) -> str:
    return "fake:" + json.dumps(spec, sort_keys=True)


def join(first: RealRuntimeClient, **options: Any) -> RealRuntimeClient:
    """A second rkat-rpc on the same realm, state root and model endpoint."""
    return real_client(
        model=first.model, state_root=first.state_root, realm_id=first.realm_id, **OPTIONS, **options
    )


@pytest.fixture
def pair() -> Iterator[Tuple[RealRuntimeClient, RealRuntimeClient]]:
    with real_client(**OPTIONS) as a, join(a) as b:
        yield a, b


def test_a_session_made_by_one_process_is_listed_read_and_continued_by_another(
    pair: Tuple[RealRuntimeClient, RealRuntimeClient],
) -> None:
    a, b = pair
    made = a.create_session(fake(text="from A"), labels={"user": "u1"}, **QUIET)
    (listed,) = b.list_sessions(labels={"user": "u1"})
    assert listed.session_id == made.id and listed.message_count == 3
    assert b.read_session(made.id).last_assistant_text == "from A"
    assert [m.role for m in b.session(made.id).history().messages] == ["system", "user", "block_assistant"]
    assert b.session(made.id).turn(fake(text="from B")).text == "from B"
    # B's model call carried A's transcript: the session moved with its history.
    assert [m["role"] for m in a.model.requests[-1].messages] == ["user", "assistant", "user"]
    assert len(a.session(made.id).history().messages) == 5  # A reads the store, B's turn included


def test_a_process_keeps_its_own_live_copy_so_alternating_writers_lose_turns(
    pair: Tuple[RealRuntimeClient, RealRuntimeClient],
) -> None:
    a, b = pair
    made = a.create_session(fake(text="one"), **QUIET)
    b.session(made.id).turn(fake(text="two"))
    a.session(made.id).turn(fake(text="three"))
    # A ran "three" on its stale in-memory copy: B's turn is not in what A sent the model,
    # and the last writer's transcript replaced B's. Route a session to one process.
    sent = a.model.requests[-1].messages
    assert fake(text="two") not in [m.get("content") for m in sent]
    texts = [getattr(m, "text", None) for m in b.session(made.id).history().messages]
    assert "two" not in texts and "three" in texts


def test_archiving_in_one_process_ends_the_session_for_the_other(
    pair: Tuple[RealRuntimeClient, RealRuntimeClient],
) -> None:
    a, b = pair
    made = a.create_session(fake(text="short-lived"), **QUIET)
    b.session(made.id).archive()
    with pytest.raises(SessionNotFoundError):
        a.session(made.id).turn("still there?")


def test_deferred_sessions_exist_only_in_the_process_that_made_them(
    pair: Tuple[RealRuntimeClient, RealRuntimeClient],
) -> None:
    a, b = pair
    pending = a.create_deferred_session("later", **QUIET)
    with pytest.raises(SessionNotFoundError):
        b.read_session(pending.id)


def test_the_sixty_four_session_cap_counts_every_process_of_the_realm(
    pair: Tuple[RealRuntimeClient, RealRuntimeClient],
) -> None:
    a, b = pair
    for n in range(40):
        a.create_session(fake(text=f"a{n}"), **QUIET)
    made_by_b = []
    with pytest.raises(MeerkatError) as full:
        for n in range(40):
            made_by_b.append(b.create_session(fake(text=f"b{n}"), **QUIET))
    assert full.value.code == "MAX_SESSIONS_REACHED" and "archive" in full.value.message
    assert len(made_by_b) == 24  # 40 + 24 = 64 persisted sessions in the realm
    made_by_b[0].archive()
    assert a.create_session(fake(text="fits again"), **QUIET).text == "fits again"


def test_sessions_survive_a_restart_on_the_same_realm(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    with ModelEndpoint() as model:
        with real_client(model=model, state_root=state, **OPTIONS) as first:
            made = first.create_session(fake(text="remember"), **QUIET)
        with real_client(model=model, state_root=state, **OPTIONS) as restarted:
            resumed = restarted.session(made.id)
            assert resumed.turn(fake(text="again")).text == "again"
            assert [m.role for m in resumed.history().messages].count("user") == 2


def test_redb_realms_admit_only_one_process() -> None:
    with real_client(realm_backend="redb", **OPTIONS) as first, pytest.raises(MeerkatError) as info:
        join(first, realm_backend="redb")
    assert info.value.code == "CONNECTION_CLOSED"
    assert "DatabaseAlreadyOpen" in info.value.message
