"""The one ``Trajectory`` of every backend: everything about the prefixes ``i = 0..n`` of a context for one query.

Shapes (n = context length, D = d_model, M = the rows of W; leading batch dimensions on the torch backend):

- ``a`` (D,): the tap of the query alone; every ``ΔW_i`` has it as right factor; ``r`` (D,): its residual tap.
- ``delta`` (n+1, D): ``a_i − a``, where ``a_i`` is the tap with the first i context tokens.
- ``u`` (n+1, M): ``W_0 delta_i``, so ``ΔW_i = u_i aᵀ/‖a‖²``; ``delta_b`` (n+1, D): ``r_i − r``.
- ``steps`` (n, D): ``a_{i+1} − a_i``, the right-hand side of every step ``ΔW_{i+1} − ΔW_i = W_0 steps_i aᵀ/‖a‖²``.
- ``delta_W_norm`` (n+1,): ``‖ΔW_i‖_F = ‖u_i‖/‖a‖``.
- ``step_norm`` (n,): ``‖ΔW_{i+1} − ΔW_i‖ = ‖u_{i+1} − u_i‖/‖a‖`` (any matrix norm: the step is rank 1).
- ``relative_change`` (n,): ``step_norm_i / ‖ΔW_i‖``; ``nan`` where ``ΔW_i = 0`` (always at i = 0).
- ``h``: the step size ``1/‖a‖²``.
- ``grad_u`` (n, M): ``Δ_i = grad_u_i aᵀ`` is the gradient of ``L_i``, i.e. ``grad_u_i = u_i − u_{i+1}``.
- ``loss`` (n,): ``L_i(W_i) = tr(Δ_iᵀ W_i)``; ``grad_norm`` (n,): ``‖Δ_i‖_F``.
- ``pred_context`` (n+1, D): ``T_{W_0}(c_1..c_i, x)``; ``pred_update`` (n+1, D): ``T_{W_i}(x)``.

The O(n) numbers are fields. The per-prefix arrays are *kept* (the reference forms them all, the float64 ground
truth, ``pred_update`` through the formed matrix ``W_i``) or formed when first read: ``delta``, ``delta_b`` and
``steps`` by ``rescan`` (a second O(n·d) scan of the torch backend, which holds O(n) numbers until then), and
``u``, ``grad_u`` and both predictions from them, in slabs, with the operations NumPy arrays and torch tensors share
and the layer functions of ``ops`` (``reference.layers`` or ``backends.torch_ops``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from . import kinds
from . import layers as numpy_ops
from .config import BlockConfig
from .update import Update

SLAB = 1 << 13          # prefixes per slab when a per-prefix field is formed (bounds its temporaries)
PER_PREFIX = ("delta", "delta_b", "steps")                     # what a rescan forms
FORMED = ("u", "grad_u", "pred_context", "pred_update")       # formed from them
# the fields that carry the batch dimensions in front (W0, params and cfg are shared)
BATCHED = ("a", "r", "delta_W_norm", "step_norm", "relative_change", "h", "loss", "grad_norm")
# what another backend's trajectory must have for ``of`` (duck-typed: nothing of that backend is imported)
FIELDS = ("W0", "a", "delta", "u", "delta_b", "delta_W_norm", "step_norm", "relative_change", "h", "grad_u", "loss",
          "grad_norm", "pred_context", "pred_update")


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Everything about the prefixes ``i = 0..n`` of a context for one fixed query, kept factored (module doc)."""

    W0: Any
    a: Any
    r: Any
    delta_W_norm: Any
    step_norm: Any
    relative_change: Any
    h: Any
    loss: Any
    grad_norm: Any
    params: dict = field(repr=False, default=None)
    cfg: BlockConfig | None = None
    kept: dict = field(repr=False, default_factory=dict)
    rescan: Any = field(repr=False, default=None)
    ops: Any = field(repr=False, default=numpy_ops)

    @classmethod
    def of(cls, x, convert, how: str) -> "Trajectory":
        """A trajectory of *one* context (this class on another backend, or any object with ``FIELDS``) as a NumPy
        one, each field through ``convert`` (to float64 NumPy), every per-prefix field formed. A batched one (``a``
        of more than one axis) would be read as one context with the batch as its prefixes: refused, ``how`` saying
        what to convert instead."""
        a = convert(x.a)
        if np.ndim(a) > 1:
            raise ValueError(f"x is a batched Trajectory (batch shape {tuple(np.shape(a))[:-1]}); the reference's "
                             f"Trajectory holds one context (its axis 0 is the prefix): convert {how}")
        h = convert(x.h)
        params = getattr(x, "params", None)
        return cls(W0=convert(x.W0), a=a, r=convert(x.r) if hasattr(x, "r") else None, h=float(h) if np.ndim(h) == 0
                   else h, **{f: convert(getattr(x, f)) for f in BATCHED if f not in ("a", "r", "h")},
                   params=None if params is None else {k: convert(v) for k, v in params.items()},
                   cfg=getattr(x, "cfg", None),
                   kept={f: convert(getattr(x, f)) for f in PER_PREFIX + FORMED if hasattr(x, f)})

    @property
    def is_numpy(self) -> bool:
        """Every per-prefix field formed, in NumPy: the reference's own form, which conversions pass through."""
        return self.ops is numpy_ops and all(f in self.kept for f in PER_PREFIX + FORMED)

    def _field(self, name: str):
        if name in self.kept:
            return self.kept[name]
        if name in PER_PREFIX:
            return self._rescanned[name]
        return self._formed(name)

    @cached_property
    def _rescanned(self) -> dict:
        if self.rescan is None:
            raise AttributeError("this Trajectory keeps no per-prefix vectors and has no scan to form them")
        return self.rescan()

    delta = property(lambda self: self._field("delta"), doc="``a_i − a`` (..., n+1, D).")
    delta_b = property(lambda self: self._field("delta_b"), doc="``r_i − r`` (..., n+1, D): each prefix's Δb.")
    steps = property(lambda self: self._field("steps"), doc="``a_{i+1} − a_i`` (..., n, D), without cancellation.")
    u = property(lambda self: self._field("u"), doc="``u_i = W_0 δ_i`` (..., n+1, M).")
    grad_u = property(lambda self: self._field("grad_u"), doc="``grad_u_i = −W_0 steps_i`` (..., n, M).")
    pred_context = property(lambda self: self._field("pred_context"), doc="``T_{W_0}(c_1..c_i, x)`` (..., n+1, D).")
    pred_update = property(lambda self: self._field("pred_update"), doc="``T_{W_i}(x)`` (..., n+1, D).")

    def _formed(self, name: str):
        cache = self.__dict__.setdefault("_formed_cache", {})
        if name not in cache:
            cache[name] = getattr(self, f"_form_{name}")()
        return cache[name]

    def _form_u(self):
        return self.delta @ self.W0.T

    def _form_grad_u(self):
        return -(self.steps @ self.W0.T)

    def _slabbed(self, fn):
        n1 = self.n + 1
        return self.ops.cat([fn(s, min(s + SLAB, n1)) for s in range(0, n1, SLAB)], -2)

    def _form_pred_context(self):
        """The head on every prefix's taps ``(a + δ_i, r + Δb_i)``."""
        P, cfg, ops = self.params, self.cfg, self.ops
        return self._slabbed(lambda s, e: kinds.head(
            P, cfg, self.a[..., None, :] + self.delta[..., s:e, :], self.r[..., None, :] + self.delta_b[..., s:e, :],
            ops))

    def _form_pred_update(self):
        """The query alone through ``W_i = W_0 + ΔW_i`` and the bias ``+ Δb_i`` (``kinds.mlp_branch``):
        ``W_i a = W_0 a + u_i`` (``ΔW_i a = u_i aᵀa/‖a‖² = u_i``), so no ``(M, D)`` matrix per prefix is formed."""
        P, cfg, ops = self.params, self.cfg, self.ops

        def slab(s, e):
            pre = (self.a @ self.W0.T)[..., None, :] + self.delta[..., s:e, :] @ self.W0.T + P["mlp.b"]  # (..., S, M)
            m = ops.mlp_from_pre(P, cfg, pre, P["mlp.b_out"])                                        # (..., S, D)
            out = self.r[..., None, :] + kinds.mlp_branch(P, cfg, m, ops, self.delta_b[..., s:e, :])
            return kinds.finish(P, cfg, out, ops)
        return self._slabbed(slab)

    @property
    def n(self) -> int:
        """Context length (the number of steps)."""
        return self.delta_W_norm.shape[-1] - 1

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading batch dimensions, ``()`` for one context."""
        return tuple(self.a.shape[:-1])

    def __getitem__(self, index) -> "Trajectory":
        """One context (or a sub-batch) of a batched trajectory: ``tr[1]``, ``tr[0, 2]``, ``tr[1:3]``. Indexes the
        batch dimensions only; a prefix is ``update(i)``."""
        if not self.batch_shape:
            raise IndexError("this Trajectory holds one context (no batch dimensions); a prefix is update(i)")
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > len(self.batch_shape) or any(i is Ellipsis or i is None for i in idx):
            raise IndexError(f"index must address the batch dimensions {self.batch_shape} only, got {index!r}")
        kept = {k: v[idx] for k, v in self.kept.items()}
        rescan = None if self.rescan is None else (lambda: {k: v[idx] for k, v in self._rescanned.items()})
        return replace(self, kept=kept, rescan=rescan, **{f: getattr(self, f)[idx] for f in BATCHED})

    def update(self, i: int) -> Update:
        """The update that absorbs the first ``i`` context tokens."""
        u = self.kept["u"][..., i, :] if "u" in self.kept else self.delta[..., i, :] @ self.W0.T
        return Update(u=u, a=self.a, delta_b=self.delta_b[..., i, :])

    def delta_W(self, i: int):
        """``ΔW_i`` as a matrix ``(..., M, D)``."""
        return self.update(i).delta_W

    def W(self, i: int):
        """``W_i = W_0 + ΔW_i`` as a matrix ``(..., M, D)``."""
        return self.W0 + self.delta_W(i)

    def gradient(self, i: int):
        """``Δ_i = ∇_W L_i`` as a matrix ``(..., M, D)`` (P1 Prop. 3.1); ``W_{i+1} = W_i − h Δ_i``."""
        g = self.kept["grad_u"][..., i, :] if "grad_u" in self.kept else -(self.steps[..., i, :] @ self.W0.T)
        return g[..., :, None] * self.a[..., None, :]

    @property
    def prediction_error(self):
        """``max |pred_context_i − pred_update_i|`` per prefix: round-off, by the theorem."""
        return self.ops.amax(abs(self.pred_context - self.pred_update), -1)
