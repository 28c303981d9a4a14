"""Numerically stable prefix softmax scans: the attention of one query over every prefix of a context in O(n·d).

For a fixed query the attention output over the prefix ``c_1..c_i`` is a softmax-weighted mean,

    o_i = N_i / D_i,   N_i = Σ_{j≤i} exp(s_j − m_i) v_j,   D_i = Σ_{j≤i} exp(s_j − m_i),   m_i = max_{j≤i} s_j,

(THEORY §8.5: "``A(c_1..c_i, x)`` is a running weighted mean"). Shifting every prefix by its *own* running
maximum ``m_i`` makes every weight ``≤ 1`` and the largest one exactly 1, so ``D_i ≥ 1``: no overflow and no
0/0 for any finite logits (±1e4 included) and any length. Only weights that are negligible next to the
maximum underflow, which is the correct answer in floating point.

The scan is blocked: within a block of ``B`` tokens the prefix sums are a ``B × B`` lower-triangular weighted sum
(every weight shifted by its row's running max), and the blocks' totals are themselves a sequence of
(logit = block max, value = block total) that the same scan combines, recursively. Work is ``O(n·B·e)``,
memory ``O(n·e + n·B)``, and every sum has at most ``B`` terms per level (``log_B n`` levels), which keeps the
round-off of float32 sums at ``~ log_B(n)·B·eps`` in the worst case instead of ``n·eps``.
"""
from __future__ import annotations

import torch

from implicit_icl.reference import kinds

from implicit_icl.reference.trajectories import Trajectory

from . import torch_ops

BLOCK = 64


_UPPER: dict = {}


def _upper(L: int, device) -> torch.Tensor:
    """The strictly upper triangle ``j > i`` of an ``L × L`` matrix (cached per size and device)."""
    key = (L, str(device))
    if key not in _UPPER:
        _UPPER[key] = torch.ones(L, L, dtype=torch.bool, device=device).triu(1)
    return _UPPER[key]


def _direct(s: torch.Tensor, V: torch.Tensor):
    """``(m, N)`` for short sequences by a masked ``L × L`` weighted sum; ``s`` (..., L), ``V`` (..., L, e)."""
    L = s.shape[-1]
    m = torch.cummax(s, dim=-1).values                                   # (..., L)
    m_ref = torch.where(torch.isfinite(m), m, 0)                         # rows of padding only: weights 0, not nan
    w = s[..., None, :] - m_ref[..., :, None]                            # (..., L, L) [i, j], ≤ 0 where j ≤ i
    w.masked_fill_(_upper(L, s.device), -torch.inf).exp_()              # weights exp(s_j − m_i), 0 where j > i
    return m, w @ V                                                      # (..., L), (..., L, e)


