"""Params validation in the server's serde wording, content inputs and session locators.

The real server re-serialises a request's params (compact, keys sorted) before it
deserialises them, so a serde error's ``at line 1 column N`` points into that text; the
fake computes the column the same way from the path of the offending value.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from meerkat_sync.testing._fake_constants import INVALID_PARAMS
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, json_kind

Content = Union[str, List[JsonDict]]
Path = Tuple[Union[str, int], ...]
Check = Callable[[Any, Path], Any]

_SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class ParamError(Exception):
    """A serde deserialisation error at ``path`` (the value, or the object missing a field)."""

    def __init__(self, detail: str, path: Path = (), untagged: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.path = path
        self.untagged = untagged


def invalid_params(params: Any, error: ParamError) -> RpcError:
    """The -32602 answer: ``Invalid params: <detail> at line 1 column <N>``."""
    column = serde_column(params, error.path, error.untagged)
    return RpcError(INVALID_PARAMS, f"Invalid params: {error.detail} at line 1 column {column}")


def serde_column(params: Any, path: Path, untagged: bool = False) -> int:
    """1-based column of the last byte of the value at ``path`` in the compact, sorted params.

    Errors of an untagged enum point one byte further when a closing bracket follows
    (as observed on the real server).
    """
    pieces: List[bytes] = []
    found: List[int] = []

    def walk(value: Any, here: Path) -> None:
        if isinstance(value, dict):
            pieces.append(b"{")
            for index, key in enumerate(sorted(value)):
                pieces.append((b"," if index else b"") + _dumps(key) + b":")
                walk(value[key], (*here, key))
            pieces.append(b"}")
        elif isinstance(value, list):
            pieces.append(b"[")
            for index, item in enumerate(value):
                if index:
                    pieces.append(b",")
                walk(item, (*here, index))
            pieces.append(b"]")
        else:
            pieces.append(_dumps(value))
        if here == path and not found:
            found.append(sum(len(p) for p in pieces))

    walk(params, ())
    end = found[0] if found else sum(len(p) for p in pieces)
    text = b"".join(pieces)
    if untagged and text[end : end + 1] in (b"]", b"}"):
        end += 1
    return end


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# -- field checks ------------------------------------------------------------------------


def _type_error(value: Any, expected: str, path: Path) -> ParamError:
    return ParamError(f"invalid type: {json_kind(value)}, expected {expected}", path)


def string(value: Any, path: Path) -> str:
    if not isinstance(value, str):
        raise _type_error(value, "a string", path)
    return value


def boolean(value: Any, path: Path) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, "a boolean", path)
    return value


def any_value(value: Any, _path: Path) -> Any:
    return value


def unsigned(type_name: str, bits: int) -> Check:
    def check(value: Any, path: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, type_name, path)
        if value < 0 or value >= 2**bits:
            raise ParamError(f"invalid value: integer `{value}`, expected {type_name}", path)
        return value

    return check


U32 = unsigned("u32", 32)
U64 = unsigned("u64", 64)
USIZE = unsigned("usize", 64)


def optional(check: Check) -> Check:
    """``Option<T>``: null is None."""
    return lambda value, path: None if value is None else check(value, path)


def sequence(item: Check) -> Check:
    def check(value: Any, path: Path) -> List[Any]:
        if not isinstance(value, list):
            raise _type_error(value, "a sequence", path)
        return [item(v, (*path, i)) for i, v in enumerate(value)]

    return check


def string_map(value: Any, path: Path) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _type_error(value, "a map", path)
    return {key: string(value[key], (*path, key)) for key in sorted(value)}


def variant(name: str, *variants: str) -> Check:
    """A unit-variant enum spelled as a string."""
    if len(variants) == 1:
        expected = f"`{variants[0]}`"
    elif len(variants) == 2:
        expected = f"`{variants[0]}` or `{variants[1]}`"
    else:
        expected = "one of " + ", ".join(f"`{v}`" for v in variants)

    def check(value: Any, path: Path) -> str:
        if not isinstance(value, str):
            raise _type_error(value, f"enum {name}", path)
        if value not in variants:
            raise ParamError(f"unknown variant `{value}`, expected {expected}", path)
        return value

    return check


class Struct:
    """A serde struct: present fields are checked in (sorted) key order, then missing ones."""

    def __init__(self, name: str, fields: Mapping[str, Check], required: Sequence[str] = ()) -> None:
        self.name = name
        self.fields = fields
        self.required = tuple(required)

    def __call__(self, value: Any, path: Path = ()) -> JsonDict:
        if not isinstance(value, dict):
            raise _type_error(value, f"struct {self.name}", path)
        out: JsonDict = {}
        for key in sorted(value):
            check = self.fields.get(key)
            if check is not None:
                out[key] = check(value[key], (*path, key))
        for key in self.required:
            if key not in value:
                raise ParamError(f"missing field `{key}`", path)
        return out


def duration(value: Any, path: Path) -> float:
    """``std::time::Duration``: ``{"secs", "nanos"}`` or ``[secs, nanos]``; returns seconds."""
    if isinstance(value, list) and len(value) == 2:
        return float(U64(value[0], (*path, 0))) + float(U32(value[1], (*path, 1))) / 1e9
    if not isinstance(value, dict):
        raise _type_error(value, "struct Duration", path)
    for key in sorted(value):
        if key not in ("secs", "nanos"):
            raise ParamError(f"unknown field `{key}`, expected `secs` or `nanos`", (*path, key))
    parts = Struct("Duration", {"secs": U64, "nanos": U32}, ("secs", "nanos"))(value, path)
    return float(parts["secs"]) + float(parts["nanos"]) / 1e9


def hook_runtime(value: Any, path: Path) -> Any:
    if not isinstance(value, dict):
        raise ParamError("hook runtime must be an object", path)
    if "type" not in value:
        raise ParamError("hook runtime missing required field 'type'", path)
    return value


HOOK_ENTRY = Struct(
    "HookEntryConfig",
    {
        "id": string,
        "point": variant(
            "HookPoint",
            "run_started",
            "run_completed",
            "run_failed",
            "pre_llm_request",
            "post_llm_response",
            "pre_tool_execution",
            "post_tool_execution",
            "turn_boundary",
        ),
        "mode": variant("HookExecutionMode", "foreground", "background"),
        "capability": variant("HookCapability", "observe", "guardrail", "rewrite"),
        "failure_policy": variant("HookFailurePolicy", "fail_open", "fail_closed"),
        "runtime": hook_runtime,
    },
)
HOOKS_OVERRIDE = Struct("HookRunOverrides", {"entries": optional(sequence(HOOK_ENTRY))})
BUDGET_LIMITS = Struct(
    "BudgetLimits",
    {"max_tokens": optional(U64), "max_duration": optional(duration), "max_tool_calls": optional(USIZE)},
)
TOOL_OVERLAY = Struct(
    "TurnToolOverlay",
    {"allowed_tools": optional(sequence(string)), "blocked_tools": optional(sequence(string))},
)
TOOL_DEF = Struct(
    "ToolDef",
    {"name": string, "description": string, "input_schema": any_value},
    ("name", "description", "input_schema"),
)
PEER_META = Struct("PeerMeta", {"description": optional(string), "labels": optional(string_map)})


def skill_ref(value: Any, path: Path) -> Any:
    """``SkillRef``: a legacy string, or ``{"source_uuid", "skill_name"}`` (untagged)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and _is_uuid(value.get("source_uuid")) and _is_slug(value.get("skill_name")):
        return value
    raise ParamError("data did not match any variant of untagged enum SkillRef", path, untagged=True)


