#!/usr/bin/env python
"""A replay rkat-rpc 0.5.0 for the benchmark: pre-encoded lines, as fast as the pipe takes them.

Run as ``python benchmarks/_replay.py`` (standard library only). It speaks just enough of
the wire for both clients: ``initialize`` and ``capabilities/get`` (the recorded real
results, replayed verbatim from ``tests/transcripts/plain_stream.jsonl``), ``session/create``
(immediate, or ``initial_turn: "deferred"``), ``turn/start``, ``session/read`` and
``session/archive``. Anything else gets a JSON-RPC error; notifications are ignored.

A run writes what the real runtime writes, in its exact compact form (keys of ``params``,
the event envelope and payloads in alphabetical order, the RunResult in struct order):
``run_started``, ``turn_started``, one ``text_delta`` per delta, ``text_complete``,
``turn_completed``, ``run_completed`` (session-cumulative usage, cache fields ``null``)
and then the RunResult response (cache fields omitted, ``skill_diagnostics`` included),
with per-session ``seq`` numbers that continue across runs. The prompt says what to
reply::

    replay:{"deltas": 50}              50 deltas cycling through realistic tokens
    replay:{"deltas": 60000, "delta": "x"}   the same one-character delta every time

and may carry anything after the JSON (e.g. a tag making concurrent creates distinct).

Cost: a line is four pre-encoded pieces (envelope head with the event id, payload, seq,
envelope tail), the seq numbers come from a table of encoded integers, a request whose
bytes differ from an earlier one only in its id is not decoded again, and each batch is
one ``bytes.join``: a 56-line turn costs the server ~15-25 us of CPU on a slow core.
Runs of different sessions answered in the same read batch are interleaved line by line,
as the real runtime interleaves concurrent runs; the runs of one session stay in order.
Long runs are written alone, in chunks of ``CHUNK`` lines.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

TRANSCRIPT = Path(__file__).resolve().parent.parent / "tests" / "transcripts" / "plain_stream.jsonl"
REALM = "meerkat-bench"
MODEL = "claude-opus-4-6"
PROVIDER = "anthropic"
#: A run with more events than this is written alone, in chunks, not interleaved.
BIG = 4096
CHUNK = 4096
#: How many seq numbers to encode at start-up (set by the benchmark for long runs).
PRESIZE_ENV = "MEERKAT_BENCH_PRESIZE"
#: What a default reply's deltas cycle through: pieces of ~4 characters, as a model streams
#: them, with an escaped newline and a non-ASCII character (written raw, as serde does).
ANSWER = (
    "Meerkats live in groups called mobs, usually of twenty to fifty animals. A sentinel stands "
    "guard on a mound while the others forage for beetles and scorpions; its alarm call sends "
    "everyone into the burrows.\n\nThey are immune to some venoms \u2014 a useful trait. "
)
TOKENS = tuple(re.findall(r"\s*\w{1,5}|\s*[^\w\s]+", ANSWER))

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
loads = json.JSONDecoder().decode

#: _DEC[n] is n in decimal (a seq), _IDX[n] in six hex digits (the end of an event id).
_DEC: List[bytes] = []
_IDX: List[bytes] = []


def _grow(upto: int) -> None:
    """Encode the integers up to ``upto`` (and a few thousand more), once per process."""
    start = len(_DEC)
    if upto >= start:
        end = upto + 4097
        _DEC.extend(b"%d" % i for i in range(start, end))
        _IDX.extend(b"%06x" % i for i in range(start, end))


def _uuid7_head(ms: int) -> str:
    """The first 24 characters of a UUID v7 (time, version, variant, randomness)."""
    rand = random.getrandbits(28)
    return f"{ms >> 16 & 0xFFFFFFFF:08x}-{ms & 0xFFFF:04x}-7{rand >> 16:03x}-{0x8000 | rand & 0x3FFF:04x}-"


def _new_session_id() -> str:
    return _uuid7_head(int(time.time() * 1000)) + f"{random.getrandbits(48):012x}"


def _recorded() -> Tuple[Dict[str, bytes], bytes]:
    """The real server's initialize and capabilities/get results and its skill_diagnostics."""
    results: Dict[int, bytes] = {}
    diagnostics = b""
    with TRANSCRIPT.open(encoding="utf-8") as lines:
        next(lines)  # the header record
        for raw in lines:
            entry = json.loads(raw)
            if entry["dir"] != "<":
                continue
            line = entry["line"]
            message = loads(line)
            if message.get("id") in (1, 2):
                start = line.index('"result":') + len('"result":')
                results[message["id"]] = line[start:-1].encode()  # the result, verbatim
            elif "skill_diagnostics" in line and not diagnostics:
                diagnostics = dumps(message["result"]["skill_diagnostics"]).encode()
    return {"initialize": results[1], "capabilities/get": results[2]}, diagnostics


