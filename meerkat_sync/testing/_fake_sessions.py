"""In-memory sessions: state, the per-session run queue, and the read-side wire shapes."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from meerkat_sync.testing._fake_constants import INTERNAL_ERROR, MAX_SESSIONS, SESSION_NOT_FOUND
from meerkat_sync.testing._fake_params import Content
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, uuid7

_QUEUE_POLL_S = 0.02


def infer_provider(model: str, explicit: Optional[str]) -> str:
    """Provider as session/read reports it (§4.1, §4.5)."""
    if explicit is not None:
        return explicit if explicit in ("anthropic", "openai", "gemini") else "other"
    if model.startswith("claude-"):
        return "anthropic"
    if model.startswith(("gpt-", "chatgpt-")):
        return "openai"
    if model.startswith("gemini-"):
        return "gemini"
    return "other"


class RunHandle:
    """What ``turn/interrupt`` and ``cancel`` reach: the interrupt flag of one run."""

    def __init__(self) -> None:
        self.interrupt = threading.Event()


class Session:
    """One session; runs on it are serialised FIFO, later turns wait in the queue (§4.2)."""

    def __init__(
        self,
        session_id: str,
        session_ref: str,
        model: str,
        provider: str,
        labels: Dict[str, str],
        system_prompt: Optional[str],
        comms_name: Optional[str],
        pending_prompt: Optional[Content],
    ) -> None:
        self.session_id = session_id
        self.session_ref = session_ref
        self.model = model
        self.provider = provider
        self.labels = labels
        self.comms_name = comms_name
        self.keep_alive = False
        self.pending_prompt = pending_prompt
        self.pending = pending_prompt is not None
        self.created_at = int(time.time())
        self.updated_at = self.created_at
        self.messages: List[JsonDict] = []
        if system_prompt is not None:
            self.messages.append({"role": "system", "content": system_prompt})
        self.total_tokens = 0
        self.last_assistant_text: Optional[str] = None
        self.archived = False
        self.source_id = f"session:{session_id}"
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: Deque[object] = collections.deque()
        self.active: Optional[RunHandle] = None

    def next_seq(self, count: int = 1) -> int:
        """Reserve ``count`` envelope seq numbers; returns the first (counter starts at 1)."""
        with self._seq_lock:
            first = self._seq + 1
            self._seq += count
            return first

    def acquire(self, handle: RunHandle, abort: Callable[[], bool]) -> bool:
        """Wait for this run's turn; False if ``abort()`` or archival happened first."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while True:
                if abort() or self.archived:
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    return False
                if self._queue[0] is ticket and self.active is None:
                    self._queue.popleft()
                    self.active = handle
                    return True
                self._cond.wait(_QUEUE_POLL_S)

    def hand_over(self, handle: RunHandle) -> None:
        """Give the held slot to a follow-up run (an unsolicited run after a request's run)."""
        with self._cond:
            self.active = handle
            if self.archived:
                handle.interrupt.set()

    def release(self) -> None:
        with self._cond:
            self.active = None
            self.updated_at = int(time.time())
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            if self.active is not None:
                self.active.interrupt.set()

    def take_pending_prompt(self) -> Optional[Content]:
        """The deferred create prompt, handed to the first turn exactly once."""
        with self._cond:
            prompt = self.pending_prompt
            self.pending_prompt = None
            self.pending = False
            return prompt

    def commit(self, new_messages: List[JsonDict], total_tokens: int, text: str) -> None:
        with self._cond:
            self.messages.extend(new_messages)
            self.total_tokens += total_tokens
            self.last_assistant_text = text if text else self.last_assistant_text
            self.updated_at = int(time.time())

    @property
    def is_active(self) -> bool:
        return self.active is not None

    def summary(self) -> JsonDict:
        out: JsonDict = {
            "session_id": self.session_id,
            "session_ref": self.session_ref,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": len(self.messages) if not self.pending else 0,
            "total_tokens": self.total_tokens,
            "is_active": self.is_active,
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    def info(self) -> JsonDict:
        out: JsonDict = {
            "session_id": self.session_id,
            "session_ref": self.session_ref,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": len(self.messages) if not self.pending else 0,
            "is_active": self.is_active,
            "model": self.model,
            "provider": self.provider,
        }
        if self.last_assistant_text is not None and not self.is_active:
            out["last_assistant_text"] = self.last_assistant_text
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    def history(self, offset: int, limit: Optional[int]) -> JsonDict:
        messages = [] if self.pending else list(self.messages)
        total = len(messages)
        start = min(offset, total)
        end = total if limit is None else min(total, start + limit)
        out: JsonDict = {
            "session_id": self.session_id,
            "session_ref": self.session_ref,
            "message_count": total,
            "offset": start,
        }
        if limit is not None:
            out["limit"] = limit
        out["has_more"] = end < total
        out["messages"] = messages[start:end]
        return out


class SessionStore:
    """All sessions of the process (pending + live), capped at 64 like the real server."""

    def __init__(self, realm: str) -> None:
        self.realm = realm
        self._lock = threading.Lock()
        self._sessions: Dict[str, Session] = {}

    def create(self, **kwargs: Any) -> Session:
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                raise RpcError(INTERNAL_ERROR, f"Max sessions reached ({MAX_SESSIONS}/{MAX_SESSIONS})")
            session_id = uuid7()
            session = Session(session_id, f"{self.realm}:{session_id}", **kwargs)
            self._sessions[session_id] = session
            return session

    def find(self, session_id: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(session_id)

    def get(self, session_id: str) -> Session:
        session = self.find(session_id)
        if session is None:
            raise RpcError(SESSION_NOT_FOUND, f"Session not found: {session_id}")
        return session

    def archive(self, session_id: str) -> Optional[Session]:
        """Remove a session; a running turn on it is interrupted."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.archived = True
            session.interrupt()
        return session

    def all(self) -> List[Session]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s for s in sessions if s.pending] + [s for s in sessions if not s.pending]
