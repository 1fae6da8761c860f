"""The scripted runtime's session inputs: inject_context, external_event, runtime/*, input/*, comms/*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from meerkat_sync.testing._fake_server import Handler, Server


def handlers(server: Server) -> Dict[str, Handler]:
    """This family's methods, bound to server."""
    return {}