def prefix_softmax_scan(s: torch.Tensor, V: torch.Tensor, block: int = BLOCK):
    """Inclusive prefix scan: ``m_i = max_{j≤i} s_j`` and ``N_i = Σ_{j≤i} exp(s_j − m_i) V_j``.

    ``s``: (..., L) finite logits; ``V``: (..., L, e) values (append a column of ones to get ``D_i``).
    Returns ``m`` (..., L) and ``N`` (..., L, e).
    """
    L = s.shape[-1]
    if L <= block:
        return _direct(s, V)
    n_chunks = -(-L // block)
    pad = n_chunks * block - L                       # < block, so every chunk holds at least one real token
    if pad:
        s = torch.nn.functional.pad(s, (0, pad), value=-torch.inf)
        V = torch.nn.functional.pad(V, (0, 0, 0, pad))
    batch = s.shape[:-1]
    e = V.shape[-1]
    m_loc, N_loc = _direct(s.reshape(*batch, n_chunks, block),
                           V.reshape(*batch, n_chunks, block, e))       # (..., C, B), (..., C, B, e)
    M, P = prefix_softmax_scan(m_loc[..., -1], N_loc[..., -1, :], block)  # inclusive over chunks: (..., C), (..., C, e)
    M_ex = torch.cat([torch.full_like(M[..., :1], -torch.inf), M[..., :-1]], dim=-1)      # exclusive: (..., C)
    P_ex = torch.cat([torch.zeros_like(P[..., :1, :]), P[..., :-1, :]], dim=-2)           # (..., C, e)
    m, N = combine(M_ex[..., None], P_ex[..., None, :], m_loc, N_loc)  # (..., C, B), (..., C, B, e)
    return m.reshape(*batch, n_chunks * block)[..., :L], N.reshape(*batch, n_chunks * block, e)[..., :L, :]


def combine(m1: torch.Tensor, N1: torch.Tensor, m2: torch.Tensor, N2: torch.Tensor):
    """Merge two softmax partial sums, each relative to its own maximum: ``(max, e^{m1−m} N1 + e^{m2−m} N2)``.

    ``m*`` broadcast against ``N*[..., 0]``; an empty part has ``m = −inf`` and ``N = 0``.
    """
    m = torch.maximum(m1, m2)
    m_ref = torch.where(torch.isfinite(m), m, 0)                         # both parts empty: 0, not nan
    N = torch.exp(m1 - m_ref)[..., None] * N1 + torch.exp(m2 - m_ref)[..., None] * N2
    return m, N


CHUNK = 256     # tokens per chunk of the cumulative-sum path
RISE = 20.0     # largest rise of the running max inside a chunk that the cumulative-sum path accepts


def prefix_softmax_means(s: torch.Tensor, v: torch.Tensor, carry, chunk: int = CHUNK, rise: float = RISE):
    """Softmax-weighted means over every prefix, continuing a partial sum ``carry``; the fast path of the scan.

    ``s`` (..., L) logits and ``v`` (..., L, e) values of L new tokens; ``carry = (m, num, den)`` with shapes
    (...), (..., e), (...) is the partial sum ``Σ exp(s_j − m) [v_j, 1]`` of the tokens before (``den ≥ 1``).
    Returns ``o`` (..., L, e) with ``o_i`` the weighted mean over the carry and tokens ``≤ i``, ``p`` (..., L) the
    weight of token i in its own prefix (so ``o_i − o_{i−1} = p_i (v_i − o_{i−1})`` exactly), and the new carry.

    Within a chunk every weight is shifted by ``R``, the running max at the chunk's end, so ``exp(s_j − R) ≤ 1``
    and a cumulative sum (one pass) gives the chunk's prefix sums. Row i's sum is at least
    ``exp(m_i − R)``; where the running max rises by more than ``rise`` inside a chunk (extreme logits) that
    chunk is recomputed with the exact per-row shift of :func:`prefix_softmax_scan`, so nothing underflows
    to 0/0. The chunks' totals are combined by :func:`prefix_softmax_scan` over chunks.
    """
    cm, cnum, cden = carry
    L, e = s.shape[-1], v.shape[-1]
    n_chunks = max(1, -(-L // chunk))
    pad = n_chunks * chunk - L
    if pad:
        s = torch.nn.functional.pad(s, (0, pad), value=-torch.inf)
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    batch = s.shape[:-1]
    m = torch.maximum(torch.cummax(s, -1).values, cm[..., None])                 # (..., L'): running max
    s, v, m = (s.reshape(*batch, n_chunks, chunk), v.reshape(*batch, n_chunks, chunk, e),
               m.reshape(*batch, n_chunks, chunk))
    R = m[..., -1]                                                               # (..., C): max at chunk end
    w = torch.exp(s - R[..., None])                                              # (..., C, B), ≤ 1
    num = torch.cumsum(w[..., None] * v, -2)                                     # (..., C, B, e)
    den = torch.cumsum(w, -1)                                                    # (..., C, B)
    # inclusive scan over [carry, chunk 0, …, chunk C−1]; entry c is everything before chunk c
    logits = torch.cat([cm[..., None], R], -1)                                   # (..., C+1)
    tots = torch.cat([torch.cat([cnum, cden[..., None]], -1)[..., None, :],
                      torch.cat([num[..., -1, :], den[..., -1:]], -1)], -2)      # (..., C+1, e+1)
    M, P = prefix_softmax_scan(logits, tots)
    new_carry = (M[..., -1], P[..., -1, :e], P[..., -1, e])
    M, P = M[..., :-1], P[..., :-1, :]                                           # (..., C), (..., C, e+1)
    f = torch.exp(M - R)                                                         # (..., C), ≤ 1
    num += (f[..., None] * P[..., :e])[..., None, :]
    den += (f * P[..., e])[..., None]
    o = num / den[..., None]                                                     # (..., C, B, e)
    p = w / den                                                                  # (..., C, B)
    bad = (R - m[..., 0]) > rise                                                 # (..., C)
    if bool(bad.any()):
        idx = bad.nonzero(as_tuple=True)
        sb, vb = s[idx], v[idx]                                                  # (K, B), (K, B, e)
        mb, Nb = prefix_softmax_scan(sb, torch.cat([vb, torch.ones_like(vb[..., :1])], -1))
        mb, Nb = combine(M[idx][:, None], P[idx][:, None, :], mb, Nb)           # (K, B), (K, B, e+1)
        o[idx] = Nb[..., :e] / Nb[..., e:]
        p[idx] = torch.exp(sb - mb) / Nb[..., e]
    o = o.reshape(*batch, n_chunks * chunk, e)[..., :L, :]
    p = p.reshape(*batch, n_chunks * chunk)[..., :L]
    return o, p, new_carry


# ---------------------------------------------------------------------------------------------------------------
# the scan driver: the query's attention over every prefix, then the trajectory's fields from it
# ---------------------------------------------------------------------------------------------------------------

def prefix_attention_scan(P: dict, cfg, x: torch.Tensor, context: torch.Tensor, slab: int):
    """Generator: first the query-alone attention output ``A_0`` (..., D), then for each slab of the context
    ``(s0, A, dA)``: the query's attention output over the prefixes ``s0+1 .. s0+S`` (..., S, D) and its exact
    increments ``A_i − A_{i−1}`` (..., S, D). O(n·d) time, O(slab·d) working memory.

    Positions follow the mask convention (``reference.blocks.kept_positions``): context token j sits at j and the
    query at n for every prefix, so rotary logits and a sliding window are the same in every prefix."""
    n, H, dh, D = context.shape[-2], cfg.n_heads, cfg.head_dim, cfg.d_model
    at_n = torch.tensor([n], device=x.device)
    xn = torch_ops.attention_input(P, cfg, x)[..., None, :]                         # (..., 1, D)
    q = torch_ops.heads(P, cfg, xn, "q", at_n)[..., 0, :] * cfg.logit_scale         # (..., H, dh)
    v_x = torch_ops.heads(P, cfg, xn, "v")[..., 0, :]                               # (..., H, dh)
    s_x = (q * torch_ops.heads(P, cfg, xn, "k", at_n)[..., 0, :]).sum(-1)          # (..., H): the query's own logit
    s_x = torch_ops.softcap(s_x, cfg.attn_softcap)
    linear_keys = not (cfg.rotary or cfg.qk_norm)       # then s_j = (W_k^hᵀ q_h)·x_j + q_h·b_k^h, one (D × H) product
    if linear_keys:
        W_k = P["attn.W_k"].reshape(cfg.kv_heads, dh, D).repeat_interleave(H // cfg.kv_heads, 0)     # (H, dh, D)
        qk = (q[..., :, :, None] * W_k).sum(-2)                                     # (..., H, D)
        b_k = P["attn.b_k"].reshape(cfg.kv_heads, dh).repeat_interleave(H // cfg.kv_heads, 0) \
            if "attn.b_k" in P else None
        qb = (q * b_k).sum(-1) if b_k is not None else None                        # (..., H)
    carry = (s_x, v_x, torch.ones_like(s_x))                                        # the query alone: o_0 = v_x
    o_prev = v_x                                                                    # (..., H, dh)
    yield torch_ops.merge_heads(P, cfg, v_x[..., None, :])[..., 0, :]               # (..., D)
    for s0 in range(0, n, slab):
        C = torch_ops.attention_input(P, cfg, context[..., s0:s0 + slab, :].to(x.dtype))   # (..., S, D)
        pos = torch.arange(s0, s0 + C.shape[-2], device=x.device)
        if linear_keys:
            s = (C @ qk.transpose(-1, -2)).transpose(-1, -2)                        # (..., H, S) logits
            s = s + qb[..., None] if qb is not None else s
        else:
            s = (q[..., :, None, :] * torch_ops.heads(P, cfg, C, "k", pos)).sum(-1)  # (..., H, S)
        s = torch_ops.softcap(s, cfg.attn_softcap)                                  # Gemma 2's capped logits
        seen = torch_ops.visible(cfg, at_n, pos, causal=True)                       # a sliding window: n − j < w
        if seen is not None:
            s = torch.where(seen[0], s, -torch.inf)
        v = torch_ops.heads(P, cfg, C, "v")                                         # (..., H, S, dh)
        o, p, carry = prefix_softmax_means(s, v, carry)                             # (..., H, S, dh), (..., H, S)
        o_before = torch.cat([o_prev[..., None, :], o[..., :-1, :]], -2)           # o_{i−1}
        inc = p[..., None] * (v - o_before)                                         # o_i − o_{i−1}, exact form
        o_prev = o[..., -1, :]
        yield s0, torch_ops.merge_heads(P, cfg, o), torch_ops.merge_heads(P, cfg, inc, bias=False)


def tap_increments(P: dict, cfg, x: torch.Tensor, A: torch.Tensor, dA: torch.Tensor, A_prev: torch.Tensor):
    """``a_i − a_{i−1}`` for every prefix of the slab from ``ΔA_i = A_i − A_{i−1}`` without subtracting taps
    (``A_prev``: the attention output of the prefix before the slab).

    Linear taps (plain, p1-skip, residual) move by ``ΔA``; LayerNorm taps by :func:`layer_norm_increment`, RMSNorm
    taps by :func:`rms_norm_increment`; a parallel block's tap ``N2 x`` does not move. With ``post_norms`` the
    residual moves by the increment of ``ln_post_attn(A)`` first (the same exact form).
    """
    if cfg.kind in ("plain", "p1-skip", "residual"):
        return dA
    if cfg.kind == "parallel":
        return torch.zeros_like(dA)
    A_before = torch.cat([A_prev[..., None, :], A[..., :-1, :]], -2)                # A_{i−1}: (..., S, D)
    if cfg.post_norms:
        g_post = cfg.norm_offset + P["ln_post_attn.g"]
        dA = rms_norm_increment(A_before, dA, g_post, cfg.ln_eps) if cfg.norm_kind == "rms" \
            else layer_norm_increment(A_before, dA, P["ln_post_attn.g"], cfg.ln_eps)
        A_before = kinds.norm(P, cfg, "ln_post_attn", A_before, torch_ops.OPS)
    before = x[..., None, :] + A_before                                             # the LN input of prefix i − 1
    g = P["ln1.g"] if cfg.kind == "post-ln" else P["ln2.g"]
    if cfg.norm_kind == "rms":
        return rms_norm_increment(before, dA, cfg.norm_offset + g, cfg.ln_eps)
    return layer_norm_increment(before, dA, g, cfg.ln_eps)


def gram_norm(y: torch.Tensor, G: torch.Tensor):
    """``(‖W y‖, G y)`` rowwise from the Gram matrix ``G = WᵀW`` (``‖W y‖² = yᵀ G y``), never forming ``W y``.

    Rows whose ``yᵀ G y`` is safely inside the dtype's range take the direct product; the rest (tiny steps of
    1e-23 in float32 that would underflow when squared, or huge ones that would overflow) are recomputed with each
    row scaled by its largest entry first. ``y`` (..., D) → (...), (..., D).
    """
    yG = y @ G                                                                      # (..., D)
    q = (yG * y).sum(-1)                                                            # (...)
    norm = torch.sqrt(q.clamp_min(0))
    info = torch.finfo(q.dtype)
    bad = ~((q > info.tiny / info.eps) & (q < info.max * info.eps))                 # zero rows land here too
    if bool(bad.any()):                                                             # rare: rescale those rows only
        idx = bad.nonzero(as_tuple=True)
        s = y[idx].abs().amax(-1, keepdim=True)                                     # (K, 1)
        z = y[idx] / torch.where(s > 0, s, 1)
        zG = z @ G                                                                  # (K, D)
        norm[idx] = torch.sqrt((zG * z).sum(-1).clamp_min(0)) * s[..., 0]
        yG[idx] = zG * s
    return norm, yG


def layer_norm_increment(y: torch.Tensor, dy: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``LN(y + dy) − LN(y)`` without subtracting two LayerNorm outputs (the shift ``b`` cancels).

    With ``c = y − mean y``, ``dc = dy − mean dy``, ``σ² = mean c² + eps`` and
    ``σ'² = σ² + 2 mean(c·dc) + mean(dc²)``:
    ``LN(y+dy) − LN(y) = g ⊙ (dc/σ' + c (1/σ' − 1/σ))`` and ``1/σ' − 1/σ = −(σ'² − σ²)/(σ σ' (σ + σ'))``;
    every term is proportional to ``dy``, so the result has relative (not absolute) round-off.
    """
    c = y - y.mean(-1, keepdim=True)
    dc = dy - dy.mean(-1, keepdim=True)
    var = (c * c).mean(-1, keepdim=True) + eps                                       # σ²
    dvar = 2 * (c * dc).mean(-1, keepdim=True) + (dc * dc).mean(-1, keepdim=True)    # σ'² − σ²
    sd, sd_new = torch.sqrt(var), torch.sqrt(var + dvar)
    return g * (dc / sd_new - c * dvar / (sd * sd_new * (sd + sd_new)))


def scan_trajectory(P0: dict, cfg, context: torch.Tensor, query: torch.Tensor, slab: int, acc: torch.dtype,
                    checks, keep: bool = False) -> Trajectory:
    """The torch backend's ``trajectory`` on checked inputs (``P0`` params, ``context`` (..., n, D), ``query``
    (..., D) in the output dtype): the scan's attention, then the taps and every field of the Trajectory, slab by
    slab. ``acc`` is the dtype the scan accumulates in; ``checks`` (``torch_checks.Checks``) raises on a zero
    ``‖a‖²`` or an overflow. With ``keep`` the per-prefix vectors (``delta``, ``delta_b``, ``steps``) are written as
    the scan goes; without, the Trajectory forms them by scanning again when one is first read, so a caller that
    reads the norms alone holds O(n) numbers, not O(n·d)."""
    out_dtype = query.dtype
    P = {k: v.to(acc) for k, v in P0.items()}
    x = query.to(acc)                                                            # (..., D)
    batch, n, D = x.shape[:-1], context.shape[-2], cfg.d_model
    scan = prefix_attention_scan(P, cfg, x, context, slab)
    A0 = next(scan)                                                              # (..., D): the query alone
    a0, r0 = torch_ops.taps_from_attention(P, cfg, x, A0)
    checks.norm(a0, cfg, "the query")
    a_norm_sq = (a0 * a0).sum(-1)                                                # (...)
    W0 = P["mlp.W"]
    G = W0.T @ W0                                                                # (D, D) Gram matrix

    # outputs, filled slab by slab (row 0 of delta/delta_b/dW_sq is the query alone: exactly 0)
    if keep:
        delta = torch.empty(*batch, n + 1, D, dtype=out_dtype, device=x.device)
        delta_b = torch.zeros_like(delta) if cfg.kind == "plain" else torch.empty_like(delta)
        steps = torch.empty(*batch, n, D, dtype=out_dtype, device=x.device)
        delta[..., 0, :] = 0
        delta_b[..., 0, :] = 0
    dW_n = torch.empty(*batch, n + 1, dtype=acc, device=x.device)
    step_n = torch.empty(*batch, n, dtype=acc, device=x.device)
    loss = torch.empty(*batch, n, dtype=acc, device=x.device)
    dW_n[..., 0] = 0
    A_prev = A0                                                                  # the previous prefix's attention
    a_prev = a0
    for s0, A, dA in scan:
        a, r = torch_ops.taps_from_attention(P, cfg, x[..., None, :].expand_as(A), A)
        da = tap_increments(P, cfg, x, A, dA, A_prev)                           # (..., S, D)
        A_prev = A[..., -1, :]
        S = A.shape[-2]
        d = a - a0[..., None, :]
        if keep:
            delta[..., s0 + 1:s0 + 1 + S, :] = d
            if cfg.kind != "plain":                                              # plain: r ≡ 0, Δb ≡ 0
                delta_b[..., s0 + 1:s0 + 1 + S, :] = r - r0[..., None, :]
            steps[..., s0:s0 + S, :] = da
        dW_n[..., s0 + 1:s0 + 1 + S] = gram_norm(d, G)[0]                      # ‖u_i‖ = √(δ_iᵀ G δ_i)
        step_n[..., s0:s0 + S], daG = gram_norm(da, G)
        a_before = torch.cat([a_prev[..., None, :], a[..., :-1, :]], -2)         # a_i for step i → i+1
        loss[..., s0:s0 + S] = -(daG * a_before).sum(-1)                         # tr(Δ_iᵀW_i) = −stepᵀ G a_i
        a_prev = a[..., -1, :]
    out = _norm_fields(dW_n, step_n, loss, a0, r0, a_norm_sq, out_dtype)
    relative_change = out.pop("relative_change")
    # in the output dtype (float16 overflows at 65504); relative_change is nan at i = 0 by definition, and a
    # plain block's delta_b is zero by construction
    checks.finite("trajectory", **out, **({"delta_b": delta_b} if keep and cfg.kind != "plain" else {}))
    if keep:
        kept, rescan = {"delta": delta, "delta_b": delta_b, "steps": steps}, None
    else:
        kept = {}
        rescan = lambda: scan_trajectory(P0, cfg, context, query, slab, acc, checks, keep=True).kept  # noqa: E731
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


def rms_norm_increment(y: torch.Tensor, dy: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMS(y + dy) − RMS(y)`` without subtracting two RMSNorm outputs (gain ``g``, already offset).

    With ``σ² = mean y² + eps`` and ``σ'² = σ² + 2 mean(y·dy) + mean(dy²)``:
    ``RMS(y+dy) − RMS(y) = g ⊙ (dy/σ' + y (1/σ' − 1/σ))``, ``1/σ' − 1/σ = −(σ'² − σ²)/(σ σ' (σ + σ'))``: every term
    is proportional to ``dy`` (relative round-off), as in :func:`layer_norm_increment` without the centring.
    """
    var = (y * y).mean(-1, keepdim=True) + eps                                       # σ²
    dvar = 2 * (y * dy).mean(-1, keepdim=True) + (dy * dy).mean(-1, keepdim=True)    # σ'² − σ²
    sd, sd_new = torch.sqrt(var), torch.sqrt(var + dvar)
    return g * (dy / sd_new - y * dvar / (sd * sd_new * (sd + sd_new)))
