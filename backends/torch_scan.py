"""The torch backend's O(n·d) trajectory: one pass over the context in slabs.

For each slab the query's attention over every prefix is a running softmax mean (``torch_softmax_scan``, THEORY
§8.5), its exact increments ``A_i − A_{i−1}`` come with it, and the taps, their exact increments and the Gram norms
of the updates follow position-wise (``torch_increments``). A slab is one call of :func:`slab_step`; what carries
from slab to slab is a :class:`State` of O(d) numbers.

One step, two forms (ours):

- **full** (:func:`slab_step` with ``fast=False``): it rescues the rare rows the one-pass forms cannot be trusted
  on (a chunk whose running max rises by more than ``RISE``; a step whose ``yᵀGy`` under- or overflows) inline,
  testing for them with a host sync each;
- **fast** (``fast=True``): the same operations without a data-dependent branch; it returns a flag instead of
  rescuing. It runs eagerly, or under ``torch.compile`` (``compile=True``: Inductor fuses it into a few kernels, C++
  on the CPU and Triton on a GPU; full slabs only, one shape, compiled once per block config, dtype and device and
  cached for the process).

Every slab takes the fast form and the flags are read once, after the last slab; a flagged slab is then run again
in the full form (:class:`SlabRunner`). So a trajectory costs one host sync, and its numbers are the full form's:
bit for bit eagerly, up to the fused kernels' order of summation when compiled.
"""
from __future__ import annotations

import collections
from typing import NamedTuple

import torch

from implicit_icl.reference.trajectories import Trajectory

from . import torch_compile, torch_ops
from .torch_increments import (  # noqa: F401 (gram_norm, layer_norm_increment re-exported)
    fast_gram_norm, gram_norm, layer_norm_increment, tap_increments)
from .torch_softmax_scan import (  # noqa: F401 (prefix_softmax_scan re-exported)
    fast_prefix_softmax_means, prefix_softmax_means, prefix_softmax_scan)


class State(NamedTuple):
    """What one slab hands the next: the softmax partial sum ``carry = (m, num, den)`` ((...), (..., H, dh), (...)
    per head), the last prefix's per-head mean ``o`` (..., H, dh), attention output ``A`` (..., D) and tap ``a``
    (..., D)."""
    carry: tuple
    o: torch.Tensor
    A: torch.Tensor
    a: torch.Tensor


def _dense(state: State) -> State:
    """The state as fresh contiguous copies (O(d) numbers): the same strides at every slab, so the compiled step is
    compiled once (Dynamo guards on strides and on which arguments alias each other), and no view keeping the last
    slab's tensors alive."""
    return State(tuple(t.clone() for t in state.carry), *(t.clone() for t in state[1:]))


def query_constants(P: dict, cfg, x: torch.Tensor, n: int) -> dict:
    """What every slab needs of the query ``x`` (..., D) at position ``n`` (mask convention,
    ``reference.blocks.kept_positions``: context token j sits at j, the query at n in every prefix): its query heads
    ``q`` (scaled), value ``v_x`` and own logit ``s_x``; for blocks whose logits are linear in the key token (no
    rotary, no q/k norm) ``qk`` (..., H, D) with ``s_j = qk_h·c_j (+ qb_h)``, one (D × H) product per token."""
    at_n = torch.tensor([n], device=x.device)
    xn = torch_ops.attention_input(P, cfg, x)[..., None, :]                         # (..., 1, D)
    q = torch_ops.heads(P, cfg, xn, "q", at_n)[..., 0, :] * cfg.logit_scale         # (..., H, dh)
    s_x = (q * torch_ops.heads(P, cfg, xn, "k", at_n)[..., 0, :]).sum(-1)          # (..., H)
    Q = {"at_n": at_n, "q": q, "v_x": torch_ops.heads(P, cfg, xn, "v")[..., 0, :],
         "s_x": torch_ops.softcap(s_x, cfg.attn_softcap)}
    if not (cfg.rotary or cfg.qk_norm):
        W_k = torch_ops.repeat_kv(cfg, P["attn.W_k"].reshape(cfg.kv_heads, cfg.head_dim, cfg.d_model), 0)  # (H, dh, D)
        Q["qk"] = (q[..., :, :, None] * W_k).sum(-2)                                # (..., H, D)
        if "attn.b_k" in P:
            Q["qb"] = (q * torch_ops.repeat_kv(cfg, P["attn.b_k"].reshape(cfg.kv_heads, cfg.head_dim), 0)).sum(-1)
    return Q


