"""meerkat_sync: a synchronous, thread-safe client for the Meerkat agent runtime (rkat-rpc 0.5.0).

from meerkat_sync import MeerkatClient

with MeerkatClient() as client:
    session = client.create_session("Hello")
    print(session.text)
"""

from __future__ import annotations

import logging

from ._client import MeerkatClient
from ._mob_handle import Member, Mob
from ._params import Prompt
from ._session import DeferredSession, Session
from ._streaming import EventStream
from ._subscriptions import EventSubscription
from .errors import (
    CapabilityUnavailableError,
    ConfigConflictError,
    MeerkatError,
    MeerkatTimeoutError,
    SessionNotFoundError,
    SkillNotFoundError,
)
from .events import *  # noqa: F403  (the event classes are part of the top-level API)
from .events import __all__ as _event_names
from .types import *  # noqa: F403
from .types import __all__ as _type_names

logging.getLogger("meerkat_sync").addHandler(logging.NullHandler())

__version__ = "0.5.0.dev0"

__all__ = [
    "CapabilityUnavailableError",
    "ConfigConflictError",
    "DeferredSession",
    "EventStream",
    "EventSubscription",
    "MeerkatClient",
    "MeerkatError",
    "MeerkatTimeoutError",
    "Member",
    "Mob",
    "Prompt",
    "Session",
    "SessionNotFoundError",
    "SkillNotFoundError",
    *_event_names,
    *_type_names,
]
