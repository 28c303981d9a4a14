"""The ``numpy`` backend: the float64 reference (``implicit_icl.reference``) behind the Backend interface.

Every method is the reference function of the same name; the backend only adds ``name``, ``device``, ``dtype``,
``asarray`` and ``to_numpy``. ``model_trajectory`` (not in the reference) re-runs ``model_updates`` on every
prefix: the O(n²) oracle that the torch backend's chunked pass is checked against.
"""
from __future__ import annotations

import numpy as np

from implicit_icl import reference as ref
from implicit_icl.reference.blocks import check_context_query, kept_positions
from implicit_icl.reference.model import check_causal_stack, normalise_stack
from implicit_icl.reference.trajectories import FIELDS
from implicit_icl.reference.validation import check_params, from_tensor

UPDATE_FIELDS = ("u", "a", "delta_b")
TRAJECTORY_FIELDS = FIELDS


def _check_numpy_dtype(dtype) -> None:
    if dtype is None:
        return
    try:
        ok = np.dtype(dtype) == np.float64
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"dtype must be 'float64' for the numpy backend (it is the float64 reference), got {dtype!r}")


def _update_like(x) -> bool:
    """An ``Update`` (the one class: NumPy or torch fields) or any object with ``u``, ``a`` and ``delta_b``."""
    return not isinstance(x, np.ndarray) and all(hasattr(x, f) for f in UPDATE_FIELDS)


def _trajectory_like(x) -> bool:
    """Another backend's ``Trajectory``: every field of the reference's (checked before ``_update_like``: a
    trajectory has ``u``, ``a`` and ``delta_b`` too)."""
    return not isinstance(x, np.ndarray) and all(hasattr(x, f) for f in TRAJECTORY_FIELDS)


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
        """An array-like, or a dict / list / Update / Trajectory of them, as float64 ndarrays.

        Another backend's results convert too (torch is never imported here): a tensor through
        ``.detach().cpu()``, an ``Update`` of tensors (or any object with ``u``, ``a``, ``delta_b``) into one of
        float64 arrays, a ``Trajectory`` (any object with the reference ``Trajectory``'s fields) into the
        reference's."""
        if isinstance(x, dict):
            return {k: self.asarray(v) for k, v in x.items()}
        if isinstance(x, ref.Trajectory) and x.is_numpy:
            return x
        if isinstance(x, ref.Trajectory) or _trajectory_like(x):      # the class first: hasattr would form fields
            return ref.Trajectory.of(x, self.asarray, "one context (a torch Trajectory indexes its batch: tr[b]) "
                                                      "or its fields")
        if isinstance(x, ref.Update) and x.is_numpy:
            return x
        if _update_like(x):
            return ref.Update(**{f: self.asarray(getattr(x, f)) for f in UPDATE_FIELDS})
        if isinstance(x, (list, tuple)) and x and (isinstance(x[0], (dict, ref.Update, np.ndarray))
                                                   or _update_like(x[0]) or hasattr(x[0], "detach")):
            return type(x)(self.asarray(v) for v in x)
        return np.asarray(from_tensor(x), dtype=np.float64)      # a torch tensor too (bfloat16: via float64)

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
    position_updates = staticmethod(ref.position_updates)
    trajectory = staticmethod(ref.trajectory)
    model_forward = staticmethod(ref.model_forward)
    model_updates = staticmethod(ref.model_updates)
    model_position_updates = staticmethod(ref.model_position_updates)
    apply_model_updates = staticmethod(ref.apply_model_updates)

    apply_update = staticmethod(ref.apply_update)       # converts another backend's Update itself

    @staticmethod
    def model_trajectory(model_params, model_cfg, context, query) -> list[ref.Update]:
        """Per block ℓ, the last-token update of the stack run on every prefix ``[c_1..c_i, x]``, i = 0..n,
        stacked: ``u`` (n+1, d_mlp), ``a`` and ``delta_b`` (n+1, d_model). O(n²): re-runs every prefix.

        Checked like the torch backend's: the stack (every block's params against its config), then causality
        (every block but the last must be causal: a non-causal block lets later tokens change the context's hidden
        states, so a prefix's dynamics would not be the stack's), then ``context`` (n, d_model) and ``query``
        (d_model,) as the single-block functions check them."""
        blocks, cfgs = normalise_stack(model_params, model_cfg)
        for p, c in zip(blocks, cfgs):
            check_params(p, c)
        check_causal_stack(cfgs)
        context, query = check_context_query(cfgs[0], context, query)
        model_params, model_cfg = blocks, cfgs
        per_prefix = []
        for i in range(context.shape[0] + 1):
            try:
                tokens = np.concatenate([context[:i], query[None]])                    # (i+1, d_model)
                positions = kept_positions(np.arange(i), context.shape[0])             # the query keeps n
                per_prefix.append(ref.model_updates(model_params, model_cfg, tokens, positions))
            except ref.ZeroNormError as exc:                 # say which prefix, as the torch backend does
                raise ref.ZeroNormError(f"prefix {i} (the query after {i} context tokens): {exc}") from None
        return [ref.Update(u=np.stack([p[l].u for p in per_prefix]), a=np.stack([p[l].a for p in per_prefix]),
                           delta_b=np.stack([p[l].delta_b for p in per_prefix]))
                for l in range(len(per_prefix[0]))]


def make_backend(device=None, dtype=None) -> NumpyBackend:
    """Factory used by ``get_backend("numpy")``."""
    return NumpyBackend(device=device, dtype=dtype)


conformance_targets = [("cpu", "float64")]
