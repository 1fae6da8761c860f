"""A real ``rkat-rpc`` wired to the scripted model endpoint, one call away from a client.

The runtime gets a private state root, context root and user-config root in a temporary
directory, a realm whose ``config.toml`` points the Anthropic provider at the endpoint,
and a dummy API key in its own environment only. Turns then run for real: the real agent
loop, tools, history and errors, with no network and no tokens spent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional

from .._client import MeerkatClient
from ..errors import MeerkatError
from ._model_endpoint import ModelEndpoint

DEFAULT_REALM = "meerkat-sync-test"

#: Variables that would change what the runtime does behind the test's back.
_SCRUBBED_ENV = ("RUST_LOG", "RKAT_TEST_CLIENT", "RKAT_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")


class RealRuntimeClient(MeerkatClient):
    """A :class:`MeerkatClient` that also owns its model endpoint and state directory.

    ``model`` is the :class:`ModelEndpoint` (``model.requests`` shows what the runtime
    asked); ``state_root`` and ``realm_id`` locate the realm, so a second runtime can join
    it with :func:`real_client` (``state_root=..., realm_id=...``). Closing the client
    stops the endpoint and removes the directory when this client created them.
    """

    def __init__(
        self,
        *args: Any,
        model: ModelEndpoint,
        state_root: str,
        realm_id: str,
        owned_dir: Optional[str],
        owns_model: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        self.state_root = state_root
        self.realm_id = realm_id
        self._owned_dir = owned_dir
        self._owns_model = owns_model

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop rkat-rpc, then the endpoint and the temporary directory this client made."""
        try:
            super().close(timeout)
        finally:
            if self._owns_model:
                self.model.close()
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # inside a list: an inline table
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    raise MeerkatError(
        "INVALID_ARGS", f"config values must be str, int, float, bool, lists or dicts, not {value!r}"
    )


def config_toml(config: Mapping[str, Any]) -> str:
    """A TOML document for a nested dict of plain values (tables are nested dicts)."""
    lines = []
    tables = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, table in tables:
        out += _toml_table(key, table)
    return out


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    nested = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    out = f"\n[{name}]\n" + "".join(f'"{k}" = {_toml_value(v)}\n' for k, v in plain)
    for key, value in nested:
        out += _toml_table(f'{name}."{key}"', value)
    return out


def _merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def real_rkat_path(rkat_path: Optional[str] = None) -> str:
    """The real binary to run: ``rkat_path``, else ``MEERKAT_BIN_PATH``."""
    path = rkat_path or os.environ.get("MEERKAT_BIN_PATH", "").strip()
    if not path or not os.path.isfile(path):
        raise MeerkatError(
            "BINARY_NOT_FOUND",
            "real_client needs a real rkat-rpc 0.5.0: set MEERKAT_BIN_PATH to its path "
            f"(or pass rkat_path=); got {path or 'nothing'!r}",
        )
    return path


def real_client(
    script: Any = None,
    *,
    model: Optional[ModelEndpoint] = None,
    rkat_path: Optional[str] = None,
    realm_id: str = DEFAULT_REALM,
    state_root: Optional[str] = None,
    realm_backend: Optional[str] = None,
    instance_id: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    env: Optional[Mapping[str, str]] = None,
    **client_options: Any,
) -> RealRuntimeClient:
    """A connected client of a real ``rkat-rpc`` whose model is a :class:`ModelEndpoint`.

    ``script`` drives a new endpoint (the scripted runtime's reply-script format); pass
    ``model=`` to share one endpoint between runtimes instead. ``state_root`` joins an
    existing realm directory (for scale-out tests) instead of making a new one; the
    realm's ``config.toml`` is written only when it does not exist yet. ``config`` adds
    to that file (e.g. ``{"max_tokens": 512}``); ``env`` adds variables (e.g.
    ``{"RUST_LOG": "debug"}``); the rest goes to :class:`MeerkatClient`.
    """
    binary = real_rkat_path(rkat_path)
    owns_model = model is None
    endpoint = model if model is not None else ModelEndpoint(script)
    owned_dir = None if state_root is not None else tempfile.mkdtemp(prefix="meerkat-real-")
    root = state_root if state_root is not None else os.path.join(str(owned_dir), "state")
    base = os.path.dirname(os.path.abspath(root))
    try:
        realm_dir = os.path.join(root, realm_id)
        config_path = os.path.join(realm_dir, "config.toml")
        if not os.path.exists(config_path):
            os.makedirs(realm_dir, exist_ok=True)
            # The runtime's own default model (claude-opus-4-6) is kept: any claude-* name works.
            settings = {"providers": {"base_urls": {"anthropic": endpoint.url}}}
            with open(config_path, "w", encoding="utf-8") as out:
                out.write(config_toml(_merge(settings, config or {})))
        child_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        child_env["ANTHROPIC_API_KEY"] = "meerkat-sync-dummy-key"
        child_env.update(env or {})
        client = RealRuntimeClient(
            binary,
            env=child_env,
            model=endpoint,
            state_root=root,
            realm_id=realm_id,
            owned_dir=owned_dir,
            owns_model=owns_model,
            **client_options,
        )
        client.connect(
            realm_id=realm_id,
            state_root=root,
            realm_backend=realm_backend,
            instance_id=instance_id,
            context_root=os.path.join(base, "context"),
            user_config_root=os.path.join(base, "user-config"),
        )
    except BaseException:
        if owns_model:
            endpoint.close()
        if owned_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(owned_dir)
        raise
    return client
