"""Structured output as the real runtime checks it: fences stripped, JSON parsed, schema applied.

The schema is normalised and compiled like the Anthropic client does (object schemas get
``properties``/``required``, and ``additionalProperties: false`` unless they say
otherwise). Validation covers ``type``, ``properties``, ``required``,
``additionalProperties``, ``items`` and ``enum`` with jsonschema-rs's wording; other
keywords are not checked.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Dict, Optional

from meerkat_sync.testing._fake_wire import JsonDict

_WRAPPER_KEYS = {"schema", "name", "strict", "compat", "format"}
_IDENTS = ("null", "true", "false")


class OutputSchema:
    """A session's ``output_schema``: the compiled schema and the wrapper's name, if any."""

    def __init__(self, raw: JsonDict) -> None:
        wrapped = "schema" in raw and (raw.get("format") == "meerkat_v1" or set(raw) <= _WRAPPER_KEYS)
        schema = raw["schema"] if wrapped else raw
        self.name: Optional[str] = raw.get("name") if wrapped and isinstance(raw.get("name"), str) else None
        self.schema = copy.deepcopy(schema)
        _normalise(self.schema)


class ExtractionError(Exception):
    """Why an extraction reply was rejected: ``Invalid JSON: ...`` or ``Schema validation ...``."""


def extract(text: str, schema: OutputSchema) -> Any:
    """The structured value of an extraction reply, or ExtractionError."""
    body = strip_code_fences(text)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ExtractionError(f"Invalid JSON: {serde_json_error(body, exc)}") from None
    value = _unwrap(value, schema)
    problem = validate(value, schema.schema)
    if problem is not None:
        raise ExtractionError(f"Schema validation failed: {problem}")
    return value


def strip_code_fences(text: str) -> str:
    trimmed = text.strip()
    for fence in ("```json", "```"):
        if trimmed.startswith(fence):
            inner = trimmed[len(fence) :].strip()
            return inner[:-3].strip() if inner.endswith("```") else inner
    return trimmed


def serde_json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Python's JSON error in serde_json's words (the common cases; others lower-cased)."""
    where = f"at line {exc.lineno} column {exc.colno}"
    if not text.strip():
        return "EOF while parsing a value at line 1 column 0"
    if exc.msg == "Expecting value":
        return _bad_value(text, exc.pos) or f"expected value {where}"
    words = {
        "Extra data": "trailing characters",
        "Expecting property name enclosed in double quotes": "key must be a string",
        "Expecting ':' delimiter": "expected `:`",
        "Expecting ',' delimiter": "expected `,` or `}`",
    }
    if exc.msg.startswith("Unterminated string"):
        lines = text.split("\n")
        return f"EOF while parsing a string at line {len(lines)} column {len(lines[-1])}"
    return f"{words.get(exc.msg, exc.msg.lower())} {where}"


def _bad_value(text: str, pos: int) -> Optional[str]:
    """serde reads ``null``/``true``/``false`` letter by letter and fails at the first wrong one."""
    for ident in _IDENTS:
        if text.startswith(ident[0], pos):
            for offset, expected in enumerate(ident):
                if not text.startswith(expected, pos + offset):
                    line = text.count("\n", 0, pos + offset) + 1
                    column = pos + offset - (text.rfind("\n", 0, pos + offset) + 1) + 1
                    if pos + offset >= len(text):
                        return f"EOF while parsing a value at line {line} column {column - 1}"
                    return f"expected ident at line {line} column {column}"
    return None


def _normalise(schema: Any) -> None:
    """Object schemas get ``properties``/``required`` and ``additionalProperties: false``."""
    if isinstance(schema, list):
        for item in schema:
            _normalise(item)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or (kind is None and ("properties" in schema or "required" in schema)):
        schema.setdefault("properties", {})
        schema.setdefault("required", [])
    if (is_object or kind is None) and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    for value in schema.values():
        _normalise(value)


def _unwrap(value: Any, schema: OutputSchema) -> Any:
    """A single-key ``{"<schema name>": {...}}`` envelope around the real object is removed."""
    name = schema.name
    if name is None or not isinstance(value, dict) or len(value) != 1:
        return value
    inner = value.get(name)
    if not isinstance(inner, dict):
        return value
    required = [k for k in schema.schema.get("required", []) if isinstance(k, str)]
    properties = list(schema.schema.get("properties", {}))
    if name in required or name in properties:
        return value
    if all(k in inner for k in required) and not all(k in value for k in required):
        return inner
    if any(k in inner for k in properties) and not any(k in value for k in properties):
        return inner
    return value


def _render(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_TYPES: Dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _check_type(value: Any, kind: Any, _schema: JsonDict) -> Optional[str]:
    kinds = kind if isinstance(kind, list) else [kind]
    if any(_TYPES.get(k, lambda _v: True)(value) for k in kinds):
        return None
    if isinstance(kind, list):
        return f"{_render(value)} is not of types {', '.join(_render(k) for k in kinds)}"
    return f"{_render(value)} is not of type {_render(kind)}"


def _check_properties(value: Any, properties: Any, _schema: JsonDict) -> Optional[str]:
    if not isinstance(value, dict) or not isinstance(properties, dict):
        return None
    for key in sorted(properties):
        if key in value:
            problem = validate(value[key], properties[key])
            if problem is not None:
                return problem
    return None


def _check_additional(value: Any, additional: Any, schema: JsonDict) -> Optional[str]:
    if not isinstance(value, dict):
        return None
    properties = schema.get("properties")
    declared: JsonDict = properties if isinstance(properties, dict) else {}
    for key in sorted(k for k in value if k not in declared):
        if additional is False:
            return f"Additional properties are not allowed ('{key}' was unexpected)"
        problem = validate(value[key], additional)
        if problem is not None:
            return problem
    return None


def _check_required(value: Any, required: Any, _schema: JsonDict) -> Optional[str]:
    if not isinstance(value, dict) or not isinstance(required, list):
        return None
    missing = [key for key in required if key not in value]
    return f"{_render(missing[0])} is a required property" if missing else None


def _check_items(value: Any, items: Any, _schema: JsonDict) -> Optional[str]:
    if not isinstance(value, list):
        return None
    for item in value:
        problem = validate(item, items)
        if problem is not None:
            return problem
    return None


def _check_enum(value: Any, options: Any, _schema: JsonDict) -> Optional[str]:
    if not isinstance(options, list) or value in options:
        return None
    return f"{_render(value)} is not one of {_render(options)}"


_KEYWORDS: Dict[str, Callable[[Any, Any, JsonDict], Optional[str]]] = {
    "additionalProperties": _check_additional,
    "enum": _check_enum,
    "items": _check_items,
    "properties": _check_properties,
    "required": _check_required,
    "type": _check_type,
}


def validate(value: Any, schema: Any) -> Optional[str]:
    """The first violation, keywords taken in sorted order like serde_json's map; None if valid."""
    if not isinstance(schema, dict):
        return None
    for keyword in sorted(schema):
        check = _KEYWORDS.get(keyword)
        problem = None if check is None else check(value, schema[keyword], schema)
        if problem is not None:
            return problem
    return None
