"""Test support: the bundled scripted rkat-rpc runtime, one line away from a client.

    from meerkat_sync.testing import scripted_client

    with scripted_client({"default": {"text": "Hello from the script"}}) as client:
        assert client.create_session("hi").text == "Hello from the script"

The runtime is a real child process speaking the rkat-rpc 0.5.0 wire, so code tested
against it runs unchanged against the real binary. Its script format is described in
``docs/scripted-runtime.rst``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

from .._client import MeerkatClient
from ._fake_command import fake_rkat_command
from ._model_endpoint import ModelEndpoint, RecordedRequest
from ._real_runtime import RealRuntimeClient, real_client

Script = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def scripted_client(
    script: Optional[Script] = None, *, args: Sequence[str] = (), **client_options: Any
) -> MeerkatClient:
    """A :class:`MeerkatClient` that runs the scripted runtime instead of rkat-rpc.

    ``script`` is a path to a JSON script or the script itself as a dict; ``args`` are
    extra flags for the runtime (e.g. ``["--contract-version", "0.6.0"]``); the other
    keyword arguments go to :class:`MeerkatClient`.
    """
    flags = list(args)
    cleanup: Optional[str] = None
    if isinstance(script, Mapping):
        handle, cleanup = tempfile.mkstemp(prefix="meerkat-script-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(script, out)
        flags += ["--script", cleanup]
    elif script is not None:
        flags += ["--script", os.fspath(script)]
    client = MeerkatClient(command=fake_rkat_command(*flags), **client_options)
    if cleanup is not None:
        weakref.finalize(client, _remove, cleanup)
    return client


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


__all__ = [
    "ModelEndpoint",
    "RealRuntimeClient",
    "RecordedRequest",
    "fake_rkat_command",
    "real_client",
    "scripted_client",
]
