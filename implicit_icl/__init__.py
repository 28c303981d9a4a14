"""implicit-icl: in-context learning as an exact rank-1 update of the MLP's first weight matrix."""
from pathlib import Path

__version__ = "0.1.0"


def shipped(module_file: str, in_checkout: str, installed: str) -> Path:
    """Where a file or folder that ships with the package lives, seen from ``module_file`` (the ``__file__`` of a
    module of this package): ``in_checkout`` (relative to the repository root) when this is the project's own
    checkout (an editable install), else ``installed`` (relative to the package: the package data of a regular
    ``pip install``; pyproject.toml maps one onto the other)."""
    package = Path(module_file).resolve().parent
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / in_checkout).exists():      # this project's checkout
        return root / in_checkout
    return package / installed
