"""The ``torch`` backend: the core API on PyTorch tensors (cpu, cuda, mps; float64, float32, bfloat16).

Every function accepts any leading batch dimensions on ``context``, ``query`` and ``Z`` and returns tensors on the
backend's device and dtype. Params may be NumPy arrays (a reference params dict) or tensors; they are checked like
the reference (the same checks and messages: ``torch_checks``) and converted.

This class is thin: the block's pieces are ``torch_ops`` (the kinds themselves are ``reference.kinds``, shared with
the reference), the update is the reference's one formula ``update_from_taps`` and its one ``Update`` class, the
O(n·d) trajectory is the scan of ``torch_scan`` (one pass over the context in slabs, running-max softmax) and its
``Trajectory`` is the reference's one class (``reference.trajectories``: its per-prefix vectors formed when
read); a stack's prefix dynamics are ``torch_stack`` (one chunked causal
attention pass per block, O(n²·d) time, O(n·d) memory).
"""
from __future__ import annotations

import numpy as np
import torch

from implicit_icl import reference as ref
from implicit_icl.reference.checks import check_bool, check_int
from implicit_icl.reference.blocks import check_positions, kept_positions
from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.model import check_causal_stack, normalise_stack
from implicit_icl.reference.update import (
    Update, bias_key, check_positions_input, check_single_update, update_from_taps)
from implicit_icl.reference.validation import check_remove

from . import torch_compile, torch_ops
from .torch_checks import (  # noqa: F401 (DTYPES, resolve_* re-exported)
    DTYPES, CheckedParams, Checks, dtype_name, resolve_device, resolve_dtype, synced)
from implicit_icl.reference.trajectories import Trajectory
from .torch_updates import block_forward, position_update_tensors, position_updates_of, update_check
from .torch_scan import (  # noqa: F401 (layer_norm_increment re-exported)
    layer_norm_increment, prefix_attention_scan, scan_trajectory)
from .torch_stack import ELEMENTS, prefix_updates

SLAB = 1 << 12          # context tokens per slab of the trajectory scan on CPU: a (slab, 64) float32 temporary is 1 MB,
                        # near a core's L2 (2 MB here); 8–14 % faster than 8,192 at 64k and 1M tokens (measured)
SLAB_GPU = 1 << 18      # … on GPUs, where fewer, larger kernels win


def slab_for(device) -> int:
    """The trajectory's default slab on ``device``: ``SLAB`` on the CPU, ``SLAB_GPU`` elsewhere."""
    return SLAB if torch.device(device).type == "cpu" else SLAB_GPU