def _payload(payload: bytes) -> bytes:
    """The piece of an event line from the end of its event id to its seq."""
    return b'","payload":' + payload + b',"seq":'


def _usage(input_tokens: int, output_tokens: int) -> bytes:
    return b'{"cache_creation_tokens":null,"cache_read_tokens":null,"input_tokens":%d,"output_tokens":%d}' % (
        input_tokens,
        output_tokens,
    )


TEXT_ONLY = "Invalid params: the replay server takes text prompts"
EVENT_HEAD = b'{"jsonrpc":"2.0","method":"session/event","params":{"event":{"event_id":"'
TURN_STARTED = _payload(b'{"turn_number":0,"type":"turn_started"}')
_ID = re.compile(rb'"id"\s*:\s*(\d+)')


def _delta(piece: str) -> bytes:
    return _payload(b'{"delta":%s,"type":"text_delta"}' % dumps(piece).encode())


_TOKEN_PAYLOADS = [_delta(p) for p in TOKENS]


class Shape:
    """What a reply looks like, encoded once: the delta payloads, the text, the usage."""

    __slots__ = ("_indexed", "complete", "cycle", "events", "n", "output_tokens", "text", "text_json")

    def __init__(self, deltas: int, delta: Optional[str]) -> None:
        pieces = (delta,) if delta is not None else TOKENS
        self.cycle = [_delta(p) for p in pieces] if delta is not None else _TOKEN_PAYLOADS
        self.n = deltas
        self.text = "".join(pieces[i % len(pieces)] for i in range(deltas))
        self.text_json = dumps(self.text).encode()
        self.complete = _payload(b'{"content":%s,"type":"text_complete"}' % self.text_json)
        self.output_tokens = deltas
        self.events = deltas + 5  # run_started, turn_started, deltas, text_complete, turn/run completed
        self._indexed: Optional[List[bytes]] = None

    def indexed(self) -> List[bytes]:
        """turn_started, the deltas and text_complete of a short run, event-id ends included."""
        if self._indexed is None:
            _grow(self.events)
            pieces = [TURN_STARTED, *self.delta_mids(0, self.n), self.complete]
            self._indexed = [_IDX[line] + piece for line, piece in enumerate(pieces, 1)]
        return self._indexed

    def delta_mids(self, start: int, stop: int) -> List[bytes]:
        """The payload pieces of deltas ``start`` to ``stop``."""
        k = len(self.cycle)
        return list(itertools.islice(itertools.cycle(self.cycle), start % k, start % k + stop - start))


