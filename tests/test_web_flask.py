"""The Flask app of docs/web-apps.rst, served by gunicorn as in production, over real HTTP.

Each test serves the documented modules (tests/webapps/harness.py writes them from the
docs) with its own gunicorn on a loopback port; every worker's client runs the scripted
runtime as its rkat-rpc.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests
from webapps.harness import (
    WAIT,
    alive,
    ask_many,
    check_streaming,
    children,
    converse,
    end_all,
    fake,
    is_runtime,
    post,
    serve,
    write_apps,
)

needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes in /proc")

CONF = ("-c", "gunicorn_conf.py")  # the documented settings: one worker, eight threads
CAP = 64


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    return write_apps(tmp_path)


def test_one_worker_with_threads_serves_many_users_each_their_own_conversation(apps: Path) -> None:
    with serve(apps, "flask_app:app", *CONF) as server:
        held = converse(server, users=24)
        assert server.health()["open_conversations"] == 24
        end_all(server, held)
        assert server.health()["open_conversations"] == 0, "ended conversations are archived"
        # An ended conversation's cookie no longer names a session: the next message starts anew.
        web, old = held[0]
        again = post(web, server, "/chat", fake(text="hello again"))
        assert again.status_code == 200 and again.json()["text"] == "hello again", again.text
        assert again.json()["conversation"] != old


def test_streams_arrive_as_generated_and_a_dropped_stream_is_called_off(apps: Path) -> None:
    with serve(apps, "flask_app:app", *CONF) as server:
        check_streaming(server)


@needs_proc
def test_preloaded_workers_each_start_one_runtime_after_the_fork(apps: Path) -> None:
    with serve(apps, "flask_app:app", *CONF, "--workers", "2", "--preload") as server:
        tree = server.workers(2)
        runtimes = [pid for kids in tree.values() for pid in kids]
        assert all(len(kids) == 1 for kids in tree.values()), f"one rkat-rpc per worker: {tree}"
        assert all(is_runtime(pid) for pid in runtimes), tree
        assert children(server.pid) == sorted(tree), "the master runs nothing but its workers"

        ask_many(server, 40)
        seen = {}
        for _ in range(10):
            health = server.health()
            seen[health["worker_pid"]] = health["rkat_rpc_pid"]
        for worker, runtime in seen.items():
            assert tree[worker] == [runtime], "a worker's client is the worker's only child"
        assert {worker: children(worker) for worker in tree} == tree, "no runtime was added or replaced"
        assert children(server.pid) == sorted(tree)
    for pid in runtimes:  # the workers closed their clients as gunicorn stopped them
        assert not alive(pid), f"rkat-rpc {pid} outlived gunicorn"


@needs_proc
def test_control_a_client_started_at_import_is_forked_into_the_workers(apps: Path) -> None:
    write_apps(apps, "connect_at_import.py")
    with serve(apps, "connect_at_import:app", "--workers", "2", "--preload") as server:
        in_master = [pid for pid in children(server.pid) if is_runtime(pid)]
        assert len(in_master) == 1, "the preloaded import started an rkat-rpc in the master"
        answer = post(requests.Session(), server, "/ask", "hello")
        assert answer.status_code == 502, (answer.status_code, answer.text)
        assert answer.json()["error"] == "FORKED"


def test_more_users_than_the_cap_are_served_and_a_full_realm_is_a_typed_503(apps: Path) -> None:
    with serve(apps, "flask_app:app", *CONF) as server:
        # 200 users, a two-turn conversation each, ended when done: at most 16 open at
        # once, so the 64-session cap is never in the way.
        converse(server, users=200, turns=2, end=True)
        assert server.health()["open_conversations"] == 0

        # 64 users keep their conversations open: the realm is full.
        held = converse(server, users=CAP, turns=1)
        assert server.health()["open_conversations"] == CAP
        late = requests.Session()
        for path in ("/chat", "/chat/stream", "/ask"):
            full = post(late, server, path, fake(text="room for me?"))
            assert full.status_code == 503, (path, full.status_code, full.text)
            assert full.headers["Retry-After"] == "30"
            assert full.json()["error"] == "MAX_SESSIONS_REACHED"
            assert "archive" in full.json()["message"]
        # Open conversations go on; once one ends, the late user is served.
        web, conversation = held[0]
        going = post(web, server, "/chat", fake(text="still going"))
        assert going.json() == {"text": "still going", "conversation": conversation}
        assert web.post(server.url("/chat/end"), timeout=WAIT).status_code == 204
        served = post(late, server, "/chat", fake(text="your turn"))
        assert served.status_code == 200 and served.json()["text"] == "your turn", served.text


def test_idle_conversations_are_archived_when_the_realm_is_full(apps: Path) -> None:
    with serve(apps, "flask_app:app", *CONF, env={"CHAT_IDLE_SECONDS": "1"}) as server:
        held = converse(server, users=CAP, turns=1)  # left open, never ended
        time.sleep(2.5)  # all of them now idle for over a second (updated_at is whole seconds)
        late = post(requests.Session(), server, "/chat", fake(text="made room"))
        assert late.status_code == 200 and late.json()["text"] == "made room", late.text
        assert server.health()["open_conversations"] == 1, "the 64 idle ones were archived"
        # A user whose conversation was archived as idle starts a new one.
        web, old = held[0]
        back = post(web, server, "/chat", fake(text="welcome back"))
        assert back.status_code == 200 and back.json()["text"] == "welcome back", back.text
        assert back.json()["conversation"] != old
        assert server.health()["open_conversations"] == 2
