"""The import rules of shared/design/architecture.md, checked on the source of every module.

Arrows run one way: cli -> api -> search -> (passes, costmodel) -> (accuracy,
analysis) -> ir -> errors. Every import of ours is checked, at the top of a
module or anywhere inside it; and no import is placed inside a function to
hide a cycle: inside functions only optional or heavy third-party packages
are imported, each listed here with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnx_tailor"

# What each part of the package may import of ours (besides itself).
ALLOWED = {
    "errors": set(),
    "version": set(),
    "zoo": {"ir"},  # fetched models are written as every output is (ir.io.Outputs); nothing in the package imports zoo
    "schemas": set(),
    "ir": {"errors"},
    "analysis": {"ir", "errors"},
    "accuracy": {"ir", "errors"},
    "costmodel": {"analysis", "ir", "errors"},
    "passes": {"analysis", "accuracy", "ir", "errors"},
    "search": {"passes", "costmodel", "accuracy", "analysis", "ir", "errors", "version"},
    "api": {"search", "passes", "costmodel", "accuracy", "analysis", "ir", "errors", "version"},
    "cli": {"api", "search", "passes", "costmodel", "accuracy", "analysis", "ir", "errors", "version"},
    "__init__": {"api", "errors", "ir", "version"},
    "__main__": {"cli"},
}
# Third-party imports allowed inside a function, and why.
LAZY = {
    "matplotlib": "the optional 'plot' extra",
    "PIL": "the optional 'images' extra",
    "sklearn": "heavy; only fitting a cost model needs it, every CLI call would pay for it",
    "ray": "the optional 'ray' extra: only a search run with --ray needs it",
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _ours(node: ast.ImportFrom | ast.Import, path: Path) -> list[str]:
    """The parts of the package an import statement reaches."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level == 0:
        names = [node.module or ""]
    else:
        base = path.relative_to(PACKAGE).parent.parts
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        if node.module:
            names = [".".join(("onnx_tailor", *base, node.module))]
        else:  # from . import x, y
            names = [".".join(("onnx_tailor", *base, a.name)) for a in node.names]
    found = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "onnx_tailor" and len(parts) > 1:
            found.append(parts[1])
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    part = _part(path)
    allowed = ALLOWED[part] | {part}
    tree = ast.parse(path.read_text())
    wrong = [f"line {n.lineno}: {target}" for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for target in _ours(n, path) if target not in allowed]
    assert not wrong, f"{part} may import only {sorted(allowed)}; found {wrong}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_hides_inside_a_function(path):
    tree = ast.parse(path.read_text())
    hidden = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                hidden += [a.name for a in node.names if a.name.split(".")[0] not in LAZY]
            elif isinstance(node, ast.ImportFrom):
                if node.level or (node.module or "").split(".")[0] not in LAZY:
                    hidden.append("." * node.level + (node.module or ""))
    assert not hidden, f"imports inside functions: {hidden}"


def test_the_check_sees_an_upward_import():
    """The rule above is not vacuous: a relative import from ir into passes is recognised as one."""
    fake = PACKAGE / "ir" / "model.py"
    node = ast.parse("from ..passes import base").body[0]
    assert _ours(node, fake) == ["passes"] and "passes" not in ALLOWED["ir"]
