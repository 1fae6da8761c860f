"""Whatever arrives on stdout, the reader survives and other calls keep being served."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
import time
from typing import Iterator, List

import pytest
from conftest import busy_threads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meerkat_sync import MeerkatClient, MeerkatError

PEER = os.path.join(os.path.dirname(__file__), "_replay_peer.py")


@pytest.fixture(scope="module")
def peer_client() -> Iterator[MeerkatClient]:
    with MeerkatClient(command=[sys.executable, PEER], request_timeout=5) as client:
        yield client


def _call_with_junk(client: MeerkatClient, lines: List[bytes]) -> object:
    junk = json.dumps([base64.b64encode(line).decode() for line in lines])
    return client.list_sessions(labels={"junk": junk})


BAD_LINES = {
    "truncated JSON": [b'{"jsonrpc":"2.0","id":{id},"res'],
    "JSON that is not an object": [b"123", b"[1,2,3]", b'"text"', b"null", b'[{"id": {id}}]'],
    "wrong jsonrpc version": [b'{"jsonrpc":"1.0","method":"session/event","params":{}}'],
    "response to an unknown id": [b'{"jsonrpc":"2.0","id":987654,"result":{}}'],
    "string id": [b'{"jsonrpc":"2.0","id":"x","result":{}}'],
    "error with id null": [b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: x"}}'],
    "ANSI log line": [b"\x1b[2m2026-11-23T10:00:00Z\x1b[0m \x1b[31mERROR\x1b[0m meerkat_rpc: boom"],
    "invalid UTF-8": [b"\xff\xfe\xfa not utf-8", b'{"jsonrpc":"2.0","method":"x\xff"}'],
    "blank and whitespace": [b"", b"   ", b"\t"],
    "notification for an unknown session": [
        b'{"jsonrpc":"2.0","method":"session/event","params":{"session_id":"nope",'
        b'"event":{"seq":1,"payload":{"type":"text_delta","delta":"x"}}}}'
    ],
    "event with missing or mistyped fields": [
        b'{"jsonrpc":"2.0","method":"session/event","params":{"session_id":5,"event":"x"}}',
        b'{"jsonrpc":"2.0","method":"session/event","params":{"session_id":"s","event":{"payload":7}}}',
        b'{"jsonrpc":"2.0","method":"session/event","params":[]}',
        b'{"jsonrpc":"2.0","method":42}',
    ],
    "unknown server notification": [b'{"jsonrpc":"2.0","method":"future/thing","params":{"a":1}}'],
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stdin pipe is sized on Linux only")
def test_a_long_request_rkat_rpc_cut_and_could_not_parse_fails_at_once(peer_client: MeerkatClient) -> None:
    # rkat-rpc 0.5.0 drops the first part of a line cut by its 8 KiB reads and answers the
    # rest with an id-less parse error: only a line longer than PIPE_BUF can be cut here.
    started = time.monotonic()
    with pytest.raises(MeerkatError) as lost:
        peer_client.list_sessions(labels={"lose": "1", "filler": "x" * 6000}, timeout=5)
    assert lost.value.code == "REQUEST_LOST"
    assert "send it again" in lost.value.message
    assert lost.value.details["rpc_code"] == -32700
    assert time.monotonic() - started < 2.5  # failed by the error, not by the timeout
    with pytest.raises(MeerkatError) as short:  # a short line cannot be the cut one: no guess
        peer_client.list_sessions(labels={"lose": "1"}, timeout=0.5)
    assert short.value.code == "TIMEOUT"
    assert peer_client.list_sessions() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stdin pipe is sized on Linux only")
def test_a_lost_request_is_recognised_however_soon_the_child_answers(peer_client: MeerkatClient) -> None:
    # Busy threads make the writing thread wait for the GIL right after its write, so the
    # child's parse error is routed before the write returns: the line must already count
    # as sent. (Without that, about one call in five here timed out instead.)
    codes: List[str] = []
    with busy_threads():
        for _ in range(40):
            with pytest.raises(MeerkatError) as lost:
                peer_client.list_sessions(labels={"lose": "1", "filler": "x" * 6000}, timeout=2)
            codes.append(lost.value.code)
    assert codes == ["REQUEST_LOST"] * 40, codes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stdin pipe is sized on Linux only")
def test_a_turn_that_may_be_the_lost_one_times_out_without_wedging_its_session() -> None:
    # Two long turns in flight when rkat-rpc reports a cut line: which one it lost cannot be
    # told, so neither fails at once; the one that times out must not keep its session's
    # turn queue busy forever (no answer would ever free it).
    with MeerkatClient(command=[sys.executable, PEER], request_timeout=5) as client:
        held = client.session("01a23279-e298-7710-bb69-ac3327171f61")
        lost = client.session("01a23279-e2a1-7893-b1ca-e548227bb455")
        held_outcome: List[str] = []

        def hold() -> None:
            try:
                held.turn("hold" + "x" * 6000, timeout=4)
            except MeerkatError as exc:
                held_outcome.append(exc.code)

        holder = threading.Thread(target=hold)
        holder.start()
        time.sleep(0.3)  # the held turn is written first
        with pytest.raises(MeerkatError) as timed_out:
            lost.turn("lose" + "x" * 6000, timeout=1)
        assert timed_out.value.code == "TIMEOUT"
        assert lost.turn("again", timeout=3).text == "ok"  # not stuck behind the lost turn
        holder.join()
    assert held_outcome == ["TIMEOUT"]  # never answered: its own timeout decided


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_lines_are_skipped_and_the_call_completes(peer_client: MeerkatClient, case: str) -> None:
    assert _call_with_junk(peer_client, BAD_LINES[case]) == []
    assert peer_client.list_sessions() == []  # the reader is still alive


@pytest.mark.parametrize(
    "error,code",
    [
        (b'{"code":-32602}', "INVALID_PARAMS"),
        (b'{"message":"no code"}', "INVALID_RESPONSE"),
        (b'{"code":"-32602","message":"string code"}', "INVALID_RESPONSE"),
        (b'"just a string"', "INVALID_RESPONSE"),
        (b'{"code":-32001,"message":"gone","data":[1,2]}', "SESSION_NOT_FOUND"),
    ],
)
def test_malformed_error_objects_become_meerkat_errors(
    peer_client: MeerkatClient, error: bytes, code: str
) -> None:
    line = b'{"jsonrpc":"2.0","id":{id},"error":' + error + b"}"
    with pytest.raises(MeerkatError) as info:
        _call_with_junk(peer_client, [line])
    assert info.value.code == code
    assert peer_client.list_sessions() == []


def test_a_duplicate_response_is_dropped(peer_client: MeerkatClient) -> None:
    early = b'{"jsonrpc":"2.0","id":{id},"result":{"sessions":[{"session_id":"first"}]}}'
    assert [s.session_id for s in _call_with_junk(peer_client, [early])] == ["first"]  # type: ignore[attr-defined]
    assert peer_client.list_sessions() == []  # the real (duplicate) response did not leak here


def test_a_response_without_result_or_error(peer_client: MeerkatClient) -> None:
    with pytest.raises(MeerkatError) as info:
        _call_with_junk(peer_client, [b'{"jsonrpc":"2.0","id":{id}}'])
    assert info.value.code == "INVALID_RESPONSE"


def test_a_multi_megabyte_noise_line(peer_client: MeerkatClient) -> None:
    assert _call_with_junk(peer_client, [b"x" * 8_000_000]) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ")), max_size=5))
def test_fuzz_raw_bytes(peer_client: MeerkatClient, lines: List[bytes]) -> None:
    # A junk line may be a well-formed answer to this very call; only MeerkatError is allowed.
    with contextlib.suppress(MeerkatError):
        _call_with_junk(peer_client, lines)
    assert peer_client.list_sessions() == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": st.sampled_from([None, "{id}", 0, -1, "srv-0", 1.5]),
        "method": st.sampled_from(["session/event", "tool/execute", "x", 3]),
        "params": json_values,
        "result": json_values,
        "error": json_values,
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(messages, max_size=4))
def test_fuzz_json_rpc_shapes(peer_client: MeerkatClient, batch: List[dict]) -> None:
    lines = [json.dumps(m).replace('"{id}"', "{id}").encode() for m in batch]
    with contextlib.suppress(MeerkatError):
        _call_with_junk(peer_client, lines)
    assert peer_client.list_sessions() == []
