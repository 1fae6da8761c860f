"""Method family: session inputs and runtime.

inject_context, external_event, history, blobs, runtime/*, input/*, comms/*.

``session/external_event`` and ``comms/*`` answer malformed params with ``"id": null``
(PROTOCOL.md §8.1), which cannot be tied to the call that caused it, so everything the
server would fail to deserialise is refused here first, before anything is sent.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar

from ._calls import ClientCalls, object_reply, typed
from ._deadline import USE_DEFAULT, Timeout
from ._params import _bool, _json, _str, invalid, page_args, session_id_arg
from .errors import MeerkatError
from .types import (
    BlobPayload,
    InjectContextResult,
    RuntimeAcceptResult,
    RuntimeResetResult,
    RuntimeRetireResult,
    RuntimeStateResult,
    SessionHistory,
)

#: Every ``comms/send`` field besides ``session_id`` (PROTOCOL.md §4.14) and its check; a
#: wrong type would come back as an ``id: null`` error, so it is caught here.
COMMS_SEND_FIELDS: Mapping[str, Callable[[Any, str], Any]] = {
    "kind": _str,
    "to": _str,
    "body": _str,
    "intent": _str,
    "params": _json,
    "in_reply_to": _str,
    "status": _str,
    "result": _json,
    "source": _str,
    "stream": _str,
    "allow_self_session": _bool,
    "handling_mode": _str,
}

_CONFLICT = "system-context idempotency conflict"

T = TypeVar("T")


def _optional_str(value: Any, name: str) -> Optional[str]:
    return None if value is None else _str(value, name)


def comms_send_params(session_id: Any, fields: Mapping[str, Any]) -> Dict[str, Any]:
    """Checked ``comms/send`` params; fields set to ``None`` are not sent."""
    params: Dict[str, Any] = {"session_id": session_id_arg(session_id)}
    for name, value in fields.items():
        check = COMMS_SEND_FIELDS.get(name)
        if check is None:
            valid = ", ".join(sorted(COMMS_SEND_FIELDS))
            raise invalid(f"comms/send does not take {name!r}; valid fields: {valid}")
        if value is not None:
            params[name] = check(value, name)
    if "kind" not in params:
        raise invalid(
            "comms/send needs kind= ('input', 'peer_message', 'peer_request' or 'peer_response')"
        )
    return params


def comms_error(exc: MeerkatError) -> Optional[MeerkatError]:
    """The failure named by the runtime's ``data.code`` (``PEER_NOT_FOUND_OR_NOT_TRUSTED``, ...).

    Validation failures also say which fields were wrong; ``rpc_code`` and ``data`` stay
    as sent. None when the error carries no such code (e.g. comms not enabled).
    """
    data = exc.data
    if not isinstance(data, dict) or not isinstance(data.get("code"), str):
        return None
    message = exc.message
    details = data.get("details")
    if isinstance(details, list) and details:
        problems = [
            f"{d.get('field')}: {d.get('issue')}" + (f" (got {d['got']!r})" if "got" in d else "")
            for d in details
            if isinstance(d, dict)
        ]
        message = f"{message}: {'; '.join(problems)}"
    return type(exc)(data["code"].upper(), message, exc.details, rpc_code=exc.rpc_code, data=data)


class InputMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""

    # --- context and events -----------------------------------------------------------------

    def inject_context(
        self,
        session_id: str,
        text: str,
        *,
        source: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> InjectContextResult:
        """Stage ``text`` as system context for the session's next run (pending sessions too).

        The runtime appends it to the system prompt of that run's first model call only,
        under a ``[Runtime System Context]`` heading with ``source:``. Re-sending the same
        ``idempotency_key`` with the same text and source answers ``duplicate``; with other
        text or source it raises ``IDEMPOTENCY_CONFLICT``.
        """
        params: Dict[str, Any] = {"session_id": session_id_arg(session_id), "text": _str(text, "text")}
        if not text.strip():
            raise invalid("text is blank; the runtime refuses empty system context")
        for name, value in (("source", source), ("idempotency_key", idempotency_key)):
            if _optional_str(value, name) is not None:
                params[name] = value
        try:
            reply = self._gated("session/inject_context", params, timeout)
        except MeerkatError as exc:
            if exc.rpc_code == -32602 and exc.message.startswith(_CONFLICT):
                raise MeerkatError(
                    "IDEMPOTENCY_CONFLICT",
                    f"{exc.message}: it was used with other text or source; use a new key",
                    exc.details,
                    rpc_code=exc.rpc_code,
                    data=exc.data,
                ) from exc
            raise
        return typed("session/inject_context", reply, InjectContextResult)

    def send_external_event(
        self,
        session_id: str,
        payload: Any,
        *,
        source: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> RuntimeAcceptResult:
        """Queue an external event (a webhook, say) as input; an idle session runs it at once.

        The run's prompt is ``[EVENT via <source>]`` (``source`` defaults to ``"rpc"``); the
        0.5.0 runtime does **not** show ``payload`` to the model, it only records it in the
        input's ``persisted_input``. The run's events arrive as unsolicited session events
        (see ``subscribe_session_events``); its transcript is in the session history.
        """
        params: Dict[str, Any] = {"session_id": session_id_arg(session_id)}
        params["payload"] = _json(payload, "payload")
        if _optional_str(source, "source") is not None:
            params["source"] = source
        return self._gated_typed("session/external_event", params, RuntimeAcceptResult, timeout)

    # --- transcript and blobs ---------------------------------------------------------------

    def read_session_history(
        self,
        session_id: str,
        *,
        offset: int = 0,
        limit: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> SessionHistory:
        """One page of a session's transcript, oldest message first (``Session.history``)."""
        params = {"session_id": session_id_arg(session_id), **page_args(offset, limit)}
        return self._gated_typed("session/history", params, SessionHistory, timeout)

    def get_blob(self, blob_id: str, *, timeout: Timeout = USE_DEFAULT) -> BlobPayload:
        """A stored blob by id, e.g. the ``blob_id`` of an image block in the history."""
        if not isinstance(blob_id, str) or not blob_id:
            raise invalid(f"blob_id must be a non-empty string like 'sha256:...', not {blob_id!r}")
        return self._gated_typed("blob/get", {"blob_id": blob_id}, BlobPayload, timeout)

    # --- runtime and input ledger -----------------------------------------------------------

    def runtime_state(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> RuntimeStateResult:
        """The session runtime's state (``attached``, ``running``, ``retired``, ``idle``, ...)."""
        return self._session_call("runtime/state", session_id, RuntimeStateResult, timeout)

    def runtime_accept(
        self, session_id: str, input: Mapping[str, Any], *, timeout: Timeout = USE_DEFAULT
    ) -> RuntimeAcceptResult:
        """Hand the runtime a raw Input (PROTOCOL.md §4.15); it does not wait for the run.

        ``input`` needs ``input_type`` and a ``header`` (``id``, ``timestamp``, ``source``,
        ``durability``, ``visibility``). A retired runtime answers ``rejected``. The 0.5.0
        runtime does not deduplicate on ``header.id``: re-sending one is ``accepted`` again
        but never runs (``runtime_reset`` drops it).
        """
        if not isinstance(input, Mapping) or not isinstance(input.get("input_type"), str):
            raise invalid("input must be a dict with an 'input_type' such as 'prompt' (see runtime_accept)")
        params = {"session_id": session_id_arg(session_id), "input": _json(dict(input), "input")}
        return self._gated_typed("runtime/accept", params, RuntimeAcceptResult, timeout)

    def runtime_retire(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> RuntimeRetireResult:
        """Stop the runtime taking input: queued inputs still run, new turns fail until a reset."""
        return self._session_call("runtime/retire", session_id, RuntimeRetireResult, timeout)

    def runtime_reset(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> RuntimeResetResult:
        """Drop the queued inputs of an idle runtime (a retired one becomes ``idle`` and usable)."""
        return self._session_call("runtime/reset", session_id, RuntimeResetResult, timeout)

    def input_state(
        self, session_id: str, input_id: str, *, timeout: Timeout = USE_DEFAULT
    ) -> Optional[Dict[str, Any]]:
        """One input's ledger entry (``current_state``, ``history``, ...), or None if unknown.

        A plain dict: the 0.5.0 shape is open (PROTOCOL.md §4.15 lists its fields).
        """
        if not isinstance(input_id, str) or not input_id:
            raise invalid(f"input_id must be a non-empty string (a UUID), not {input_id!r}")
        params = {"session_id": session_id_arg(session_id), "input_id": input_id}
        reply = self._gated("input/state", params, timeout)
        return None if reply is None else object_reply("input/state", reply)

    def input_list(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> List[str]:
        """Ids of the inputs not yet finished (running, queued or stuck); consumed ones drop out."""
        params = {"session_id": session_id_arg(session_id)}
        reply = object_reply("input/list", self._gated("input/list", params, timeout))
        ids = reply.get("input_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MeerkatError("INVALID_RESPONSE", f"input/list returned {reply!r}, not a list of input_ids")
        return list(ids)

    # --- comms ------------------------------------------------------------------------------

    def send(self, session_id: str, *, timeout: Timeout = USE_DEFAULT, **fields: Any) -> Dict[str, Any]:
        """Send a comms command from a session created with ``comms_name`` (PROTOCOL.md §4.14).

        ``fields`` are the wire's: ``kind`` (required: ``input``, ``peer_message``,
        ``peer_request``, ``peer_response``), ``to``, ``body``, ``intent``, ``params``,
        ``in_reply_to``, ``status``, ``result``, ``source``, ``stream``,
        ``allow_self_session``, ``handling_mode``. Returns the receipt dict (its ``kind``
        says which). A failure raises with the runtime's ``data.code`` as the error code
        (``PEER_NOT_FOUND_OR_NOT_TRUSTED``, ``INVALID_COMMAND``, ``SEND_FAILED``, ...).
        """
        params = comms_send_params(session_id, fields)
        try:
            reply = self._gated("comms/send", params, timeout, capability="comms")
        except MeerkatError as exc:
            named = comms_error(exc)
            if named is None:
                raise
            raise named from exc
        return object_reply("comms/send", reply)

    def peers(self, session_id: str, *, timeout: Timeout = USE_DEFAULT) -> Dict[str, Any]:
        """``{"peers": [...]}``: the peers a comms session can reach (``Session.peers`` gives the list)."""
        params = {"session_id": session_id_arg(session_id)}
        return object_reply("comms/peers", self._gated("comms/peers", params, timeout, capability="comms"))

    def _session_call(self, method: str, session_id: str, cls: Type[T], timeout: Timeout) -> T:
        return self._gated_typed(method, {"session_id": session_id_arg(session_id)}, cls, timeout)