def content(value: Any, path: Path) -> Content:
    """``ContentInput``: a string, or a list of text / image blocks (untagged)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_valid_block(b) for b in value):
        return [dict(b) for b in value]
    raise ParamError("data did not match any variant of untagged enum ContentInput", path, untagged=True)


def _valid_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "text":
        return isinstance(block.get("text"), str)
    if kind != "image" or not isinstance(block.get("media_type"), str):
        return False
    source = block.get("source")
    if source == "inline":
        return isinstance(block.get("data"), str)
    return source == "blob" and isinstance(block.get("blob_id"), str)


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_slug(value: Any) -> bool:
    return isinstance(value, str) and _SLUG.fullmatch(value) is not None


def check_skill_aliases(*lists: Optional[List[Any]]) -> None:
    """Legacy refs must be ``<source uuid>/<skill slug>``: there are no aliases to look up."""
    for refs in lists:
        for ref in refs or ():
            if isinstance(ref, str):
                source, _, name = ref.partition("/")
                if not (_is_uuid(source) and _is_slug(name)):
                    raise RpcError(INVALID_PARAMS, f"Invalid skill_refs: unknown skill alias '{ref}'")


_SESSION = {"session_id": string}
SESSION_ONLY = Struct("SessionIdParams", _SESSION, ("session_id",))
HISTORY = Struct(
    "SessionHistoryParams", {**_SESSION, "offset": optional(USIZE), "limit": optional(USIZE)}, ("session_id",)
)
LIST = Struct(
    "ListSessionsParams",
    {"labels": optional(string_map), "offset": optional(USIZE), "limit": optional(USIZE)},
)
BLOB_GET = Struct("BlobGetParams", {"blob_id": string}, ("blob_id",))
REGISTER_TOOLS = Struct("RegisterToolsParams", {"tools": sequence(TOOL_DEF)}, ("tools",))
_SKILLS = {"skill_refs": optional(sequence(skill_ref)), "skill_references": optional(sequence(string))}
TURN_START = Struct(
    "StartTurnParams",
    {
        **_SESSION,
        "prompt": content,
        **_SKILLS,
        "flow_tool_overlay": optional(TOOL_OVERLAY),
        "additional_instructions": optional(sequence(string)),
        "keep_alive": optional(boolean),
        "model": optional(string),
        "provider": optional(string),
        "max_tokens": optional(U32),
        "system_prompt": optional(string),
        "output_schema": any_value,
        "structured_output_retries": optional(U32),
        "provider_params": any_value,
    },
    ("session_id", "prompt"),
)
SESSION_CREATE = Struct(
    "CreateSessionParams",
    {
        "prompt": content,
        "initial_turn": optional(variant("InitialTurn", "run_immediately", "deferred")),
        "model": optional(string),
        "provider": optional(string),
        "max_tokens": optional(U32),
        "system_prompt": optional(string),
        "output_schema": any_value,
        "structured_output_retries": U32,
        "hooks_override": optional(HOOKS_OVERRIDE),
        "enable_builtins": optional(boolean),
        "enable_shell": optional(boolean),
        "enable_memory": optional(boolean),
        "enable_mob": optional(boolean),
        "keep_alive": boolean,
        "comms_name": optional(string),
        "peer_meta": optional(PEER_META),
        "budget_limits": optional(BUDGET_LIMITS),
        "provider_params": any_value,
        "preload_skills": optional(sequence(string)),
        **_SKILLS,
        "labels": optional(string_map),
        "additional_instructions": optional(sequence(string)),
        "app_context": any_value,
        "shell_env": optional(string_map),
        "external_tools": optional(sequence(TOOL_DEF)),
    },
    ("prompt",),
)


def parse(struct: Struct, params: Any, has_params: bool, optional_params: bool = False) -> JsonDict:
    """Validate a request's params; absent or null params are "Missing params" unless optional."""
    if not has_params or params is None:
        if optional_params:
            return {}
        raise RpcError(INVALID_PARAMS, "Missing params")
    try:
        return struct(params)
    except ParamError as exc:
        raise invalid_params(params, exc) from None


