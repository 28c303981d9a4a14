"""A stack's prefix dynamics on torch: block ℓ's last-token update on every prefix ``[c_1..c_i, x]`` at once.

Causality makes the context's hidden states the same for every prefix, so block ℓ sees the context
``H^{ℓ−1}_{1..n}`` once and ``n + 1`` queries ``x^{ℓ−1}_i`` (the query's hidden state with i tokens): query i
attends to the context tokens before it plus itself. That is one causal attention pass per block, done in chunks
of about ``elements`` logits so that memory stays O(n·d).
"""
from __future__ import annotations

import numpy as np
import torch

from implicit_icl.reference.update import update_from_taps

from . import torch_ops

ELEMENTS = 1 << 23      # logits per chunk of the chunked causal attention


def chunked_attention(cfg, q, k, v, offset: int, own=None, elements: int = ELEMENTS):
    """Row i of ``q`` (..., H, Tq, dh) attends to keys ``j < i + offset`` of ``k, v`` (..., H, Tk, dh) plus,
    if given, its own extra key/value ``own = (k_own, v_own)`` (..., H, Tq, dh); chunks of query rows
    keep the logits at about ``elements`` numbers. Logits scaled by ``cfg.logit_scale`` and soft-capped by
    ``cfg.attn_softcap`` (``torch_ops.attend``). Returns (..., H, Tq, dh)."""
    dtype = v.dtype
    if q.dtype in (torch.float16, torch.bfloat16):     # logits, weights and sums in float32, as the fused kernels do
        q, k, v = q.float(), k.float(), v.float()
        own = None if own is None else (own[0].float(), own[1].float())
    Tq, Tk = q.shape[-2], k.shape[-2]
    rows = max(1, elements // max(1, Tk * int(np.prod(q.shape[:-2]))))
    scale, cap = cfg.logit_scale, cfg.attn_softcap
    outs = []
    for i0 in range(0, Tq, rows):
        i1 = min(Tq, i0 + rows)
        kmax = max(0, min(Tk, i1 - 1 + offset))                                  # keys any row here can see
        logits = torch_ops.softcap(q[..., i0:i1, :] @ k[..., :kmax, :].transpose(-1, -2) * scale, cap)  # (..., H, R, K)
        seen = (torch.arange(kmax, device=q.device)[None, :]
                < (torch.arange(i0, i1, device=q.device)[:, None] + offset))       # (R, K)
        logits = torch.where(seen, logits, -torch.inf)
        if own is not None:
            s_own = torch_ops.softcap((q[..., i0:i1, :] * own[0][..., i0:i1, :]).sum(-1, keepdim=True) * scale, cap)
            w = torch.softmax(torch.cat([logits, s_own], -1), -1)                # (..., H, R, K+1)
            outs.append(w[..., :kmax] @ v[..., :kmax, :] + w[..., kmax:] * own[1][..., i0:i1, :])
        else:
            outs.append(torch.softmax(logits, -1) @ v[..., :kmax, :])
    return torch.cat(outs, -2).to(dtype)


def queries_over_prefixes(P, cfg, Hc, Xq, elements):
    """``(A, A_alone)``, each ``(..., n+1, D)``: the attention output of query ``Xq_i`` over ``[Hc_1..Hc_i, Xq_i]``
    for i = 0..n (each prefix with its own query: one causal pass), and of each ``Xq_i`` run alone (its own value
    heads, already formed: ``torch_ops.alone_attention``). Positions follow the mask convention: context token j at
    j, every query at n (``reference.blocks.kept_positions``)."""
    n = Hc.shape[-2]
    Xn, Cn = torch_ops.attention_input(P, cfg, Xq), torch_ops.attention_input(P, cfg, Hc)
    at_n = torch.full((n + 1,), n, device=Xq.device)
    v_own = torch_ops.heads(P, cfg, Xn, "v")                                       # (..., H, n+1, dh)
    o = chunked_attention(cfg, torch_ops.heads(P, cfg, Xn, "q", at_n), torch_ops.heads(P, cfg, Cn, "k"),
                          torch_ops.heads(P, cfg, Cn, "v"), offset=0,
                          own=(torch_ops.heads(P, cfg, Xn, "k", at_n), v_own), elements=elements)
    return torch_ops.merge_heads(P, cfg, o), torch_ops.merge_heads(P, cfg, v_own)


def causal_block(P, cfg, Hc, elements):
    """``block(Hc)`` with the causal attention done in chunks (O(n·d) memory)."""
    if Hc.shape[-2] == 0:
        return Hc
    X = torch_ops.attention_input(P, cfg, Hc)
    q, k, v = (torch_ops.heads(P, cfg, X, key) for key in "qkv")                  # (..., H, T, dh)
    A = torch_ops.merge_heads(P, cfg, chunked_attention(cfg, q, k, v, offset=1, elements=elements))
    return torch_ops.head(P, cfg, *torch_ops.taps_from_attention(P, cfg, Hc, A))


def prefix_updates(blocks, cfgs, context, query, checks, elements: int = ELEMENTS):
    """One stacked ``Update`` per block: ``u`` (..., n+1, d_mlp), ``a``/``delta_b`` (..., n+1, D) (checked inputs;
    one deferred ``checks.updates`` raises on a zero ``‖a‖²``, the first block's first). Block 1's queries are all
    ``x``, so its prefix outputs are also what the O(n·d) scan gives."""
    n = context.shape[-2]
    Hc = context                                                                  # (..., n, D) context states
    Xq = query[..., None, :].expand(*query.shape[:-1], n + 1, query.shape[-1])   # (..., n+1, D) queries
    updates, norms, reductions = [], [], []
    for l, (P, cfg) in enumerate(zip(blocks, cfgs)):
        A, A_x = queries_over_prefixes(P, cfg, Hc, Xq, elements)                  # (..., n+1, D) each
        a, r = torch_ops.taps_from_attention(P, cfg, Xq, A)
        a_x, r_x = torch_ops.taps_from_attention(P, cfg, Xq, A_x)
        norms.append((a_x, cfg, "prefix", True, {}))
        reductions.append(checks.reductions(norms[-1]))                          # while a_x is in cache
        updates.append(update_from_taps(P["mlp.W"], a, r, a_x, r_x))
        if l + 1 < len(blocks):
            Xq = torch_ops.head(P, cfg, a, r)                                     # next block's queries
            Hc = causal_block(P, cfg, Hc, elements)                               # next block's context
    checks.updates("model_trajectory", norms, reductions)
    return updates
