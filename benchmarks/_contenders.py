"""The contenders: meerkat_sync (threads), the official SDK (asyncio) and two floor clients.

Each function runs one workload against one server in the current process (a child of
``bench.py`` made for this one measurement) and returns a JSON-able result. Only the
measured part is metered: wall time, this process's CPU time (every thread), and the
CPU time of the server's processes (their CPU-time clocks).

The floors are the least a Python client can do for the same work:

* ``floor`` (the wire floor): bare pipes, 64 KiB ``os.read``s, lines counted, only the
  ids of responses decoded, requests pipelined from one thread. It is what the server and
  the pipe can deliver, which proves the server is not what limits the contenders.
* ``json-floor`` / ``orjson-floor``: one thread, ``readline()`` and ``json.loads`` (or
  ``orjson.loads``) on every line: the least a client that decodes every event can do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from _servers import Server

Params = Dict[str, Any]
Result = Dict[str, Any]
SYNC, SYNC_ORJSON, SDK = "sync", "sync+orjson", "sdk"
FLOOR, JSON_FLOOR, ORJSON_FLOOR = "floor", "json-floor", "orjson-floor"
#: Events of one run besides its deltas: run_started, turn_started, text_complete,
#: turn_completed, run_completed.
RUN_EVENTS = 5


# --- metering ------------------------------------------------------------------------------


@functools.cache
def _process_clock(pid: int) -> Optional[int]:
    """The CPU-time clock of another process (POSIX ``clock_getcpuclockid``), or None."""
    try:
        clock = ctypes.c_int()
        if ctypes.CDLL(None).clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            return clock.value
    except (OSError, AttributeError):
        pass
    return None


def alive(pid: int) -> bool:
    """Is the process still running (not gone, not a zombie)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """CPU seconds of another process so far, its exited threads included: from its
    CPU-time clock (nanoseconds), else from /proc/PID/stat (10 ms ticks); None if gone."""
    clock = _process_clock(pid)
    if clock is not None:
        with contextlib.suppress(OSError):
            return time.clock_gettime(clock)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, this process's CPU time and the server processes' CPU time."""

    def __init__(self, server_pids: Sequence[Optional[int]]) -> None:
        self.pids = [pid for pid in server_pids if pid is not None]
        self.wall = self.cpu = 0.0
        self.server_cpu: Optional[float] = None

    def _server(self) -> Optional[float]:
        values = [proc_cpu_seconds(pid) for pid in self.pids]
        return None if not values or None in values else sum(v for v in values if v is not None)

    def __enter__(self) -> Meter:
        self._server0 = self._server()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._cpu0
        server1 = self._server()
        if self._server0 is not None and server1 is not None:
            self.server_cpu = server1 - self._server0

    def fields(self) -> Result:
        return {"wall_s": self.wall, "client_cpu_s": self.cpu, "server_cpu_s": self.server_cpu}


def rss_kib(field: str) -> Optional[int]:
    """``VmRSS``/``VmHWM`` of this process in KiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    return rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Failed(Exception):
    """The contender could not complete the workload (the reason goes into the result)."""


def _runs_result(
    meter: Meter, turns: int, wire_events: int, counts: Optional[List[int]], errors: List[str]
) -> Result:
    tally: Dict[str, int] = {}
    for error in errors:
        tally[error] = tally.get(error, 0) + 1
    return {
        "turns": turns,
        "turns_per_s": turns / meter.wall if meter.wall else 0.0,
        "wire_events": wire_events,
        "events": sum(counts) if counts is not None else None,
        "events_per_turn": sorted(set(counts)) if counts is not None else None,
        "errors": tally,
        **meter.fields(),
    }


def _memory_result(base: Optional[int], hwm_before: int, peak: int, wall: float, **counts: int) -> Result:
    base_kib = base or hwm_before
    return {
        "baseline_rss_mib": base_kib / 1024,
        "peak_rss_mib": peak / 1024,
        "growth_mib": max(0, peak - base_kib) / 1024,
        "wall_s": wall,
        **counts,
    }


