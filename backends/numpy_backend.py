"""The ``numpy`` backend: the float64 reference (``implicit_icl.reference``) behind the Backend interface.

Every method is the reference function of the same name; the backend only adds ``name``, ``device``, ``dtype``,
``asarray`` and ``to_numpy``. ``model_trajectory`` (not in the reference) re-runs ``model_updates`` on every
prefix: the O(n²) oracle that the torch backend's chunked pass is checked against.
"""
from __future__ import annotations

import numpy as np

from implicit_icl import reference as ref


def _check_numpy_dtype(dtype) -> None:
    if dtype is None:
        return
    try:
        ok = np.dtype(dtype) == np.float64
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"dtype must be 'float64' for the numpy backend (it is the float64 reference), got {dtype!r}")


class NumpyBackend:
    """The reference, float64 on the CPU."""

    name = "numpy"
    device = "cpu"
    dtype = "float64"

    def __init__(self, device=None, dtype=None):
        if device not in (None, "cpu"):
            raise ValueError(f"device must be 'cpu' (or None) for the numpy backend, got {device!r}")
        _check_numpy_dtype(dtype)

    def __repr__(self) -> str:
        return "NumpyBackend(device='cpu', dtype='float64')"

    # conversions ---------------------------------------------------------------------------------------------
    def asarray(self, x):
        """An array-like, or a dict / list / Update of them, as float64 ndarrays."""
        if isinstance(x, dict):
            return {k: self.asarray(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], (dict, ref.Update)):
            return type(x)(self.asarray(v) for v in x)
        if isinstance(x, (ref.Update, ref.Trajectory)):
            return x
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], np.ndarray):
            return type(x)(self.asarray(v) for v in x)
        if hasattr(x, "detach"):                                   # a torch tensor
            x = x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=np.float64)

    def to_numpy(self, x):
        return self.asarray(x)

    # the core API: the reference functions -----------------------------------------------------------------
    @staticmethod
    def init_block(cfg, seed: int = 0, **kw):
        return ref.init_block(cfg, seed, **kw)

    @staticmethod
    def init_model(cfg, n_blocks: int, seed: int = 0, **kw):
        return ref.init_model(cfg, n_blocks, seed, **kw)

    attention = staticmethod(ref.attention)
    block = staticmethod(ref.block)
    block_output = staticmethod(ref.block_output)
    implicit_update = staticmethod(ref.implicit_update)
    apply_update = staticmethod(ref.apply_update)
    position_updates = staticmethod(ref.position_updates)
    trajectory = staticmethod(ref.trajectory)
    model_forward = staticmethod(ref.model_forward)
    model_updates = staticmethod(ref.model_updates)
    apply_model_updates = staticmethod(ref.apply_model_updates)

    @staticmethod
    def model_trajectory(model_params, model_cfg, context, query) -> list[ref.Update]:
        """Per block ℓ, the last-token update of the stack run on every prefix ``[c_1..c_i, x]``, i = 0..n,
        stacked: ``u`` (n+1, d_mlp), ``a`` and ``delta_b`` (n+1, d_model). O(n²): re-runs every prefix."""
        context = np.asarray(context, dtype=np.float64)
        query = np.asarray(query, dtype=np.float64)
        if context.ndim != 2 or query.ndim != 1:
            raise ValueError(f"context must have shape (n, d_model) and query (d_model,), got {context.shape}, "
                             f"{query.shape}")
        per_prefix = [ref.model_updates(model_params, model_cfg, np.concatenate([context[:i], query[None]]))
                      for i in range(context.shape[0] + 1)]
        return [ref.Update(u=np.stack([p[l].u for p in per_prefix]), a=np.stack([p[l].a for p in per_prefix]),
                           delta_b=np.stack([p[l].delta_b for p in per_prefix]))
                for l in range(len(per_prefix[0]))]


def make_backend(device=None, dtype=None) -> NumpyBackend:
    """Factory used by ``get_backend("numpy")``."""
    return NumpyBackend(device=device, dtype=dtype)


conformance_targets = [("cpu", "float64")]
