"""Whether this Python's ``transformers`` (the tests' oracle, the dev extra) can build the tests' tiny models.

Plain Python, no pytest: ``scripts/gpu_check.sh`` asks it too, to deselect on a GPU machine exactly the cases the
tests would skip there. The minimum is the dev extra's ``transformers>=X.Y`` in ``pyproject.toml`` (one place): the
tests build models with ``dtype=`` (transformers 4.56) and configs with ``rope_parameters`` (transformers 5).
"""
from __future__ import annotations

import re
from pathlib import Path


def minimum() -> tuple[int, ...]:
    """The version the dev extra asks for, e.g. ``(4, 56)``."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"transformers>=([0-9.]+)"', text)
    if found is None:
        raise RuntimeError("pyproject.toml's dev extra names no transformers>=X.Y")
    return tuple(int(p) for p in found.group(1).split("."))


def transformers_unusable() -> str | None:
    """Why ``transformers`` cannot build the tiny models here (not installed, too old, or failing on import: a
    broken install is as unusable as a missing one), or ``None`` if it can."""
    try:
        import transformers
    except ImportError:
        return "transformers is not installed"
    except Exception as exc:                                    # noqa: BLE001 - said, with what it raised
        return f"transformers does not import ({type(exc).__name__}: {exc})"
    need = minimum()
    have = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:len(need)])
    if have < need:
        return f"transformers {transformers.__version__} is older than {'.'.join(map(str, need))}"
    return None
