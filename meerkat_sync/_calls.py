"""The request path every method family shares: gating, sending, waiting, typing the result.

``MeerkatClient`` is assembled from one mixin per method family (``_subscriptions``,
``_tools``, ``_config``, ``_inputs``, ``_mobs``, ...). Each mixin builds params and types
results; this base owns how a call reaches rkat-rpc and what it may raise before anything
is sent: a method the server does not list in ``initialize.methods``, or one behind a
capability the server does not offer, raises :class:`CapabilityUnavailableError` at once.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Type, TypeVar

from ._converter import structure
from ._deadline import USE_DEFAULT, Deadline, Timeout, resolve_timeout, wait_slot
from ._endpoint import Endpoint
from ._routing import EventRouter
from .errors import CapabilityUnavailableError, MeerkatError, MeerkatTimeoutError
from .types import Capability

T = TypeVar("T")

#: Methods rkat-rpc 0.5.0 routes but leaves out of ``initialize.methods``; each is gated on a
#: listed sibling instead (``mob/wait_kickoff`` works wherever ``mob/status`` does).
UNLISTED_METHODS: Mapping[str, str] = {"mob/wait_kickoff": "mob/status"}

#: How the ``mob`` capability is recognised: 0.5.0 reports no capability entry for it.
_MOB_METHODS = ("mob/create", "mob/list", "mob/call")


class ClientCalls:
    """Calls and capability checks; the client supplies the connection (``_parts``)."""

    _request_timeout: Optional[float]
    _methods: FrozenSet[str]
    _capabilities: List[Capability]
    _server_info: Dict[str, Any]

    def _parts(self) -> Tuple[Endpoint, EventRouter]:
        raise NotImplementedError  # MeerkatClient: the live endpoint, restarting if asked to

    # --- capabilities -----------------------------------------------------------------------

    @property
    def capabilities(self) -> List[Capability]:
        """What this runtime offers (``capabilities/get`` at connect), with each status."""
        return list(self._capabilities)

    def has_capability(self, capability_id: str) -> bool:
        """Whether a capability is ``Available``, to switch features on or off without failing."""
        if capability_id == "mob":
            return any(m in self._methods for m in _MOB_METHODS)
        return any(c.id == capability_id and c.available for c in self._capabilities)

    def require_capability(self, capability_id: str) -> None:
        """Fail early with :class:`CapabilityUnavailableError` (with the status) if it is missing."""
        if not self.has_capability(capability_id):
            status = next((c.status for c in self._capabilities if c.id == capability_id), "absent")
            raise CapabilityUnavailableError(
                "CAPABILITY_UNAVAILABLE",
                f"capability {capability_id!r} is not available on this runtime (status: {status})",
                details={"capability": capability_id, "status": status},
            )

    def _require_method(self, method: str, capability: Optional[str] = None) -> None:
        """Raise before sending if the connected rkat-rpc cannot serve ``method``."""
        self._parts()  # not connected / closed / forked: that error comes first
        listed = UNLISTED_METHODS.get(method, method)
        if listed not in self._methods:
            version = self._server_info.get("server_info", {}).get("version", "?")
            raise CapabilityUnavailableError(
                "CAPABILITY_UNAVAILABLE",
                f"the connected rkat-rpc ({version}) does not offer {method} (it is not in "
                "initialize.methods); use an rkat-rpc 0.5.0 built with this feature",
                details={"method": method},
            )
        if capability is not None:
            self.require_capability(capability)

    # --- calls ------------------------------------------------------------------------------

    def _call(self, method: str, params: Mapping[str, Any], timeout: Timeout) -> Any:
        return self._call_until(method, params, Deadline(resolve_timeout(timeout, self._request_timeout)))

    def _call_until(
        self, method: str, params: Mapping[str, Any], deadline: Deadline, endpoint: Optional[Endpoint] = None
    ) -> Any:
        if endpoint is None:
            endpoint, _ = self._parts()
        request_id, slot = endpoint.request(method, params)
        try:
            return wait_slot(slot, deadline, method)
        except (MeerkatTimeoutError, KeyboardInterrupt):
            endpoint.forget(request_id)
            raise

    def _call_typed(self, method: str, params: Mapping[str, Any], cls: Type[T], timeout: Timeout) -> T:
        return typed(method, self._call(method, params, timeout), cls)

    def _gated(
        self,
        method: str,
        params: Mapping[str, Any],
        timeout: Timeout = USE_DEFAULT,
        *,
        capability: Optional[str] = None,
    ) -> Any:
        """A call of a 0.5.0 method that not every rkat-rpc serves: checked, then sent."""
        self._require_method(method, capability)
        return self._call(method, params, timeout)

    def _gated_typed(
        self,
        method: str,
        params: Mapping[str, Any],
        cls: Type[T],
        timeout: Timeout = USE_DEFAULT,
        *,
        capability: Optional[str] = None,
    ) -> T:
        """:meth:`_gated`, its result as ``cls``."""
        return typed(method, self._gated(method, params, timeout, capability=capability), cls)


def typed(method: str, reply: Any, cls: Type[T]) -> T:
    """``reply`` as ``cls``; a shape the converter cannot read is the server's fault."""
    try:
        return structure(reply, cls)
    except Exception as exc:
        problem = f"{method} returned a result of unexpected shape: {exc}"
        raise MeerkatError("INVALID_RESPONSE", problem) from exc


def listed(method: str, reply: Any, key: str, cls: Type[T]) -> List[T]:
    """``reply[key]`` as a list of ``cls`` (most list results are wrapped in an object)."""
    return typed(method, object_reply(method, reply).get(key), List[cls])  # type: ignore[valid-type]


def object_reply(method: str, reply: Any) -> Dict[str, Any]:
    """A result whose 0.5.0 shape is open: returned as the dict it is, after checking it is one."""
    if not isinstance(reply, dict):
        raise MeerkatError("INVALID_RESPONSE", f"{method} returned {reply!r}, not an object")
    return reply
