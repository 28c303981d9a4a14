"""Every position's updates (P2 Thm 1) and the block forward as plain functions of checked tensors, the config a
keyword: what the torch backend runs eagerly, and what ``torch_compile`` compiles once per block config (ours).
Nothing here checks its inputs or syncs with the host: the backend checks before and settles one deferred check
after (``torch_checks.Checks.updates``)."""
from __future__ import annotations

from implicit_icl.reference.update import Update, update_from_taps

from . import torch_ops
from .torch_checks import Checks


def block_forward(P, Z, *, cfg):
    """``torch_ops.block`` with the config last: the function ``torch_compile`` compiles per block config."""
    return torch_ops.block(P, cfg, Z)


def position_updates_of(P, Z, *, cfg, query: str, forward: bool = False, u=None):
    """``(update, out)``: P2 Thm 1 at every position of ``Z`` (..., T, D) on checked inputs, from one attention
    pass whose value heads also give each token's run alone (``u`` written into the given buffer if any); ``out`` the
    block's output (the next block's input) if ``forward``, else ``None``."""
    if query == "own":
        A, A_x = torch_ops.attention_with_alone(P, cfg, Z)                            # (..., T, D) each
        alone = Z
    else:
        A, alone = torch_ops.attention(P, cfg, Z), Z[..., -1:, :]
        A_x = torch_ops.alone_attention(P, cfg, alone)                                # (..., 1, D)
    a, r = torch_ops.taps_from_attention(P, cfg, Z, A)
    out = torch_ops.head(P, cfg, a, r) if forward else None         # first: its temporaries free before u is formed
    a_x, r_x = torch_ops.taps_from_attention(P, cfg, alone, A_x)
    taps = (P["mlp.W"], a, r, a_x.expand_as(a), r_x.expand_as(r))
    return update_from_taps(*taps, out=u, ops=torch_ops.OPS), out                     # u (..., T, d_mlp)


def update_check(upd: Update, cfg, query: str) -> tuple:
    """What ``Checks.updates`` must check of :func:`position_updates_of`'s update: the alone taps' ``‖a‖²`` (every
    position's with ``"own"``, the last token's with ``"last"``: every row of ``a`` is it), ``u`` and ``delta_b``
    finite."""
    where = (upd.a, cfg, "position", True) if query == "own" else (upd.a[..., 0, :], cfg, "the last token", False)
    return (*where, {"u": upd.u, "delta_b": upd.delta_b})


def position_update_tensors(P, Z, *, cfg, query: str, forward: bool):
    """:func:`position_updates_of` and its check's reductions as plain tensors, ``(u, a, delta_b, out, sums,
    minima)``: the function ``torch_compile`` compiles (the reductions fused into the same kernels)."""
    upd, out = position_updates_of(P, Z, cfg=cfg, query=query, forward=forward)
    sums, minima = Checks.reductions(update_check(upd, cfg, query))
    return upd.u, upd.a, upd.delta_b, out, sums, minima
