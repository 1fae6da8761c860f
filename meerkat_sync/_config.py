"""Method family: config/*, models/catalog, skills/*, mcp/*."""

from __future__ import annotations

from ._calls import ClientCalls


class ConfigMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""
