"""Method family: session/stream_open|close, mob/stream_open|close: EventSubscription."""

from __future__ import annotations

from ._calls import ClientCalls


class SubscriptionMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""