class Session:
    __slots__ = (
        "archived",
        "created",
        "deferred",
        "eid",
        "id",
        "idb",
        "info_json",
        "input_total",
        "labels",
        "last_text",
        "messages",
        "output_total",
        "prompts",
        "ref",
        "refb",
        "runs",
        "seq",
        "tail_a",
        "tail_b",
        "updated",
    )

    def __init__(self, labels: Any, deferred: Optional[str]) -> None:
        self.id = _new_session_id()
        self.idb = self.id.encode()
        self.ref = f"{REALM}:{self.id}"
        self.refb = self.ref.encode()
        # Event ids: 24 characters per session, 6 hex digits per run, 6 per line of the run.
        self.eid = EVENT_HEAD + _uuid7_head(int(time.time() * 1000)).encode()
        self.tail_a = b',"source_id":"session:' + self.idb + b'","timestamp_ms":'
        self.tail_b = b'},"session_id":"' + self.idb + b'"}}\n'
        self.seq = self.runs = 0
        self.input_total = self.output_total = 0
        self.messages = 0
        self.labels = labels if isinstance(labels, dict) and labels else None
        self.deferred = deferred
        self.last_text: Optional[str] = None
        self.created = self.updated = int(time.time())
        self.archived = False
        self.prompts: Dict[str, Tuple[List[bytes], int]] = {}
        self.info_json: Optional[bytes] = None  # session/read's result, until the next run

    def pieces(self, prompt: str, shape: Shape) -> Tuple[List[bytes], int]:
        """The payload pieces of a run of this prompt (event-id ends included; the last,
        run_completed, left empty) and the prompt's input tokens."""
        cached = self.prompts.get(prompt)
        if cached is None:
            if len(self.prompts) > 64:
                self.prompts.clear()
            tokens = 20 + len(prompt) // 4
            started = b'{"prompt":%s,"session_id":"%s","type":"run_started"}' % (
                dumps(prompt).encode(),
                self.idb,
            )
            completed = b'{"stop_reason":"end_turn","type":"turn_completed","usage":%s}' % _usage(
                tokens, shape.output_tokens
            )
            if shape.n <= BIG:
                last = shape.events - 1
                middle = shape.indexed()
                mids = [
                    _IDX[0] + _payload(started),
                    *middle,
                    _IDX[last - 1] + _payload(completed),
                    _IDX[last],
                ]
            else:
                mids = [_payload(started), TURN_STARTED, shape.complete, _payload(completed), b""]
            cached = self.prompts[prompt] = (mids, tokens)
        return cached

    def info(self) -> bytes:
        if self.info_json is not None:
            return self.info_json
        out: Dict[str, Any] = {
            "session_id": self.id,
            "session_ref": self.ref,
            "created_at": self.created,
            "updated_at": self.updated,
            "message_count": self.messages,
            "is_active": False,
            "model": MODEL,
            "provider": PROVIDER,
        }
        if self.last_text is not None:
            out["last_assistant_text"] = self.last_text
        if self.labels is not None:
            out["labels"] = self.labels
        self.info_json = dumps(out).encode()
        return self.info_json


Run = Tuple[Session, str, Shape, bytes]


