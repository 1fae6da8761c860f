"""Every Python example in README.rst and docs/ runs, and type-checks, so none can rot.

Scripts run as programs with ``MEERKAT_BIN_PATH`` naming the scripted runtime (so the plain
``MeerkatClient()`` of the examples works without rkat-rpc), ``test_`` blocks run under
pytest, and named modules must import; the tests that serve them (the web apps) live beside
the frameworks they need. See ``_doc_blocks.py`` for how blocks are told apart.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from _binary_support import stand_in_script
from _doc_blocks import ROOT, Block, python_blocks

BLOCKS = python_blocks()
REAL_BIN = os.environ.get("MEERKAT_BIN_PATH")


def _parses(block: Block) -> bool:
    try:
        ast.parse(block.code)
    except SyntaxError:
        return False
    return True


@pytest.fixture(scope="module")
def scripted_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted runtime as an executable, the way a user would point MEERKAT_BIN_PATH at one."""
    path = tmp_path_factory.mktemp("bin") / "rkat-rpc"
    path.write_bytes(stand_in_script())
    path.chmod(0o755)
    return path


def _env(binary: Optional[str], workdir: Path) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(workdir))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("MEERKAT_BIN_PATH", None)
    if binary is not None:
        env["MEERKAT_BIN_PATH"] = binary
    return env


def _run(argv: List[str], workdir: Path, binary: Optional[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=workdir, env=_env(binary, workdir), capture_output=True, text=True, timeout=180
    )


def test_the_docs_have_examples_and_every_one_is_found() -> None:
    wheres = {b.path.name for b in BLOCKS}
    assert {"README.rst", "real-runtime.rst"} <= wheres, wheres
    names = [b.name for b in BLOCKS if b.name is not None]
    assert len(names) == len(set(names)), f"two code blocks share a :name: {sorted(names)}"
    for path in [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]:
        text = path.read_text(encoding="utf-8")
        assert text.count(".. code-block:: python") == sum(b.path == path for b in BLOCKS), path


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_example_runs(block: Block, tmp_path: Path, scripted_bin: Path) -> None:
    if not _parses(block):
        assert sys.version_info < (3, 10), f"{block.where} is not valid Python"
        pytest.skip(f"{block.where} uses syntax newer than this Python")
    # Programs get the scripted runtime as their rkat-rpc; test files get what a user's
    # test run would have: the pytest plugin's scripted default, or the real binary.
    binary: Optional[str] = str(scripted_bin) if block.kind != "pytest" else REAL_BIN
    if "real_client(" in block.code and REAL_BIN is None:
        pytest.skip(f"{block.where} drives a real rkat-rpc: set MEERKAT_BIN_PATH to run it")
    for module in BLOCKS:  # an example may import the docs' named modules
        if module.kind == "module":
            module.write(tmp_path)
    target = block.write(tmp_path)
    if block.kind == "script":
        argv = [sys.executable, str(target)]
    elif block.kind == "pytest":
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target)]
    else:
        argv = [sys.executable, "-c", f"import {target.stem}"]
    out = _run(argv, tmp_path, binary)
    assert out.returncode == 0, f"{block.where} ({block.kind}) failed:\n{out.stdout}\n{out.stderr}"
    if block.kind == "pytest":
        assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout


@pytest.mark.skipif(
    sys.version_info < (3, 10), reason="examples are type-checked in mypy's 3.10 mode, as the package is"
)
def test_examples_pass_mypy_strict(tmp_path: Path) -> None:
    files = [str(block.write(tmp_path)) for block in BLOCKS]
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10", "--no-incremental",
         "--cache-dir", str(tmp_path / ".mypy_cache"), *files],
        cwd=tmp_path, env=dict(os.environ, MYPYPATH=str(tmp_path)), capture_output=True, text=True,
        timeout=600,
    )
    wheres = {Path(f).name: b.where for f, b in zip(files, BLOCKS)}
    report = "\n".join(
        f"{wheres.get(line.split(':', 1)[0], '?')}: {line}" for line in out.stdout.splitlines()
    )
    assert out.returncode == 0, report
