"""The folders import each other as docs/DESIGN.md's picture says (every import, the lazy ones in functions too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> dict[str, set[str]]:
    """Each module of ``folder`` -> the ``implicit_icl`` subpackages it imports (``experiments``, ``commands``, …)."""
    out = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            names |= {m.split(".")[1] for m in modules if m.startswith("implicit_icl.")}
        out[path.name] = names
    return out


@pytest.mark.parametrize("folder, never", [
    ("models", {"experiments", "commands", "tui"}),          # experiments import models, not the other way
    ("experiments", {"commands", "tui"}),
])
def test_a_folder_imports_nothing_above_it(folder, never):
    wrong = {name: sorted(imported & never) for name, imported in _imports(folder).items() if imported & never}
    assert not wrong, f"{folder}/ imports what DESIGN.md puts above it: {wrong}"
