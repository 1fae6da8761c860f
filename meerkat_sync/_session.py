"""``Session`` and ``DeferredSession``: a session id plus conveniences over the client.

A session object holds no connection of its own; every call goes through the client,
so sessions are cheap, safe to share across threads, and valid for as long as the
client is. ``text``, ``usage`` and friends reflect the most recently *finished* run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ._deadline import USE_DEFAULT, Timeout
from ._params import TURN_OPTIONS, Prompt, build_params, merged_prompt_key, prompt_key
from ._streaming import EventStream
from ._subscriptions import EventSubscription
from .errors import MeerkatError
from .types import Content, InjectContextResult, RunResult, SessionHistory, SkillRef, Usage

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._client import MeerkatClient
    from ._options import DeferredTurnOptions, TurnOptions


class Session:
    """A live session on the runtime. Obtain one from ``client.create_session()``."""

    def __init__(
        self,
        client: MeerkatClient,
        session_id: str,
        session_ref: Optional[str] = None,
        last_result: Optional[RunResult] = None,
    ) -> None:
        self._client = client
        self._id = session_id
        self._ref = session_ref
        self._last_result = last_result
        # A deferred session's create prompt, merged by the server into the first turn.
        self._pending_prompt: Optional[Content] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r})"

    # --- state of the latest run ------------------------------------------------------------

    @property
    def id(self) -> str:
        """The session id: keep it (e.g. in a web session) to come back with ``client.session(id)``."""
        return self._id

    @property
    def ref(self) -> Optional[str]:
        """``"<realm>:<session_id>"``, the realm-qualified id; None until the runtime sent it."""
        return self._ref

    @property
    def last_result(self) -> Optional[RunResult]:
        """The :class:`RunResult` of the latest finished run of this object; None before one."""
        return self._last_result

    @property
    def text(self) -> str:
        """The final text of the latest finished run (``""`` before one)."""
        return self._last_result.text if self._last_result is not None else ""

    @property
    def usage(self) -> Usage:
        """Token usage reported by the latest run: the session's running total, not one turn's."""
        return self._last_result.usage if self._last_result is not None else Usage()

    @property
    def turns(self) -> int:
        """How many model calls the latest run made (one tool round trip makes two)."""
        return self._last_result.turns if self._last_result is not None else 0

    @property
    def tool_calls(self) -> int:
        """How many tool calls the latest run made."""
        return self._last_result.tool_calls if self._last_result is not None else 0

    @property
    def structured_output(self) -> Any:
        """The latest run's parsed JSON for sessions created with ``output_schema``; else None."""
        return self._last_result.structured_output if self._last_result is not None else None

    def _record(self, result: RunResult) -> None:
        """Runs on the reader thread when a run of this session is answered."""
        if not self._id:  # a session being created learns its id from its first result
            self._id = result.session_id
        self._last_result = result
        if result.session_ref is not None:
            self._ref = result.session_ref

    # --- turns ------------------------------------------------------------------------------

    def turn(
        self, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT, **options: Unpack[TurnOptions]
    ) -> RunResult:
        """Run one turn and return its result (blocking until the run finishes)."""
        params, key = self._turn_params(prompt, options)
        return self._client._run(params, session=self, prompt_key=key, timeout=timeout)

    def stream(
        self, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT, **options: Unpack[TurnOptions]
    ) -> EventStream:
        """Run one turn as an :class:`EventStream`; nothing is sent until it is consumed."""
        params, key = self._turn_params(prompt, options)
        return self._client._stream(params, session=self, prompt_key=key, timeout=timeout)

    def invoke_skill(
        self, skill_ref: SkillRef, prompt: Prompt, *, timeout: Timeout = USE_DEFAULT
    ) -> RunResult:
        """Run a turn with one skill applied."""
        return self.turn(prompt, skill_refs=[skill_ref], timeout=timeout)

    def _turn_params(self, prompt: Prompt, options: Any) -> Any:
        params, wire_prompt = build_params(prompt, options, TURN_OPTIONS, "turn/start")
        params["session_id"] = self._id
        pending, self._pending_prompt = self._pending_prompt, None
        key = prompt_key(wire_prompt) if pending is None else merged_prompt_key(pending, wire_prompt)
        return params, key

    # --- session management -----------------------------------------------------------------

    def history(
        self, *, offset: int = 0, limit: Optional[int] = None, timeout: Timeout = USE_DEFAULT
    ) -> SessionHistory:
        """One page of the transcript, oldest message first."""
        return self._client.read_session_history(self._id, offset=offset, limit=limit, timeout=timeout)

    def interrupt(self, *, timeout: Timeout = USE_DEFAULT) -> None:
        """Stop the running turn, if any; its caller gets an error result."""
        self._client._call("turn/interrupt", {"session_id": self._id}, timeout)

    def inject_context(
        self,
        text: str,
        *,
        source: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> InjectContextResult:
        """Stage system context for this session's next run (``MeerkatClient.inject_context``)."""
        return self._client.inject_context(
            self._id, text, source=source, idempotency_key=idempotency_key, timeout=timeout
        )

    def send(self, *, timeout: Timeout = USE_DEFAULT, **fields: Any) -> Dict[str, Any]:
        """Send a comms command from this session (``MeerkatClient.send``; ``kind=`` is required)."""
        if "session_id" in fields:
            raise MeerkatError("INVALID_ARGS", "Session.send sends from this session; do not pass session_id")
        return self._client.send(self._id, timeout=timeout, **fields)

    def peers(self, *, timeout: Timeout = USE_DEFAULT) -> List[Dict[str, Any]]:
        """The peers this comms session can reach (the ``peers`` list of ``MeerkatClient.peers``)."""
        peers = self._client.peers(self._id, timeout=timeout).get("peers")
        return list(peers) if isinstance(peers, list) else []

    def subscribe_events(
        self, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """A live :class:`EventSubscription` to every later run of this session, whoever starts it."""
        return self._client.subscribe_session_events(self._id, timeout=timeout, idle_timeout=idle_timeout)

    def archive(self, *, timeout: Timeout = USE_DEFAULT) -> None:
        """Remove the session from the runtime; later calls on it raise SessionNotFoundError."""
        self._client._call("session/archive", {"session_id": self._id}, timeout)
        self._client._forget_session(self._id)


class DeferredSession(Session):
    """A session whose id exists but whose first turn has not run yet.

    Its create prompt is kept by the server and merged into the first turn's prompt.
    """

    def __init__(
        self,
        client: MeerkatClient,
        session_id: str,
        session_ref: Optional[str],
        create_prompt: Content,
    ) -> None:
        super().__init__(client, session_id, session_ref)
        self._pending_prompt = create_prompt

    def start_turn(
        self,
        prompt: Prompt,
        *,
        timeout: Timeout = USE_DEFAULT,
        **options: Unpack[DeferredTurnOptions],
    ) -> RunResult:
        """Run the first turn (``turn/start`` accepts only these overrides, §4.2)."""
        return self.turn(prompt, timeout=timeout, **options)


__all__: List[str] = ["DeferredSession", "Session"]
