"""The API reference covers every exported name, and every public member has a docstring.

``docs/api*.rst`` name each object in an autodoc (``.. autoclass:: meerkat_sync.Session``)
or ``py:`` directive; these tests read those directives rather than running Sphinx, which
is a CI step of its own (``python -m sphinx -W --keep-going -n -b html docs <out>``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import meerkat_sync
import meerkat_sync.errors
import meerkat_sync.testing

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: The modules whose ``__all__`` is the public API.
MODULES = (meerkat_sync, meerkat_sync.testing, meerkat_sync.errors)

_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?:auto|py:)(?P<kind>class|exception|function|data|attribute|method"
    r"|property|decorator)::[ \t]+(?P<name>[\w.]+)"
)
_OPTION = re.compile(r"^[ \t]+:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")


def api_pages() -> List[Path]:
    return sorted(DOCS.glob("api*.rst"))


def directives(*, nested: bool = True) -> Dict[str, Dict[str, str]]:
    """Every object the API pages document: its dotted name -> the directive's options.

    A directive indented inside another (an instance attribute in a class) is named
    relative to it; ``nested=False`` leaves those out.
    """
    found: Dict[str, Dict[str, str]] = {}
    for page in api_pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        outer = ""
        for i, line in enumerate(lines):
            match = _DIRECTIVE.match(line)
            if not match:
                continue
            name = match["name"]
            if not match["indent"]:
                outer = name
            elif not nested:
                continue
            else:
                name = f"{outer}.{name}"
            options: Dict[str, str] = {}
            for following in lines[i + 1 :]:
                option = _OPTION.match(following)
                if not option:
                    break
                options[option["key"]] = option["value"].strip()
            found[name] = options
    return found


def resolve(dotted: str) -> Any:
    """The object a dotted name documents, importing its longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def exported() -> List[Tuple[str, Any]]:
    return [(f"{m.__name__}.{name}", getattr(m, name)) for m in MODULES for name in m.__all__]


def documented_as(name: str, obj: Any, documented: Set[str]) -> Optional[str]:
    """Where an exported object is documented: under its own name, or re-exported at the top."""
    if name in documented:
        return name
    top = f"meerkat_sync.{name.rsplit('.', 1)[1]}"
    if top in documented and getattr(meerkat_sync, top.split(".", 1)[1], None) is obj:
        return top
    return None


def public_members(cls: type) -> Iterator[Tuple[str, Any]]:
    """Methods and properties a class itself defines (attrs fields and dunders excluded)."""
    for key, value in vars(cls).items():
        if key.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            yield key, value.__func__
        elif isinstance(value, property) or inspect.isfunction(value):
            yield key, value


def test_the_api_pages_exist() -> None:
    assert (DOCS / "api.rst").is_file()
    assert len(directives()) > 50


def test_every_exported_name_is_in_the_api_reference() -> None:
    documented = set(directives())
    missing = [name for name, obj in exported() if documented_as(name, obj, documented) is None]
    assert not missing, f"exported but not in docs/api*.rst: {missing}"


def test_the_api_reference_documents_only_real_objects() -> None:
    stale = []
    for name in directives(nested=False):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            stale.append(name)
    assert not stale, f"docs/api*.rst document names that do not exist: {stale}"


def test_every_public_member_of_an_exported_class_is_in_the_reference() -> None:
    """An ``autoclass`` shows members only when its ``:members:`` option lets them in."""
    pages = directives()
    left_out = []
    for name, obj in exported():
        if not inspect.isclass(obj):
            continue
        where = documented_as(name, obj, set(pages))
        if where is None:
            continue  # reported by the test above
        members = pages[where].get("members")
        listed = {m.strip() for m in members.split(",")} if members else set()
        for key, _ in public_members(obj):
            if members is None or (members and key not in listed):
                left_out.append(f"{where}.{key}")
    assert not left_out, f"public members the API reference leaves out (see :members:): {left_out}"


def _undocumented() -> Iterator[str]:
    for name, obj in exported():
        if inspect.isclass(obj):
            if not (obj.__dict__.get("__doc__") or "").strip():
                yield name
            for key, member in public_members(obj):
                # An override may inherit its docstring: autodoc shows the inherited one.
                doc = inspect.getdoc(getattr(obj, key)) if inspect.isfunction(member) else member.__doc__
                if not (doc or "").strip():
                    yield f"{name}.{key}"
        elif inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
            yield name


def test_every_public_class_function_method_and_property_has_a_docstring() -> None:
    missing = list(_undocumented())
    assert not missing, f"public API without a docstring: {missing}"


def test_every_page_is_in_a_toctree() -> None:
    """Sphinx warns about a page in no toctree; this names it without a build."""
    listed: Set[str] = set()
    for path in DOCS.glob("*.rst"):
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^\.\. toctree::\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, re.M):
            listed |= {entry.strip() for entry in block.splitlines() if entry.strip() and ":" not in entry}
    pages = {path.stem for path in DOCS.glob("*.rst")} - {"index"}
    assert not pages - listed, f"pages in no toctree: {sorted(pages - listed)}"
