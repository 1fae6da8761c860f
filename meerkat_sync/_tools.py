"""Method family: callback tools: tool(), register_tool(), answering tool/execute."""

from __future__ import annotations

from ._calls import ClientCalls


class ToolMethods(ClientCalls):
    """Mixed into :class:`MeerkatClient`."""
