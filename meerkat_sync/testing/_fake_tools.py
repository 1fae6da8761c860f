"""Server-side tools as the real runtime answers them, for tool calls the script gives no result.

Only what is deterministic enough to emulate: ``datetime`` (the current time), ``task_list``
(an empty task store) and calls of tools the session does not have (``tool_not_found``);
any other builtin answers an empty result.
"""

from __future__ import annotations

import datetime
import itertools
import json
from typing import Any, Collection, Tuple

_counter = itertools.count(1)


def tool_id() -> str:
    """A tool-use id in the provider's style, unique in the process."""
    return f"toolu_{next(_counter):06d}"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _datetime() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return _compact(
        {
            "date": now.strftime("%Y-%m-%d"),
            "day": now.strftime("%d"),
            "iso8601": now.isoformat(),
            "month": now.strftime("%m"),
            "time": now.strftime("%H:%M:%S"),
            "timezone": "UTC",
            "unix_timestamp": int(now.timestamp()),
            "weekday": now.strftime("%A"),
            "year": now.strftime("%Y"),
        }
    )


def builtin_result(name: str, available: Collection[str]) -> Tuple[str, bool]:
    """``(content, is_error)`` of a tool the runtime runs itself."""
    if name not in available:
        return _compact({"error": "tool_not_found", "message": f"Tool not found: {name}"}), True
    if name == "datetime":
        return _datetime(), False
    if name == "task_list":
        return "[]", False
    return "", False
