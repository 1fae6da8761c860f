"""In-memory sessions: transcript, usage, budget and the read-side wire shapes.

A session keeps three views of its transcript, as the real runtime does:

* ``messages``, the live copy the agent works on (a failed or interrupted run leaves its
  user message here);
* ``stored``, what ``session/history`` returns: the live copy as of the last successful
  run (or the archive);
* ``published``, the ``message_count`` that ``session/read`` and ``session/list`` show:
  the live copy's length as of the end of the last run (0 before the first run ends).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Tuple

from meerkat_sync.testing._fake_constants import (
    INTERNAL_ERROR,
    MAX_SESSIONS,
    SESSION_NOT_FOUND,
)
from meerkat_sync.testing._fake_params import Content
from meerkat_sync.testing._fake_schema import OutputSchema
from meerkat_sync.testing._fake_script import UsageSpec
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, uuid7

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_runtime import SessionRuntime


def infer_provider(model: str, explicit: Optional[str]) -> str:
    """Provider as session/read reports it."""
    if explicit is not None:
        return explicit if explicit in ("anthropic", "openai", "gemini") else "other"
    if model.startswith("claude-"):
        return "anthropic"
    if model.startswith(("gpt-", "chatgpt-")):
        return "openai"
    if model.startswith("gemini-"):
        return "gemini"
    return "other"


def _add(total: Optional[int], part: Optional[int]) -> Optional[int]:
    return total if part is None else (total or 0) + part


class UsageTotals:
    """A session's usage over every model call so far (what RunResult.usage reports)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_tokens: Optional[int] = None
        self.cache_read_tokens: Optional[int] = None

    def add(self, usage: UsageSpec) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_tokens = _add(self.cache_creation_tokens, usage.cache_creation_tokens)
        self.cache_read_tokens = _add(self.cache_read_tokens, usage.cache_read_tokens)

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_spec(self) -> UsageSpec:
        return UsageSpec(
            self.input_tokens, self.output_tokens, self.cache_creation_tokens, self.cache_read_tokens
        )


def event_usage(usage: UsageSpec) -> JsonDict:
    """Usage as events carry it: both cache fields, null when unknown, no total."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
    }


def result_usage(usage: UsageSpec) -> JsonDict:
    """Usage as RunResult carries it: total = input + output, unknown cache fields omitted."""
    out: JsonDict = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_creation_tokens is not None:
        out["cache_creation_tokens"] = usage.cache_creation_tokens
    if usage.cache_read_tokens is not None:
        out["cache_read_tokens"] = usage.cache_read_tokens
    return out


class Budget:
    """``budget_limits``: counted over the whole live session, the clock from its first run."""

    def __init__(self, limits: Optional[JsonDict]) -> None:
        limits = limits or {}
        self.max_tokens: Optional[int] = limits.get("max_tokens")
        self.max_duration: Optional[float] = limits.get("max_duration")
        self.max_tool_calls: Optional[int] = limits.get("max_tool_calls")
        self.tokens = 0
        self.tool_calls = 0
        self.started: Optional[float] = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def deadline(self) -> Optional[float]:
        if self.max_duration is None or self.started is None:
            return None
        return self.started + self.max_duration

    def exceeded(self) -> Optional[Tuple[str, int, int]]:
        """``(budget_type, used, limit)`` of the first limit reached, checked in the real order."""
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return "tokens", self.tokens, self.max_tokens
        deadline = self.deadline()
        if deadline is not None and self.started is not None and time.monotonic() >= deadline:
            assert self.max_duration is not None
            return "time", int(time.monotonic() - self.started), int(self.max_duration)
        if self.max_tool_calls is not None and self.tool_calls >= self.max_tool_calls:
            return "tool_calls", self.tool_calls, self.max_tool_calls
        return None


def last_assistant_text(messages: List[JsonDict]) -> Optional[str]:
    """The text of the latest assistant message that has any."""
    for message in reversed(messages):
        if message.get("role") == "block_assistant":
            text = "".join(b["data"]["text"] for b in message["blocks"] if b["block_type"] == "text")
            if text:
                return text
    return None


class SessionConfig:
    """What ``session/create`` fixed for the session's lifetime."""

    def __init__(
        self,
        *,
        model: str,
        provider: str,
        labels: Dict[str, str],
        system_prompt: str,
        comms_name: Optional[str],
        tools: List[str],
        output_schema: Optional[OutputSchema],
        structured_output_retries: int,
        budget_limits: Optional[JsonDict],
        callback_tools: FrozenSet[str] = frozenset(),
    ) -> None:
        self.model = model
        self.provider = provider
        self.labels = labels
        self.system_prompt = system_prompt
        self.comms_name = comms_name
        self.tools = tools
        self.output_schema = output_schema
        self.structured_output_retries = structured_output_retries
        self.budget_limits = budget_limits
        #: Tools answered by the client (``tool/execute``): ``external_tools`` and the tools
        #: registered when the session was created (later registrations never reach it).
        self.callback_tools = callback_tools


