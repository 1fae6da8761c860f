"""The names users import, cleanup at interpreter exit, and server-to-client request dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import fake

import meerkat_sync
from meerkat_sync import MeerkatClient

ISSUE_NAMES = [
    "MeerkatClient",
    "Session",
    "DeferredSession",
    "EventStream",
    "RunResult",
    "Usage",
    "SessionInfo",
    "SessionHistory",
    "SessionMessage",
    "Capability",
    "SkillKey",
    "SkillRef",
    "SchemaWarning",
    "SkillRuntimeDiagnostics",
    "SourceHealthSnapshot",
    "SkillQuarantineDiagnostic",
    "EventEnvelope",
    "CONTRACT_VERSION",
    "Event",
    "RunStarted",
    "RunCompleted",
    "RunFailed",
    "TurnStarted",
    "TextDelta",
    "TextComplete",
    "ToolCallRequested",
    "ToolResultReceived",
    "TurnCompleted",
    "ToolExecutionStarted",
    "ToolExecutionCompleted",
    "ToolExecutionTimedOut",
    "CompactionStarted",
    "CompactionCompleted",
    "CompactionFailed",
    "BudgetWarning",
    "Retrying",
    "HookStarted",
    "HookCompleted",
    "HookFailed",
    "HookDenied",
    "HookRewriteApplied",
    "HookPatchPublished",
    "SkillsResolved",
    "SkillResolutionFailed",
    "InteractionComplete",
    "InteractionFailed",
    "StreamTruncated",
    "ToolConfigChanged",
    "ToolConfigChangedPayload",
    "ReasoningDelta",
    "ReasoningComplete",
    "UnknownEvent",
    "parse_event",
    "MeerkatError",
    "CapabilityUnavailableError",
    "SessionNotFoundError",
    "SkillNotFoundError",
    "MeerkatTimeoutError",
]


def test_every_documented_name_imports_from_the_package() -> None:
    missing = [name for name in ISSUE_NAMES if not hasattr(meerkat_sync, name)]
    assert not missing
    assert set(ISSUE_NAMES) <= set(meerkat_sync.__all__)
    assert meerkat_sync.CONTRACT_VERSION == "0.5.0"


def test_no_rkat_rpc_outlives_a_script_that_never_closed_its_client(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import atexit, threading, time
        # Registered before meerkat_sync's own exit hook, so it runs after it (LIFO).
        atexit.register(lambda: print("closed at exit:", client.closed, flush=True))
        from meerkat_sync.testing import scripted_client
        client = scripted_client().connect()
        session = client.create_session("hi")
        threading.Thread(target=session.turn, args=('fake:{"hang": true}',), daemon=True).start()
        time.sleep(0.3)
        print(client.pid, flush=True)
        # exit without close(), a turn still running
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "closed at exit: True"
    pid = int(lines[-2])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"rkat-rpc child {pid} outlived the script")


def test_server_requests_run_off_the_reader_thread_and_may_call_the_client(client: MeerkatClient) -> None:
    """The user-facing callback API comes later; the dispatch it will use is checked here."""
    seen = {}

    def handler(params: object) -> object:
        seen["thread"] = threading.current_thread().name
        seen["sessions"] = len(client.list_sessions())  # re-entering the client must not deadlock
        return {"content": f"answered {params['arguments']['q']}", "is_error": False}  # type: ignore[index]

    client._endpoint.register_handler("tool/execute", handler)  # type: ignore[union-attr]
    session = client.create_session("hi")
    params = {"tool_use_id": "toolu_1", "name": "search", "arguments": {"q": "meerkat"}}
    events = list(session.stream(fake(text="ok", callbacks=[{"method": "tool/execute", "params": params}])))
    completed = [e for e in events if e.type == "tool_execution_completed"]
    assert completed[0].result == "answered meerkat" and not completed[0].is_error  # type: ignore[attr-defined]
    assert seen["thread"].startswith("meerkat-callback") and seen["sessions"] >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_a_forked_child_gets_forked_and_leaves_the_parent_alone(client: MeerkatClient) -> None:
    session = client.create_session("before the fork")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what happened, then exit without running pytest's teardown
        try:
            session.turn("from the child")
            code = b"no error"
        except meerkat_sync.MeerkatError as exc:
            code = exc.code.encode()
        client.close()  # must not touch the parent's rkat-rpc
        os.write(write, code)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"FORKED"
    os.close(read)
    assert client.pid is not None
    os.kill(client.pid, 0)  # the parent's rkat-rpc is still running
    assert session.turn("parent still works").text == "Echo: parent still works"
