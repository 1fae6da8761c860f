"""Method family: mob/*: the Mob handle and the client's mob_* calls."""

from __future__ import annotations

from ._calls import ClientCalls


class MobMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""
