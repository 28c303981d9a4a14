"""``load_model(name_or_path)``: the one place a command turns ``--model`` into a loaded model.

A bundled name or a folder that ``models.hf.load`` reads:

- ``minilm``: all-MiniLM-L6-v2 through ``models.minilm`` (the ``real`` extra; ``minilm_dir`` picks its folder);
- ``fewshot``: the bundled few-shot Llama-architecture model (``implicit_icl/data/fewshot``, issue 15 item 4),
  through ``models.hf``;
- anything else: a path to a Hugging Face model folder (``config.json`` + safetensors + ``tokenizer.json``).

Every returned model offers the interface of ``models.analysis``; ``HFModel`` also offers what
``models.decompose`` reads (``embed``, ``logits_from``, ``check_ids``). Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED", "describe", "fewshot_dir", "load_model"]

BUNDLED = ("minilm", "fewshot")


def fewshot_dir() -> Path:
    """The bundled few-shot folder: beside the package's data (an editable install reads the repository's)."""
    import implicit_icl

    return Path(implicit_icl.__file__).resolve().parent / "data" / "fewshot"


def load_model(name_or_path: str, minilm_dir: str | None = None):
    """The model ``name_or_path`` names (module docstring). Raises ``MissingExtraError`` for a missing extra,
    ``FileNotFoundError`` (``MissingFileError``) for a missing folder or file and a one-line ``ValueError`` naming
    the file or field for anything the loaders refuse."""
    from .hf_files import MissingFileError

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"name_or_path must name a bundled model ({', '.join(BUNDLED)}) or a model folder, got "
                         f"{name_or_path!r}")
    if minilm_dir is not None and name_or_path != "minilm":
        raise ValueError(f"minilm_dir is all-MiniLM-L6-v2's folder: it goes with `name_or_path` minilm only "
                         f"(give the folder itself as `name_or_path`), not with `name_or_path` {name_or_path}")
    if name_or_path == "minilm":
        from . import minilm

        return minilm.load_minilm(minilm_dir)
    from . import hf

    if name_or_path == "fewshot":
        folder = fewshot_dir()
        if not (folder / "config.json").is_file():
            raise MissingFileError(f"the bundled few-shot model is not in this install ({folder} has no config.json;"
                                   f" train it with implicit-icl train --preset fewshot)")
        return hf.load(folder)
    return hf.load(name_or_path)


def describe(model, name_or_path: str) -> str:
    """A short label: the bundled name, or the folder's family and name."""
    if name_or_path in BUNDLED:
        return {"minilm": "all-MiniLM-L6-v2", "fewshot": "fewshot (bundled Llama few-shot learner)"}[name_or_path]
    return f"{getattr(model, 'family', 'model')} at {name_or_path}"
