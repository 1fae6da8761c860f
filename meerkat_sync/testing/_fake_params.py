"""Params validation with the server's -32602 wording, content inputs and session locators."""

from __future__ import annotations

import re
import uuid
from typing import Any, Dict, List, Optional, Union

from meerkat_sync.testing._fake_constants import INVALID_PARAMS
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, json_kind

Content = Union[str, List[JsonDict]]

_CONTENT_MISMATCH = "data did not match any variant of untagged enum ContentInput"
_UUID_CHARS = re.compile(r"[0-9a-fA-F-]")


def invalid(detail: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {detail}")


def require_object(params: Any, has_params: bool, struct: str) -> JsonDict:
    """Params a method cannot do without: absent/null is "Missing params" (§4.0)."""
    if not has_params or params is None:
        raise RpcError(INVALID_PARAMS, "Missing params")
    if not isinstance(params, dict):
        raise invalid(f"invalid type: {json_kind(params)}, expected struct {struct}")
    return params


def optional_object(params: Any, struct: str) -> JsonDict:
    """Params that may be omitted entirely (session/list)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid(f"invalid type: {json_kind(params)}, expected struct {struct}")
    return params


def req_field(obj: JsonDict, key: str) -> Any:
    if key not in obj:
        raise invalid(f"missing field `{key}`")
    return obj[key]


def req_str(obj: JsonDict, key: str) -> str:
    value = req_field(obj, key)
    if not isinstance(value, str):
        raise invalid(f"invalid type: {json_kind(value)}, expected a string")
    return value


def opt_str(obj: JsonDict, key: str) -> Optional[str]:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"invalid type: {json_kind(value)}, expected a string")
    return value


def opt_bool(obj: JsonDict, key: str, null_ok: bool = True) -> Optional[bool]:
    """A bool field; ``null_ok=False`` mirrors plain (non-Option) serde fields."""
    if key not in obj:
        return None
    value = obj[key]
    if value is None and null_ok:
        return None
    if not isinstance(value, bool):
        raise invalid(f"invalid type: {json_kind(value)}, expected a boolean")
    return value


def opt_uint(obj: JsonDict, key: str, type_name: str = "usize") -> Optional[int]:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"invalid type: {json_kind(value)}, expected {type_name}")
    if value < 0:
        raise invalid(f"invalid value: integer `{value}`, expected {type_name}")
    return value


def opt_str_map(obj: JsonDict, key: str) -> Dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"invalid type: {json_kind(value)}, expected a map")
    for item in value.values():
        if not isinstance(item, str):
            raise invalid(f"invalid type: {json_kind(item)}, expected a string")
    return dict(value)


def _valid_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "text":
        return isinstance(block.get("text"), str)
    if kind == "image":
        if not isinstance(block.get("media_type"), str):
            return False
        source = block.get("source")
        if source == "inline":
            return isinstance(block.get("data"), str)
        if source == "blob":
            return isinstance(block.get("blob_id"), str)
        return False
    return kind == "unknown"


def content_input(obj: JsonDict, key: str) -> Content:
    """A required string-or-blocks field; image blocks need ``source`` (§3.2)."""
    value = req_field(obj, key)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_valid_block(b) for b in value):
        return [dict(b) for b in value]
    raise invalid(_CONTENT_MISMATCH)


def content_text(content: Content) -> str:
    """The prompt as text: a string as is, blocks as their text parts joined by newlines."""
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in content if b.get("type") == "text")


def as_blocks(content: Content) -> List[JsonDict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def merge_content(first: Content, second: Content) -> Content:
    """Deferred-create prompt merged into the first turn (§4.1 flow B)."""
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    return as_blocks(first) + as_blocks(second)


def history_content(content: Content) -> Content:
    """User message content as history shows it: one text block collapses to a string."""
    if isinstance(content, list) and len(content) == 1 and content[0].get("type") == "text":
        return str(content[0]["text"])
    return content


def _uuid_error(raw: str) -> str:
    for index, ch in enumerate(raw):
        if not _UUID_CHARS.match(ch):
            return (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{ch}` at {index + 1}"
            )
    return f"invalid length: expected length 32 for simple format, found {len(raw)}"


def parse_session_id(raw: Any, realm: str) -> str:
    """Accept a bare UUID or a ``realm:uuid`` locator (§3.1); return the bare UUID."""
    if not isinstance(raw, str):
        raise invalid(f"invalid type: {json_kind(raw)}, expected a string")
    text = raw
    if ":" in raw and not raw.lower().startswith("urn:uuid:"):
        locator_realm, text = raw.rsplit(":", 1)
        if locator_realm != realm:
            raise RpcError(
                INVALID_PARAMS,
                f"Session locator realm '{locator_realm}' does not match active runtime realm '{realm}'",
            )
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"Invalid session_id '{raw}': {_uuid_error(text)}") from None
