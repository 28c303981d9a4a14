"""The torch backend's ``Trajectory``: the reference's fields and methods, with the large ones formed lazily.

The reference's ``Trajectory`` stores ``u`` ``(n+1, d_mlp)`` and both predictions; a million-token trajectory on a
GPU cannot, so this one stores ``O(n·d_model)`` numbers (the factors' right-hand side ``delta``, the ``steps``) and
forms ``u``, ``grad_u``, ``pred_context`` and ``pred_update`` on first access, in slabs. Its updates are the one
``Update`` class of every backend (``reference.update``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from implicit_icl.reference import kinds
from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.update import Update

from . import torch_ops

SLAB = 1 << 13          # prefixes per slab when the lazy fields are formed (bounds their temporaries)

# the fields of a Trajectory that carry the batch dimensions in front (W0, params and cfg are shared)
BATCHED_FIELDS = ("a", "delta_W_norm", "step_norm", "relative_change", "h", "loss", "grad_norm", "r")
PER_PREFIX = ("delta", "delta_b", "steps")      # the (..., n(+1), D) fields: kept, or formed by a second scan


@dataclass(frozen=True)
class Trajectory:
    """The reference's ``Trajectory`` (same fields and methods) with its large fields formed only when read.

    The norms, losses and step sizes (``O(n)`` numbers) are stored. The per-prefix vectors ``delta``, ``delta_b``
    and ``steps`` (``O(n·d_model)``: 256 MB each at a million tokens in float32) are either kept by the scan
    (``kept``) or formed by running the scan again on first access (``rescan``); ``u``, ``grad_u``,
    ``pred_context`` and ``pred_update`` are formed from them (``u_i = W_0 δ_i``), in slabs.

    Extra fields: ``steps`` (..., n, D) = ``a_{i+1} − a_i`` computed without cancellation (the right factor of
    every step, ``ΔW_{i+1} − ΔW_i = W_0 steps_i aᵀ/‖a‖²``) and ``r`` (..., D), the residual tap of the query alone.
    """

    W0: torch.Tensor
    a: torch.Tensor
    delta_W_norm: torch.Tensor
    step_norm: torch.Tensor
    relative_change: torch.Tensor
    h: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor
    r: torch.Tensor
    params: dict = field(repr=False, default=None)
    cfg: BlockConfig | None = None
    kept: dict | None = field(repr=False, default=None)
    rescan: object = field(repr=False, default=None)

    @cached_property
    def _per_prefix(self) -> dict:
        return self.kept if self.kept is not None else self.rescan()

    @property
    def delta(self) -> torch.Tensor:
        """``a_i − a`` (..., n+1, D): the right-hand side of every ``u_i = W_0 δ_i``."""
        return self._per_prefix["delta"]

    @property
    def delta_b(self) -> torch.Tensor:
        """``r_i − r`` (..., n+1, D): the bias update of every prefix."""
        return self._per_prefix["delta_b"]

    @property
    def steps(self) -> torch.Tensor:
        """``a_{i+1} − a_i`` (..., n, D), without cancellation."""
        return self._per_prefix["steps"]

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
        kept = {k: v[idx] for k, v in self.kept.items()} if self.kept is not None else None
        rescan = None if kept is not None else (lambda: {k: v[idx] for k, v in self._per_prefix.items()})
        return replace(self, kept=kept, rescan=rescan, **{f: getattr(self, f)[idx] for f in BATCHED_FIELDS})

    @cached_property
    def u(self) -> torch.Tensor:
        """``u_i = W_0 δ_i``, (..., n+1, d_mlp): formed on first access."""
        return self.delta @ self.W0.T

    @cached_property
    def grad_u(self) -> torch.Tensor:
        """``grad_u_i = u_i − u_{i+1} = −W_0 (a_{i+1} − a_i)``, (..., n, d_mlp): ``Δ_i = grad_u_i aᵀ``."""
        return -(self.steps @ self.W0.T)

    def update(self, i: int) -> Update:
        """The update that absorbs the first ``i`` context tokens."""
        return Update(u=self.delta[..., i, :] @ self.W0.T, a=self.a, delta_b=self.delta_b[..., i, :])

    def delta_W(self, i: int) -> torch.Tensor:
        """``ΔW_i`` as a matrix ``(..., M, D)``."""
        return self.update(i).delta_W

    def W(self, i: int) -> torch.Tensor:
        """``W_i = W_0 + ΔW_i``."""
        return self.W0 + self.delta_W(i)

    def gradient(self, i: int) -> torch.Tensor:
        """``Δ_i = ∇_W L_i`` as a matrix (P1 Prop. 3.1); ``W_{i+1} = W_i − h Δ_i``."""
        g = -(self.steps[..., i, :] @ self.W0.T)
        return g[..., :, None] * self.a[..., None, :]

    def _slabbed(self, fn) -> torch.Tensor:
        n1 = self.n + 1
        return torch.cat([fn(s, min(s + SLAB, n1)) for s in range(0, n1, SLAB)], dim=-2)

    @cached_property
    def pred_context(self) -> torch.Tensor:
        """``T_{W_0}(c_1..c_i, x)`` (..., n+1, D): the head applied to every prefix's taps ``(a + δ_i, r + Δb_i)``."""
        P, cfg = self.params, self.cfg
        return self._slabbed(lambda s, e: torch_ops.head(
            P, cfg, self.a[..., None, :] + self.delta[..., s:e, :], self.r[..., None, :] + self.delta_b[..., s:e, :]))

    @cached_property
    def pred_update(self) -> torch.Tensor:
        """``T_{W_i}(x)`` (..., n+1, D): the query alone through ``W_i = W_0 + ΔW_i`` and the bias ``+ Δb_i`` (on
        ``mlp.b_out``, or after the post-MLP norm: ``kinds.mlp_branch``).

        ``W_i a = W_0 a + u_i`` (``ΔW_i a = u_i aᵀa/‖a‖² = u_i``), so no ``(M, D)`` matrix per prefix is formed.
        """
        P, cfg = self.params, self.cfg

        def slab(s, e):
            pre = (self.a @ self.W0.T)[..., None, :] + self.delta[..., s:e, :] @ self.W0.T + P["mlp.b"]  # (..., S, d_in)
            m = torch_ops.mlp_from_pre(P, cfg, pre, P["mlp.b_out"])                                  # (..., S, D)
            out = self.r[..., None, :] + kinds.mlp_branch(P, cfg, m, torch_ops.OPS, self.delta_b[..., s:e, :])
            return kinds.finish(P, cfg, out, torch_ops.OPS)                                           # (..., S, D)
        return self._slabbed(slab)

    @property
    def prediction_error(self) -> torch.Tensor:
        """``max |pred_context_i − pred_update_i|`` per prefix: round-off, by the theorem."""
        return (self.pred_context - self.pred_update).abs().amax(-1)