def start_state(Q: dict, A0: torch.Tensor, a0: torch.Tensor) -> State:
    """The state before the first context token: the query alone, whose mean is its own value ``v_x``."""
    state = State((Q["s_x"], Q["v_x"], torch.ones_like(Q["s_x"])), Q["v_x"], A0, a0)
    return _dense(state)                                                   # copies: no aliases, see _dense


def alone_output(P: dict, cfg, Q: dict) -> torch.Tensor:
    """``A_0``: the query's attention output with no context, ``W_o v_x + b_o`` (..., D)."""
    return torch_ops.merge_heads(P, cfg, Q["v_x"][..., None, :])[..., 0, :]


def slab_attention(P: dict, cfg, Q: dict, C: torch.Tensor, pos: torch.Tensor, state: State, fast: bool):
    """The query's attention output over the prefixes ending at each token of the slab ``C`` (..., S, D) (at
    positions ``pos`` (S,)) and its exact increments: ``(A, dA, carry, o_last, flag)``, ``A`` and ``dA``
    (..., S, D); ``flag`` is ``fast_prefix_softmax_means``' rescue flag (``None`` when not ``fast``)."""
    C = torch_ops.attention_input(P, cfg, C)                                        # (..., S, D)
    if "qk" in Q:
        s = (C @ Q["qk"].transpose(-1, -2)).transpose(-1, -2)                       # (..., H, S) logits
        s = s + Q["qb"][..., None] if "qb" in Q else s
    else:
        s = (Q["q"][..., :, None, :] * torch_ops.heads(P, cfg, C, "k", pos)).sum(-1)  # (..., H, S)
    s = torch_ops.softcap(s, cfg.attn_softcap)                                      # Gemma 2's capped logits
    seen = torch_ops.visible(cfg, Q["at_n"], pos, causal=True)                      # a sliding window: n − j < w
    if seen is not None:
        s = torch.where(seen[0], s, -torch.inf)
    v = torch_ops.heads(P, cfg, C, "v")                                             # (..., H, S, dh)
    if fast:
        o, p, carry, flag = fast_prefix_softmax_means(s, v, state.carry)           # (..., H, S, dh), (..., H, S)
    else:
        (o, p, carry), flag = prefix_softmax_means(s, v, state.carry), None
    o_before = torch.cat([state.o[..., None, :], o[..., :-1, :]], -2)              # o_{i−1}
    inc = p[..., None] * (v - o_before)                                             # o_i − o_{i−1}, exact form
    A, dA = torch_ops.merge_heads(P, cfg, o), torch_ops.merge_heads(P, cfg, inc, bias=False)
    return A, dA, carry, o[..., -1, :], flag


