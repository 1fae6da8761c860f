"""Core flows as scenarios: each drives a client through the public API and reports what it saw.

The same scenario runs on the scripted runtime, on the real rkat-rpc (live, when
``MEERKAT_BIN_PATH`` names one), and on the replay of a recorded real transcript, so
``test_differential`` and ``test_real_transcripts`` can compare the three. A scenario
must write the same requests in the same order every time it runs.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

from _observe import Normalizer, error, events, plain

from meerkat_sync import MeerkatClient, MeerkatError, Session, TurnStarted

Observation = Dict[str, Any]
Scenario = Callable[[MeerkatClient], Observation]

#: name -> scenario, in definition order.
SCENARIOS: Dict[str, Scenario] = {}

QUIET = {"enable_builtins": False}  # no builtin tools: the model is offered nothing


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def fake(**spec: Any) -> str:
    return "fake:" + json.dumps(spec, sort_keys=True)


def attempt(call: Callable[[], Any]) -> Any:
    """The call's result as plain data, or its error."""
    try:
        return plain(call())
    except MeerkatError as exc:
        return error(exc)


def legacy(call: Callable[[], Any]) -> Any:
    """A call with legacy skill-ref strings, on purpose: without their DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return call()


def _wait_for_run(session: Session, stream: Any) -> None:
    """Consume a stream until its run's first turn started (the run is then interruptible)."""
    for event in stream:
        if isinstance(event, TurnStarted):
            return


