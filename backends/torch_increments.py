"""The exact increments of the trajectory's taps and the Gram-matrix norms of the updates (torch).

The trajectory moves by tiny steps late in a long context (1e-6 of ``a`` at a million tokens), so its steps are never
formed by subtracting two taps: the attention increment ``A_i − A_{i−1}`` comes exact from the scan
(``torch_softmax_scan``), and the norms' increments below are written so that every term is proportional to it
(relative, not absolute, round-off). ``‖u‖ = ‖W y‖`` is read from ``G = WᵀW`` without forming ``W y``
(DESIGN "Updates stay factored").
"""
from __future__ import annotations

import torch

from implicit_icl.reference import kinds

from . import torch_ops


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
    norm, yG, bad = _gram_norm(y, G)
    if bool(bad.any()):                                                             # rare: rescale those rows only
        idx = bad.nonzero(as_tuple=True)
        s = y[idx].abs().amax(-1, keepdim=True)                                     # (K, 1)
        z = y[idx] / torch.where(s > 0, s, 1)
        zG = z @ G                                                                  # (K, D)
        norm[idx] = torch.sqrt((zG * z).sum(-1).clamp_min(0)) * s[..., 0]
        yG[idx] = zG * s
    return norm, yG


def fast_gram_norm(y: torch.Tensor, G: torch.Tensor):
    """:func:`gram_norm` without its rescue (one graph, no data-dependent branch): ``(norm, G y, rescale_needed)``,
    ``rescale_needed`` a 0-d bool tensor saying some row's ``yᵀ G y`` was outside the safe range, and then
    :func:`gram_norm` must be used."""
    norm, yG, bad = _gram_norm(y, G)
    return norm, yG, bad.any()


def _gram_norm(y: torch.Tensor, G: torch.Tensor):
    """The direct ``(‖W y‖, G y)`` and which rows (...) are outside the range where ``yᵀ G y`` is exact."""
    yG = y @ G                                                                      # (..., D)
    q = (yG * y).sum(-1)                                                            # (...)
    info = torch.finfo(q.dtype)
    bad = ~((q > info.tiny / info.eps) & (q < info.max * info.eps)) & (y.abs().amax(-1) > 0)  # a zero row is exact
    return torch.sqrt(q.clamp_min(0)), yG, bad


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