class Server:
    def __init__(self) -> None:
        self.recorded, self.diagnostics = _recorded()
        self.sessions: Dict[str, Session] = {}
        self.shapes: Dict[Any, Shape] = {}  # by prompt, and by (deltas, delta)
        self.requests: Dict[bytes, Tuple[str, Dict[str, Any]]] = {}
        self.now_s, self.now_ms = 0, b"0"  # the time of the batch being answered

    # --- requests -------------------------------------------------------------------------

    def parse(self, line: bytes) -> Optional[Tuple[str, Dict[str, Any], bytes]]:
        """Method, params and the encoded id of a request; None for a notification.

        A line equal to an earlier one but for the digits of its id is not decoded again.
        """
        match = _ID.search(line)
        key = line[: match.start(1)] + line[match.end(1) :] if match else None
        known = self.requests.get(key) if key is not None else None
        if known is not None and match is not None:
            return known[0], known[1], match.group(1)
        message = loads(line.decode("utf-8"))
        if not isinstance(message, dict) or "id" not in message:
            return None
        request_id = dumps(message["id"]).encode()
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        method = str(message.get("method"))
        if key is not None and match is not None and match.group(1) == request_id:
            if len(self.requests) > 10000:
                self.requests.clear()
            self.requests[key] = (method, params)
        return method, params, request_id

    def batch(self, lines: List[bytes]) -> Iterator[bytes]:
        """Answer one read's worth of requests: quick answers first, then the runs."""
        now = time.time()
        self.now_s, self.now_ms = int(now), b"%d" % int(now * 1000)
        quick: List[bytes] = []
        rounds: List[Dict[str, Run]] = []
        for line in lines:
            try:
                request = self.parse(line)
            except ValueError:
                quick.append(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}\n')
                continue
            if request is None:
                continue  # a notification (cancel, initialized): nothing to answer
            run, answer = self.handle(*request)
            if answer is not None:
                quick.append(answer)
            if run is not None:
                for pending in rounds:
                    if run[0].id not in pending:
                        pending[run[0].id] = run
                        break
                else:
                    rounds.append({run[0].id: run})
        if quick:
            yield b"".join(quick)
        for pending in rounds:
            small = [r for r in pending.values() if r[2].n <= BIG]
            if small:
                yield self.interleaved([self.render(*r) for r in small])
            for run in pending.values():
                if run[2].n > BIG:
                    yield from self.render_big(*run)

    def handle(
        self, method: str, params: Dict[str, Any], request_id: bytes
    ) -> Tuple[Optional[Run], Optional[bytes]]:
        if method in self.recorded:
            return None, b'{"jsonrpc":"2.0","id":%s,"result":%s}\n' % (request_id, self.recorded[method])
        if method == "session/create":
            prompt = params.get("prompt")
            if not isinstance(prompt, str):
                return None, _error(request_id, -32602, TEXT_ONLY)
            if params.get("initial_turn") == "deferred":
                session = Session(params.get("labels"), prompt)
                self.sessions[session.id] = session
                result = b'{"session_id":"%s","session_ref":"%s"}' % (session.idb, session.refb)
                return None, b'{"jsonrpc":"2.0","id":%s,"result":%s}\n' % (request_id, result)
            session = Session(params.get("labels"), None)
            self.sessions[session.id] = session
            return (session, prompt, self.shape(prompt), request_id), None
        session_id = params.get("session_id")
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if method == "turn/start":
            prompt = params.get("prompt")
            if session is None or session.archived:
                message = f"turn abandoned: apply failed: Apply failed: session not found: {session_id}"
                return None, _error(request_id, -32603, message)
            if not isinstance(prompt, str):
                return None, _error(request_id, -32602, TEXT_ONLY)
            if session.deferred is not None:
                prompt, session.deferred = f"{session.deferred}\n\n{prompt}", None
            return (session, prompt, self.shape(prompt), request_id), None
        if method in ("session/read", "session/archive"):
            if session is None or session.archived:
                return None, _error(request_id, -32001, f"Session not found: {session_id}")
            if method == "session/archive":
                session.archived = True
                result = b'{"archived":true}'
            else:
                result = session.info()
            return None, b'{"jsonrpc":"2.0","id":%s,"result":%s}\n' % (request_id, result)
        return None, _error(request_id, -32601, f"Method not found: {method}")

    def shape(self, prompt: str) -> Shape:
        """What the prompt's ``replay:{...}`` asks for (prompts and shapes are both cached)."""
        shape = self.shapes.get(prompt)
        if shape is None:
            deltas, delta = 50, None
            start = prompt.find("replay:")
            if start >= 0:
                try:
                    spec, _end = json.JSONDecoder().raw_decode(prompt, start + len("replay:"))
                except ValueError:
                    spec = {}
                if isinstance(spec, dict):
                    deltas = max(0, int(spec.get("deltas", deltas)))
                    delta = spec.get("delta") if isinstance(spec.get("delta"), str) else None
            shape = self.shapes.get((deltas, delta))
            if shape is None:
                shape = self.shapes[(deltas, delta)] = Shape(deltas, delta)
            if len(self.shapes) > 4096:
                self.shapes.clear()
            self.shapes[prompt] = shape
        return shape

    # --- runs -----------------------------------------------------------------------------

    def begin(
        self, session: Session, prompt: str, shape: Shape
    ) -> Tuple[List[bytes], int, bytes, bytes, bytes]:
        """Account for one run: its payload pieces, first seq, event-id head, line tail and
        the run_completed payload."""
        base = session.seq + 1
        session.seq += shape.events
        if session.seq >= len(_DEC):
            _grow(session.seq)
        mids, tokens = session.pieces(prompt, shape)
        session.runs += 1
        session.input_total += tokens
        session.output_total += shape.output_tokens
        session.messages += 3 if session.messages == 0 else 2
        session.last_text = shape.text
        session.updated = self.now_s
        session.info_json = None
        run_completed = b'{"result":%s,"session_id":"%s","type":"run_completed","usage":%s}' % (
            shape.text_json,
            session.idb,
            _usage(session.input_total, session.output_total),
        )
        eid = session.eid + b"%06x" % session.runs
        tail = session.tail_a + self.now_ms + session.tail_b
        return mids, base, eid, tail, _payload(run_completed)

    def response(self, session: Session, shape: Shape, request_id: bytes) -> bytes:
        usage = b'{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d}' % (
            session.input_total,
            session.output_total,
            session.input_total + session.output_total,
        )
        return (
            b'{"jsonrpc":"2.0","id":%s,"result":{"session_id":"%s","session_ref":"%s","text":%s,'
            b'"turns":1,"tool_calls":0,"usage":%s,"skill_diagnostics":%s}}\n'
            % (request_id, session.idb, session.refb, shape.text_json, usage, self.diagnostics)
        )

    def render(self, session: Session, prompt: str, shape: Shape, request_id: bytes) -> List[List[bytes]]:
        """A short run as four columns of line pieces; the response rides on the last line."""
        template, base, eid, tail, run_completed = self.begin(session, prompt, shape)
        n = shape.events
        mids = template.copy()
        mids[-1] = _IDX[n - 1] + run_completed
        tails = [tail] * n
        tails[-1] = tail + self.response(session, shape, request_id)
        return [[eid] * n, mids, _DEC[base : base + n], tails]

    @staticmethod
    def interleaved(runs: List[List[List[bytes]]]) -> bytes:
        """One buffer with the runs' lines interleaved round-robin (runs of equal length)."""
        by_length: Dict[int, List[List[List[bytes]]]] = {}
        for run in runs:
            by_length.setdefault(len(run[0]), []).append(run)
        out: List[bytes] = []
        for length, group in by_length.items():
            width = 4 * len(group)
            parts = [b""] * (width * length)
            for t, (eids, mids, seqs, tails) in enumerate(group):
                offset = 4 * t
                parts[offset::width] = eids
                parts[offset + 1 :: width] = mids
                parts[offset + 2 :: width] = seqs
                parts[offset + 3 :: width] = tails
            out.append(b"".join(parts))
        return b"".join(out)

    def render_big(self, session: Session, prompt: str, shape: Shape, request_id: bytes) -> Iterator[bytes]:
        """A long run, a chunk of lines at a time (never the whole run in memory)."""
        template, seq, eid, tail, run_completed = self.begin(session, prompt, shape)
        _grow(shape.events)
        line = 0
        mids = template[:2]
        for start in range(0, shape.n, CHUNK):
            mids += shape.delta_mids(start, min(start + CHUNK, shape.n))
            yield _lines(eid, line, seq, mids, tail)
            line, seq, mids = line + len(mids), seq + len(mids), []
        mids += [template[-3], template[-2], run_completed]
        yield _lines(eid, line, seq, mids, tail) + self.response(session, shape, request_id)


def _lines(eid: bytes, line: int, seq: int, mids: List[bytes], tail: bytes) -> bytes:
    """Contiguous event lines: ``mids`` from line ``line`` (seq ``seq``) of a run on."""
    n = len(mids)
    parts = [eid] * (5 * n)
    parts[1::5] = _IDX[line : line + n]
    parts[2::5] = mids
    parts[3::5] = _DEC[seq : seq + n]
    parts[4::5] = [tail] * n
    return b"".join(parts)


def _error(request_id: bytes, code: int, message: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":%s,"error":{"code":%d,"message":%s}}\n' % (
        request_id,
        code,
        dumps(message).encode(),
    )


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> int:
    # The parent knows how long the runs will be: encoding their seqs now keeps it out of them.
    _grow(int(os.environ.get(PRESIZE_ENV, "0") or 0))
    server = Server()
    pending = b""
    try:
        while True:
            chunk = os.read(0, 1 << 16)  # a larger buffer costs more to allocate than it saves
            if not chunk:
                return 0
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for data in server.batch([line for line in lines if line.strip()]):
                _write(data)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