def slab_step(P: dict, Q: dict, x: torch.Tensor, a0: torch.Tensor, r0: torch.Tensor, G: torch.Tensor,
              C: torch.Tensor, pos: torch.Tensor, state: State, *, cfg, keep: bool, fast: bool):
    """One slab of the trajectory: ``(state, fields, flag)``. ``fields`` are the slab's ``‖u_i‖`` (..., S) (the
    ``u`` of ``δ_i = a_i − a_0``, by the Gram matrix ``G``), ``‖u_i − u_{i−1}‖`` (..., S), the loss
    ``tr(Δ_iᵀ W_i) = −stepᵀ G a_{i−1}`` (..., S), and with ``keep`` also ``δ_i``, ``r_i − r_0`` and the steps
    (..., S, D). ``flag`` (``fast`` only) is a 0-d bool tensor: true when some row needs a rescue the fast forms
    skip, and then the slab must be run again with ``fast=False``."""
    A, dA, carry, o_last, flag = slab_attention(P, cfg, Q, C.to(x.dtype), pos, state, fast)
    a, r = torch_ops.taps_from_attention(P, cfg, x[..., None, :].expand_as(A), A)   # (..., S, D)
    if cfg.kind == "parallel":             # a = N2(x) never reads the context: δ_i = 0 exactly, in any summation order
        a = a0[..., None, :].expand_as(a)
    da = tap_increments(P, cfg, x, A, dA, state.A)                                  # a_i − a_{i−1}, (..., S, D)
    d = a - a0[..., None, :]                                                        # δ_i
    if fast:
        (dW_n, _, f_d), (step_n, daG, f_da) = fast_gram_norm(d, G), fast_gram_norm(da, G)
        flag = flag | f_d | f_da
    else:
        (dW_n, _), (step_n, daG) = gram_norm(d, G), gram_norm(da, G)
    a_before = torch.cat([state.a[..., None, :], a[..., :-1, :]], -2)              # a_{i−1}
    fields = (dW_n, step_n, -(daG * a_before).sum(-1))
    if keep:
        fields += (d, r - r0[..., None, :], da)
    return _dense(State(carry, o_last, A[..., -1, :], a[..., -1, :])), fields, flag


def prefix_attention_scan(P: dict, cfg, x: torch.Tensor, context: torch.Tensor, slab: int):
    """Generator: first the query-alone attention output ``A_0`` (..., D), then for each slab of the context
    ``(s0, A, dA)``: the query's attention output over the prefixes ``s0+1 .. s0+S`` (..., S, D) and its exact
    increments ``A_i − A_{i−1}`` (..., S, D). O(n·d) time, O(slab·d) working memory (eager)."""
    Q = query_constants(P, cfg, x, context.shape[-2])
    A0 = alone_output(P, cfg, Q)
    yield A0
    state = start_state(Q, A0, A0)
    for s0 in range(0, context.shape[-2], slab):
        C = context[..., s0:s0 + slab, :].to(x.dtype)
        A, dA, carry, o_last, _ = slab_attention(P, cfg, Q, C, _positions(s0, C), state, fast=False)
        state = State(carry, o_last, A[..., -1, :], state.a)
        yield s0, A, dA


def _positions(s0: int, C: torch.Tensor) -> torch.Tensor:
    return torch.arange(s0, s0 + C.shape[-2], device=C.device)


SLABS: collections.Counter = collections.Counter()
"""Slabs run since import: ``"compiled"`` (the compiled step's numbers kept), ``"rescued"`` (flagged by the compiled
step and run again eagerly), ``"eager"`` (no compiled step: a short last slab, compile off, unavailable or failed).
What the bench and the tests read to know which path really ran."""


def step_key(cfg, keep: bool) -> tuple:
    """The key of a block's compiled step in ``torch_compile`` (its cache and ``FAILED``)."""
    return ("scan", cfg, keep)


class Saved:
    """The state each slab of one trajectory starts from and its flag, kept for the flagged slabs' re-run, in
    buffers allocated once (``(slabs, …)`` per state tensor): keeping each slab's own small tensors instead
    interleaves long-lived small blocks with the slabs' large temporaries on the C heap, which then cannot reuse
    them, and a 1M-token trajectory's resident memory grew by up to 0.75 GB in some runs (measured; ours)."""

    def __init__(self, state: State, slabs: int):
        flat = self._flat(state)
        self.buffers = [torch.empty(slabs, *t.shape, dtype=t.dtype, device=t.device) for t in flat]
        self.flags = torch.zeros(slabs, dtype=torch.bool, device=flat[0].device)

    @staticmethod
    def _flat(state: State) -> list[torch.Tensor]:
        return [*state.carry, *state[1:]]

    def put(self, i: int, state: State) -> None:
        for buffer, t in zip(self.buffers, self._flat(state)):
            buffer[i].copy_(t)

    def get(self, i: int) -> State:
        flat = [buffer[i] for buffer in self.buffers]
        return State(tuple(flat[:3]), *flat[3:])


