"""Input checks shared by the reference functions: every error names the argument and what was expected."""
from __future__ import annotations

import numpy as np

from .config import BlockConfig, param_shapes

OPTIONAL_KEYS = ("attn.b_q", "attn.b_k", "attn.b_v", "attn.b_o")


class ZeroNormError(ValueError):
    """The vector ``a`` that the update divides by has zero (or non-finite) squared norm.

    The theorem needs ``‖a‖² > 0`` (P1 Thm 2.2 assumes ``A(C\\Y, x) ≠ 0``); we never add a silent epsilon.
    """


def as_array(x, name: str, shape: tuple, *, allow_batch: bool = False) -> np.ndarray:
    """Convert ``x`` to a finite float64 array of ``shape`` (``None`` entries match any size).

    With ``allow_batch`` any number of leading dimensions is accepted in front of ``shape``.
    """
    expected = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    arr = np.asarray(from_tensor(x))
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) \
            or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be a real floating-point (or integer) array, got dtype {arr.dtype}")
    core = arr.shape[arr.ndim - len(shape):] if arr.ndim >= len(shape) else None
    ok = core is not None and (arr.ndim == len(shape) or allow_batch) and all(
        s is None or s == c for s, c in zip(shape, core))
    if not ok:
        raise ValueError(f"{name} must have shape {expected}, got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return arr


def _is_tensor(x) -> bool:
    """A torch tensor (or anything shaped like one), recognised without importing torch."""
    return hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "is_floating_point")


def from_tensor(x):
    """A tensor as a CPU float64 tensor NumPy can read (detached: a tensor that requires grad, on a GPU, or in
    bfloat16, which NumPy lacks, converts too); anything else unchanged."""
    if not _is_tensor(x):
        return x
    x = x.detach().cpu()
    return x.double() if x.is_floating_point() else x


def check_params(params: dict, cfg: BlockConfig) -> None:
    """Raise ``ValueError`` if ``params`` lacks a key of ``cfg`` or holds an array of the wrong shape."""
    if not isinstance(cfg, BlockConfig):
        raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of named arrays, got {type(params).__name__}")
    shapes = param_shapes(cfg, include_attn_bias=True)
    for key, shape in shapes.items():
        if key not in params:
            if key in OPTIONAL_KEYS:
                continue
            raise ValueError(f"params is missing {key!r} (expected shape {shape}) for a {cfg.kind!r} block")
        if _is_tensor(params[key]):
            raise ValueError(f"params[{key!r}] is a torch tensor: the reference computes in NumPy float64; convert the "
                             "dict first (get_backend('numpy').asarray(params), or the torch backend's to_numpy)")
        arr = np.asarray(params[key])
        if arr.shape != shape:
            raise ValueError(f"params[{key!r}] must have shape {shape}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"params[{key!r}] contains non-finite values")


def check_remove(remove, n: int) -> np.ndarray:
    """Validate the indices of the removed subset ``Y`` of a context of length ``n``."""
    if remove is None:
        return np.arange(n)
    idx = np.asarray(remove)
    if idx.ndim != 1:
        raise ValueError(f"remove must be a 1-D sequence of context indices, got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"remove must hold integer indices into the context, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"remove indices must lie in [0, {n}) for a context of length {n}, got {idx.tolist()}")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"remove must not hold duplicate indices, got {idx.tolist()}")
    return idx.astype(np.int64)
