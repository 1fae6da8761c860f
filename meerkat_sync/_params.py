"""Checking user arguments and building request params, before anything is written.

Bad input becomes ``MeerkatError("INVALID_ARGS")`` naming the argument, so the server
never sees a request it would reject with an unmatchable ``"id": null`` error (§8.1).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import MeerkatError
from .types import Content, SkillKey

#: A prompt: plain text or a list of content blocks (PROTOCOL.md §3.2).
Prompt = Union[str, Sequence[Mapping[str, Any]]]


def invalid(message: str) -> MeerkatError:
    return MeerkatError("INVALID_ARGS", message)


# --- prompts ----------------------------------------------------------------------------------


def prompt_to_wire(prompt: Any, name: str = "prompt") -> Content:
    """Validate a prompt; image blocks without ``source`` get the one their fields imply."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise invalid(f"{name} must be a string or a list of content blocks, not {type(prompt).__name__}")
    if not prompt:
        raise invalid(f"{name} is an empty list; give at least one content block")
    return [_block_to_wire(block, f"{name}[{i}]") for i, block in enumerate(prompt)]


def _block_to_wire(block: Any, where: str) -> Dict[str, Any]:
    if not isinstance(block, Mapping):
        raise invalid(
            f"{where} must be a dict like {{'type': 'text', 'text': ...}}, not {type(block).__name__}"
        )
    kind = block.get("type")
    out = dict(block)
    if kind == "text":
        _require_str(out, "text", where)
    elif kind == "image":
        _require_str(out, "media_type", where)
        if not out["media_type"].startswith("image/"):
            raise invalid(
                f"{where}['media_type'] must be an image type like 'image/png', not {out['media_type']!r}"
            )
        if "source" not in out:
            # The seed API omits "source"; the 0.5.0 server requires it.
            out["source"] = "blob" if "blob_id" in out and "data" not in out else "inline"
        if out["source"] == "inline":
            _require_str(out, "data", where)
            try:
                base64.b64decode(out["data"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"{where}['data'] must be base64-encoded image bytes") from None
        elif out["source"] == "blob":
            _require_str(out, "blob_id", where)
        else:
            raise invalid(f"{where}['source'] must be 'inline' or 'blob', not {out['source']!r}")
    else:
        raise invalid(f"{where}['type'] must be 'text' or 'image', not {kind!r}")
    return out


def _require_str(block: Mapping[str, Any], key: str, where: str) -> None:
    if not isinstance(block.get(key), str):
        raise invalid(f"{where} needs a string {key!r}")


def _projections(blocks: Sequence[Mapping[str, Any]]) -> List[str]:
    """Each block as the runtime renders it into text: images become ``[image: <type>]``."""
    parts = [b["text"] if b.get("type") == "text" else f"[image: {b.get('media_type')}]" for b in blocks]
    return [p for p in parts if p]


def _flattened(prompt: Content) -> Content:
    """Text-only block lists are admitted as one string, their texts joined by newlines."""
    if isinstance(prompt, str) or any(b.get("type") != "text" for b in prompt):
        return prompt
    return "\n".join(_projections(prompt))


def prompt_key(prompt: Content) -> str:
    """What the run's ``run_started.prompt`` says for this prompt (PROTOCOL.md §6)."""
    flat = _flattened(prompt)
    return flat if isinstance(flat, str) else "\n".join(_projections(flat))


def merged_prompt_key(create_prompt: Content, turn_prompt: Content) -> str:
    """The first turn of a deferred session runs the create prompt merged with its own (§4.1)."""
    turn = _flattened(turn_prompt)
    if isinstance(create_prompt, str) and isinstance(turn, str):
        return f"{create_prompt}\n\n{turn}"
    as_blocks = [[{"type": "text", "text": p}] if isinstance(p, str) else p for p in (create_prompt, turn)]
    return "\n".join(_projections(as_blocks[0]) + _projections(as_blocks[1]))


# --- skill references -------------------------------------------------------------------------

#: A skill name as the 0.5.0 runtime accepts it: lowercase letters, digits and single hyphens.
_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def skill_ref_to_wire(ref: Any, where: str) -> Union[str, Dict[str, str]]:
    """A structured key is checked here; a legacy string may be a realm alias, so the server decides."""
    if isinstance(ref, SkillKey):
        try:
            uuid.UUID(ref.source_uuid)
        except (ValueError, TypeError, AttributeError):
            raise invalid(
                f"{where} SkillKey.source_uuid {ref.source_uuid!r} is not a UUID; use the skill source's id"
            ) from None
        if not isinstance(ref.skill_name, str) or not _SLUG.match(ref.skill_name):
            raise invalid(
                f"{where} SkillKey.skill_name {ref.skill_name!r} is not a skill slug "
                "(lowercase letters, digits and single hyphens, like 'code-review')"
            )
        return {"source_uuid": ref.source_uuid, "skill_name": ref.skill_name}
    if not isinstance(ref, str) or not ref.strip():
        raise invalid(f"{where} must be a SkillKey or a non-empty legacy skill reference string")
    warnings.warn(
        f"legacy skill reference string {ref!r}: use SkillKey(source_uuid=..., skill_name=...)",
        DeprecationWarning,
        stacklevel=5,
    )
    return ref


# --- options ----------------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def _str(value: Any, name: str) -> Any:
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string, not {type(value).__name__}")
    return value


_U64 = 2**64 - 1
_U32 = 2**32 - 1


def _count(value: Any, name: str, limit: int = _U64) -> Any:
    """A whole number the wire can carry (u64 unless the field is narrower)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"{name} must be a non-negative integer, not {value!r}")
    if value > limit:
        raise invalid(f"{name} must be at most {limit} (the protocol's range), not {value}")
    return value


def _u32(value: Any, name: str) -> Any:
    return _count(value, name, _U32)


def _bool(value: Any, name: str) -> Any:
    if not isinstance(value, bool):
        raise invalid(f"{name} must be True or False, not {value!r}")
    return value


#: rkat-rpc 0.5.0 refuses a message nested deeper than 127 levels, with an error it cannot
#: tie to the request (so the call would only time out); an option sits 2 levels down.
MAX_NESTING = 120


def _nesting(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        )
        for child in children:
            if isinstance(child, (dict, list, tuple)):
                if depth + 1 > MAX_NESTING:
                    return depth + 1
                stack.append((child, depth + 1))
        deepest = max(deepest, depth if isinstance(item, (dict, list, tuple)) else 0)
    return deepest


def _json(value: Any, name: str) -> Any:
    if _nesting(value) > MAX_NESTING:
        raise invalid(f"{name} is nested more than {MAX_NESTING} levels deep, which rkat-rpc cannot read")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise invalid(f"{name} cannot be sent as JSON: {exc}") from None
    return value


def _object(value: Any, name: str) -> Any:
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be a dict, not {type(value).__name__}")
    return _json(dict(value), name)


def _str_list(value: Any, name: str) -> Any:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
    ):
        raise invalid(f"{name} must be a list of strings")
    return list(value)


def _str_map(value: Any, name: str) -> Any:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise invalid(f"{name} must be a dict of strings to strings")
    return dict(value)


def _skill_refs(value: Any, name: str) -> Any:
    if isinstance(value, (str, SkillKey)) or not isinstance(value, (list, tuple)):
        raise invalid(f"{name} must be a list of SkillKey (or legacy strings)")
    return [skill_ref_to_wire(ref, f"{name}[{i}]") for i, ref in enumerate(value)]


_RESERVED_PEER_LABELS = ("mob_id", "role", "meerkat_id")


def _peer_meta(value: Any, name: str) -> Any:
    meta = _object(value, name)
    labels = meta.get("labels") or {}
    _str_map(labels, f"{name}['labels']")
    reserved = [k for k in _RESERVED_PEER_LABELS if k in labels]
    if reserved:
        raise invalid(f"{name}['labels'] uses reserved keys {reserved}; choose other label names")
    return meta


def _tools(value: Any, name: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise invalid(f"{name} must be a list of tool definitions")
    for i, tool in enumerate(value):
        if not isinstance(tool, Mapping) or not all(
            isinstance(tool.get(k), t)
            for k, t in (("name", str), ("description", str), ("input_schema", Mapping))
        ):
            raise invalid(f"{name}[{i}] needs 'name' (str), 'description' (str) and 'input_schema' (dict)")
    return _json([dict(t) for t in value], name)


#: Every ``session/create`` option (PROTOCOL.md §4.1) and how to check it.
CREATE_OPTIONS: Dict[str, Check] = {
    "model": _str,
    "provider": _str,
    "system_prompt": _str,
    "max_tokens": _u32,
    "output_schema": _object,
    "structured_output_retries": _u32,
    "hooks_override": _object,
    "enable_builtins": _bool,
    "enable_shell": _bool,
    "enable_memory": _bool,
    "enable_mob": _bool,
    "keep_alive": _bool,
    "comms_name": _str,
    "peer_meta": _peer_meta,
    "budget_limits": _object,
    "provider_params": _json,
    "preload_skills": _str_list,
    "skill_refs": _skill_refs,
    "skill_references": _str_list,
    "labels": _str_map,
    "additional_instructions": _str_list,
    "app_context": _json,
    "shell_env": _str_map,
    "external_tools": _tools,
}

#: The ``turn/start`` overrides the 0.5.0 server accepts (§4.2); the rest it always rejects.
TURN_OPTIONS: Dict[str, Check] = {
    "skill_refs": _skill_refs,
    "skill_references": _str_list,
    "flow_tool_overlay": _object,
    "additional_instructions": _str_list,
    "keep_alive": _bool,
    "model": _str,
    "provider": _str,
    "provider_params": _json,
}


def build_params(
    prompt: Any, options: Mapping[str, Any], allowed: Mapping[str, Check], method: str
) -> Tuple[Dict[str, Any], Content]:
    """Checked params for ``method``; options set to ``None`` are not sent."""
    wire_prompt = prompt_to_wire(prompt)
    params: Dict[str, Any] = {"prompt": wire_prompt}
    for name, value in options.items():
        check = allowed.get(name)
        if check is None:
            raise invalid(f"{method} does not take {name!r}; valid options: {', '.join(sorted(allowed))}")
        if value is not None:
            params[name] = check(value, name)
    if "provider" in params and "model" not in params and method == "turn/start":
        raise invalid("provider can only be changed together with model on a turn; pass model= too")
    return params, wire_prompt


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{name} must be a positive whole number, not {value!r}")
    return value


def str_list(value: Any, name: str) -> List[str]:
    """A list of strings (an argv): a bare string or None is refused, not split or iterated."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise invalid(f"{name} must be a list of strings, not {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise invalid(f"{name} must contain only strings, not {value!r}")
    return list(value)


def session_id_arg(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"session_id must be a non-empty string, not {value!r}")
    return value


def list_args(labels: Any, limit: Any, offset: Any) -> Dict[str, Any]:
    """``session/list`` params: all optional, ``None`` not sent."""
    params: Dict[str, Any] = {}
    if labels is not None:
        params["labels"] = _str_map(labels, "labels")
    for name, value in (("limit", limit), ("offset", offset)):
        if value is not None:
            params[name] = _count(value, name)
    return params


def page_args(offset: Any, limit: Any) -> Dict[str, Any]:
    params: Dict[str, Any] = {"offset": _count(offset, "offset")}
    if limit is not None:
        params["limit"] = _count(limit, "limit")
    return params


# --- connect ----------------------------------------------------------------------------------

_REALM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
REALM_BACKENDS = ("jsonl", "sqlite", "redb")


def realm_id_arg(value: Any) -> str:
    """The server's realm id rules (§1.1), checked before anything is spawned."""
    if not isinstance(value, str) or not _REALM_ID.match(value):
        raise invalid(
            f"realm_id {value!r} is invalid: use 1-64 ASCII letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise invalid(f"realm_id {value!r} must not be a UUID; pick a readable name")


def connect_flags(
    *,
    realm_id: Optional[str],
    instance_id: Optional[str],
    realm_backend: Optional[str],
    isolated: bool,
    state_root: Optional[str],
    context_root: Optional[str],
    user_config_root: Optional[str],
) -> List[str]:
    if realm_id is not None and isolated:
        raise invalid("realm_id and isolated=True exclude each other; pass one of them")
    flags: List[str] = []
    if realm_id is not None:
        flags += ["--realm", realm_id_arg(realm_id)]
    if isolated:
        flags.append("--isolated")
    if instance_id is not None:
        flags += ["--instance", _str(instance_id, "instance_id")]
    if realm_backend is not None:
        if realm_backend not in REALM_BACKENDS:
            raise invalid(f"realm_backend must be one of {', '.join(REALM_BACKENDS)}, not {realm_backend!r}")
        flags += ["--realm-backend", realm_backend]
    for flag, value, name in (
        ("--state-root", state_root, "state_root"),
        ("--context-root", context_root, "context_root"),
        ("--user-config-root", user_config_root, "user_config_root"),
    ):
        if value is not None:
            flags += [flag, _str(str(value) if hasattr(value, "__fspath__") else value, name)]
    return flags
