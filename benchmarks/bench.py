#!/usr/bin/env python
"""meerkat_sync vs the official async SDK (``meerkat-sdk==0.5.0``), against the scripted runtime.

Run from the repository root, in an environment with ``pip install -e ".[bench]"``::

    python benchmarks/bench.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench.py --quick    # smaller counts, one repetition

Every measurement runs in its own child process (``--child``), against a fresh scripted
runtime started through the same launcher script for both clients, so one workload can
never warm up, slow down or leak into another, and peak RSS is that of a single client.
Repetitions rotate the order of the clients. The parent prints a table and writes
``benchmarks/results.json``. ``--profile WORKLOAD`` samples one meerkat_sync workload with
py-spy and prints its hot spots instead.

See benchmarks/README.md for what each row and column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
RESULT_MARK = "BENCH-RESULT "
SYNC, SDK, FLOOR = "meerkat_sync", "meerkat-sdk", "floor"

Params = Dict[str, Any]
Result = Dict[str, Any]

FULL: Params = {
    "repeats": 3,
    "stream_repeats": 5,
    "rt_calls": 2000,
    "rt_warmup": 200,
    "stream_events": 200_000,
    "conc_sessions": 64,
    "conc_turns": 10,
    "conc_deltas": 50,
    "connect_runs": 21,
    "mem_events": 1_000_000,
    "mem_rate": 20_000,
    "bigtext_bytes": 200_000,
    "sdk_hang_timeout": 20.0,
    "max_foreign_cores": 0.25,
    "retries": 2,
    "quiet_wait": 30.0,
    "quiet_budget": 180.0,
}
QUICK: Params = {
    **FULL,
    "repeats": 1,
    "stream_repeats": 1,
    "rt_calls": 500,
    "rt_warmup": 50,
    "stream_events": 50_000,
    "conc_turns": 3,
    "connect_runs": 5,
    "mem_events": 200_000,
    "sdk_hang_timeout": 10.0,
    "retries": 1,
    "quiet_wait": 5.0,
    "quiet_budget": 20.0,
}


# --- small helpers (child side) ------------------------------------------------------------


def bulk_prompt(count: int, delta: str) -> str:
    """A scripted reply of ``count`` pre-encoded ``text_delta`` events."""
    return "fake:" + json.dumps({"bulk": {"count": count, "delta": delta}}, separators=(",", ":"))


def chunks_prompt(count: int) -> str:
    """A scripted reply of ``count`` small deltas, each encoded and written on its own."""
    return "fake:" + json.dumps({"chunks": [f"tok{i} " for i in range(count)], "delay_ms": 0})


def turn_prompt(p: Params) -> str:
    """The concurrency turn: pre-encoded (``bulk``) unless ``lines`` asks for one write per event."""
    if p.get("conc_mode") == "lines":
        return chunks_prompt(p["conc_deltas"])
    return bulk_prompt(p["conc_deltas"], "tok ")


def proc_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """user+system CPU seconds of another process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _count_events(stream: Any) -> int:
    """Consume a meerkat_sync EventStream, counting its events."""
    with stream:
        return sum(1 for _event in stream)


async def _count_sdk_events(stream: Any) -> int:
    """Consume an official-SDK EventStream (async context manager and iterator), counting events."""
    n = 0
    async with stream:
        async for _event in stream:
            n += 1
    return n


