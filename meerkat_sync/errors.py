"""One exception hierarchy for everything the client can raise.

Every failure a user can see is a :class:`MeerkatError` with a stable string ``code``.
Server errors keep the numeric JSON-RPC code (``rpc_code``) and the server's ``data``
so nothing the runtime said is lost in translation.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple, Type

__all__ = [
    "RPC_ERROR_NAMES",
    "RUN_FAILURES",
    "CapabilityUnavailableError",
    "ConfigConflictError",
    "MeerkatError",
    "MeerkatTimeoutError",
    "SessionNotFoundError",
    "SkillNotFoundError",
    "error_from_rpc",
]


class MeerkatError(Exception):
    """Base class of every error raised by meerkat_sync.

    ``code`` is a SCREAMING_SNAKE name (``"SESSION_NOT_FOUND"``, ``"TIMEOUT"``, ...);
    ``rpc_code`` is the numeric JSON-RPC code when the error came from the server.
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: Any = None,
        capability_hint: Any = None,
        *,
        rpc_code: Optional[int] = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.capability_hint = capability_hint
        self.rpc_code = rpc_code
        self.data = data

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> Any:
        # Exceptions cross process boundaries (multiprocessing, Celery): keep every field.
        return (
            _rebuild,
            (type(self), self.code, self.message, self.details, self.capability_hint),
            {"rpc_code": self.rpc_code, "data": self.data},
        )


def _rebuild(
    cls: Type[MeerkatError], code: str, message: str, details: Any, hint: Any
) -> MeerkatError:
    return cls(code, message, details, hint)


class CapabilityUnavailableError(MeerkatError):
    """A capability the caller required is not offered by this runtime."""


class SessionNotFoundError(MeerkatError):
    """The session does not exist (or was archived) on this runtime."""


class SkillNotFoundError(MeerkatError):
    """A skill reference could not be resolved."""


class ConfigConflictError(MeerkatError):
    """``expected_generation`` no longer matches: someone else wrote the realm config first.

    ``details`` is ``{"expected": E, "current": C}``; read the config again, reapply the
    change, and retry with ``expected_generation=C``.
    """


class MeerkatTimeoutError(MeerkatError, TimeoutError):
    """A blocking call ran out of time; also a builtin :class:`TimeoutError`."""

    def __init__(self, message: str, details: Any = None) -> None:
        MeerkatError.__init__(self, "TIMEOUT", message, details)

    def __reduce__(self) -> Any:
        return (type(self), (self.message, self.details))


#: Numeric JSON-RPC codes of rkat-rpc 0.5.0 and the names users match on (PROTOCOL.md §8.2).
RPC_ERROR_NAMES: Mapping[int, str] = {
    -32700: "PARSE_ERROR",
    -32600: "INVALID_REQUEST",
    -32601: "METHOD_NOT_FOUND",
    -32602: "INVALID_PARAMS",
    -32603: "INTERNAL_ERROR",
    -32001: "SESSION_NOT_FOUND",
    -32002: "SESSION_BUSY",
    -32003: "SESSION_NOT_RUNNING",
    -32004: "DUPLICATE_INPUT",
    -32005: "REQUEST_CANCELLED",
    -32010: "PROVIDER_ERROR",
    -32011: "BUDGET_EXHAUSTED",
    -32012: "HOOK_DENIED",
    -32013: "AGENT_ERROR",
    -32020: "CAPABILITY_UNAVAILABLE",
    -32021: "SKILL_NOT_FOUND",
    -32022: "SKILL_RESOLUTION_FAILED",
}

_ERROR_CLASSES: Dict[str, Type[MeerkatError]] = {
    "SESSION_NOT_FOUND": SessionNotFoundError,
    "CAPABILITY_UNAVAILABLE": CapabilityUnavailableError,
    "SKILL_NOT_FOUND": SkillNotFoundError,
    "CONFIG_CONFLICT": ConfigConflictError,
}


#: How rkat-rpc 0.5.0 wraps a failure inside a run (PROTOCOL.md §8.3); stripped for the message.
_RUN_FAILURE_PREFIXES = (
    "turn abandoned: ",
    "runtime accept failed: ",
    "apply failed: ",
    "Apply failed: ",
    "agent error: ",
)

_MAX_SESSIONS_ADVICE = (
    "a realm holds at most 64 sessions that are not archived, counted over every rkat-rpc "
    "using it; archive sessions you no longer need (session.archive()), or give each "
    "rkat-rpc its own realm"
)

