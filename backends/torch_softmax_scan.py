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

BLOCK = 64


def _direct(s: torch.Tensor, V: torch.Tensor):
    """``(m, N)`` for short sequences by a masked ``L × L`` weighted sum; ``s`` (..., L), ``V`` (..., L, e)."""
    L = s.shape[-1]
    m = torch.cummax(s, dim=-1).values                                   # (..., L)
    m_ref = torch.where(torch.isfinite(m), m, 0)                         # rows of padding only: weights 0, not nan
    w = s[..., None, :] - m_ref[..., :, None]                            # (..., L, L) [i, j], ≤ 0 where j ≤ i
    upper = torch.ones(L, L, dtype=torch.bool, device=s.device).triu(1)  # j > i (L ≤ BLOCK: no cache worth keeping)
    w.masked_fill_(upper, -torch.inf).exp_()                             # weights exp(s_j − m_i), 0 where j > i
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
    L, e = s.shape[-1], v.shape[-1]
    o, p, new_carry, bad, (s, v, M, P) = _chunk_means(s, v, carry, chunk, rise)
    if bool(bad.any()):
        idx = bad.nonzero(as_tuple=True)
        sb, vb = s[idx], v[idx]                                                  # (K, B), (K, B, e)
        mb, Nb = prefix_softmax_scan(sb, torch.cat([vb, torch.ones_like(vb[..., :1])], -1))
        mb, Nb = combine(M[idx][:, None], P[idx][:, None, :], mb, Nb)           # (K, B), (K, B, e+1)
        o[idx] = Nb[..., :e] / Nb[..., e:]
        p[idx] = torch.exp(sb - mb) / Nb[..., e]
    return _unchunk(o, p, L, new_carry)


def fast_prefix_softmax_means(s: torch.Tensor, v: torch.Tensor, carry, chunk: int = CHUNK, rise: float = RISE):
    """:func:`prefix_softmax_means` without its rescue and without a data-dependent branch (so it compiles to one
    graph): ``(o, p, new_carry, exact_needed)``, where ``exact_needed`` (a 0-d bool tensor) says some chunk's
    running max rose by more than ``rise``, and then ``o`` and ``p`` must be recomputed by
    :func:`prefix_softmax_means` (``new_carry`` is the same either way: it is formed from the chunks' totals)."""
    o, p, new_carry, bad, _ = _chunk_means(s, v, carry, chunk, rise)
    return (*_unchunk(o, p, s.shape[-1], new_carry), bad.any())


def _chunk_means(s: torch.Tensor, v: torch.Tensor, carry, chunk: int, rise: float):
    """The chunked cumulative-sum means of :func:`prefix_softmax_means` before any rescue: ``o`` (..., C, B, e),
    ``p`` (..., C, B), the new carry, ``bad`` (..., C) (the chunks the cumulative sums cannot be trusted on) and
    what a rescue needs (the padded ``s``, ``v`` by chunk and the scan ``M``, ``P`` over the chunks before each)."""
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
    num = num + (f[..., None] * P[..., :e])[..., None, :]
    den = den + (f * P[..., e])[..., None]
    o = num / den[..., None]                                                     # (..., C, B, e)
    p = w / den                                                                  # (..., C, B)
    bad = (R - m[..., 0]) > rise                                                 # (..., C)
    return o, p, new_carry, bad, (s, v, M, P)


def _unchunk(o: torch.Tensor, p: torch.Tensor, L: int, new_carry):
    """``(o, p, new_carry)`` with the chunks flattened back to the L tokens (the padding dropped)."""
    o = o.reshape(*o.shape[:-3], -1, o.shape[-1])[..., :L, :]                    # (..., L, e)
    p = p.reshape(*p.shape[:-2], -1)[..., :L]                                     # (..., L)
    return o, p, new_carry
