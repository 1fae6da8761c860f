"""Method family: session inputs and runtime.

inject_context, external_event, history, blobs, runtime/*, input/*, comms/*.
"""

from __future__ import annotations

from ._calls import ClientCalls


class InputMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""
