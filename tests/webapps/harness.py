"""Serving the documented web apps for real: gunicorn on a loopback port, scripted rkat-rpc.

The apps are the named code blocks of docs/web-apps.rst, written to a directory as
modules (``conversations``, ``flask_app``, ``gunicorn_conf``, ``django_app``); the
server's ``MEERKAT_BIN_PATH`` is the ``fake-rkat-rpc`` console script, so every worker's
client runs the scripted runtime as a real child process. Nothing here is timed: every
wait is for a condition, with a generous bound (the machine is a noisy 2-core VM).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar

import requests
from _doc_blocks import named

WAIT = 60.0  # the bound on any one wait or HTTP request
APP_MODULES = ("conversations", "flask_app", "gunicorn_conf", "django_app")
HERE = Path(__file__).resolve().parent

#: A reply that would stream for over eight minutes: 20,000 deltas, 25 ms apart.
ENDLESS = "[endless]"
TICK = "tick "
SCRIPT = {"rules": [{"match": ENDLESS, "reply": {"chunks": [TICK] * 20000, "delay_ms": 25}}]}

T = TypeVar("T")


def fake(**spec: Any) -> str:
    """A prompt that scripts its own reply (the scripted runtime's ``fake:`` directive)."""
    return "fake:" + json.dumps(spec)


def fake_runtime() -> str:
    found = shutil.which("fake-rkat-rpc", path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError(f"no fake-rkat-rpc next to {sys.executable}: pip install -e .")
    return found


def write_apps(directory: Path, *extra: str) -> Path:
    """The documented modules (and ``extra`` files from tests/webapps/) plus the runtime's script."""
    for name in APP_MODULES:
        named(name).write(directory)
    for name in extra:
        shutil.copy(HERE / name, directory / name)
    (directory / "script.json").write_text(json.dumps(SCRIPT), encoding="utf-8")
    return directory


def wait_for(condition: Callable[[], Optional[T]], what: str, timeout: float = WAIT) -> T:
    """Poll ``condition`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# --- processes, from /proc ---------------------------------------------------------------


def _stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def children(pid: int) -> List[int]:
    """The live (not zombie) child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def is_runtime(pid: int) -> bool:
    return "fake-rkat-rpc" in cmdline(pid)


# --- the server -------------------------------------------------------------------------


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def health(self) -> Dict[str, Any]:
        answer = requests.get(self.url("/healthz"), timeout=WAIT)
        assert answer.status_code == 200, (answer.status_code, answer.text, self.log_tail())
        body: Dict[str, Any] = answer.json()
        return body

    def workers(self, count: int) -> Dict[int, List[int]]:
        """Wait until the master has ``count`` workers, each with a child; worker -> children."""

        def ready() -> Optional[Dict[int, List[int]]]:
            workers = children(self.pid)
            if len(workers) != count:
                return None
            tree = {worker: children(worker) for worker in workers}
            return tree if all(tree.values()) else None

        return wait_for(ready, f"{count} gunicorn workers, each with its rkat-rpc\n{self.log_tail()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(server: Server) -> Optional[bool]:
    """True once the server answers HTTP at all (any status); raises if gunicorn exited."""
    if server.proc.poll() is not None:
        raise ChildProcessError(server.log_tail())
    try:
        requests.get(server.url("/healthz"), timeout=5)
    except requests.ConnectionError:
        return None
    except requests.Timeout:
        return None
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop gunicorn as an operator would (SIGTERM); kill its group if it does not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(WAIT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left of the master's group
    proc.wait()


def _private(directory: Path) -> List[str]:
    """gunicorn 25+ opens a control socket, by default one per user (~/.gunicorn): one per test."""
    import gunicorn.config

    if any(setting.name == "control_socket" for setting in gunicorn.config.KNOWN_SETTINGS):
        return ["--control-socket", str(directory / "gunicorn.ctl")]
    return []


@contextlib.contextmanager
def serve(
    directory: Path, app: str, *options: str, env: Optional[Mapping[str, str]] = None
) -> Iterator[Server]:
    """Run ``gunicorn [options] app`` in ``directory`` on a free loopback port until the block ends.

    The server is always stopped and reaped, whatever happens in the block.
    """
    environment = dict(os.environ)
    environment.update(
        MEERKAT_BIN_PATH=fake_runtime(),
        MEERKAT_FAKE_SCRIPT=str(directory / "script.json"),
        FLASK_SECRET_KEY="test-secret-key",
        DJANGO_SECRET_KEY="test-secret-key",
        PYTHONUNBUFFERED="1",
    )
    environment.update(env or {})
    for attempt in range(3):
        port = free_port()
        log = directory / f"gunicorn-{port}.log"
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *_private(directory)]
        argv += [*options, app]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=directory,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(proc, port, log)
        try:
            try:
                wait_for(partial(_answers, server), f"gunicorn to answer on port {port}")
            except ChildProcessError as exited:
                if "in use" in str(exited) and attempt < 2:
                    continue  # another process took the port between probe and bind
                raise AssertionError(f"gunicorn exited before it answered:\n{exited}") from None
            yield server
            return
        finally:
            _stop(proc)
    raise AssertionError("no free port for gunicorn")


# --- scenarios shared by the Flask and Django tests ---------------------------------------


def post(web: requests.Session, server: Server, path: str, prompt: str) -> requests.Response:
    return web.post(server.url(path), json={"prompt": prompt}, timeout=WAIT)


def converse(
    server: Server, users: int, turns: int = 3, *, end: bool = False
) -> Dict[int, Tuple[requests.Session, str]]:
    """``users`` users at once (16 at a time), each holding one conversation of ``turns`` turns.

    Every reply is scripted from its own prompt (``user-U turn-T``), and the middle turn
    is streamed, so an answer handed to another request, a turn run on another user's
    conversation or a stream mixed with another shows as a wrong text or id.
    With ``end``, each user ends the conversation after its last turn (``/chat/end``).
    Returns each user's HTTP session (its cookie) and conversation id.
    """

    def one(user: int) -> Tuple[requests.Session, str]:
        web = requests.Session()
        conversation: Optional[str] = None
        for turn in range(turns):
            chunks = [f"user-{user}", f" turn-{turn}", " ok"]
            prompt = fake(chunks=chunks, delay_ms=20)
            if turn == 1:
                with web.post(
                    server.url("/chat/stream"), json={"prompt": prompt}, stream=True, timeout=WAIT
                ) as answer:
                    assert answer.status_code == 200, (answer.status_code, answer.text)
                    text = b"".join(answer.iter_content(chunk_size=None)).decode()
            else:
                answer = post(web, server, "/chat", prompt)
                assert answer.status_code == 200, (answer.status_code, answer.text)
                text, got = answer.json()["text"], answer.json()["conversation"]
                assert conversation in (None, got), f"user {user} moved from {conversation} to {got}"
                conversation = got
            assert text == "".join(chunks), f"user {user} turn {turn} got {text!r}"
        assert conversation is not None
        if end:
            ended = web.post(server.url("/chat/end"), timeout=WAIT)
            assert ended.status_code == 204, (ended.status_code, ended.text)
        return web, conversation

    with ThreadPoolExecutor(max_workers=16) as pool:
        held = dict(zip(range(users), pool.map(one, range(users))))
    ids = [conversation for _, conversation in held.values()]
    assert len(set(ids)) == users, "two users shared a conversation"
    return held


def end_all(server: Server, held: Mapping[int, Tuple[requests.Session, str]]) -> None:
    def end(web: requests.Session) -> None:
        answer = web.post(server.url("/chat/end"), timeout=WAIT)
        assert answer.status_code == 204, (answer.status_code, answer.text)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(end, [web for web, _ in held.values()]))


def ask_many(server: Server, count: int) -> None:
    """``count`` one-off questions at once, each answered with its own scripted text."""

    def one(n: int) -> None:
        answer = post(requests.Session(), server, "/ask", fake(chunks=[f"question-{n}", " answered"]))
        assert answer.status_code == 200, (answer.status_code, answer.text)
        assert answer.json()["text"] == f"question-{n} answered"

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(count)))


