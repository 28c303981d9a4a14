"""Exercise 3: the rank-1 update and the identity T_W(C, x) = T_{W+ΔW}(x) (a DELIBERATELY WRONG solution).

For teachers and CI: rank1_update divides by ‖A(x)‖ instead of ‖A(x)‖², so ΔW is ‖A(x)‖ times too large.

P1 Thm 2.2 with Y = C (arXiv 2507.16003 §2): for a block T_W = M_W ∘ A whose MLP starts with the matrix W,

    ΔW = (W ΔA) A(x)ᵀ / ‖A(x)‖²,    ΔA = A(C, x) − A(x),

and the block run on the query alone with W + ΔW gives exactly the output with the whole context.
Proof in one line: (W + ΔW) A(x) = W A(x) + W ΔA = W A(C, x).

The block here is ``plain`` (out = MLP(A), P1's main theorem). params["mlp.W"] is W, shape (M, D).
You may use ``attention(params, cfg, Z)`` from the reference (the attention output at every position of Z).
"""
import numpy as np

from implicit_icl.reference import attention


def rank1_update(params, cfg, context, query):
    """ΔW(C) = (W ΔA) A(x)ᵀ / ‖A(x)‖², shape (M, D).

    context: (n, D); query: (D,). A(C, x) is the last row of attention on [C, x]; A(x) is attention on [x] alone.
    The right factor is A(x), the vector W will read when the query runs alone.
    """
    A_C = attention(params, cfg, np.concatenate([context, query[None]]))[-1]   # (D,)
    A_x = attention(params, cfg, query[None])[0]                                # (D,)
    u = params["mlp.W"] @ (A_C - A_x)                                           # (M,): W ΔA
    return np.outer(u, A_x) / np.linalg.norm(A_x)                               # (M, D)


def apply_rank1_update(params, delta_W):
    """New params with mlp.W replaced by W + ΔW; every other entry unchanged. Do not modify ``params`` itself."""
    new = dict(params)
    new["mlp.W"] = params["mlp.W"] + delta_W
    return new


def update_norm(params, cfg, context, query):
    """‖ΔW‖_F computed from the factors, without forming the matrix: ‖W ΔA‖ / ‖A(x)‖ (a float).

    For a rank-1 matrix u aᵀ/‖a‖² the Frobenius and spectral norms agree and equal ‖u‖/‖a‖ (THEORY §10.4).
    """
    A_C = attention(params, cfg, np.concatenate([context, query[None]]))[-1]
    A_x = attention(params, cfg, query[None])[0]
    return float(np.linalg.norm(params["mlp.W"] @ (A_C - A_x)) / np.linalg.norm(A_x))
