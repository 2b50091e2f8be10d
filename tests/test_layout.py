"""The package's layout as the architecture draws it: arrows point down only
(cli -> learn -> model/kernels -> store -> format), the format and the store never import torch,
and no module or class grows past what a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "supsup_cli"
# What each layer may import from the package (besides itself and the shared leaf modules).
LEAVES = {"errors", "threads", "progress", "assets"}
MAY_IMPORT = {
    "format": set(),
    "store": {"format"},
    "kernels": {"format"},
    "model": {"format", "kernels"},
    "learn": {"format", "store", "kernels", "model"},
    "cli": {"format", "store", "kernels", "model", "learn"},
}
TORCH_FREE = ("format", "store")
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved)."""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = layer(path)
    allowed = MAY_IMPORT.get(own, set(MAY_IMPORT)) | LEAVES | {own}
    reached = {
        name.split(".")[1]
        for name in imported(path)
        if name.startswith("supsup_cli.") and name.count(".") >= 1
    }
    assert reached <= allowed, f"{own} imports {sorted(reached - allowed)}"
    if own in TORCH_FREE:
        assert not {n for n in imported(path) if n == "torch" or n.startswith("torch.")}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_readable(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name