class SlabRunner:
    """Runs the slabs of one trajectory and writes their fields into ``outs`` (views of the O(n) and, with ``keep``,
    O(n·d) outputs), from ``args = (P, Q, x, a0, r0, G)``.

    Every slab first takes the fast step (:func:`slab_step` with ``fast=True``): through ``compiled`` (the compiled
    step) where there is one and the slab is full, else as it is, eagerly. Neither reads anything back: each slab's
    flag is kept with the state it started from (O(d) numbers) and all flags are read once, after the last slab
    (**one host sync per trajectory**). A flagged slab is then run again by the full eager step from its saved state
    and only its fields are rewritten: a flag never makes the state it hands on wrong (the carry is formed from the
    chunks' totals, and the last row of every chunk is shifted by its own running max, so it is exact), so the
    slabs after it stand. Unflagged slabs are the full eager step's numbers too, bit for bit when not compiled: the
    fast step is the same operations without the rescue branches."""

    def __init__(self, cfg, keep: bool, context: torch.Tensor, slab: int, args: tuple, outs: list, compiled: bool):
        self.cfg, self.keep, self.context, self.slab, self.args, self.outs = cfg, keep, context, slab, args, outs
        self.compiled = compiled
        self.scalar_dim = outs[0].dim()

    def run(self, state: State) -> None:
        starts = range(0, self.context.shape[-2], self.slab)
        if not starts:
            return
        saved = Saved(state, len(starts))                  # every slab's starting state and flag, in one buffer each
        paths = []
        for i, s0 in enumerate(starts):
            C = self.context[..., s0:s0 + self.slab, :]
            saved.put(i, state)
            (new_state, fields, flag), path = self._fast(s0, C, state)
            saved.flags[i] = flag
            paths.append(path)
            state = self._write(s0, new_state, fields)
        for i, (s0, path, flagged) in enumerate(zip(starts, paths, saved.flags.tolist())):   # the one host sync
            SLABS["rescued" if flagged else path] += 1
            if flagged:                                                          # its fields, from the full eager step
                self._write(s0, *self._eager(s0, saved.get(i)))

    def _fast(self, s0: int, C: torch.Tensor, state: State):
        """``((state, fields, flag), path)`` of the fast step on the slab ``C`` at ``s0``: a full slab compiled
        where ``compiled`` (``torch_compile.try_compiled``: one graph, static shapes, per block config and ``keep``;
        a compile failure marks the block eager for the process), else eagerly."""
        static = {"cfg": self.cfg, "keep": self.keep, "fast": True}
        if self.compiled and C.shape[-2] == self.slab:
            out = torch_compile.try_compiled(step_key(self.cfg, self.keep), slab_step, static, C.device, *self.args,
                                             C.contiguous(), _positions(s0, C), state,
                                             what="this block's trajectory", dynamic=False)
            if out is not None:
                return out, "compiled"
            self.compiled = False
        return slab_step(*self.args, C, _positions(s0, C), state, **static), "eager"

    def _eager(self, s0: int, state: State):
        C = self.context[..., s0:s0 + self.slab, :]
        return slab_step(*self.args, C, _positions(s0, C), state, cfg=self.cfg, keep=self.keep, fast=False)[:2]

    def _write(self, s0: int, state: State, fields) -> State:
        S = fields[0].shape[-1]                                                  # fields[0] is ‖u_i‖, (..., S)
        for out, f in zip(self.outs, fields):                                    # scalars (..., S), vectors (..., S, D)
            out.narrow(-1 if f.dim() == self.scalar_dim else -2, s0, S).copy_(f)
        return state