class TorchBackend:
    """The core API in PyTorch on ``device`` with ``dtype`` (default cpu, float32)."""

    name = "torch"

    def __init__(self, device=None, dtype=None, compile: bool = False):
        # compiled hot paths (block, position_updates, the stack's, the trajectory's default): see _compiles()
        self.compile = check_bool("compile", compile)
        self.torch_device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype)
        # the scan's logits, exponentials and sums run in at least float32 (as fused attention kernels do);
        # bfloat16/float16 inputs and outputs keep their dtype
        self.acc_dtype = torch.float32 if self.torch_dtype in (torch.bfloat16, torch.float16) else self.torch_dtype
        if self.torch_device.type == "mps" and self.torch_dtype == torch.float64:
            raise ValueError("dtype must be float32 or bfloat16 on device 'mps' (MPS has no float64), got float64")
        self._slab = slab_for(self.torch_device)
        self.check = Checks(self.torch_device, self.torch_dtype)

    @property
    def device(self) -> str:
        return str(self.torch_device)

    @property
    def dtype(self) -> str:
        return dtype_name(self.torch_dtype)

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device!r}, dtype={self.dtype!r}{', compile=True' if self.compile else ''})"

    @property
    def path(self) -> str:
        """Which path the hot calls take: ``"compiled"`` or ``"eager"`` (``torch_compile``; the trajectory's
        default, ``torch_scan``)."""
        return "compiled" if self.compile and torch_compile.compile_available(self.torch_device) else "eager"

    def _compiles(self, *tensors) -> bool:
        """Whether ``block``, ``position_updates`` and the stack's calls run compiled (``torch_compile``): with
        ``compile=True``, where compiled code can run, and when autograd need not differentiate through them (the
        compiled forms are for inference: a graph that keeps gradients is a different graph, and rarely worth it)."""
        return self.path == "compiled" and not torch_ops.needs_grad(*tensors)

    def _forward(self, P, cfg, Z) -> torch.Tensor:
        """``torch_ops.block`` on checked inputs, compiled where :meth:`_compiles` (one graph per block config)."""
        if not self._compiles(Z, *P.values()):
            return torch_ops.block(P, cfg, Z)
        return torch_compile.run(("block", cfg), block_forward, {"cfg": cfg}, self.torch_device, dict(P), Z,
                                 what="this block's forward")

    # conversions ---------------------------------------------------------------------------------------------
    def asarray(self, x):
        """An array-like, a params dict (e.g. the reference's), a list of them, or an ``Update``
        → tensors on this backend's device and dtype."""
        if isinstance(x, dict):
            return {k: self.asarray(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], (dict, Update)):
            return type(x)(self.asarray(v) for v in x)
        if isinstance(x, Update):
            return x.map(self.asarray)
        if isinstance(x, Trajectory):
            raise ValueError("x is a Trajectory: asarray converts arrays, params dicts and Updates; compute the "
                             "trajectory with this backend (trajectory(params, cfg, context, query)) instead")
        return self.check.convert("x", x)

    def to_numpy(self, x):
        """Tensors (or dicts, lists, ``Update``, ``Trajectory``) → NumPy; bfloat16/float16 become float64 (NumPy
        has no bfloat16); a ``Trajectory`` becomes the reference's (forming its lazy fields)."""
        if isinstance(x, dict):
            return {k: self.to_numpy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self.to_numpy(v) for v in x)
        if isinstance(x, Update):
            return x if x.is_numpy else x.map(self.to_numpy)
        if isinstance(x, Trajectory):                 # forms the lazy fields (u, grad_u, predictions)
            return x if x.is_numpy else Trajectory.of(
                x, self.to_numpy, "one context, to_numpy(tr[b]), or its fields, to_numpy(tr.delta_W_norm)")
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.double()
            return x.numpy()
        return np.asarray(x)

    def _Z(self, Z, cfg: BlockConfig) -> torch.Tensor:
        return self.check.tensor(Z, "Z", (None, cfg.d_model))

    @synced
    def prepare(self, params, cfg: BlockConfig) -> CheckedParams:
        """``params`` checked against ``cfg`` once and copied to this device and dtype (a copy: changing the
        caller's tensors later cannot make it stale): pass the result to every call with this config and it is taken
        as it is (no per-call checks, no host syncs for them)."""
        checked = self.check.params(params, cfg)
        return CheckedParams({k: v.clone() for k, v in checked.items()}, cfg, self.torch_device, self.torch_dtype)

    # the core API ----------------------------------------------------------------------------------------------
    def init_block(self, cfg: BlockConfig, seed: int = 0, **kw) -> dict:
        """The reference's random params (same numbers for the same seed), as tensors."""
        return self.asarray(ref.init_block(cfg, seed, **kw))

    def init_model(self, cfg: BlockConfig, n_blocks: int, seed: int = 0, **kw) -> list[dict]:
        return self.asarray(ref.init_model(cfg, n_blocks, seed, **kw))

    @synced
    def attention(self, params, cfg, Z) -> torch.Tensor:
        """The block's contextual layer at every position, ``(..., T, d_model)`` (``A(LN1 Z)`` for pre-ln)."""
        return torch_ops.attention(self.check.params(params, cfg), cfg, self._Z(Z, cfg))

    @synced
    def taps(self, params, cfg, Z):
        """``(a, r)`` at every position, each ``(..., T, d_model)``."""
        return torch_ops.taps(self.check.params(params, cfg), cfg, self._Z(Z, cfg))

    @synced
    def block(self, params, cfg, Z) -> torch.Tensor:
        """The block output at every position, ``(..., T, d_model)``."""
        out = self._forward(self.check.params(params, cfg), cfg, self._Z(Z, cfg))    # (..., T, D)
        self.check.finite("block", output=out)
        return out

    @staticmethod
    def _query_taps(P, cfg, context, query, positions=None):
        """Taps ``(a, r)`` of the query (the last position of ``[C, x]``, the rows at ``positions``, default
        ``0..n``), ``(..., d_model)`` each, in O(n·d)."""
        X = torch.cat([context, query[..., None, :]], dim=-2)                       # (..., n+1, D)
        A = torch_ops.query_attention(P, cfg, torch_ops.attention_input(P, cfg, X), positions)  # (..., D)
        return torch_ops.taps_from_attention(P, cfg, query, A)

    @synced
    def block_output(self, params, cfg, context, query, positions=None) -> torch.Tensor:
        """``T_W(C, x)``: the block output at the query's position, ``(..., d_model)``; ``context`` may be empty.
        ``positions``: where ``[C, x]`` sits in the full sequence (``reference.block_output``'s)."""
        P = self.check.params(params, cfg)
        context, query = self.check.context_query(cfg, context, query)
        positions = self._positions(positions, context.shape[-2])
        out = torch_ops.head(P, cfg, *self._query_taps(P, cfg, context, query, positions))   # (..., D)
        self.check.finite("block_output", output=out)
        return out

    @synced
    def implicit_update(self, params, cfg, context, query, remove=None, positions=None) -> Update:
        """P1 Thm 2.2 / App. A / P2 (``update_from_taps``), where ``x`` sees ``C \\ Y`` with
        ``Y = context[..., remove, :]`` (default: all of C), the kept tokens at their positions (``positions`` of
        ``[C, x]``, default ``0..n``: removal is a mask)."""
        P = self.check.params(params, cfg)
        context, query = self.check.context_query(cfg, context, query)
        n = context.shape[-2]
        positions = self._positions(positions, n)
        if isinstance(remove, torch.Tensor):
            remove = remove.detach().cpu().numpy()
        keep = np.zeros(0, np.int64) if remove is None else np.setdiff1d(np.arange(n), check_remove(remove, n))
        kept = context.index_select(-2, torch.as_tensor(keep, dtype=torch.long, device=self.torch_device))
        a_x, r_x = self._query_taps(P, cfg, kept, query, kept_positions(keep, n, positions))   # (..., D): a mask
        self.check.norm(a_x, cfg, "the query")
        upd = update_from_taps(P["mlp.W"], *self._query_taps(P, cfg, context, query, positions), a_x, r_x)
        self.check.finite("implicit_update", u=upd.u, delta_b=upd.delta_b)
        return upd

    def _positions(self, positions, n: int):
        """``positions`` of ``[C, x]`` checked as the reference checks them (``None`` stays ``None``: ``0..n``)."""
        if positions is None:
            return None
        if isinstance(positions, torch.Tensor):
            positions = positions.detach().cpu().numpy()
        return check_positions(positions, n + 1)          # NumPy ints: torch_ops.positions_of moves them

    def apply_update(self, params, update) -> dict:
        """New params with ``mlp.W += ΔW`` and ``Δb`` on the block's bias (``reference.update.bias_key``: ``mlp.b_out``,
        or ``mlp.b_post`` after a post-MLP norm); the input dict is not modified."""
        if not isinstance(update, Update):
            raise ValueError(f"update must be an Update, got {type(update).__name__}")
        update = self.asarray(update)
        new = self.asarray(dict(params))                 # every entry on this backend (not only the two updated)
        check_single_update(update, *new["mlp.W"].shape)
        new["mlp.W"] = new["mlp.W"] + update.delta_W
        key = bias_key(new)
        new[key] = new[key] + update.delta_b
        return new

    @synced
    def position_updates(self, params, cfg, Z, query: str = "own") -> Update:
        """P2 Thm 1, every position in one batched pass: ``u`` (..., T, d_mlp), ``a``/``delta_b`` (..., T, D).

        ``"own"``: position i's own token run alone (ours); ``"last"``: the last token (P2's convention).
        """
        P = self.check.params(params, cfg)
        Z = check_positions_input(self._Z(Z, cfg), query)
        upd, _, check, reductions = self._position_updates(P, cfg, Z, query)
        self.check.updates("position_updates", [check], [reductions])
        return upd

    def _position_updates(self, P, cfg, Z, query: str, forward: bool = False, u=None):
        """``(update, out, check, reductions)`` of :func:`position_updates_of` on checked inputs, compiled where
        :meth:`_compiles` (one graph per block config, ``query`` and ``forward``; ``u`` then unused: the compiled
        graph allocates its own outputs), with what ``Checks.updates`` must check and its reductions."""
        if not self._compiles(Z, *P.values()):
            upd, out = position_updates_of(P, Z, cfg=cfg, query=query, forward=forward, u=u)
            check = update_check(upd, cfg, query)
            return upd, out, check, Checks.reductions(check)
        u, a, delta_b, out, sums, minima = torch_compile.run(
            ("position_updates", cfg, query, forward), position_update_tensors,
            {"cfg": cfg, "query": query, "forward": forward}, self.torch_device, dict(P), Z,
            what="this block's position_updates")
        upd = Update(u=u, a=a, delta_b=delta_b)
        return upd, out, update_check(upd, cfg, query), (sums, minima)

    # the O(n·d) trajectory ---------------------------------------------------------------------------------
    @synced
    def trajectory(self, params, cfg, context, query, *, slab: int | None = None, keep: bool = False,
                   compile: bool | None = None) -> Trajectory:
        """P1 Prop. 3.1 over every prefix ``c_1..c_i`` (i = 0..n) of ``context`` for one ``query``, in O(n·d).

        The query's attention over prefix i is a running softmax mean (``torch_scan``); the taps follow
        position-wise; ``‖u_i‖² = δ_iᵀ G δ_i`` with the Gram matrix ``G = W_0ᵀW_0`` (DESIGN "Updates stay
        factored"); steps ``a_{i+1} − a_i`` come from the exact increment ``o_{i+1} − o_i = p_{i+1}(v_{i+1} − o_i)``
        (``p`` the new token's weight), pushed through ``W_o`` and, for LayerNorm taps, through an exact LN
        difference, so they carry no cancellation even when they are 1e-6 of ``a``.

        The per-prefix vectors ``delta``, ``delta_b`` and ``steps`` (``O(n·d)``) are formed by a second scan when
        first read, unless ``keep`` writes them during this one: a caller that reads the norms alone adds ``O(n)``
        numbers to the context it passed. That second scan reads the context, query and params given here: change
        them in place before it and the lazy fields follow the change (``keep=True`` to hold them now).

        ``compile`` (default: the backend's ``compile``) runs every full slab through ``torch.compile`` of the
        scan's step (``torch_scan``: the same numbers up to the fused kernels' order of summation; compiled once
        per block config, dtype and device, then cached for the process). Where compilation is unavailable it runs
        eagerly (``path`` says which); where compiling fails it warns once and runs eagerly.
        """
        slab = self._slab_size(slab)
        compiled = self.compile if compile is None else check_bool("compile", compile)
        P0 = self.check.params(params, cfg)
        context, query = self.check.context_query(cfg, context, query)
        return scan_trajectory(P0, cfg, context, query, slab, self.acc_dtype, self.check, keep=keep,
                               compiled=compiled)

    def _slab_size(self, slab) -> int:
        """``slab`` (context tokens per step of the scan) checked; ``None`` is the device's default."""
        if slab is None:
            return self._slab
        return check_int("slab (context tokens per scan step)", slab, low=1)

    @synced
    def prefix_attention(self, params, cfg, context, query, *, slab: int | None = None) -> torch.Tensor:
        """The query's attention output ``A(c_1..c_i, x)`` for every prefix i = 0..n, ``(..., n+1, d_model)``,
        by the O(n·d) scan (``A(LN1 ·)`` for pre-ln): what ``trajectory`` builds its taps from."""
        slab = self._slab_size(slab)
        P = {k: v.to(self.acc_dtype) for k, v in self.check.params(params, cfg).items()}
        context, query = self.check.context_query(cfg, context, query)
        scan = prefix_attention_scan(P, cfg, query.to(self.acc_dtype), context, slab)
        return torch.cat([next(scan)[..., None, :]] + [A for _, A, _ in scan], -2).to(self.torch_dtype)

    # stacks ----------------------------------------------------------------------------------------------------
    def _stack(self, model_params, model_cfg):
        """The blocks checked once (``CheckedParams``: the calls made with them take them as they are) and their
        configs."""
        blocks, cfgs = normalise_stack(model_params, model_cfg)
        return [self.check.params(p, c) for p, c in zip(blocks, cfgs)], cfgs

    @synced
    def model_forward(self, model_params, model_cfg, Z) -> list[torch.Tensor]:
        """Hidden states ``[H^0 = Z, H^1, …, H^L]``, each ``(..., T, d_model)``."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        Hs = [self.check.tensor(Z, "tokens", (None, cfgs[0].d_model))]
        for p, c in zip(blocks, cfgs):
            Hs.append(self._forward(p, c, Hs[-1]))
        return Hs

    @synced
    def model_updates(self, model_params, model_cfg, tokens) -> list[Update]:
        """The last-token update of every block (ours, THEORY §3c), from its input ``H^{ℓ−1}`` computed with
        context."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        tokens = self.check.tensor(tokens, "tokens", (None, cfgs[0].d_model))
        if tokens.shape[-2] == 0:
            raise ValueError("tokens must hold at least the query, got shape (0, d_model)")
        Hs = self.model_forward(blocks, cfgs, tokens)
        return [self.implicit_update(p, c, Hs[l][..., :-1, :], Hs[l][..., -1, :])
                for l, (p, c) in enumerate(zip(blocks, cfgs))]

    @synced
    def model_position_updates(self, model_params, model_cfg, Z, query: str = "own") -> list[Update]:
        """Every block's update at every position (P2 block by block, THEORY §3b), ``u`` (..., T, d_mlp) per block,
        in one pass: each block's attention serves both its updates and the next block's input (one forward's work
        plus, per block, ``W_o`` on the value heads it already formed (each token alone), the alone taps and
        ``u = W(a − a_x)``; the last block's output is not formed), with one deferred check for the whole stack.
        Every block's ``u`` is a view of one buffer (``torch_ops.stacked_buffers``; holding one block's ``u`` keeps
        every block's alive), except where autograd must differentiate through them (then each is its own tensor)."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        H = check_positions_input(self.check.tensor(Z, "Z", (None, cfgs[0].d_model)), query)
        # every u in one buffer, unless autograd must see them (matmul(out=) has no gradient)
        grad = torch_ops.needs_grad(H, *(t for P in blocks for t in P.values()))
        us = [None] * len(blocks) if grad or self._compiles() else \
            torch_ops.stacked_buffers([(*H.shape[:-1], P["mlp.W"].shape[0]) for P in blocks], H)
        updates, checks, reductions = [], [], []
        for l, (P, cfg) in enumerate(zip(blocks, cfgs)):
            # the reductions taken while this block's results are in cache
            upd, H, check, reduced = self._position_updates(P, cfg, H, query, forward=l + 1 < len(blocks), u=us[l])
            updates.append(upd)
            checks.append(check)
            reductions.append(reduced)
        self.check.updates("position_updates", checks, reductions)   # one deferred check for the whole stack
        return updates

    def apply_model_updates(self, model_params, updates) -> list[dict]:
        blocks = ref.split_stack(model_params) if isinstance(model_params, dict) else list(model_params)
        if len(updates) != len(blocks):
            raise ValueError(f"updates must hold one Update per block ({len(blocks)}), got {len(updates)}")
        return [self.apply_update(p, u) for p, u in zip(blocks, updates)]

    @synced
    def model_trajectory(self, model_params, model_cfg, context, query, *, elements: int = ELEMENTS) -> list[Update]:
        """For a stack of causal blocks, block ℓ's last-token update on every prefix ``[c_1..c_i, x]``, i = 0..n:
        one stacked ``Update`` per block, ``u`` (..., n+1, d_mlp), ``a``/``delta_b`` (..., n+1, D) (``torch_stack``:
        one chunked causal attention pass per block, about ``elements`` logits at a time)."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        check_causal_stack(cfgs)
        if any(c.sliding_window is not None for c in cfgs):
            raise ValueError("model_cfg has a sliding window, which the torch backend's model_trajectory does not "
                             "compute yet; use the numpy backend's model_trajectory (O(n²)) for such a stack")
        context, query = self.check.context_query(cfgs[0], context, query)
        return prefix_updates(blocks, cfgs, context, query, self.check, elements)


def make_backend(device=None, dtype=None, compile: bool = False) -> TorchBackend:
    """Factory used by ``get_backend("torch")``."""
    return TorchBackend(device=device, dtype=dtype, compile=compile)


def _targets():
    out = [("cpu", "float64"), ("cpu", "float32"), ("cpu", "bfloat16")]
    if torch.cuda.is_available():
        out += [("cuda", "float64"), ("cuda", "float32"), ("cuda", "bfloat16")]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        out += [("mps", "float32"), ("mps", "bfloat16")]
    return out


conformance_targets = _targets()
