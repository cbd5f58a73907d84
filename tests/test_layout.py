"""The house stays small (issue 14): no function over 50 lines, no module over 400, no name nothing refers to.

Walks gateway/ and connectors/ with ast. A function's length is its `def` line to its last line (docstring
included, decorators not); nested functions and methods count on their own. A name is unreferenced when its
word appears nowhere but its own definition: not in another module, tests/, bench/, a template or
pyproject.toml. No exceptions: a long function is split into named steps, a long module by concern.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "connectors")
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400

# Names kept on purpose though nothing in the repository refers to them.
PUBLIC_ON_PURPOSE = frozenset({"gateway/__init__.py::__version__"})


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function under `node`, with its dotted name (Class.method, outer.inner)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


@functools.cache  # each walk is done once a run (the last test reuses them)
def _long_functions() -> dict[str, int]:
    out: dict[str, int] = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, fn in _functions(tree):
            assert fn.end_lineno is not None
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out[f"{_name(path)}::{name}"] = lines
    return out


@functools.cache
def _long_modules() -> dict[str, int]:
    lengths = {_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    return {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES}


def _top_level_names(tree: ast.Module) -> Iterator[str]:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            yield from (t.id for t in targets if isinstance(t, ast.Name) and t.id != "__all__")


@functools.cache
def _unreferenced() -> set[str]:
    texts = [p.read_text(encoding="utf-8") for p in _modules()]
    here = Path(__file__).resolve()  # this file names the allowed offenders: that is no use of them
    texts += [p.read_text(encoding="utf-8") for d in ("tests", "bench") for p in (ROOT / d).rglob("*.py")
              if p.resolve() != here]
    texts += [p.read_text(encoding="utf-8") for p in (ROOT / "gateway").rglob("*.html")]
    texts.append((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    words = Counter(w for text in texts for w in re.findall(r"\w+", text))
    out: set[str] = set()
    for path in _modules():
        for name in _top_level_names(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if words[name] <= 1:  # its definition only
                out.add(f"{_name(path)}::{name}")
    return out - PUBLIC_ON_PURPOSE


def _listing(offenders: dict[str, int], unit: str) -> str:
    return "\n".join(f"  {name}: {n} {unit}" for name, n in sorted(offenders.items()))


def test_no_function_over_50_lines() -> None:
    offenders = _long_functions()
    assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines (split them into steps with names):\n"
                           + _listing(offenders, "lines"))


def test_no_module_over_400_lines() -> None:
    offenders = _long_modules()
    assert not offenders, (f"modules over {MAX_MODULE_LINES} lines (split them by concern):\n"
                           + _listing(offenders, "lines"))


def test_no_unreferenced_names() -> None:
    offenders = sorted(_unreferenced())
    assert not offenders, "top-level names nothing refers to (remove them):\n" + "\n".join(f"  {o}" for o in offenders)