#: Failed runs arrive as -32603 with the cause only in the text. These are the causes the
#: 0.5.0 runtime produces, by the start of their innermost text: (prefix, code, advice).
RUN_FAILURES: Tuple[Tuple[str, str, str], ...] = (
    ("Run was cancelled", "INTERRUPTED", "the turn was interrupted before it finished"),
    ("session not found", "SESSION_NOT_FOUND", "the session does not exist on this runtime"),
    ("LLM error", "PROVIDER_ERROR", "the model provider failed; check its status, API key and limits"),
    ("Build error: API key not set", "PROVIDER_ERROR", "set the provider's API key for rkat-rpc"),
    ("Time budget exceeded", "BUDGET_EXHAUSTED", "the session's budget_limits.max_duration is used up"),
    ("Hook denied", "HOOK_DENIED", "a hook refused the run"),
    ("Internal error: Max sessions reached", "MAX_SESSIONS_REACHED", _MAX_SESSIONS_ADVICE),
    ("Max sessions reached", "MAX_SESSIONS_REACHED", _MAX_SESSIONS_ADVICE),
    (
        "Runtime not ready",
        "RUNTIME_NOT_READY",
        "the session's runtime takes no input (runtime_retire); runtime_reset(session_id) restarts it",
    ),
)


#: Errors 0.5.0 sends as a generic -32602/-32603 that have a class of their own here:
#: (rpc code, message pattern, code). The pattern's groups become ``details``.
_MESSAGE_ERRORS: Tuple[Tuple[int, re.Pattern[str], str], ...] = (
    # config/set, config/patch CAS failure (PROTOCOL.md §4.12).
    (
        -32602,
        re.compile(r"Generation conflict: expected (?P<expected>\d+), current (?P<current>\d+)"),
        "CONFIG_CONFLICT",
    ),
    # skills/inspect of an unknown id (or of a source that does not hold it): -32603, not -32021.
    (-32603, re.compile(r"skill inspect failed: skill not found: (?P<skill>.*)", re.S), "SKILL_NOT_FOUND"),
)
_NUMERIC_DETAILS = ("expected", "current")


def _message_error(rpc_code: int, message: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    for code, pattern, name in _MESSAGE_ERRORS:
        match = pattern.fullmatch(message) if code == rpc_code else None
        if match is not None:
            found = match.groupdict()
            return name, {k: int(v) if k in _NUMERIC_DETAILS else v for k, v in found.items()}
    return None


def _run_failure(rpc_code: int, message: str) -> Optional[Tuple[str, str]]:
    """(code, readable message) for a failed run's -32603 text, or None if it is not one."""
    if rpc_code != -32603:
        return None
    inner = message
    for prefix in _RUN_FAILURE_PREFIXES:
        if inner.startswith(prefix):
            inner = inner[len(prefix) :]
    for start, code, advice in RUN_FAILURES:
        if inner.startswith(start):
            return code, f"{inner} ({advice})"
    if inner is not message and message.startswith("turn abandoned: "):
        return "AGENT_ERROR", inner
    return None


def error_from_rpc(error: Any) -> MeerkatError:
    """Build the matching exception from a JSON-RPC ``error`` object, tolerating bad shapes."""
    if not isinstance(error, dict):
        return MeerkatError("INVALID_RESPONSE", f"server sent a malformed error object: {error!r}")
    raw_code = error.get("code")
    message = error.get("message")
    if not isinstance(message, str):
        message = "server error without a message"
    data = error.get("data")
    if isinstance(raw_code, int) and not isinstance(raw_code, bool):
        name = RPC_ERROR_NAMES.get(raw_code, str(raw_code))
        rpc_code: Optional[int] = raw_code
    else:
        name, rpc_code = "INVALID_RESPONSE", None
        message = f"server error with a non-integer code {raw_code!r}: {message}"
    details: Any = None
    if isinstance(data, dict):
        details = data.get("details", data)
    elif data is not None:
        details = data
    known = _message_error(rpc_code, message) if rpc_code is not None else None
    if known is not None:
        name, details = known
    failure = _run_failure(rpc_code, message) if rpc_code is not None else None
    if failure is not None:
        # The runtime's own code is lost in its wrapping; keep the raw form for the record.
        name, message, details = failure[0], failure[1], {"rpc_code": rpc_code, "rpc_message": message}
    cls = _ERROR_CLASSES.get(name, MeerkatError)
    return cls(name, message, details, rpc_code=rpc_code, data=data)
