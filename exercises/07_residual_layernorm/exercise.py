"""Exercise 7: residual and LayerNorm blocks (your file).

Replace every `raise NotImplementedError` with your code, then run
    implicit-icl exercises check 7
or  pytest exercises/07_residual_layernorm

P2 (Innocenti & Achour, arXiv 2512.11255, main result; THEORY §3b). A real block has a residual stream and
LayerNorms. Every block kind is described by two "taps": a, the vector the MLP's first matrix W reads, and r, the
residual added around the MLP, so that  out = r + MLP(a):

    residual:  r = Z + A(Z),             a = r
    pre-ln:    r = Z + A(LN1(Z)),        a = LN2(r)              (GPT-2)

The implicit update keeps its form with a = the tap WITHOUT context (the query alone) and adds a bias update to
the MLP's LAST bias b_out:

    ΔW = W (a_C − a_x) a_xᵀ / ‖a_x‖²,      Δb_out = r_C − r_x

For pre-ln the rank-1 pair is built from the post-LN2 vectors a, the bias from the pre-LN2 residuals r.

LayerNorm over the last axis:  LN(x) = g ⊙ (x − mean(x)) / sqrt(var(x) + eps) + b  (population variance).
Use ``self_attention(params, cfg, X)`` (imported below): the raw multi-head attention at every position of X,
WITHOUT any LayerNorm. The LayerNorm params are "ln1.g", "ln1.b", "ln2.g", "ln2.b"; eps is cfg.ln_eps.
"""
import numpy as np

from implicit_icl.reference.layers import self_attention


def layer_norm(x, g, b, eps):
    """LayerNorm over the last axis of x (any shape (..., D)); g, b: (D,). Returns the shape of x."""
    raise NotImplementedError  # your code here


def taps_residual(params, cfg, Z):
    """(a, r) of a ``residual`` block at every position of Z (T, D): r = Z + A(Z), a = r. Each (T, D)."""
    raise NotImplementedError  # your code here


def taps_pre_ln(params, cfg, Z):
    """(a, r) of a ``pre-ln`` block at every position of Z (T, D): r = Z + A(LN1 Z), a = LN2(r). Each (T, D)."""
    raise NotImplementedError  # your code here


def update_pre_ln(params, cfg, context, query):
    """The implicit update of a pre-ln block that removes the whole context: (ΔW (M, D), Δb_out (D,)).

    a_C, r_C: the taps at the query's position of [C, x]; a_x, r_x: the taps of [x] alone.
    ΔW = W (a_C − a_x) a_xᵀ/‖a_x‖²,  Δb_out = r_C − r_x.
    """
    raise NotImplementedError  # your code here