def check_streaming(server: Server) -> None:
    """Streamed answers arrive piece by piece; a stream the HTTP client drops is called off."""
    web = requests.Session()
    chunks = ["alpha ", "beta ", "gamma"]
    with web.post(
        server.url("/chat/stream"),
        json={"prompt": fake(chunks=chunks, delay_ms=50)},
        stream=True,
        timeout=WAIT,
    ) as answer:
        assert answer.status_code == 200, (answer.status_code, answer.text)
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert answer.headers.get("Transfer-Encoding") == "chunked"
        pieces = [piece.decode() for piece in answer.iter_content(chunk_size=None) if piece]
    assert pieces == chunks, "each TextDelta is one HTTP chunk"

    # The cookie set by the streamed answer names the conversation that /chat continues.
    follow = post(web, server, "/chat", fake(text="second turn"))
    assert follow.status_code == 200 and follow.json()["text"] == "second turn", follow.text
    conversation = follow.json()["conversation"]
    before = server.health()
    assert before["open_conversations"] == 1

    # A reply that would stream for minutes: its first pieces come at once...
    answer = web.post(server.url("/chat/stream"), json={"prompt": ENDLESS}, stream=True, timeout=WAIT)
    try:
        assert answer.status_code == 200, (answer.status_code, answer.text)
        received = answer.iter_content(chunk_size=None)
        first = [next(received) for _ in range(3)]
    finally:
        answer.close()  # ... and the HTTP client goes away mid-answer.
    assert first == [TICK.encode()] * 3

    # The same conversation answers its next turn: it could not, had the abandoned run
    # (minutes long) gone on, since a session runs one turn at a time.
    after = post(web, server, "/chat", fake(text="still here"))
    assert after.status_code == 200, (after.status_code, after.text, server.log_tail())
    assert after.json() == {"text": "still here", "conversation": conversation}
    now = server.health()
    assert now["rkat_rpc_pid"] == before["rkat_rpc_pid"], "the worker's client was restarted"
    assert now["open_conversations"] == 1
