"""The files of a Hugging Face model folder, read offline and without pickle: ``config.json``, the safetensors
weights (one file, or shards listed by ``model.safetensors.index.json``) and ``tokenizer.json``.

Safetensors is read here directly rather than through ``safetensors.numpy``, because NumPy has no bfloat16 and most
checkpoints people download are stored in it. The format (https://github.com/huggingface/safetensors, "Format"):
8 bytes little-endian ``N``, then ``N`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {...}}``, then the raw little-endian tensor bytes, offsets relative to the end of the header.
bfloat16 is the top 16 bits of a float32, so it widens exactly by a shift. Every error is a one-line
``ValueError`` naming the file or the tensor (a missing file: ``MissingFileError``, both a ``ValueError`` and a
``FileNotFoundError``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import require

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"

class MissingFileError(FileNotFoundError, ValueError):
    """A file of the model folder is missing (a ``ValueError`` like every other bad folder, and a
    ``FileNotFoundError``)."""


#: safetensors dtype → NumPy dtype of the stored bytes (BF16 is widened by ``_widen``)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "U8": "u1",
          "BOOL": "?"}


def read_config(folder: Path) -> dict:
    """``config.json`` as a dict; a missing or unreadable file is an error naming it."""
    path = folder / CONFIG
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: a Hugging Face model folder needs {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder: ``model.safetensors``, or the shards its index names (in order)."""
    single, index = folder / WEIGHTS, folder / INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index} must be JSON with a 'weight_map' of tensor → file: {exc}") from exc
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise MissingFileError(f"{index} names shards that are missing: {', '.join(missing)}")
        return [folder / s for s in shards]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise MissingFileError(f"{folder} has only pickled weights (*.bin/*.pt), which are never loaded: "
                               f"convert them to {WEIGHTS}")
    raise MissingFileError(f"{folder} has neither {WEIGHTS} nor {INDEX}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as a read-only NumPy array (bfloat16 widened to float32)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from exc
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file: {len(raw)} bytes")
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
    data = memoryview(raw)[8 + n:]
    return {name: _tensor(path, name, info, data) for name, info in header.items() if name != "__metadata__"}


def _tensor(path: Path, name: str, info, data: memoryview) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from exc
    if dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which the loader does not read "
                         f"(it reads {', '.join(DTYPES)})")
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if not 0 <= begin <= end <= len(data) or end - begin != itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) has offsets {begin}..{end} that do "
                         f"not fit its size or the file (truncated?)")
    arr = np.frombuffer(data[begin:end], dtype=DTYPES[dtype]).reshape(shape)
    return _widen(arr) if dtype == "BF16" else arr


def _widen(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32, exactly: they are a float32's upper half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the folder's safetensors file(s); a name in two shards is an error naming both."""
    state: dict[str, np.ndarray] = {}
    where: dict[str, Path] = {}
    for path in weight_files(folder):
        for name, arr in read_safetensors(path).items():
            if name in state:
                raise ValueError(f"tensor {name!r} is stored twice: in {where[name]} and in {path}")
            state[name], where[name] = arr, path
    return state


def read_tokenizer(folder: Path):
    """``tokenizer.json`` through the ``tokenizers`` library (padding and truncation off), or ``None`` when the
    folder has none."""
    path = folder / TOKENIZER
    if not path.is_file():
        return None
    tokenizers = require("tokenizers", f"reading {path}")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type for a bad file
        raise ValueError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