def scan_trajectory(P0: dict, cfg, context: torch.Tensor, query: torch.Tensor, slab: int, acc: torch.dtype,
                    checks, keep: bool = False, compiled: bool = False) -> Trajectory:
    """The torch backend's ``trajectory`` on checked inputs (``P0`` params, ``context`` (..., n, D), ``query``
    (..., D) in the output dtype), slab by slab (:func:`slab_step`; ``compiled``: full slabs compiled,
    :class:`SlabRunner`). ``acc`` is the dtype the scan accumulates in; ``checks`` (``torch_checks.Checks``)
    raises on a zero ``‖a‖²`` or an overflow. With ``keep`` the per-prefix vectors (``delta``, ``delta_b``,
    ``steps``) are written as the scan goes; without, the Trajectory forms them by scanning again when one is first
    read, so a caller that reads the norms alone holds O(n) numbers, not O(n·d)."""
    out_dtype = query.dtype
    P = {k: v.to(acc) for k, v in P0.items()}
    x = query.to(acc)                                                            # (..., D)
    batch, n, D = x.shape[:-1], context.shape[-2], cfg.d_model
    Q = query_constants(P, cfg, x, n)
    A0 = alone_output(P, cfg, Q)                                                 # (..., D): the query alone
    a0, r0 = torch_ops.taps_from_attention(P, cfg, x, A0)
    checks.norm(a0, cfg, "the query")
    W0 = P["mlp.W"]
    G = W0.T @ W0                                                                # (D, D) Gram matrix
    # the O(n) fields (entry 0 of ‖u‖ is the query alone: exactly 0), and with keep the per-prefix vectors
    dW_n = torch.zeros(*batch, n + 1, dtype=acc, device=x.device)
    step_n, loss = (torch.empty(*batch, n, dtype=acc, device=x.device) for _ in range(2))
    outs = [dW_n[..., 1:], step_n, loss]
    if keep:
        delta, delta_b = (torch.zeros(*batch, n + 1, D, dtype=out_dtype, device=x.device) for _ in range(2))
        steps = torch.empty(*batch, n, D, dtype=out_dtype, device=x.device)
        outs += [delta[..., 1:, :], delta_b[..., 1:, :], steps]
    state = start_state(Q, A0, a0)
    SlabRunner(cfg, keep, context, slab, (P, Q, x, a0, r0, G), outs, compiled).run(state)   # one host sync
    out = _norm_fields(dW_n, step_n, loss, a0, r0, (a0 * a0).sum(-1), out_dtype)
    relative_change = out.pop("relative_change")
    # in the output dtype (float16 overflows at 65504); relative_change is nan at i = 0 by definition
    checks.finite("trajectory", **out, **({"delta_b": delta_b} if keep else {}))
    if keep:
        kept, rescan = {"delta": delta, "delta_b": delta_b, "steps": steps}, None
    else:
        kept = {}
        rescan = lambda: scan_trajectory(P0, cfg, context, query, slab, acc, checks, keep=True,  # noqa: E731
                                         compiled=compiled).kept
    return Trajectory(W0=P0["mlp.W"], relative_change=relative_change, params=P0, cfg=cfg, kept=kept,
                      rescan=rescan, ops=torch_ops.OPS, **out)


def _norm_fields(dW_n, step_n, loss, a0, r0, a_norm_sq, out_dtype) -> dict:
    """The Trajectory's O(n) fields, in the output dtype, from the scan's ``‖u_i‖`` and ``‖u_{i+1} − u_i‖``:
    ``‖ΔW_i‖ = ‖u_i‖/‖a‖``, the step norms, ``relative_change`` (nan where ``ΔW_i = 0``), ``‖Δ_i‖_F = ‖grad_u_i‖ ‖a‖``
    and ``h = 1/‖a‖²``."""
    a_norm = torch.sqrt(a_norm_sq)
    delta_W_norm = dW_n / a_norm[..., None]
    step_norm = step_n / a_norm[..., None]
    prev = delta_W_norm[..., :-1]
    relative_change = torch.where(prev > 0, step_norm / torch.where(prev > 0, prev, 1), torch.nan)
    grad_norm = step_norm * a_norm_sq[..., None]                                 # ‖Δ_i‖_F = ‖grad_u_i‖ ‖a‖
    fields = {"a": a0, "r": r0, "delta_W_norm": delta_W_norm, "step_norm": step_norm, "loss": loss,
              "grad_norm": grad_norm, "h": 1.0 / a_norm_sq, "relative_change": relative_change}
    return {k: v.to(out_dtype) for k, v in fields.items()}
