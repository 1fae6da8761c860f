"""The Django app of docs/web-apps.rst, served by gunicorn as in production, over real HTTP.

Each test serves the documented modules (tests/webapps/harness.py writes them from the
docs) with its own gunicorn on a loopback port; every worker's client runs the scripted
runtime as its rkat-rpc.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from webapps.harness import (
    alive,
    ask_many,
    check_streaming,
    children,
    converse,
    end_all,
    is_runtime,
    serve,
    write_apps,
)

APP = "django_app:application"


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    return write_apps(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes in /proc")
def test_each_worker_starts_one_runtime_however_many_requests_it_serves(apps: Path) -> None:
    with serve(apps, APP, "--workers", "2", "--threads", "4") as server:
        tree = server.workers(2)
        assert all(len(kids) == 1 for kids in tree.values()), f"one rkat-rpc per worker: {tree}"
        assert all(is_runtime(pid) for kids in tree.values() for pid in kids), tree
        assert children(server.pid) == sorted(tree), "the master runs nothing but its workers"

        ask_many(server, 48)  # concurrent requests, on both workers' threads
        for _ in range(10):
            health = server.health()
            assert tree[health["worker_pid"]] == [health["rkat_rpc_pid"]]
            assert health["open_conversations"] == 0, "/ask archives its session"
        assert {worker: children(worker) for worker in tree} == tree, "no runtime was added or replaced"
    for kids in tree.values():
        assert not alive(kids[0]), f"rkat-rpc {kids[0]} outlived gunicorn"


def test_one_worker_with_threads_serves_many_users_each_their_own_conversation(apps: Path) -> None:
    with serve(apps, APP, "--threads", "8") as server:
        held = converse(server, users=24)
        assert server.health()["open_conversations"] == 24
        end_all(server, held)
        assert server.health()["open_conversations"] == 0, "ended conversations are archived"


def test_streams_arrive_as_generated_and_a_dropped_stream_is_called_off(apps: Path) -> None:
    with serve(apps, APP, "--threads", "8") as server:
        check_streaming(server)