def _start_together(count: int, worker: Callable[[int], None], meter: Meter) -> None:
    """Start ``count`` threads, release them at once, and meter until all are done."""
    barrier = threading.Barrier(count + 1)

    def gated(index: int) -> None:
        barrier.wait()
        worker(index)

    threads = [threading.Thread(target=gated, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    with meter:
        barrier.wait()
        for thread in threads:
            thread.join()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# --- meerkat_sync ----------------------------------------------------------------------------


def _sync_client(server: Server, **options: Any) -> Any:
    from meerkat_sync import MeerkatClient

    client = MeerkatClient(
        command=[server.binary], env=server.env, request_timeout=120.0, turn_timeout=600.0, **options
    )
    return client.connect(**server.connect)


def _sync_meter(server: Server, client: Any) -> Meter:
    return Meter([client.pid, *server.helper_pids])


def sync_rtt(server: Server, p: Params) -> Result:
    with _sync_client(server) as client:
        session = client.create_session(server.prompt(1))
        for _ in range(p["rtt_warmup"]):
            client.read_session(session.id)
        samples: List[float] = []
        clock = time.perf_counter
        with _sync_meter(server, client) as meter:
            for _ in range(p["rtt_calls"]):
                t0 = clock()
                client.read_session(session.id)
                samples.append(clock() - t0)
    return {"samples_us": [s * 1e6 for s in samples], "calls": len(samples), **meter.fields()}


def sync_stream(server: Server, p: Params) -> Result:
    from meerkat_sync import StreamTruncated, TextDelta

    prompt = server.prompt(p["stream_deltas"], p["stream_delta"])
    # Room for the whole run, as the SDK has: a throughput figure must not be flattered by
    # deltas dropped unread (the memory workload measures the bound).
    with _sync_client(server, stream_buffer=p["stream_deltas"] + 100) as client:
        session = client.create_session(server.prompt(1))
        events = deltas = dropped = text_len = 0
        with _sync_meter(server, client) as meter:
            for _ in range(p["stream_count"]):
                with session.stream(prompt) as stream:
                    for event in stream:
                        events += 1
                        if type(event) is TextDelta:
                            deltas += 1
                        elif type(event) is StreamTruncated:
                            dropped += event.dropped
                text_len += len(stream.result.text)
    return {
        "events": events,
        "deltas": deltas,
        "dropped": dropped,
        "text_len": text_len,
        "turns": p["stream_count"],
        "wire_events": p["stream_count"] * (p["stream_deltas"] + RUN_EVENTS),
        "events_per_s": events / meter.wall,
        **meter.fields(),
    }


def _sync_sessions(client: Any, server: Server, count: int) -> List[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: client.create_session(server.prompt(1)), range(count)))


def sync_turns(server: Server, p: Params) -> Result:
    """64 threads, each its own session, each ``turns`` x ``session.turn()``."""
    n, turns, prompt = p["sessions"], p["turns"], server.prompt(p["deltas"])
    expected = len(_reply_text(p["deltas"]))
    with _sync_client(server) as client:
        sessions = _sync_sessions(client, server, n)
        errors: List[str] = []
        done = [0] * n

        def worker(index: int) -> None:
            session = sessions[index]
            try:
                for _ in range(turns):
                    result = session.turn(prompt)
                    if len(result.text) != expected:
                        errors.append(f"wrong text: {len(result.text)} characters, not {expected}")
                    done[index] += 1
            except Exception as exc:
                errors.append(_describe(exc))

        meter = _sync_meter(server, client)
        _start_together(n, worker, meter)
    return _runs_result(meter, sum(done), sum(done) * (p["deltas"] + RUN_EVENTS), None, errors)


def _count(stream: Any) -> int:
    with stream:
        return sum(1 for _event in stream)


def _stream_threads(server: Server, p: Params, client: Any, rounds: int, open_stream: Any) -> Result:
    """``sessions`` threads at once, each reading ``rounds`` x ``open_stream(index, round)``."""
    counts: List[int] = []
    errors: List[str] = []

    def worker(index: int) -> None:
        for r in range(rounds):
            try:
                counts.append(_count(open_stream(index, r)))
            except Exception as exc:
                errors.append(_describe(exc))

    meter = _sync_meter(server, client)
    _start_together(p["sessions"], worker, meter)
    return _runs_result(meter, len(counts), len(counts) * (p["deltas"] + RUN_EVENTS), counts, errors)


def sync_streams(server: Server, p: Params) -> Result:
    """64 threads, each its own session, each ``turns`` x ``session.stream()`` read to the end."""
    prompt = server.prompt(p["deltas"])
    with _sync_client(server) as client:
        sessions = _sync_sessions(client, server, p["sessions"])
        return _stream_threads(server, p, client, p["turns"], lambda i, _r: sessions[i].stream(prompt))


def sync_creates(server: Server, p: Params) -> Result:
    """64 threads, each ``rounds`` x ``create_session_streaming()`` with its own prompt, at once."""
    with _sync_client(server) as client:
        return _stream_threads(
            server,
            p,
            client,
            p["rounds"],
            lambda i, r: client.create_session_streaming(server.prompt(p["deltas"], tag=f"{i}.{r}")),
        )


def sync_memory(server: Server, p: Params) -> Result:
    """One long stream read by a consumer slower than the server (``mem_rate`` events/s)."""
    from meerkat_sync import StreamTruncated, TextDelta

    count, rate = p["mem_events"], p["mem_rate"]
    with _sync_client(server) as client:
        session = client.create_session(server.prompt(1))
        gc.collect()
        base, hwm_before = rss_kib("VmRSS"), peak_rss_kib()
        events = deltas = dropped = 0
        t0 = time.perf_counter()
        with session.stream(server.prompt(count, "")) as stream:
            for event in stream:
                events += 1
                if type(event) is TextDelta:
                    deltas += 1
                elif type(event) is StreamTruncated:
                    dropped += event.dropped
                if events % 250 == 0:
                    lag = t0 + events / rate - time.perf_counter()
                    if lag > 0:
                        time.sleep(lag)
        peak = peak_rss_kib()
    wall = time.perf_counter() - t0
    return _memory_result(base, hwm_before, peak, wall, events=events, deltas=deltas, dropped=dropped)


def _reply_text(deltas: int) -> str:
    from _replay import TOKENS

    return "".join(TOKENS[i % len(TOKENS)] for i in range(deltas))


# --- the official SDK ------------------------------------------------------------------------


async def _sdk_client(server: Server) -> Any:
    from meerkat import MeerkatClient as SdkClient  # type: ignore[import-untyped]

    client = SdkClient(rkat_path=server.binary)
    await client.connect(**server.connect)
    return client


def _sdk_pid(client: Any) -> Optional[int]:
    process = getattr(client, "_process", None)  # measurement only: the SDK has no public pid
    return getattr(process, "pid", None)


def _sdk_meter(server: Server, client: Any) -> Meter:
    return Meter([_sdk_pid(client), *server.helper_pids])


async def _sdk_close(client: Any, notes: List[str]) -> None:
    """close(), and make sure the server is gone even when close() itself fails."""
    pid = _sdk_pid(client)
    try:
        await asyncio.wait_for(client.close(), timeout=10)
    except BaseException as exc:  # e.g. the ValueError of a reader task that died
        notes.append(f"close() raised {_describe(exc)}")
    if pid is not None and alive(pid):
        notes.append("close() returned with the server still running; killed it")
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


def _reader_died(client: Any) -> str:
    task = getattr(getattr(client, "_dispatcher", None), "_task", None)
    if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
        return f"; its stdout reader task died with {_describe(task.exception())}"
    return ""


async def _sdk_bounded(client: Any, work: Any, p: Params, progress: Callable[[], str]) -> Any:
    """Await ``work``; a hang becomes Failed with what the SDK's reader task says."""
    try:
        return await asyncio.wait_for(work, timeout=p["hang_timeout"])
    except asyncio.TimeoutError:
        raise Failed(
            f"no result within {p['hang_timeout']:g} s ({progress()}){_reader_died(client)}"
        ) from None


SdkBody = Callable[[Server, Params, Any], Any]


def _sdk_main(body: SdkBody) -> Callable[[Server, Params], Result]:
    """Run an SDK workload coroutine with a connected client, closing it whatever happens."""

    def run(server: Server, p: Params) -> Result:
        async def main() -> Result:
            notes: List[str] = []
            client = await _sdk_client(server)
            try:
                result: Result = await body(server, p, client)
            except Failed as exc:
                result = {"failed": str(exc)}
            finally:
                await _sdk_close(client, notes)
            if notes:
                result["notes"] = notes
            return result

        return asyncio.run(main())

    return run


@_sdk_main
async def sdk_rtt(server: Server, p: Params, client: Any) -> Result:
    session = await client.create_session(server.prompt(1))
    for _ in range(p["rtt_warmup"]):
        await client.read_session(session.id)
    samples: List[float] = []
    clock = time.perf_counter
    with _sdk_meter(server, client) as meter:
        for _ in range(p["rtt_calls"]):
            t0 = clock()
            await client.read_session(session.id)
            samples.append(clock() - t0)
    return {"samples_us": [s * 1e6 for s in samples], "calls": len(samples), **meter.fields()}


@_sdk_main
async def sdk_stream(server: Server, p: Params, client: Any) -> Result:
    """Events are counted, not typed: 0.5.0 turns every envelope into UnknownEvent (§10.5)."""
    prompt = server.prompt(p["stream_deltas"], p["stream_delta"])
    session = await client.create_session(server.prompt(1))
    events = text_len = 0

    async def consume() -> None:
        nonlocal events, text_len
        for _ in range(p["stream_count"]):
            async with session.stream(prompt) as stream:
                async for _event in stream:
                    events += 1
            text_len += len(stream.result.text)

    with _sdk_meter(server, client) as meter:
        await _sdk_bounded(client, consume(), p, lambda: f"after {events:,} events")
    return {
        "events": events,
        "text_len": text_len,
        "turns": p["stream_count"],
        "wire_events": p["stream_count"] * (p["stream_deltas"] + RUN_EVENTS),
        "events_per_s": events / meter.wall,
        **meter.fields(),
    }


async def _sdk_sessions(client: Any, server: Server, count: int) -> List[Any]:
    return list(await asyncio.gather(*(client.create_session(server.prompt(1)) for _ in range(count))))


async def _sdk_count(stream: Any) -> int:
    n = 0
    async with stream:
        async for _event in stream:
            n += 1
    return n


@_sdk_main
async def sdk_turns(server: Server, p: Params, client: Any) -> Result:
    n, turns, prompt = p["sessions"], p["turns"], server.prompt(p["deltas"])
    expected = len(_reply_text(p["deltas"]))
    sessions = await _sdk_sessions(client, server, n)
    errors: List[str] = []
    done = [0] * n

    async def worker(index: int) -> None:
        try:
            for _ in range(turns):
                result = await sessions[index].turn(prompt)
                if len(result.text) != expected:
                    errors.append(f"wrong text: {len(result.text)} characters, not {expected}")
                done[index] += 1
        except Exception as exc:
            errors.append(_describe(exc))

    with _sdk_meter(server, client) as meter:
        work = asyncio.gather(*(worker(i) for i in range(n)))
        await _sdk_bounded(client, work, p, lambda: f"{sum(done)} turns done")
    return _runs_result(meter, sum(done), sum(done) * (p["deltas"] + RUN_EVENTS), None, errors)


async def _sdk_stream_tasks(server: Server, p: Params, client: Any, rounds: int, count_one: Any) -> Result:
    """``sessions`` tasks at once, each awaiting ``rounds`` x ``count_one(index, round)``."""
    counts: List[int] = []
    errors: List[str] = []

    async def worker(index: int) -> None:
        for r in range(rounds):
            try:
                counts.append(await count_one(index, r))
            except Exception as exc:
                errors.append(_describe(exc))

    with _sdk_meter(server, client) as meter:
        work = asyncio.gather(*(worker(i) for i in range(p["sessions"])))
        await _sdk_bounded(client, work, p, lambda: f"{len(counts)} streams done")
    return _runs_result(meter, len(counts), len(counts) * (p["deltas"] + RUN_EVENTS), counts, errors)


@_sdk_main
async def sdk_streams(server: Server, p: Params, client: Any) -> Result:
    prompt = server.prompt(p["deltas"])
    sessions = await _sdk_sessions(client, server, p["sessions"])
    return await _sdk_stream_tasks(
        server, p, client, p["turns"], lambda i, _r: _sdk_count(sessions[i].stream(prompt))
    )


@_sdk_main
async def sdk_creates(server: Server, p: Params, client: Any) -> Result:
    """With ``serialise`` (the default), one streaming create at a time: all the SDK allows."""
    lock = asyncio.Lock() if p.get("serialise", True) else None

    async def one(index: int, r: int) -> int:
        prompt = server.prompt(p["deltas"], tag=f"{index}.{r}")
        if lock is None:
            return await _sdk_count(client.create_session_streaming(prompt))
        async with lock:
            return await _sdk_count(client.create_session_streaming(prompt))

    return await _sdk_stream_tasks(server, p, client, p["rounds"], one)


@_sdk_main
async def sdk_memory(server: Server, p: Params, client: Any) -> Result:
    """The slow consumer awaits (asyncio.sleep): blocking the loop would stop the reader too."""
    count, rate = p["mem_events"], p["mem_rate"]
    session = await client.create_session(server.prompt(1))
    gc.collect()
    base, hwm_before = rss_kib("VmRSS"), peak_rss_kib()
    events = 0
    t0 = time.perf_counter()
    async with session.stream(server.prompt(count, "")) as stream:
        async for _event in stream:
            events += 1
            if events % 250 == 0:
                lag = t0 + events / rate - time.perf_counter()
                if lag > 0:
                    await asyncio.sleep(lag)
    peak = peak_rss_kib()
    wall = time.perf_counter() - t0
    return _memory_result(base, hwm_before, peak, wall, events=events, deltas=events - RUN_EVENTS, dropped=0)


# --- the floors ------------------------------------------------------------------------------

_RESPONSE = b'{"jsonrpc":"2.0","id":'
#: The floor's read size: a pipe holds 64 KiB; a 1 MiB buffer costs ~30 us a turn to allocate.
READ_SIZE = 64 * 1024
_NEXT_RESPONSE = b"\n" + _RESPONSE


def _params(params: Params) -> bytes:
    return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()


def _line_at(data: bytes, start: int, end: int) -> int:
    """Where the next response line after ``start`` begins, or -1."""
    found = data.find(_NEXT_RESPONSE, start, end)
    return found + 1 if found >= 0 else -1


class Pipe:
    """Bare pipes to the server, one thread: large reads, lines counted, not split.

    Only responses are looked at, and of a response only its id, unless ``call`` needs
    its result. Requests are written from pre-encoded params.
    """

    def __init__(self, server: Server) -> None:
        self.proc = subprocess.Popen(
            server.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=server.env,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.rest = b""
        self.ids = 0
        self.helper_pids = server.helper_pids
        for method in ("initialize", "capabilities/get"):
            self.call(method, {})

    def encode(self, method: str, params: bytes) -> Tuple[int, bytes]:
        self.ids += 1
        return self.ids, b'{"jsonrpc":"2.0","id":%d,"method":"%s","params":%s}\n' % (
            self.ids,
            method.encode(),
            params,
        )

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def read(self) -> Tuple[int, List[Tuple[int, int, bytes]]]:
        """What the next read brings: how many event lines, and the responses in it as
        (id, offset of the line, the buffer)."""
        chunk = os.read(self.rfd, READ_SIZE)
        if not chunk:
            raise Failed("the server closed stdout")
        data = self.rest + chunk if self.rest else chunk
        end = data.rfind(b"\n") + 1
        self.rest = data[end:]
        responses = []
        # (A response split across reads is taken when its newline has come.)
        at = 0 if end and data.startswith(_RESPONSE) else _line_at(data, 0, end)
        while at >= 0:
            start = at + len(_RESPONSE)
            comma = data.find(b",", start)
            responses.append((int(data[start:comma]), at, data))
            at = _line_at(data, comma, end)
        return data.count(b"\n", 0, end) - len(responses), responses

    def call(self, method: str, params: Params) -> Any:
        request_id, data = self.encode(method, _params(params))
        self.write(data)
        while True:
            _events, responses = self.read()
            for response_id, at, buffer in responses:
                if response_id == request_id:
                    response = json.loads(buffer[at : buffer.index(b"\n", at)])
                    if "error" in response:
                        raise Failed(f"{method}: {response['error']}")
                    return response["result"]

    def meter(self) -> Meter:
        return Meter([self.proc.pid, *self.helper_pids])

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ok(buffer: bytes, at: int) -> bool:
    """Is the response at ``at`` a result (not an error)?"""
    return buffer.startswith(b'"result"', buffer.index(b",", at + len(_RESPONSE)) + 1)


def floor_rtt(server: Server, p: Params) -> Result:
    pipe = Pipe(server)
    try:
        session_id = pipe.call("session/create", {"prompt": server.prompt(1)})["session_id"]
        params = _params({"session_id": session_id})
        for _ in range(p["rtt_warmup"]):
            pipe.call("session/read", {"session_id": session_id})
        samples: List[float] = []
        clock = time.perf_counter
        with pipe.meter() as meter:
            for _ in range(p["rtt_calls"]):
                t0 = clock()
                request_id, data = pipe.encode("session/read", params)
                pipe.write(data)
                answered = False
                while not answered:
                    answered = any(r[0] == request_id and _ok(r[2], r[1]) for r in pipe.read()[1])
                samples.append(clock() - t0)
    finally:
        pipe.close()
    return {"samples_us": [s * 1e6 for s in samples], "calls": len(samples), **meter.fields()}


def floor_stream(server: Server, p: Params) -> Result:
    pipe = Pipe(server)
    try:
        session_id = pipe.call("session/create", {"prompt": server.prompt(1)})["session_id"]
        params = _params(
            {"session_id": session_id, "prompt": server.prompt(p["stream_deltas"], p["stream_delta"])}
        )
        events = 0
        with pipe.meter() as meter:
            for _ in range(p["stream_count"]):
                request_id, data = pipe.encode("turn/start", params)
                pipe.write(data)
                answered = False
                while not answered:
                    n, responses = pipe.read()
                    events += n
                    answered = any(r[0] == request_id for r in responses)
    finally:
        pipe.close()
    return {
        "events": events,
        "turns": p["stream_count"],
        "wire_events": p["stream_count"] * (p["stream_deltas"] + RUN_EVENTS),
        "events_per_s": events / meter.wall,
        **meter.fields(),
    }


Next = Callable[[int], Optional[Tuple[str, bytes]]]


def _floor_pipelined(
    pipe: Pipe, meter: Meter, total: int, first: List[Tuple[str, bytes]], again: Next
) -> int:
    """Keep one request per slot in flight; ``again(slot)`` is the slot's next request or None."""
    owner: Dict[int, int] = {}
    batch = []
    for slot, (method, params) in enumerate(first):
        request_id, data = pipe.encode(method, params)
        owner[request_id] = slot
        batch.append(data)
    events = done = 0
    with meter:
        pipe.write(b"".join(batch))
        while done < total:
            n, responses = pipe.read()
            events += n
            batch = []
            for response_id, at, buffer in responses:
                if not _ok(buffer, at):
                    raise Failed(f"the server answered {buffer[at : at + 300]!r}")
                done += 1
                slot = owner.pop(response_id)
                following = again(slot)
                if following is not None:
                    request_id, data = pipe.encode(*following)
                    owner[request_id] = slot
                    batch.append(data)
            if batch:
                pipe.write(b"".join(batch))
    return events


def floor_runs(server: Server, p: Params) -> Result:
    """The turns and streams workloads: every session's turns back to back, all sessions at once."""
    n, turns, prompt = p["sessions"], p["turns"], server.prompt(p["deltas"])
    pipe = Pipe(server)
    try:
        requests = []
        for _ in range(n):  # set-up, not measured
            session_id = pipe.call("session/create", {"prompt": server.prompt(1)})["session_id"]
            requests.append(("turn/start", _params({"session_id": session_id, "prompt": prompt})))
        left = [turns] * n

        def again(slot: int) -> Optional[Tuple[str, bytes]]:
            left[slot] -= 1
            return requests[slot] if left[slot] else None

        meter = pipe.meter()
        events = _floor_pipelined(pipe, meter, n * turns, requests, again)
    finally:
        pipe.close()
    return _runs_result(meter, n * turns, n * turns * (p["deltas"] + RUN_EVENTS), [events // (n * turns)], [])


def floor_creates(server: Server, p: Params) -> Result:
    n, rounds = p["sessions"], p["rounds"]
    pipe = Pipe(server)
    try:
        creates = [
            [
                ("session/create", _params({"prompt": server.prompt(p["deltas"], tag=f"{i}.{r}")}))
                for r in range(rounds)
            ]
            for i in range(n)
        ]

        def again(slot: int) -> Optional[Tuple[str, bytes]]:
            return creates[slot].pop() if creates[slot] else None

        meter = pipe.meter()
        events = _floor_pipelined(pipe, meter, n * rounds, [again(i) for i in range(n)], again)
    finally:
        pipe.close()
    total = n * rounds
    return _runs_result(meter, total, total * (p["deltas"] + RUN_EVENTS), [events // total], [])


def json_floor_stream(server: Server, p: Params, loads: Callable[[bytes], Any] = json.loads) -> Result:
    """The stream read with ``readline()`` and a full decode of every line, in one thread."""
    proc = subprocess.Popen(
        server.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=server.env
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, readline = proc.stdin, proc.stdout.readline

    def call(request_id: int, method: str, params: Params) -> Any:
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()
        events = 0
        while True:
            decoded = loads(readline())
            if "id" in decoded:
                return events, decoded["result"]
            events += 1

    try:
        call(1, "initialize", {})
        call(2, "capabilities/get", {})
        session_id = call(3, "session/create", {"prompt": server.prompt(1)})[1]["session_id"]
        prompt = server.prompt(p["stream_deltas"], p["stream_delta"])
        events = 0
        with Meter([proc.pid, *server.helper_pids]) as meter:
            for i in range(p["stream_count"]):
                events += call(4 + i, "turn/start", {"session_id": session_id, "prompt": prompt})[0]
    finally:
        stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "events": events,
        "turns": p["stream_count"],
        "wire_events": p["stream_count"] * (p["stream_deltas"] + RUN_EVENTS),
        "events_per_s": events / meter.wall,
        **meter.fields(),
    }


def orjson_floor_stream(server: Server, p: Params) -> Result:
    import orjson

    return json_floor_stream(server, p, orjson.loads)


# --- dispatch ---------------------------------------------------------------------------------

#: What each contender runs for each kind of workload (``kind`` in _workloads.WORKLOADS).
RUNNERS: Dict[str, Dict[str, Callable[[Server, Params], Result]]] = {
    SYNC: {
        "rtt": sync_rtt,
        "stream": sync_stream,
        "turns": sync_turns,
        "streams": sync_streams,
        "creates": sync_creates,
        "memory": sync_memory,
    },
    SDK: {
        "rtt": sdk_rtt,
        "stream": sdk_stream,
        "turns": sdk_turns,
        "streams": sdk_streams,
        "creates": sdk_creates,
        "memory": sdk_memory,
    },
    FLOOR: {
        "rtt": floor_rtt,
        "stream": floor_stream,
        "turns": floor_runs,
        "streams": floor_runs,
        "creates": floor_creates,
    },
    JSON_FLOOR: {"stream": json_floor_stream},
    ORJSON_FLOOR: {"stream": orjson_floor_stream},
}
RUNNERS[SYNC_ORJSON] = RUNNERS[SYNC]
