"""Exercise 4: removing a subset Y of the context, and why ΔW(Y) is the minimal update (reference solution).

P1 Thm 2.2 (arXiv 2507.16003 §2) for any Y ⊆ C with A(C\\Y, x) ≠ 0:

    T_W(C, x) = T_{W + ΔW(Y)}(C\\Y, x),    ΔW(Y) = (W ΔA(Y)) a ᵀ / ‖a‖²,   a = A(C\\Y, x),
    ΔA(Y) = A(C, x) − A(C\\Y, x).

ΔW(Y) is not the only matrix that works: any ΔW + N with N a = 0 gives the same pre-activation. Every such N
is M P for some matrix M, where P = I − a aᵀ/‖a‖² projects onto the vectors orthogonal to a. Since the rows of
ΔW are multiples of aᵀ and the rows of M P are orthogonal to a,  ‖ΔW + M P‖²_F = ‖ΔW‖²_F + ‖M P‖²_F:
ΔW(Y) is the minimum-Frobenius-norm solution of ΔW a = W ΔA(Y) (THEORY §2, §10.5).

You may use ``attention(params, cfg, Z)`` from the reference.
"""
import numpy as np

from implicit_icl.reference import attention


def rank1_update_remove(params, cfg, context, query, remove):
    """ΔW(Y) for Y = the context tokens at the indices ``remove`` (a list of ints), shape (M, D).

    The right factor is a = A(C\\Y, x): the tap with only the KEPT tokens, because that is what W reads after
    the update. remove = [] gives ΔW = 0; remove = all indices gives exercise 3's ΔW(C).
    """
    kept = np.delete(context, list(remove), axis=0)                               # (n − |Y|, D)
    a_C = attention(params, cfg, np.concatenate([context, query[None]]))[-1]       # (D,) A(C, x)
    a = attention(params, cfg, np.concatenate([kept, query[None]]))[-1]            # (D,) A(C\Y, x)
    return np.outer(params["mlp.W"] @ (a_C - a), a) / (a @ a)                       # (M, D)


def projector_perp(a):
    """P = I − a aᵀ/‖a‖², the (D, D) orthogonal projector onto the vectors orthogonal to a: P a = 0, P² = P."""
    return np.eye(a.shape[0]) - np.outer(a, a) / (a @ a)


def other_solution(delta_W, a, M):
    """Another update with the same effect: ΔW + M P, where P = projector_perp(a) and M has the shape of ΔW.

    (ΔW + M P) a = ΔW a because P a = 0, so the block output is unchanged, but the norm is larger.
    """
    return delta_W + M @ projector_perp(a)
