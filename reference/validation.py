"""Input checks shared by the reference functions: every error names the argument and what was expected."""
from __future__ import annotations

import numpy as np

from .config import BlockConfig, param_shapes

OPTIONAL_KEYS = ("attn.b_q", "attn.b_k", "attn.b_v", "attn.b_o")


class ZeroNormError(ValueError):
    """The vector ``a`` that the update divides by has zero (or non-finite) squared norm.

    The theorem needs ``‖a‖² > 0`` (P1 Thm 2.2 assumes ``A(C\\Y, x) ≠ 0``); we never add a silent epsilon.
    """


def shape_problem(name: str, got: tuple, shape: tuple, batch: bool, show_batch: bool = False) -> str | None:
    """Why an array of shape ``got`` is not ``shape`` (``None`` entries match any size; with ``batch`` any leading
    dimensions too, shown as ``...`` when ``show_batch``), or ``None``: every backend's one shape check."""
    got = tuple(got)
    core = got[len(got) - len(shape):] if len(got) >= len(shape) else None
    if core is not None and (len(got) == len(shape) or batch) and all(s is None or s == c for s, c in zip(shape, core)):
        return None
    lead = "..., " if batch and show_batch else ""
    expected = "(" + lead + ", ".join("n" if s is None else str(s) for s in shape) \
        + ("," if len(shape) == 1 and not lead else "") + ")"
    return f"{name} must have shape {expected}, got {got}"


def as_array(x, name: str, shape: tuple, *, allow_batch: bool = False) -> np.ndarray:
    """Convert ``x`` to a finite float64 array of ``shape`` (``None`` entries match any size).

    With ``allow_batch`` any number of leading dimensions is accepted in front of ``shape``.
    """
    arr = real_array(name, from_tensor(x))
    problem = shape_problem(name, arr.shape, shape, allow_batch)
    if problem:
        raise ValueError(problem)
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


def real_dtype_problem(name: str, dtype) -> str | None:
    """The message for an array whose dtype is not real floating-point or integer (bool, complex, str, object), or
    ``None``: every backend's one wording."""
    kind = getattr(dtype, "kind", None)
    if kind in ("f", "i", "u") or (kind is None and getattr(dtype, "is_floating_point", False)):
        return None
    return f"{name} must be a real floating-point (or integer) array, got dtype {dtype}"


def real_array(name: str, value) -> np.ndarray:
    """``value`` (an array-like of real numbers: nested lists too) as a NumPy array of its own dtype, or a
    ``ValueError`` naming it: every backend reads array-likes through this."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:          # ragged nested lists, objects NumPy cannot read
        raise ValueError(f"{name} must be an array, got {type(value).__name__} ({exc})") from None
    problem = real_dtype_problem(name, arr.dtype)
    if problem:
        raise ValueError(problem)
    return arr


def _numpy_param(name: str, value) -> np.ndarray:
    if _is_tensor(value):
        raise ValueError(f"{name} is a torch tensor: the reference computes in NumPy float64; convert the dict first "
                         "(get_backend('numpy').asarray(params), or the torch backend's to_numpy)")
    return real_array(name, value)


def _numpy_finite(arr: np.ndarray, problem: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(problem)


def params_like(params: dict, cfg: BlockConfig, convert=_numpy_param, expect_finite=_numpy_finite) -> dict:
    """``params`` checked against ``cfg`` and converted, the one params check of every backend.

    Every key the config needs must be there (the q/k/v/o biases may be left out: zero), no other key (a misspelt
    ``attn.b_V`` would silently drop a bias), every array of the expected shape and finite. ``convert(name, value)``
    turns one value into the backend's array (NumPy for the reference) and raises a ``ValueError`` naming it;
    ``expect_finite(arr, problem)`` raises ``ValueError(problem)`` if ``arr`` holds a nan or inf (now, or, for a
    backend that defers its device syncs, at the end of the call).
    """
    if not isinstance(cfg, BlockConfig):
        raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of named arrays, got {type(params).__name__}")
    shapes = param_shapes(cfg, include_attn_bias=True)
    unknown = sorted(str(k) for k in params if k not in shapes)
    if unknown:
        raise ValueError(f"params has the key {unknown[0]!r}, which a {cfg.kind!r} block with this config does not "
                         f"have (its keys: {', '.join(shapes)})")
    out = {}
    for key, shape in shapes.items():
        if key not in params:
            if key in OPTIONAL_KEYS:
                continue
            raise ValueError(f"params is missing {key!r} (expected shape {shape}) for a {cfg.kind!r} block")
        arr = convert(f"params[{key!r}]", params[key])
        if tuple(arr.shape) != shape:
            raise ValueError(f"params[{key!r}] must have shape {shape}, got {tuple(arr.shape)}")
        expect_finite(arr, f"params[{key!r}] contains non-finite values")
        out[key] = arr
    return out


def check_params(params: dict, cfg: BlockConfig) -> None:
    """Raise ``ValueError`` if ``params`` does not fit ``cfg`` (:func:`params_like`)."""
    params_like(params, cfg)


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