class Session:
    """One session's state; its runs go through ``runtime`` (one at a time, queued)."""

    def __init__(
        self, session_id: str, session_ref: str, config: SessionConfig, pending_prompt: Optional[Content]
    ) -> None:
        self.session_id = session_id
        self.session_ref = session_ref
        self.config = config
        self.model = config.model
        self.provider = config.provider
        self.labels = config.labels
        self.keep_alive = False
        self.pending_prompt = pending_prompt
        self.created_at = int(time.time())
        self.updated_at = self.created_at
        self.messages: List[JsonDict] = []
        self.stored: List[JsonDict] = []
        self.published = 0
        self.last_text: Optional[str] = None
        self.usage = UsageTotals()
        self.budget = Budget(config.budget_limits)
        self.materialized = False
        self.archived = False
        self.orphaned = False  # a failed immediate create: readable, but its runtime is gone
        self.agent_running = False  # the last input reached the agent (not a failure before it)
        self.source_id = f"session:{session_id}"
        self.runtime: SessionRuntime
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> bool:
        return self.pending_prompt is not None

    def next_seq(self, count: int = 1) -> int:
        """Reserve ``count`` envelope seq numbers; returns the first (counter starts at 1)."""
        with self._lock:
            first = self._seq + 1
            self._seq += count
            return first

    def take_pending_prompt(self) -> Optional[Content]:
        """The deferred create prompt, handed to the first run exactly once."""
        with self._lock:
            prompt, self.pending_prompt = self.pending_prompt, None
            return prompt

    def materialize(self) -> None:
        """The first run builds the agent: the transcript starts with the system message."""
        with self._lock:
            if self.materialized:
                return
            self.materialized = True
            self.messages = [{"role": "system", "content": self.config.system_prompt}]
            self.stored = list(self.messages)
        self.budget.start()

    def append(self, message: JsonDict) -> None:
        with self._lock:
            self.messages.append(message)

    def record_usage(self, usage: UsageSpec) -> None:
        self.usage.add(usage)
        self.budget.tokens += usage.input_tokens + usage.output_tokens

    def publish(self, commit: bool) -> None:
        """End of a run: read/list see the live copy; a successful run also stores it."""
        with self._lock:
            if commit:
                self.stored = list(self.messages)
            self.published = len(self.messages)
            self.last_text = last_assistant_text(self.messages)
            self.updated_at = int(time.time())

    def store_snapshot(self) -> None:
        """Archiving saves the live copy, failed turns included."""
        with self._lock:
            if self.materialized:
                self.stored = list(self.messages)

    @property
    def is_active(self) -> bool:
        """The agent is working: a run, or the pause before replaying a failed one."""
        return self.runtime.busy and self.agent_running

    def summary(self) -> JsonDict:
        out: JsonDict = {
            "session_id": self.session_id,
            "session_ref": self.session_ref,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.published,
            "total_tokens": self.usage.total,
            "is_active": self.is_active,
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    def info(self) -> JsonDict:
        active = self.is_active and not self.archived
        out: JsonDict = {
            "session_id": self.session_id,
            "session_ref": self.session_ref,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.published,
            "is_active": active,
            "model": self.model,
            "provider": self.provider,
        }
        if self.last_text is not None and not active:
            out["last_assistant_text"] = self.last_text
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    def history(self, offset: int, limit: Optional[int]) -> JsonDict:
        with self._lock:
            messages = list(self.stored)
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


def not_found(session_id: str) -> RpcError:
    return RpcError(SESSION_NOT_FOUND, f"Session not found: {session_id}")


class SessionStore:
    """All sessions of the process; archived ones stay readable but hold no slot of the 64."""

    def __init__(self, realm: str, runtime_for: Callable[[Session], SessionRuntime]) -> None:
        self.realm = realm
        self.blobs: Dict[str, Tuple[str, str]] = {}
        self._runtime_for = runtime_for
        self._lock = threading.Lock()
        self._sessions: Dict[str, Session] = {}

    def create(self, config: SessionConfig, pending_prompt: Optional[Content]) -> Session:
        with self._lock:
            held = sum(1 for s in self._sessions.values() if not s.archived)
            if held >= MAX_SESSIONS:
                raise RpcError(INTERNAL_ERROR, f"Max sessions reached ({held}/{MAX_SESSIONS})")
            session_id = uuid7()
            session = Session(session_id, f"{self.realm}:{session_id}", config, pending_prompt)
            session.runtime = self._runtime_for(session)
            self._sessions[session_id] = session
            return session

    def find(self, session_id: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(session_id)

    def get(self, session_id: str) -> Session:
        """Any session ever created here, archived ones included."""
        session = self.find(session_id)
        if session is None:
            raise not_found(session_id)
        return session

    def live(self, session_id: str) -> Session:
        """A session whose runtime is registered (not archived, not an orphaned create)."""
        session = self.find(session_id)
        if session is None or session.archived:
            raise not_found(session_id)
        return session

    def listed(self) -> List[Session]:
        """What session/list shows: pending sessions first, then live ones."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if not s.archived]
        return [s for s in sessions if s.pending] + [s for s in sessions if not s.pending]

    def all(self) -> List[Session]:
        with self._lock:
            return list(self._sessions.values())
