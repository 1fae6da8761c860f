"""The Python code blocks of README.rst and docs/*.rst, so tests can run what the docs show.

Every ``.. code-block:: python`` is one of three kinds, told apart by its ``:name:`` option:

* no name: a script; tests run it as a program against the scripted runtime;
* ``:name: test_...``: a pytest file; tests run it with pytest;
* any other name: a module some test imports or serves (a Flask app, a gunicorn config).

All of them are type-checked with ``mypy --strict``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import List, Optional

import attrs

ROOT = Path(__file__).resolve().parent.parent

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. code-block::\s*(?P<language>\S+)\s*$")
_OPTION = re.compile(r"^\s+:(?P<key>[\w-]+):\s*(?P<value>.*)$")


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the directive
    language: str
    name: Optional[str]
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.name is None:
            return "script"
        return "pytest" if self.name.startswith("test_") else "module"

    def write(self, directory: Path) -> Path:
        """Write the block as a module named after it (or after where it is) in ``directory``."""
        stem = self.name or f"{self.path.stem.replace('-', '_')}_{self.line}"
        target = directory / f"{stem}.py"
        target.write_text(self.code, encoding="utf-8")
        return target


def doc_files() -> List[Path]:
    return [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def blocks_in(path: Path) -> List[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: List[Block] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        start, base = i + 1, len(match["indent"])
        name = None
        i += 1
        while i < len(lines) and (option := _OPTION.match(lines[i])):
            if option["key"] == "name":
                name = option["value"].strip()
            i += 1
        body: List[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        found.append(Block(path, start, match["language"], name, code))
    return found


def python_blocks() -> List[Block]:
    return [b for path in doc_files() for b in blocks_in(path) if b.language == "python"]


def named(name: str) -> Block:
    """The one Python block with this ``:name:``; a test that serves a doc example uses this."""
    matches = [b for b in python_blocks() if b.name == name]
    if len(matches) != 1:
        raise LookupError(f"{len(matches)} code blocks are named {name!r} in README.rst and docs/")
    return matches[0]
