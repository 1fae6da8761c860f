"""Sphinx configuration: the user guide pages and an API reference built from the docstrings.

CI builds it with warnings as errors and every cross reference resolved (``-n``)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Optional, Tuple

# The package is normally installed (editable); this keeps a plain checkout buildable too.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import attrs
from sphinx.util.nodes import make_refnode

import meerkat_sync

project = "meerkat-sync"
author = "meerkat-sync contributors"
copyright = "meerkat-sync contributors"
release = meerkat_sync.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = True
# Standard-library names: without intersphinx (the build needs no network) they cannot link.
nitpick_ignore = [("py:class", "os.PathLike")]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"meerkat-sync {release}"

# Classes users get from the client rather than construct: their constructor arguments are
# internal, so their signatures are left out.
_NO_SIGNATURE = {
    "meerkat_sync.Session",
    "meerkat_sync.DeferredSession",
    "meerkat_sync.EventStream",
    "meerkat_sync.testing.RealRuntimeClient",
    "meerkat_sync.EventSubscription",
    "meerkat_sync.Mob",
    "meerkat_sync.Member",
}

# Names in signatures that are private, and where they are explained.
_LABELS = {
    "Timeout": "timeouts",
    "meerkat_sync._deadline.Timeout": "timeouts",
    "meerkat_sync._deadline._UseDefault": "timeouts",
    "USE_DEFAULT": "timeouts",
    "Content": "prompts",
    "meerkat_sync.types.Content": "prompts",
    "MobSpawnSpec": "mobs",
    "PeerTarget": "mobs",
    "meerkat_sync._tools.F": "callback-tools",
}


def _signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: Optional[str], annotation: Any
) -> Optional[Tuple[str, Optional[str]]]:
    if what == "class" and name in _NO_SIGNATURE:
        return "", None
    if "_Self" in f"{signature}{annotation}":
        # connect() and __enter__ return the caller's own subclass; readers see MeerkatClient.
        signature, annotation = (
            re.sub(r"[\w.~]*\b_Self\b", "MeerkatClient", text) if text else text
            for text in (signature, annotation)
        )
        return signature, annotation
    if what in ("class", "exception") and signature and attrs.has(obj):
        return _factory_defaults(obj, signature), annotation
    if signature and "_UseDefault" in signature:
        # ``timeout: Timeout = USE_DEFAULT``, not the expanded alias and the sentinel's repr.
        signature = re.sub(r"float \| None \| [\w.~]*_UseDefault =", "Timeout =", signature)
        return signature.replace("_UseDefault.TOKEN", "USE_DEFAULT"), annotation
    return None


def _factory_defaults(cls: Any, signature: str) -> str:
    """Show ``usage: Usage = Usage()`` where autodoc would print attrs' ``NOTHING``."""
    for field in attrs.fields(cls):
        default = field.default
        if not isinstance(default, attrs.Factory):
            continue
        factory = default.factory
        if default.takes_self:
            text = "input_tokens + output_tokens" if field.name == "total_tokens" else "..."
        else:
            text = {dict: "{}", list: "[]"}.get(factory, f"{getattr(factory, '__name__', '...')}()")
        signature = re.sub(rf"\b({field.name}: [^=]+?) = NOTHING", rf"\1 = {text}", signature)
    return signature


def _resolve(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python reference that failed: private aliases, then the public names.

    Signatures name objects by where they are defined (``meerkat_sync._session.Session``),
    and docstrings of the testing package say ``MeerkatClient``; both are documented under
    ``meerkat_sync`` or ``meerkat_sync.testing``.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    label = _LABELS.get(target)
    if label is not None:
        docname, anchor, _title = env.get_domain("std").labels[label]
        return make_refnode(app.builder, node["refdoc"], docname, anchor, contnode)
    short = target.rsplit(".", 1)[-1]
    if target.startswith("meerkat_sync.") and short == target.split(".", 1)[1]:
        return None  # already a public name: a real miss
    py = env.get_domain("py")
    for module in ("meerkat_sync", "meerkat_sync.testing"):
        if not hasattr(sys.modules.get(module), short):
            continue
        found = py.resolve_xref(env, node["refdoc"], app.builder, "obj", f"{module}.{short}", node, contnode)
        if found is not None:
            return found
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _signature)
    app.connect("missing-reference", _resolve)
