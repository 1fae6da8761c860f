"""The scripted runtime's realm config: the 0.5.0 defaults, how values are read, set and patched.

rkat-rpc 0.5.0 reads a config the way serde reads its ``Config`` struct: missing keys
take their defaults, unknown keys are dropped, a value of the wrong type is an error
naming the Rust type. ``config/patch`` merges (RFC 7396: ``null`` deletes a key, so it
comes back as its default) and then reads the result; ``config/set`` reads the config
it was given as the whole new config. Both bump ``generation`` on success.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from typing import Any, Dict, Optional, Tuple, Union

from meerkat_sync.testing._fake_constants import DEFAULT_MODEL, INVALID_PARAMS
from meerkat_sync.testing._fake_wire import JsonDict, RpcError, json_kind

#: The defaults of a realm with an empty ``config.toml`` (as ``config/get`` shows them).
DEFAULT_CONFIG: JsonDict = {
    "agent": {
        "budget_warning_threshold": 0.800000011920929,
        "max_tokens_per_turn": 16384,
        "max_turns": None,
        "model": DEFAULT_MODEL,
        "structured_output_retries": 2,
        "system_prompt": None,
        "system_prompt_file": None,
        "temperature": None,
        "tool_instructions": None,
    },
    "budget": {"max_duration": None, "max_tokens": None, "max_tool_calls": None},
    "comms": {
        "address": None,
        "auth": "none",
        "event_address": None,
        "mode": "inproc",
        "require_peer_auth": True,
    },
    "compaction": {
        "auto_compact_threshold": 100000,
        "max_summary_tokens": 4096,
        "min_turns_between_compactions": 3,
        "recent_turn_budget": 4,
    },
    "hooks": {
        "background_max_concurrency": 32,
        "default_timeout_ms": 5000,
        "entries": [],
        "payload_max_bytes": 131072,
    },
    "limits": {"budget": None, "max_duration": None},
    "max_tokens": 16384,
    "models": {"anthropic": DEFAULT_MODEL, "gemini": "gemini-3-flash-preview", "openai": "gpt-5.4"},
    "provider": {"api_key": None, "base_url": None, "type": "anthropic"},
    "providers": {"api_keys": None, "base_urls": None},
    "rest": {"host": "127.0.0.1", "port": 8080},
    "retry": {"initial_delay": "500ms", "max_delay": "30s", "max_retries": 3, "multiplier": 2.0},
    "shell": {"program": "nu", "security_mode": "unrestricted", "security_patterns": [], "timeout_secs": 30},
    "skills": {
        "enabled": True,
        "health_thresholds": {
            "degraded_failure_streak": 3,
            "degraded_invalid_ratio": 0.05000000074505806,
            "unhealthy_failure_streak": 10,
            "unhealthy_invalid_ratio": 0.4000000059604645,
        },
        "identity": {"aliases": [], "lineage": [], "remaps": []},
        "inventory_threshold": 12,
        "max_injection_bytes": 32768,
        "repositories": [],
    },
    "storage": {"directory": os.path.join(os.path.expanduser("~"), ".rkat", "sessions")},
    "store": {"database_dir": None, "sessions_path": None, "tasks_path": None},
    "tools": {
        "builtins_enabled": False,
        "comms_enabled": False,
        "default_timeout": "10m",
        "max_concurrent": 10,
        "mcp_servers": [],
        "mob_enabled": False,
        "shell_enabled": False,
        "tool_timeouts": {},
    },
}

# -- the shape: how each key is read --------------------------------------------------------
#
# A leaf is the serde "expected ..." text of its type (plus "?" for Option<T>); a struct
# is (its Rust name, its fields). Unsigned integers carry their bit width.

Shape = Union[str, Tuple[str, Dict[str, Any]]]

_UNSIGNED = {"u16": 16, "u32": 32, "u64": 64, "usize": 64}

SHAPE: Tuple[str, Dict[str, Any]] = (
    "Config",
    {
        "agent": (
            "AgentConfig",
            {
                "budget_warning_threshold": "f32",
                "max_tokens_per_turn": "u32",
                "max_turns": "u32?",
                "model": "a string",
                "structured_output_retries": "u32",
                "system_prompt": "a string?",
                "system_prompt_file": "path string?",
                "temperature": "f32?",
                "tool_instructions": "a string?",
            },
        ),
        "budget": (
            "BudgetConfig",
            {"max_duration": "a duration?", "max_tokens": "u64?", "max_tool_calls": "usize?"},
        ),
        "comms": (
            "CommsRuntimeConfig",
            {
                "address": "a string?",
                "auth": "string or map",
                "event_address": "a string?",
                "mode": "string or map",
                "require_peer_auth": "a boolean",
            },
        ),
        "compaction": (
            "CompactionRuntimeConfig",
            {
                "auto_compact_threshold": "u64",
                "max_summary_tokens": "u32",
                "min_turns_between_compactions": "u32",
                "recent_turn_budget": "usize",
            },
        ),
        "hooks": (
            "HooksConfig",
            {
                "background_max_concurrency": "usize",
                "default_timeout_ms": "u64",
                "entries": "a sequence",
                "payload_max_bytes": "usize",
            },
        ),
        "limits": ("LimitsConfig", {"budget": "u64?", "max_duration": "a duration?"}),
        "max_tokens": "u32",
        "models": ("ModelDefaults", {"anthropic": "a string", "gemini": "a string", "openai": "a string"}),
        "provider": (
            "internally tagged enum ProviderConfig",
            {"api_key": "a string?", "base_url": "a string?", "type": "variant identifier"},
        ),
        "providers": (
            "ProviderSettings",
            {"api_keys": "a map of strings?", "base_urls": "a map of strings?"},
        ),
        "rest": ("RestServerConfig", {"host": "a string", "port": "u16"}),
        "retry": (
            "RetryConfig",
            {
                "initial_delay": "a duration",
                "max_delay": "a duration",
                "max_retries": "u32",
                "multiplier": "f64",
            },
        ),
        "shell": (
            "ShellDefaultsSeed",
            {
                "program": "a string",
                "security_mode": "string or map",
                "security_patterns": "a sequence",
                "timeout_secs": "u64",
            },
        ),
        "skills": (
            "SkillsConfig",
            {
                "enabled": "a boolean",
                "health_thresholds": (
                    "SourceHealthThresholds",
                    {
                        "degraded_failure_streak": "u32",
                        "degraded_invalid_ratio": "f32",
                        "unhealthy_failure_streak": "u32",
                        "unhealthy_invalid_ratio": "f32",
                    },
                ),
                "identity": (
                    "SkillsIdentityConfig",
                    {"aliases": "a sequence", "lineage": "a sequence", "remaps": "a sequence"},
                ),
                "inventory_threshold": "usize",
                "max_injection_bytes": "usize",
                "repositories": "a sequence",
            },
        ),
        "storage": ("StorageConfig", {"directory": "path string"}),
        "store": (
            "StoreConfig",
            {"database_dir": "path string?", "sessions_path": "path string?", "tasks_path": "path string?"},
        ),
        "tools": (
            "ToolsConfig",
            {
                "builtins_enabled": "a boolean",
                "comms_enabled": "a boolean",
                "default_timeout": "a duration",
                "max_concurrent": "usize",
                "mcp_servers": "a sequence",
                "mob_enabled": "a boolean",
                "shell_enabled": "a boolean",
                "tool_timeouts": "a map of durations",
            },
        ),
    },
)


class ConfigError(Exception):
    """The serde error of reading a config value."""


def _mismatch(value: Any, expected: str) -> ConfigError:
    return ConfigError(f"invalid type: {json_kind(value)}, expected {expected}")


def _leaf(value: Any, expected: str) -> Any:
    if expected.endswith("?"):
        return None if value is None else _leaf(value, expected[:-1])
    bits = _UNSIGNED.get(expected)
    if bits is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(value, expected)
        if not 0 <= value < 2**bits:
            raise ConfigError(f"invalid value: integer `{value}`, expected {expected}")
        return value
    if expected in ("f32", "f64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _mismatch(value, expected)
        return value
    if expected == "a boolean":
        if not isinstance(value, bool):
            raise _mismatch(value, expected)
        return value
    if expected == "a sequence":
        if not isinstance(value, list):
            raise _mismatch(value, expected)
        return value
    if expected == "string or map":
        if not isinstance(value, (str, dict)):
            raise _mismatch(value, expected)
        return value
    if expected.startswith("a map of "):
        if not isinstance(value, dict):
            raise _mismatch(value, "a map")
        inner = "a string" if expected == "a map of strings" else "struct Duration"
        for item in value.values():
            if not isinstance(item, str) and not (inner == "struct Duration" and isinstance(item, dict)):
                raise _mismatch(item, inner)
        return value
    if expected == "a duration" and isinstance(value, str) and not value[:1].isdigit():
        raise ConfigError("expected number at 0")
    if not isinstance(value, str):  # a string, path string, a duration, variant identifier
        raise _mismatch(value, expected)
    return value


def _read(value: Any, shape: Any, default: Any) -> Any:
    """``value`` read as ``shape``: defaults filled in, unknown keys dropped."""
    if isinstance(shape, str):
        return _leaf(value, shape)
    name, fields = shape
    expected = name if " " in name else f"struct {name}"
    if isinstance(value, list) and not value:
        value = {}  # serde reads a struct from an empty sequence as all defaults
    if not isinstance(value, dict):
        raise _mismatch(value, expected)
    out: JsonDict = {}
    for key, field_shape in fields.items():
        field_default = default.get(key) if isinstance(default, dict) else None
        out[key] = (
            _read(value[key], field_shape, field_default) if key in value else copy.deepcopy(field_default)
        )
    return out


def read_config(value: Any) -> JsonDict:
    """A whole config as the server reads it; a null config is the defaults."""
    config: JsonDict = _read({} if value is None else value, SHAPE, DEFAULT_CONFIG)
    return config


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _is_generation(value: Any) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 2**64)


class RealmConfig:
    """The realm's config and generation, shared by every request of the process."""

    def __init__(self, realm: str) -> None:
        self.realm = realm
        self._lock = threading.Lock()
        self._config = read_config(None)
        self._generation = 0

    @property
    def config(self) -> JsonDict:
        with self._lock:
            return copy.deepcopy(self._config)

    def envelope(self) -> JsonDict:
        with self._lock:
            return self._envelope()

    def _envelope(self) -> JsonDict:
        root = os.path.join(os.path.expanduser("~"), ".local", "share", "meerkat", "realms", self.realm)
        return {
            "config": copy.deepcopy(self._config),
            "generation": self._generation,
            "realm_id": self.realm,
            "instance_id": None,
            "backend": "sqlite",
            "resolved_paths": {
                "root": root,
                "manifest_path": os.path.join(root, "realm_manifest.json"),
                "config_path": os.path.join(root, "config.toml"),
                "sessions_redb_path": os.path.join(root, "sessions.redb"),
                "sessions_sqlite_path": os.path.join(root, "sessions.sqlite3"),
                "sessions_jsonl_dir": os.path.join(root, "sessions_jsonl"),
            },
        }

    def _commit(self, config: JsonDict, expected: Optional[int]) -> JsonDict:
        if expected is not None and expected != self._generation:
            raise RpcError(
                INVALID_PARAMS, f"Generation conflict: expected {expected}, current {self._generation}"
            )
        self._config = config
        self._generation += 1
        return self._envelope()

    def set(self, params: Any) -> JsonDict:
        """``{"config", "expected_generation"?}``, else the params themselves as the config.

        Like the server's untagged request enum: if the first form does not read (a
        config value of the wrong type, a bad generation), the params are read as a config
        whose keys are all unknown, which resets everything without a CAS check.
        """
        with self._lock:
            if isinstance(params, dict) and "config" in params:
                expected = params.get("expected_generation")
                if _is_generation(expected):
                    try:
                        config = read_config(params["config"])
                    except ConfigError:
                        pass
                    else:
                        return self._commit(config, expected)
            try:
                return self._commit(read_config(params), None)
            except ConfigError:
                message = "Failed to parse config payload: data did not match any variant of untagged enum"
                raise RpcError(INVALID_PARAMS, f"{message} ConfigSetRequest") from None

    def patch(self, params: Any) -> JsonDict:
        """``{"patch", "expected_generation"?}``, else the params themselves as the patch (no CAS)."""
        with self._lock:
            patch, expected = params, None
            if (
                isinstance(params, dict)
                and "patch" in params
                and _is_generation(params.get("expected_generation"))
            ):
                patch, expected = params["patch"], params.get("expected_generation")
            try:
                config = read_config(merge_patch(self._config, patch))
            except ConfigError as exc:
                raise RpcError(INVALID_PARAMS, f"Failed to apply config patch preview: {exc}") from None
            return self._commit(config, expected)