# -- content -----------------------------------------------------------------------------


def as_blocks(prompt: Content) -> List[JsonDict]:
    return [{"type": "text", "text": prompt}] if isinstance(prompt, str) else list(prompt)


def admit(prompt: Content) -> Content:
    """A text-only block list becomes one string (its texts joined by newlines)."""
    if isinstance(prompt, list) and all(b.get("type") == "text" for b in prompt):
        return "\n".join(str(b["text"]) for b in prompt)
    return prompt


def merge_content(first: Content, second: Content) -> Content:
    """A deferred create's prompt merged into the first turn's: create side first."""
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    return admit(as_blocks(first) + as_blocks(second))


def with_instructions(prompt: Content, instructions: Optional[List[str]]) -> Content:
    """A turn's ``additional_instructions`` as ``[SYSTEM NOTICE: ...]`` paragraphs in front."""
    if not instructions:
        return prompt
    notice = "".join(f"[SYSTEM NOTICE: {text}]\n\n" for text in instructions)
    if isinstance(prompt, str):
        return notice + prompt
    return [{"type": "text", "text": notice}, *prompt]


def model_text(prompt: Content) -> str:
    """What the model reads as the prompt: the text parts joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(b["text"]) for b in prompt if b.get("type") == "text")


def render_prompt(prompt: Content) -> str:
    """``run_started.prompt``: text parts and ``[image: <media type>]``, joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    parts = [str(b["text"]) if b.get("type") == "text" else f"[image: {b['media_type']}]" for b in prompt]
    return "\n".join(p for p in parts if p)


def blob_id(media_type: str, data: str) -> str:
    """The id the real blob store derives from an image's media type and base64 data."""
    return "sha256:" + hashlib.sha256(media_type.encode() + b"\0" + data.encode()).hexdigest()


def history_content(prompt: Content, blobs: Dict[str, Tuple[str, str]]) -> Content:
    """The user message as history shows it: inline images stored and referenced as blobs."""
    if isinstance(prompt, str):
        return prompt
    out: List[JsonDict] = []
    for block in prompt:
        if block.get("type") == "image" and block.get("source") == "inline":
            ref = blob_id(block["media_type"], block["data"])
            blobs[ref] = (block["media_type"], block["data"])
            block = {"type": "image", "media_type": block["media_type"], "source": "blob", "blob_id": ref}
        out.append(dict(block))
    return out


# -- session locators --------------------------------------------------------------------


def parse_session_id(raw: str, realm: str) -> str:
    """Accept a bare UUID or a ``realm:uuid`` locator; return the bare UUID."""
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
        message = f"Invalid session_id '{raw}': invalid session id in session locator: {raw}"
        raise RpcError(INVALID_PARAMS, message) from None
