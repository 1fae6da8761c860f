"""Method family: config/*, models/catalog (skills/* and mcp/* come from their own mixins).

The realm config is shared by every rkat-rpc on the realm, and 0.5.0 reads it in ways
that destroy data quietly (PROTOCOL.md §4.12, probe §4): ``config/set`` replaces the
whole config, resetting every key it was not given to its default, and a ``config`` it
cannot read as a whole (one value of the wrong type) is not rejected but taken as an
empty config. So arguments are checked here before anything is sent.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ._calls import ClientCalls
from ._deadline import USE_DEFAULT, Timeout
from ._mcp import McpMethods
from ._params import _json, invalid
from ._skills import SkillMethods
from .types import ConfigEnvelope, ModelsCatalog

_U64 = 2**64 - 1


def _config_object(value: Any, name: str) -> Dict[str, Any]:
    if isinstance(value, ConfigEnvelope):
        raise invalid(f"{name} must be the config dict itself, not a ConfigEnvelope; pass envelope.config")
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be a dict, not {type(value).__name__}")
    if "config" in value and "generation" in value:
        # An envelope as a dict: the server would drop its keys and reset the realm config.
        raise invalid(
            f"{name} looks like a config envelope (it has 'config' and 'generation'); pass its 'config'"
        )
    checked: Dict[str, Any] = _json(dict(value), name)
    return checked


def _generation(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        # The server would not reject a bad one: it would ignore the CAS and apply the write.
        raise invalid(f"expected_generation must be a non-negative integer or None, not {value!r}")
    return value


def _with_generation(params: Dict[str, Any], expected_generation: Optional[int]) -> Dict[str, Any]:
    generation = _generation(expected_generation)
    if generation is not None:
        params["expected_generation"] = generation
    return params


class ConfigMethods(SkillMethods, McpMethods, ClientCalls):
    """Mixed into :class:`MeerkatClient`: realm config, the models catalog, skills and MCP."""

    def get_config(self, *, timeout: Timeout = USE_DEFAULT) -> ConfigEnvelope:
        """The realm config and its ``generation`` (the official SDK returns the same as a dict)."""
        return self._gated_typed("config/get", {}, ConfigEnvelope, timeout)

    def set_config(
        self,
        config: Mapping[str, Any],
        *,
        expected_generation: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> ConfigEnvelope:
        """Replace the whole realm config; with ``expected_generation``, only if nobody wrote since.

        .. warning:: rkat-rpc 0.5.0 does not merge: every key ``config`` leaves out is reset
           to its default, and unknown keys are dropped silently. A value of the wrong type
           anywhere is not an error either: the server then resets the whole config. Send
           the full config from :meth:`get_config` with your change applied, or use
           :meth:`patch_config`. The change reaches live sessions at once.

        Raises :class:`ConfigConflictError` when the generation moved on.
        """
        params = _with_generation({"config": _config_object(config, "config")}, expected_generation)
        return self._gated_typed("config/set", params, ConfigEnvelope, timeout)

    def patch_config(
        self,
        patch: Mapping[str, Any],
        *,
        expected_generation: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> ConfigEnvelope:
        """Merge ``patch`` into the realm config (RFC 7396: nested dicts merge, others replace).

        A ``None`` value resets that key to its default; unknown keys are dropped silently.
        A value of the wrong type fails with ``INVALID_PARAMS`` and changes nothing.
        Raises :class:`ConfigConflictError` when ``expected_generation`` no longer matches.
        """
        params = _with_generation({"patch": _config_object(patch, "patch")}, expected_generation)
        return self._gated_typed("config/patch", params, ConfigEnvelope, timeout)

    def get_models_catalog(self, *, timeout: Timeout = USE_DEFAULT) -> ModelsCatalog:
        """The models this runtime knows, by provider, with each provider's default."""
        return self._gated_typed("models/catalog", {}, ModelsCatalog, timeout)