@scenario
def plain_stream(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    prompt = fake(chunks=["Meerkats ", "live in ", "groups."], usage={"input_tokens": 12, "output_tokens": 3})
    stream = client.create_session_streaming(prompt, labels={"case": "plain"}, **QUIET)
    first = events(stream)
    session = stream.session
    assert session is not None
    return norm(
        {
            "stream": first,
            "history": plain(session.history()),
            "read": plain(client.read_session(session.id)),
            "list": plain(client.list_sessions(labels={"case": "plain"})),
        }
    )


@scenario
def multi_turn_usage(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    session = client.create_session(
        fake(text="one", usage={"input_tokens": 5, "output_tokens": 7, "cache_read_tokens": 3}), **QUIET
    )
    second = session.stream(
        fake(text="two", usage={"input_tokens": 11, "output_tokens": 13, "cache_creation_tokens": 2})
    )
    return norm(
        {
            "first": plain(session.last_result),
            "second": events(second),
            "third": plain(session.turn(fake(text="three"))),
            "history": plain(session.history(offset=1, limit=2)),
            "list": plain(client.list_sessions()),
        }
    )


@scenario
def builtin_tools(client: MeerkatClient) -> Observation:
    """The model calls a real server-side tool (``task_list``: ``[]`` in a new realm) and one that
    does not exist, in one reply; then answers."""
    norm = Normalizer()
    missing = json.dumps(
        {"error": "tool_not_found", "message": "Tool not found: no_such_tool"}, separators=(",", ":")
    )
    prompt = fake(
        tool_calls=[
            {"name": "task_list", "args": {}, "result": "[]"},
            {"name": "no_such_tool", "args": {"x": 1}, "result": missing, "is_error": True},
        ],
        text="No tasks.",
        usage={"input_tokens": 100, "output_tokens": 50},
    )
    stream = client.create_session_streaming(prompt, enable_shell=False)
    observed = events(stream)
    assert stream.session is not None
    return norm({"stream": observed, "history": plain(stream.session.history())})


@scenario
def reasoning(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    stream = client.create_session_streaming(fake(reasoning=["Let me ", "think."], text="Done."), **QUIET)
    return norm({"stream": events(stream)})


@scenario
def structured_output(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    prompt = fake(text="The answer is 42", structured_output={"answer": 42})
    stream = client.create_session_streaming(prompt, output_schema=schema, **QUIET)
    return norm({"stream": events(stream)})


@scenario
def deferred_first_turn(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    deferred = client.create_deferred_session(
        fake(text="Deferred reply."), labels={"case": "deferred"}, **QUIET
    )
    before = {
        "read": plain(client.read_session(deferred.id)),
        "history": plain(deferred.history()),
        "list": plain(client.list_sessions(labels={"case": "deferred"})),
    }
    stream = deferred.stream("Be brief.")
    return norm({"before": before, "stream": events(stream), "history": plain(deferred.history())})


@scenario
def block_prompt(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    prompt = [
        {"type": "text", "text": fake(text="A pixel.")},
        {"type": "image", "media_type": "image/png", "data": pixel},
    ]
    stream = client.create_session_streaming(prompt, **QUIET)
    return norm({"stream": events(stream)})


@scenario
def interrupt_running_turn(client: MeerkatClient) -> Observation:
    """Interrupt a turn that never ends; the session then works, without re-running it."""
    norm = Normalizer()
    session = client.create_session(fake(text="ready"), **QUIET)
    with session.stream(fake(hang=True)) as stream:
        _wait_for_run(session, stream)
        session.interrupt()
        interrupted = events(stream)
    after = session.stream(fake(text="after"))
    return norm({"interrupted": interrupted, "after": events(after), "history": plain(session.history())})


@scenario
def queued_turn_behind_an_interrupted_one(client: MeerkatClient) -> Observation:
    """Turn B waits for turn A; A is interrupted; B then runs, and A is not run again."""
    norm = Normalizer()
    session = client.create_session(fake(text="ready"), **QUIET)
    outcome: Dict[str, Any] = {}
    with session.stream(fake(hang=True)) as stream:
        _wait_for_run(session, stream)
        queued = threading.Thread(
            target=lambda: outcome.update(b=attempt(lambda: session.turn(fake(text="B"))))
        )
        queued.start()
        time.sleep(0.3)  # B is now waiting behind A
        session.interrupt()
        outcome["a"] = events(stream)
    queued.join(30)
    return norm({**outcome, "history": plain(session.history())})


@scenario
def turn_timeout_cancels(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    session = client.create_session(fake(text="ready"), **QUIET)
    timed_out = attempt(lambda: session.turn(fake(hang=True), timeout=1.0))
    return norm({"timed_out": timed_out, "after": attempt(lambda: session.turn(fake(text="after")))})


UNKNOWN = "0195e7a2-1c3b-7d40-9a51-2f6e0c9b8a11"


@scenario
def session_errors(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    ghost = client.session(UNKNOWN)
    live = client.create_session(fake(text="alive"), labels={"case": "errors"}, **QUIET)
    out = {
        "turn_unknown": attempt(lambda: ghost.turn("hello?")),
        "read_unknown": attempt(lambda: client.read_session(UNKNOWN)),
        "history_unknown": attempt(lambda: ghost.history()),
        "archive_unknown": attempt(lambda: ghost.archive()),
        "interrupt_unknown": attempt(lambda: ghost.interrupt()),
        "bad_budget": attempt(
            lambda: client.create_session("x", budget_limits={"max_duration": {"secs": 1}})
        ),
        "bad_overlay": attempt(lambda: live.turn("x", flow_tool_overlay={"allowed_tools": "datetime"})),
        "unknown_alias": attempt(lambda: legacy(lambda: live.turn("x", skill_refs=["not-a-ref"]))),
        "unknown_skill": attempt(
            lambda: legacy(lambda: live.turn(fake(text="skill ok"), skill_refs=[f"{UNKNOWN}/some-skill"]))
        ),
        "archive": attempt(live.archive),
        "read_archived": attempt(lambda: client.read_session(live.id)),
        "turn_archived": attempt(lambda: live.turn("anyone?")),
        "list_after_archive": plain(client.list_sessions(labels={"case": "errors"})),
    }
    return norm(out)


@scenario
def provider_errors(client: MeerkatClient) -> Observation:
    """Errors the model provider answers with, after the runtime's own retries."""
    norm = Normalizer()
    out = {}
    for status in (401, 400, 404, 500):
        session = client.create_session(fake(text=f"ready {status}"), **QUIET)
        failing = fake(provider_error={"message": f"scripted {status}", "status": status})
        out[str(status)] = attempt(lambda s=session, p=failing: s.turn(p))
        out[f"{status}_then"] = attempt(lambda s=session: s.turn(fake(text="recovered")))
    session = client.create_session(fake(text="ready"), **QUIET)
    out["529_twice"] = attempt(
        lambda: session.turn(
            fake(provider_error={"retry_after": 0, "status": 529, "times": 2}, text="after retries")
        )
    )
    out["429_once"] = attempt(
        lambda: session.turn(
            fake(provider_error={"retry_after": 1, "status": 429, "times": 1}, text="after a wait")
        )
    )
    return norm(out)


@scenario
def budgets(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    tool = {"name": "task_list", "args": {}, "result": "[]"}
    no_tools = client.create_session_streaming(
        fake(tool_calls=[tool], text="never"), budget_limits={"max_tool_calls": 0}, enable_shell=False
    )
    tokens = client.create_session_streaming(
        fake(tool_calls=[tool], text="never", usage={"input_tokens": 10, "output_tokens": 10}),
        budget_limits={"max_tokens": 1},
        enable_shell=False,
    )
    return norm({"max_tool_calls": events(no_tools), "max_tokens": events(tokens)})


@scenario
def session_cap(client: MeerkatClient) -> Observation:
    norm = Normalizer()
    sessions = [client.create_deferred_session(f"s{i}", **QUIET) for i in range(64)]
    over = attempt(lambda: client.create_deferred_session("one too many", **QUIET))
    sessions[0].archive()
    again = attempt(lambda: client.create_deferred_session("fits again", **QUIET).id)
    return norm({"over": over, "again": "ok" if isinstance(again, str) else again})


def scenario_names(only: Optional[List[str]] = None) -> List[str]:
    return [n for n in SCENARIOS if only is None or n in only]