def _run_together(count: int, worker: Callable[[int], None], pid: Optional[int]) -> Meter:
    """Start ``count`` worker threads, release them at once, and meter until all are done."""
    barrier = threading.Barrier(count + 1)

    def gated(index: int) -> None:
        barrier.wait()
        worker(index)

    threads = [threading.Thread(target=gated, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    with Meter(pid) as meter:
        barrier.wait()
        for thread in threads:
            thread.join()
    return meter


class Meter:
    """Wall time, this process's CPU time and the server's CPU time over one measurement."""

    def __init__(self, server_pid: Optional[int]) -> None:
        self.server_pid = server_pid
        self.wall = self.cpu = 0.0
        self.server_cpu: Optional[float] = None

    def __enter__(self) -> Meter:
        self._server0 = proc_cpu_seconds(self.server_pid)
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._cpu0
        server1 = proc_cpu_seconds(self.server_pid)
        if self._server0 is not None and server1 is not None:
            self.server_cpu = server1 - self._server0

    def fields(self) -> Result:
        out: Result = {"wall_s": self.wall, "client_cpu_s": self.cpu}
        if self.server_cpu is not None:
            out["server_cpu_s"] = self.server_cpu
        return out


# --- meerkat_sync workloads ------------------------------------------------------------------


def _sync_client(launcher: str) -> Any:
    from meerkat_sync import MeerkatClient

    return MeerkatClient(command=[launcher], request_timeout=60.0, turn_timeout=600.0).connect()


def sync_roundtrip(p: Params) -> Result:
    with _sync_client(p["launcher"]) as client:
        session = client.create_session("bench")
        for _ in range(p["rt_warmup"]):
            client.read_session(session.id)
        samples: List[float] = []
        clock = time.perf_counter
        with Meter(client.pid) as meter:
            for _ in range(p["rt_calls"]):
                t0 = clock()
                client.read_session(session.id)
                samples.append(clock() - t0)
    return {"samples_us": [s * 1e6 for s in samples], **meter.fields()}


def sync_stream(p: Params) -> Result:
    from meerkat_sync import StreamTruncated, TextDelta

    count, delta = p["stream_events"], p["delta"]
    with _sync_client(p["launcher"]) as client:
        session = client.create_session("bench")
        prompt = bulk_prompt(count, delta)
        events = deltas = dropped = 0
        with Meter(client.pid) as meter:
            with session.stream(prompt) as stream:
                for event in stream:
                    events += 1
                    if type(event) is TextDelta:
                        deltas += 1
                    elif type(event) is StreamTruncated:
                        dropped += event.dropped
            result = stream.result
    return {
        "events": events,
        "deltas": deltas,
        "dropped": dropped,
        "events_per_s": events / meter.wall,
        "text_len": len(result.text),
        **meter.fields(),
    }


def floor_stream(p: Params) -> Result:
    """The same bulk turn read by the smallest possible client: readline + json.loads."""
    count, delta = p["stream_events"], p["delta"]
    loads: Callable[[bytes], Any] = json.loads
    if p.get("parser") == "orjson":
        import orjson

        loads = orjson.loads
    proc = subprocess.Popen(
        [p["launcher"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        readline = proc.stdout.readline
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"session/create","params":{"prompt":"bench"}}\n')
        proc.stdin.flush()
        while True:
            message = loads(readline())
            if message.get("id") == 1:
                session_id = message["result"]["session_id"]
                break
        request = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "turn/start",
            "params": {"session_id": session_id, "prompt": bulk_prompt(count, delta)},
        }
        data = json.dumps(request).encode() + b"\n"
        events = 0
        with Meter(proc.pid) as meter:
            proc.stdin.write(data)
            proc.stdin.flush()
            while True:
                message = loads(readline())
                if "id" in message:
                    break
                events += 1
    finally:
        stop_process(proc)
    return {"events": events, "events_per_s": events / meter.wall, **meter.fields()}


def floor_connect(p: Params) -> Result:
    """spawn + initialize + capabilities/get with nothing but pipes: the server's own share."""
    samples: List[float] = []
    for i in range(p["connect_runs"] + 1):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [p["launcher"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for request_id, method in ((1, "initialize"), (2, "capabilities/get")):
                proc.stdin.write(
                    json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}}).encode()
                    + b"\n"
                )
                proc.stdin.flush()
                while json.loads(proc.stdout.readline()).get("id") != request_id:
                    pass
            elapsed = time.perf_counter() - t0
        finally:
            stop_process(proc)
        if i:
            samples.append(elapsed * 1000)
    return {"samples_ms": samples}


def floor_concurrency(p: Params) -> Result:
    """The concurrency workload driven by one thread with bare pipes: what the server allows."""
    n_sessions, turns = p["conc_sessions"], p["conc_turns"]
    prompt = turn_prompt(p)
    proc = subprocess.Popen(
        [p["launcher"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, readline, loads = proc.stdin, proc.stdout.readline, json.loads

    def send(request_id: int, method: str, params: Params) -> None:
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()

    try:
        for i in range(n_sessions):
            send(i, "session/create", {"prompt": f"bench {i}"})
        session_ids: Dict[int, str] = {}
        while len(session_ids) < n_sessions:
            message = loads(readline())
            if "id" in message:
                session_ids[message["id"]] = message["result"]["session_id"]
        left = {i: turns for i in range(n_sessions)}
        next_id, owner = 1000, {}
        events = done = 0
        with Meter(proc.pid) as meter:
            for i in range(n_sessions):
                owner[next_id] = i
                send(next_id, "turn/start", {"session_id": session_ids[i], "prompt": prompt})
                next_id += 1
            while done < n_sessions * turns:
                message = loads(readline())
                if "id" not in message:
                    events += 1
                    continue
                done += 1
                i = owner.pop(message["id"])
                left[i] -= 1
                if left[i]:
                    owner[next_id] = i
                    send(next_id, "turn/start", {"session_id": session_ids[i], "prompt": prompt})
                    next_id += 1
    finally:
        stop_process(proc)
    return {
        "turns": done,
        "turns_per_s": done / meter.wall,
        "events_per_turn": [events // max(1, done)],
        "errors": {},
        **meter.fields(),
    }


def sync_concurrency(p: Params) -> Result:
    from concurrent.futures import ThreadPoolExecutor

    n_sessions, turns = p["conc_sessions"], p["conc_turns"]
    prompt = turn_prompt(p)
    with _sync_client(p["launcher"]) as client:
        with ThreadPoolExecutor(max_workers=n_sessions) as pool:
            sessions = list(pool.map(lambda i: client.create_session(f"bench {i}"), range(n_sessions)))
        counts: List[List[int]] = [[] for _ in range(n_sessions)]
        errors: List[str] = []

        def worker(index: int) -> None:
            session = sessions[index]
            try:
                for _ in range(turns):
                    counts[index].append(_count_events(session.stream(prompt)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        meter = _run_together(n_sessions, worker, client.pid)
    return _concurrency_result(counts, errors, meter)


def sync_concurrency_creates(p: Params) -> Result:
    """Every worker creates its own session with a streamed first turn, all at once."""
    n_sessions = p["conc_sessions"]
    with _sync_client(p["launcher"]) as client:
        counts: List[List[int]] = [[] for _ in range(n_sessions)]
        errors: List[str] = []

        def worker(index: int) -> None:
            prompt = turn_prompt(p) + f" (session {index})"
            try:
                counts[index].append(_count_events(client.create_session_streaming(prompt)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        meter = _run_together(n_sessions, worker, client.pid)
    return _concurrency_result(counts, errors, meter)


def _concurrency_result(counts: List[List[int]], errors: List[str], meter: Meter) -> Result:
    flat = [n for per in counts for n in per]
    return {
        "turns": len(flat),
        "turns_per_s": len(flat) / meter.wall,
        "events_per_turn": sorted(set(flat)),
        "errors": summarise_errors(errors),
        **meter.fields(),
    }


def summarise_errors(errors: List[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for error in errors:
        key = error[:160]
        out[key] = out.get(key, 0) + 1
    return out


def sync_connect(p: Params) -> Result:
    from meerkat_sync import MeerkatClient

    samples: List[float] = []
    for i in range(p["connect_runs"] + 1):
        client = MeerkatClient(command=[p["launcher"]])
        t0 = time.perf_counter()
        client.connect()  # spawn + initialize + capabilities/get
        elapsed = time.perf_counter() - t0
        client.close()
        if i:  # the first one warms the page cache and the imports of the server
            samples.append(elapsed * 1000)
    return {"samples_ms": samples}


def sync_memory(p: Params) -> Result:
    from meerkat_sync import StreamTruncated, TextDelta

    count, rate, mode = p["mem_events"], p["mem_rate"], p["mode"]
    with _sync_client(p["launcher"]) as client:
        session = client.create_session("bench")
        messages_before = client.read_session(session.id).message_count
        gc.collect()
        base, hwm_before = rss_kib("VmRSS"), peak_rss_kib()
        events = deltas = dropped = 0
        t0 = time.perf_counter()
        with session.stream(bulk_prompt(count, "")) as stream:
            if mode == "slow":
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
            else:
                wait_server_done(lambda: client.read_session(session.id), messages_before)
                time.sleep(0.3)
        peak = peak_rss_kib()
    return _memory_result(base, hwm_before, peak, events, deltas, time.perf_counter() - t0, dropped)


def wait_server_done(read: Callable[[], Any], messages_before: int, limit: float = 600.0) -> None:
    """Poll session/read until the run is committed; its response follows every event."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        info = read()
        if info.message_count > messages_before and not info.is_active:
            return
        time.sleep(0.05)
    raise TimeoutError("the scripted runtime did not finish the run")


def _memory_result(
    base: Optional[int], hwm_before: int, peak: int, events: int, deltas: int, wall: float, dropped: int
) -> Result:
    base_kib = base or hwm_before
    return {
        "baseline_rss_mib": base_kib / 1024,
        "peak_rss_mib": peak / 1024,
        "growth_mib": max(0, peak - base_kib) / 1024,
        "peak_before_stream_mib": hwm_before / 1024,
        "events": events,
        "deltas": deltas,
        "dropped": dropped,
        "wall_s": wall,
    }


# --- official SDK workloads ------------------------------------------------------------------


def _sdk_class() -> Any:
    from meerkat import MeerkatClient as SdkClient  # type: ignore[import-untyped]

    return SdkClient


async def _sdk_client(launcher: str) -> Any:
    client = _sdk_class()(rkat_path=launcher)
    await client.connect()
    return client


def _sdk_pid(client: Any) -> Optional[int]:
    process = getattr(client, "_process", None)  # measurement only: the SDK has no public pid
    return getattr(process, "pid", None)


async def _sdk_close(client: Any) -> None:
    """close(), and make sure the child is gone even when close() itself fails."""
    pid = _sdk_pid(client)
    try:
        await asyncio.wait_for(client.close(), timeout=10)
    except BaseException as exc:  # e.g. the ValueError of a reader task that died
        print(f"meerkat-sdk close() raised {type(exc).__name__}: {exc}", file=sys.stderr)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def sdk_roundtrip(p: Params) -> Result:
    client = await _sdk_client(p["launcher"])
    try:
        session = await client.create_session("bench")
        for _ in range(p["rt_warmup"]):
            await client.read_session(session.id)
        samples: List[float] = []
        clock = time.perf_counter
        with Meter(_sdk_pid(client)) as meter:
            for _ in range(p["rt_calls"]):
                t0 = clock()
                await client.read_session(session.id)
                samples.append(clock() - t0)
    finally:
        await _sdk_close(client)
    return {"samples_us": [s * 1e6 for s in samples], **meter.fields()}


async def sdk_stream(p: Params) -> Result:
    """Events are counted, not typed: 0.5.0 turns every envelope into UnknownEvent (§10.5)."""
    count, delta = p["stream_events"], p["delta"]
    client = await _sdk_client(p["launcher"])
    events = 0
    try:
        session = await client.create_session("bench")
        prompt = bulk_prompt(count, delta)

        async def consume() -> Any:
            nonlocal events
            async with session.stream(prompt) as stream:
                async for _event in stream:
                    events += 1
            return stream.result

        with Meter(_sdk_pid(client)) as meter:
            try:
                result = await asyncio.wait_for(consume(), timeout=p.get("hang_timeout"))
            except asyncio.TimeoutError:
                return _sdk_hang_report(client, events, p["hang_timeout"])
    finally:
        await _sdk_close(client)
    return {
        "events": events,
        "events_per_s": events / meter.wall,
        "text_len": len(result.text),
        **meter.fields(),
    }


def _sdk_hang_report(client: Any, events: int, timeout: float) -> Result:
    reason = f"no result within {timeout:g} s after {events} events"
    task = getattr(getattr(client, "_dispatcher", None), "_task", None)
    if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        reason += f"; its stdout reader task died with {type(exc).__name__}: {exc}"
    return {"failed": reason, "events": events}


async def sdk_concurrency(p: Params) -> Result:
    n_sessions, turns = p["conc_sessions"], p["conc_turns"]
    prompt = turn_prompt(p)
    client = await _sdk_client(p["launcher"])
    counts: List[List[int]] = [[] for _ in range(n_sessions)]
    errors: List[str] = []
    try:
        sessions = await asyncio.gather(*(client.create_session(f"bench {i}") for i in range(n_sessions)))

        async def worker(index: int) -> None:
            session = sessions[index]
            try:
                for _ in range(turns):
                    counts[index].append(await _count_sdk_events(session.stream(prompt)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        with Meter(_sdk_pid(client)) as meter:
            await asyncio.gather(*(worker(i) for i in range(n_sessions)))
    finally:
        await _sdk_close(client)
    return _concurrency_result(counts, errors, meter)


async def sdk_concurrency_creates(p: Params) -> Result:
    n_sessions = p["conc_sessions"]
    client = await _sdk_client(p["launcher"])
    counts: List[List[int]] = [[] for _ in range(n_sessions)]
    errors: List[str] = []
    try:

        async def worker(index: int) -> None:
            prompt = turn_prompt(p) + f" (session {index})"
            try:
                counts[index].append(await _count_sdk_events(client.create_session_streaming(prompt)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        with Meter(_sdk_pid(client)) as meter:
            await asyncio.wait_for(
                asyncio.gather(*(worker(i) for i in range(n_sessions))), timeout=p["sdk_hang_timeout"]
            )
    finally:
        await _sdk_close(client)
    return _concurrency_result(counts, errors, meter)


async def sdk_connect(p: Params) -> Result:
    sdk_client = _sdk_class()
    samples: List[float] = []
    for i in range(p["connect_runs"] + 1):
        client = sdk_client(rkat_path=p["launcher"])
        t0 = time.perf_counter()
        await client.connect()  # spawn + initialize + capabilities/get
        elapsed = time.perf_counter() - t0
        await _sdk_close(client)
        if i:
            samples.append(elapsed * 1000)
    return {"samples_ms": samples}


async def sdk_memory(p: Params) -> Result:
    """A slow async consumer awaits (asyncio.sleep): blocking the loop would stop the reader too."""
    count, rate, mode = p["mem_events"], p["mem_rate"], p["mode"]
    client = await _sdk_client(p["launcher"])
    try:
        session = await client.create_session("bench")
        messages_before = (await client.read_session(session.id)).message_count
        gc.collect()
        base, hwm_before = rss_kib("VmRSS"), peak_rss_kib()
        events = 0
        t0 = time.perf_counter()
        async with session.stream(bulk_prompt(count, "")) as stream:
            if mode == "slow":
                async for _event in stream:
                    events += 1
                    if events % 250 == 0:
                        lag = t0 + events / rate - time.perf_counter()
                        if lag > 0:
                            await asyncio.sleep(lag)
            else:
                end = time.monotonic() + 600
                while time.monotonic() < end:
                    info = await client.read_session(session.id)
                    if info.message_count > messages_before and not info.is_active:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
        peak = peak_rss_kib()
    finally:
        await _sdk_close(client)
    return _memory_result(base, hwm_before, peak, events, events, time.perf_counter() - t0, 0)


SYNC_WORKLOADS: Dict[str, Callable[[Params], Result]] = {
    "roundtrip": sync_roundtrip,
    "stream": sync_stream,
    "stream_bigtext": sync_stream,
    "concurrency": sync_concurrency,
    "concurrency_lines": sync_concurrency,
    "concurrency_creates": sync_concurrency_creates,
    "connect": sync_connect,
    "memory_slow": sync_memory,
    "memory_unconsumed": sync_memory,
}
SDK_WORKLOADS: Dict[str, Callable[[Params], Any]] = {
    "roundtrip": sdk_roundtrip,
    "stream": sdk_stream,
    "stream_bigtext": sdk_stream,
    "concurrency": sdk_concurrency,
    "concurrency_lines": sdk_concurrency,
    "concurrency_creates": sdk_concurrency_creates,
    "connect": sdk_connect,
    "memory_slow": sdk_memory,
    "memory_unconsumed": sdk_memory,
}


def run_child(spec: Params) -> Result:
    """Child-process entry point: one workload, one client, one JSON line on stdout."""
    os.environ["MEERKAT_BIN_PATH"] = spec["launcher"]  # the SDK prefers it over rkat_path
    workload, client = spec["workload"], spec["client"]
    if client == FLOOR:
        floors = {
            "connect": floor_connect,
            "concurrency": floor_concurrency,
            "concurrency_lines": floor_concurrency,
        }
        return floors.get(workload, floor_stream)(spec)
    if client == SYNC:
        return SYNC_WORKLOADS[workload](spec)
    return asyncio.run(SDK_WORKLOADS[workload](spec))


def child_main(raw: str) -> int:
    def on_term(_signum: int, _frame: Any) -> None:
        raise SystemExit(143)  # unwinds the with-blocks, so the clients close their servers

    signal.signal(signal.SIGTERM, on_term)
    spec = json.loads(raw)
    try:
        result = run_child(spec)
    except Exception as exc:
        result = {"failed": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin,):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- parent: jobs, children, summary -------------------------------------------------------


class Job:
    def __init__(self, workload: str, client: str, rep: int, params: Params, timeout: float) -> None:
        self.workload = workload
        self.client = client
        self.rep = rep
        self.params = params
        self.timeout = timeout


def plan(cfg: Params, launcher: str, only: Optional[List[str]]) -> List[Job]:
    reps = cfg["repeats"]
    jobs: List[Job] = []

    def add(workload: str, clients: Sequence[str], n: int, timeout: float, **extra: Any) -> None:
        if only and workload not in only:
            return
        for rep in range(n):
            rotated = list(clients[rep % len(clients) :]) + list(clients[: rep % len(clients)])
            for client in rotated:
                params = {**cfg, **extra, "workload": workload, "client": client, "launcher": launcher}
                jobs.append(Job(workload, client, rep, params, timeout))

    add("roundtrip", [SYNC, SDK], reps, 180)
    add("stream", [SYNC, SDK, FLOOR], cfg["stream_repeats"], 180, delta="")
    big = "x" * max(1, cfg["bigtext_bytes"] // cfg["stream_events"])
    add("stream_bigtext", [SYNC, FLOOR], reps, 180, delta=big)
    add("stream_bigtext", [SDK], 1, 120, delta=big, hang_timeout=cfg["sdk_hang_timeout"])
    if have_orjson():
        add("stream_orjson_floor", [FLOOR], reps, 180, delta="", parser="orjson")
    add("concurrency", [SYNC, SDK, FLOOR], reps, 180)
    add("concurrency_lines", [SYNC, SDK, FLOOR], reps, 180, conc_mode="lines")
    add("concurrency_creates", [SYNC, SDK], 1, 120)
    runs = max(1, cfg["connect_runs"] // reps)
    add("connect", [SYNC, SDK, FLOOR], reps, 180, connect_runs=runs)
    mem_timeout = 120 + cfg["mem_events"] / cfg["mem_rate"] * 2
    add("memory_slow", [SYNC, SDK], 1, mem_timeout, mode="slow")
    add("memory_unconsumed", [SYNC, SDK], 1, 300, mode="unconsumed")
    return jobs


_current: Optional[subprocess.Popen[str]] = None


def system_busy_seconds() -> Optional[float]:
    """CPU seconds all CPUs spent not idle (user..steal), from /proc/stat; None off Linux."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process and every descendant it (transitively) reaped."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group (child + its server), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
            return
        except subprocess.TimeoutExpired:
            continue


def execute(job: Job) -> Result:
    """Run one job in a child; ``foreign_cores`` is the CPU other processes used meanwhile."""
    busy0, own0, t0 = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    result = _execute(job)
    busy1, own1, wall = system_busy_seconds(), own_cpu_seconds(), time.perf_counter() - t0
    if busy0 is not None and busy1 is not None and wall > 0:
        result["foreign_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return result


def _execute(job: Job) -> Result:
    global _current
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job.params)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    _current = proc
    try:
        out, err = proc.communicate(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return {"failed": f"killed after {job.timeout:g} s (child hung)"}
    finally:
        if proc.poll() is None:
            kill_group(proc)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # a server the child failed to stop
        _current = None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: Result = json.loads(line[len(RESULT_MARK) :])
            noise = [ln for ln in err.splitlines() if ln.strip()]
            if noise:
                result["stderr"] = noise[-8:]
            return result
    return {"failed": f"child exited {proc.returncode} without a result: {err.strip()[-500:]}"}


def run_quietly(job: Job, cfg: Params) -> Result:
    """Run a job; while other processes kept a CPU busy meanwhile, run it again (keep the quietest).

    Before each attempt it waits a little for other load to pass, within a budget for the run.
    Memory jobs are not retried: CPU load does not change what they measure.
    """
    best: Optional[Result] = None
    retries = 0 if job.workload.startswith("memory") else cfg["retries"]
    for attempt in range(retries + 1):
        limit = min(cfg["quiet_wait"], cfg["quiet_budget"])
        waited = wait_for_quiet(limit, cfg["max_foreign_cores"]) if limit > 0 else 0.0
        cfg["quiet_budget"] -= waited
        if waited >= 1.0:
            print(f" (waited {waited:.0f} s for other load to pass)", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = execute(job)
        result["attempt"] = attempt + 1
        foreign = result.get("foreign_cores", 0.0)
        note = f"  [other load {foreign:.2f} cores]" if foreign > cfg["max_foreign_cores"] else ""
        if attempt:
            print(" " * 46 + "retry", end="", file=sys.stderr)
        print(f" {short(job, result)}  ({time.perf_counter() - t0:.1f} s){note}", file=sys.stderr)
        if best is None or foreign < best.get("foreign_cores", 0.0):
            best = result
        if "failed" in result or foreign <= cfg["max_foreign_cores"]:
            break
    assert best is not None
    return best


def wait_for_quiet(limit: float, max_busy: float) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``max_busy`` CPUs; returns the wait."""
    t0 = time.perf_counter()
    while True:
        busy0, own0 = system_busy_seconds(), own_cpu_seconds()
        time.sleep(0.5)
        busy1, own1 = system_busy_seconds(), own_cpu_seconds()
        if busy0 is None or busy1 is None:
            return 0.0
        quiet = (busy1 - busy0 - (own1 - own0)) / 0.5 <= max_busy
        if quiet or time.perf_counter() - t0 >= limit:
            return time.perf_counter() - t0 - 0.5


def short(job: Job, result: Result) -> str:
    if "failed" in result:
        return "FAILED: " + str(result["failed"])[:120]
    if result.get("dropped"):
        return _short(result) + f" ({result['dropped']:,} events dropped)"
    return _short(result)


def _short(result: Result) -> str:
    for key, fmt in (
        ("events_per_s", "{:,.0f} events/s"),
        ("turns_per_s", "{:,.1f} turns/s"),
        ("peak_rss_mib", "{:,.1f} MiB peak"),
    ):
        if key in result:
            return fmt.format(result[key])
    if "samples_us" in result:
        return f"p50 {percentile(result['samples_us'], 50):,.0f} us"
    if "samples_ms" in result:
        return f"p50 {percentile(result['samples_ms'], 50):,.1f} ms"
    return "ok"


def median_of(runs: List[Result], key: str) -> Optional[float]:
    values = [r[key] for r in runs if key in r and "failed" not in r]
    return statistics.median(values) if values else None


def summarise(raw: Dict[str, Dict[str, List[Result]]]) -> Dict[str, Dict[str, Any]]:
    """Per workload and client: the headline figures (medians over repetitions)."""
    out: Dict[str, Dict[str, Any]] = {}
    for workload, by_client in raw.items():
        out[workload] = {}
        for client, runs in by_client.items():
            ok = [r for r in runs if "failed" not in r]
            entry: Dict[str, Any] = {"runs": len(runs), "ok_runs": len(ok)}
            entry["foreign_cores_max"] = max((r.get("foreign_cores", 0.0) for r in runs), default=0.0)
            failures = [r["failed"] for r in runs if "failed" in r]
            if failures:
                entry["failed"] = failures[0]
            if ok and "samples_us" in ok[0]:
                pooled = [s for r in ok for s in r["samples_us"]]
                entry.update(
                    p50_us=percentile(pooled, 50),
                    p99_us=percentile(pooled, 99),
                    mean_us=statistics.fmean(pooled),
                    calls=len(pooled),
                    client_cpu_us_per_call=sum(r["client_cpu_s"] for r in ok) / len(pooled) * 1e6,
                )
            if ok and "samples_ms" in ok[0]:
                pooled = [s for r in ok for s in r["samples_ms"]]
                entry.update(p50_ms=percentile(pooled, 50), min_ms=min(pooled), p90_ms=percentile(pooled, 90))
            for key in ("events_per_s", "turns_per_s"):
                value = median_of(runs, key)
                if value is not None:
                    entry[key] = value
                    entry[key + "_min"] = min(r[key] for r in ok)
                    entry[key + "_max"] = max(r[key] for r in ok)
            dropped = sum(r.get("dropped", 0) for r in ok)
            if dropped:
                entry["dropped"] = dropped
            if ok and "events" in ok[0] and "peak_rss_mib" not in ok[0]:
                entry["events"] = sorted({r["events"] for r in ok})
                cpu = [r["client_cpu_s"] / r["events"] * 1e6 for r in ok if r.get("events")]
                if cpu:
                    entry["client_cpu_us_per_event"] = statistics.median(cpu)
            if ok and "server_cpu_s" in ok[0]:
                entry["server_busy"] = statistics.median(r["server_cpu_s"] / r["wall_s"] for r in ok)
                entry["client_busy"] = statistics.median(r["client_cpu_s"] / r["wall_s"] for r in ok)
            if ok and "turns" in ok[0]:
                entry["turns"] = sorted({r["turns"] for r in ok})
                entry["events_per_turn"] = sorted({n for r in ok for n in r["events_per_turn"]})
                errors: Dict[str, int] = {}
                for r in runs:
                    for key, n in r.get("errors", {}).items():
                        errors[key] = errors.get(key, 0) + n
                if errors:
                    entry["errors"] = errors
            if ok and "peak_rss_mib" in ok[0]:
                r = ok[0]
                for key in ("baseline_rss_mib", "peak_rss_mib", "growth_mib", "events", "wall_s"):
                    entry[key] = r[key]
                events = r["events"] or None
                entry["bytes_per_event"] = None if events is None else r["growth_mib"] * 2**20 / events
            out[workload][client] = entry
        sync_entry = out[workload].get(SYNC)
        for other in (SDK, FLOOR):
            for key in ("events_per_s", "turns_per_s"):
                pairs = paired_ratios(by_client.get(SYNC, []), by_client.get(other, []), key)
                if pairs and sync_entry is not None and not sync_entry.get("errors"):
                    sync_entry[f"{key}_vs_{other}"] = {"median": statistics.median(pairs), "per_rep": pairs}
    return out


def paired_ratios(mine: List[Result], theirs: List[Result], key: str) -> List[float]:
    """meerkat_sync / other, repetition by repetition (each pair ran back to back)."""
    return [
        a[key] / b[key]
        for a, b in zip(mine, theirs)
        if "failed" not in a and "failed" not in b and a.get(key) and b.get(key) and not b.get("errors")
    ]


def sync_ratio(summary: Dict[str, Dict[str, Any]], workload: str, key: str, other: str) -> Optional[float]:
    """The paired ratio when there is one, else the ratio of the two medians."""
    entries = summary.get(workload, {})
    mine, theirs = entries.get(SYNC, {}), entries.get(other, {})
    paired = mine.get(f"{key}_vs_{other}")
    if paired is not None:
        return float(paired["median"])
    if mine.get("errors") or theirs.get("errors"):
        return None
    a, b = mine.get(key), theirs.get(key)
    return ratio(a, b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


# --- the table -----------------------------------------------------------------------------


def fmt(value: Optional[float], spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def build_rows(summary: Dict[str, Dict[str, Any]], cfg: Params) -> List[List[str]]:
    rows: List[List[str]] = []

    def get(workload: str, client: str, key: str) -> Optional[float]:
        value = summary.get(workload, {}).get(client, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    def cell(workload: str, client: str, key: str, spec: str) -> str:
        entry = summary.get(workload, {}).get(client)
        if entry is None:
            return "—"
        value = get(workload, client, key)
        if value is None and "failed" in entry:
            return "FAILED"
        if entry.get("errors"):
            failed = sum(entry["errors"].values())
            return f"FAILED {failed}/{failed + sum(entry.get('turns', [0]))} *"
        return fmt(value, spec)

    def row(label: str, workload: str, key: str, spec: str, floor: bool = False) -> None:
        if workload not in summary:
            return
        f = get(workload, FLOOR, key) if floor else None
        rows.append(
            [
                label,
                cell(workload, SYNC, key, spec),
                cell(workload, SDK, key, spec),
                fmt(sync_ratio(summary, workload, key, SDK), ".2f"),
                fmt(f, spec) if floor else "",
                fmt(sync_ratio(summary, workload, key, FLOOR), ".2f") if floor else "",
            ]
        )

    n = cfg["stream_events"]
    row(
        f"round trip p50, us (lower is better; {cfg['rt_calls']:,} calls x {cfg['repeats']})",
        "roundtrip",
        "p50_us",
        ",.0f",
    )
    row("round trip p99, us (lower is better)", "roundtrip", "p99_us", ",.0f")
    row(f"stream {n:,} deltas, events/s (empty deltas)", "stream", "events_per_s", ",.0f", floor=True)
    row(
        f"stream {n:,} deltas, events/s ({n // 1000:,} KB final text)",
        "stream_bigtext",
        "events_per_s",
        ",.0f",
        floor=True,
    )
    if "stream_orjson_floor" in summary and "stream" in summary:
        s = summary["stream"].get(SYNC, {}).get("events_per_s")
        f = summary["stream_orjson_floor"].get(FLOOR, {}).get("events_per_s")
        rows.append(
            [
                "  floor with orjson.loads instead of json.loads",
                "",
                "",
                "",
                fmt(f, ",.0f"),
                fmt(ratio(s, f), ".2f"),
            ]
        )  # different runs: ratio of medians
    row(
        f"concurrency {cfg['conc_sessions']} x {cfg['conc_turns']} turns x {cfg['conc_deltas']}"
        " deltas, turns/s",
        "concurrency",
        "turns_per_s",
        ",.1f",
        floor=True,
    )
    row(
        "  the same, one write per event (server-bound)",
        "concurrency_lines",
        "turns_per_s",
        ",.1f",
        floor=True,
    )
    row(
        f"concurrency {cfg['conc_sessions']} streaming creates at once, turns/s",
        "concurrency_creates",
        "turns_per_s",
        ",.1f",
    )
    row("connect p50, ms (lower is better)", "connect", "p50_ms", ",.1f", floor=True)
    m = cfg["mem_events"]
    row(f"memory, {m:,} events read slowly: peak RSS MiB", "memory_slow", "peak_rss_mib", ",.1f")
    row("  growth over pre-stream RSS, MiB", "memory_slow", "growth_mib", ",.1f")
    row("  events the slow consumer received", "memory_slow", "events", ",.0f")
    row(f"memory, {m:,} events not read: peak RSS MiB", "memory_unconsumed", "peak_rss_mib", ",.1f")
    row("  growth over pre-stream RSS, MiB", "memory_unconsumed", "growth_mib", ",.1f")
    return rows


def render(rows: List[List[str]]) -> str:
    header = ["workload", SYNC, SDK, "sync/SDK", FLOOR, "sync/floor"]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for index, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: Memory bound used for the verdict: client RSS growth while one stream is not read.
MEMORY_BOUND_MIB = 64.0


def targets(summary: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    def get(workload: str, client: str, key: str) -> Optional[float]:
        value = summary.get(workload, {}).get(client, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    out: List[Dict[str, Any]] = []

    def check(name: str, value: Optional[float], goal: str, ok: Optional[bool]) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": ok})

    r = sync_ratio(summary, "stream", "events_per_s", SDK)
    check("stream throughput vs SDK", r, ">= 2.0x", None if r is None else r >= 2.0)
    r = sync_ratio(summary, "stream", "events_per_s", FLOOR)
    check("stream throughput vs floor", r, ">= 0.6x", None if r is None else r >= 0.6)
    r = sync_ratio(summary, "concurrency", "turns_per_s", SDK)
    check("concurrency turns/s vs SDK", r, ">= 1.0x", None if r is None else r >= 1.0)
    r = ratio(get("roundtrip", SYNC, "p50_us"), get("roundtrip", SDK, "p50_us"))
    check("round-trip p50 vs SDK", r, "<= 1.0x", None if r is None else r <= 1.0)
    for workload in ("memory_slow", "memory_unconsumed"):
        g = get(workload, SYNC, "growth_mib")
        check(
            f"{workload}: RSS growth, MiB",
            g,
            f"<= {MEMORY_BOUND_MIB:g} MiB",
            None if g is None else g <= MEMORY_BOUND_MIB,
        )
    return out


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "source": source_state(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "meerkat_sync": version("meerkat-sync"),
        "meerkat_sdk": version("meerkat-sdk"),
    }


def source_state() -> Dict[str, Any]:
    """Which meerkat_sync was measured: the commit, and files changed since (if any)."""
    import meerkat_sync

    repo = Path(meerkat_sync.__file__).resolve().parent.parent

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "meerkat_sync")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line[3:] for line in changed.splitlines()] if changed else [],
    }


def have_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


def write_launcher(directory: str) -> str:
    """The SDK wants one executable file; both clients start the scripted runtime through it."""
    path = Path(directory) / "rkat-rpc"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m meerkat_sync.testing.fake_rkat "$@"\n')
    path.chmod(0o755)
    return str(path)


def preflight() -> Optional[str]:
    for module, hint in (("meerkat_sync", "pip install -e ."), ("meerkat", 'pip install -e ".[bench]"')):
        try:
            __import__(module)
        except ImportError:
            return f"cannot import {module!r}; run: {hint}"
    return None


def parent_main(args: argparse.Namespace) -> int:
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = cfg["stream_repeats"] = args.repeats
    only = args.only.split(",") if args.only else None

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    raw: Dict[str, Dict[str, List[Result]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meerkat-bench-") as tmp:
        launcher = write_launcher(tmp)
        jobs = plan(cfg, launcher, only)
        try:
            for index, job in enumerate(jobs, 1):
                label = f"[{index:>2}/{len(jobs)}] {job.workload:<20} {job.client:<13} rep {job.rep + 1}"
                print(label + " ...", end="", file=sys.stderr, flush=True)
                result = run_quietly(job, cfg)
                raw.setdefault(job.workload, {}).setdefault(job.client, []).append(result)
        except KeyboardInterrupt:
            if _current is not None:
                kill_group(_current)
            print("\ninterrupted; children stopped", file=sys.stderr)
            return 130
    summary = summarise(raw)
    verdicts = targets(summary)
    info = machine()
    print()
    src = info["source"]
    dirty = f" + uncommitted changes to {', '.join(src['uncommitted'])}" if src["uncommitted"] else ""
    print(f"meerkat_sync at {src['commit']}{dirty}")
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']} "
        f"({info['platform']}); meerkat-sdk {info['meerkat_sdk']}; "
        f"{'quick' if args.quick else 'full'} run, {cfg['repeats']} repetition(s), "
        f"{time.perf_counter() - started:.0f} s"
    )
    print()
    print(render(build_rows(summary, cfg)))
    notes = footnotes(summary, cfg["max_foreign_cores"])
    if notes:
        print()
        print("\n".join(notes))
    print()
    print("targets:")
    for v in verdicts:
        mark = {True: "MET", False: "NOT MET", None: "n/a"}[v["met"]]
        print(f"  {v['target']:<34} {fmt(v['value'], '.2f'):>8}  goal {v['goal']:<12} {mark}")
    output = Path(args.output)
    output.write_text(
        json.dumps(
            {
                "machine": info,
                "mode": "quick" if args.quick else "full",
                "params": cfg,
                "memory_bound_mib": MEMORY_BOUND_MIB,
                "summary": summary,
                "targets": verdicts,
                "raw": strip_samples(raw),
                "wall_s": time.perf_counter() - started,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {output}")
    return 0


def footnotes(summary: Dict[str, Dict[str, Any]], max_foreign: float) -> List[str]:
    notes: List[str] = []
    for workload, by_client in summary.items():
        for client, entry in by_client.items():
            if entry["foreign_cores_max"] > max_foreign:
                notes.append(
                    f"! {workload} / {client}: other processes kept {entry['foreign_cores_max']:.2f} "
                    "CPUs busy during a repetition even after retries; treat it as noisy"
                )
            if entry.get("dropped"):
                notes.append(f"{workload} / {client}: the client dropped {entry['dropped']:,} events")
            if "failed" in entry:
                notes.append(f"{workload} / {client}: {entry['failed']}")
            for error, n in entry.get("errors", {}).items():
                notes.append(f"* {workload} / {client}: {n} x {error}")
    return notes


def strip_samples(raw: Dict[str, Dict[str, List[Result]]]) -> Dict[str, Dict[str, List[Result]]]:
    """Keep results.json small: latency samples become a few percentiles."""
    out: Dict[str, Dict[str, List[Result]]] = {}
    for workload, by_client in raw.items():
        for client, runs in by_client.items():
            kept = []
            for r in runs:
                r = dict(r)
                for key in ("samples_us", "samples_ms"):
                    if key in r:
                        samples = r.pop(key)
                        r[key.replace("samples", "percentiles")] = {
                            str(q): percentile(samples, q) for q in (0, 50, 90, 99, 100)
                        }
                kept.append(r)
            out.setdefault(workload, {})[client] = kept
    return out


# --- profiling -----------------------------------------------------------------------------

#: Stacks outside the measured part of a workload (imports, connect, setup, close).
_SETUP_FRAMES = (
    "_find_and_load",
    "_sync_client (",
    "create_session (",
    "MeerkatClient.close",
    "MeerkatClient.connect",
    "ThreadPoolExecutor",
    "Thread.start",
    "Thread.__init__",
)


def pyspy_path() -> Optional[str]:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_main(args: argparse.Namespace) -> int:
    """Sample one meerkat_sync workload with py-spy (GIL holders only) and rank the hot spots."""
    cfg = dict(QUICK if args.quick else FULL)
    workload = args.profile
    if workload not in SYNC_WORKLOADS:
        print(f"--profile takes one of: {', '.join(SYNC_WORKLOADS)}", file=sys.stderr)
        return 2
    spy = pyspy_path()
    if spy is None:
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="meerkat-bench-") as tmp:
        spec = {
            **cfg,
            "workload": workload,
            "client": SYNC,
            "launcher": write_launcher(tmp),
            "delta": "",
            "mode": "slow" if workload == "memory_slow" else "unconsumed",
        }
        raw = Path(tmp) / "profile.txt"
        cmd = [
            spy,
            "record",
            "--rate",
            str(args.rate),
            "--gil",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps(spec),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        result_lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if not raw.exists() or not result_lines:
            print(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-800:]}", file=sys.stderr)
            return 1
        result = json.loads(result_lines[-1][len(RESULT_MARK) :])
        figure = short(Job(workload, SYNC, 0, spec, 0), result)
        print(f"{workload} under py-spy (slower than unprofiled): {figure}")
        print(rank_stacks(raw.read_text(), args.top))
    return 0


def rank_stacks(collapsed: str, top: int) -> str:
    """Self and inclusive shares per thread role, from py-spy's collapsed stacks."""
    import re
    from collections import Counter, defaultdict

    def clean(frame: str) -> str:
        return re.sub(r":\d+\)", ")", frame).replace(str(HERE) + "/", "")

    roles: Counter[str] = Counter()
    own: Dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: Dict[str, Counter[str]] = defaultdict(Counter)
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first entry names the thread
        if not frames or any(s in f for f in frames for s in _SETUP_FRAMES):
            continue
        joined = ";".join(frames)
        if "meerkat_sync" not in joined and "bench.py" not in joined:
            continue
        role = (
            "reader thread"
            if "_read_stdout" in joined
            else "stderr thread"
            if "_drain_stderr" in joined
            else "consumer threads"
            if "worker (bench.py" in joined
            else "consumer (main thread)"
        )
        n = int(count)
        roles[role] += n
        names = [clean(f) for f in frames]
        own[role][names[-1]] += n
        for name in set(names):
            inclusive[role][name] += n
    total = sum(roles.values()) or 1
    out = [f"{total} samples of a thread holding the GIL, inside the measured part of the workload"]
    for role, n in roles.most_common():
        out.append(f"\n== {role}: {n / total:.1%} of the samples")
        out.append("  self time (the function itself):")
        out += [f"    {c / total:6.1%}  {name}" for name, c in own[role].most_common(top)]
        out.append("  inclusive (meerkat_sync and json functions with their callees):")
        ranked = [
            (name, c)
            for name, c in inclusive[role].most_common()
            if ("meerkat_sync" in name or "json" in name) and c / total >= 0.005
        ]
        out += [f"    {c / total:6.1%}  {name}" for name, c in ranked[:top]]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, one repetition")
    parser.add_argument("--repeats", type=int, help="repetitions of each throughput/latency workload")
    parser.add_argument(
        "--only", help="comma-separated workloads: " + ",".join([*SYNC_WORKLOADS, "stream_orjson_floor"])
    )
    parser.add_argument("--output", default=str(HERE / "results.json"), help="JSON results file")
    parser.add_argument("--profile", metavar="WORKLOAD", help="cProfile one meerkat_sync workload")
    parser.add_argument("--top", type=int, default=15, help="functions shown per thread with --profile")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second with --profile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.profile:
        return profile_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
