"""Exercise 8: the update at every position of a GPT-2 style (pre-ln) block (your file).

Replace every `raise NotImplementedError` with your code, then run
    implicit-icl exercises check 8
or  pytest exercises/08_pre_ln_block

P2 (Innocenti & Achour, arXiv 2512.11255, main result and its code; THEORY §3b). Take a sequence Z (T, D) and its
last token x = Z_T. For EVERY position i, running the block on x ALONE with

    ΔW_i = W (a_i − a_x) a_xᵀ / ‖a_x‖²,      Δb_i = r_i − r_x

reproduces the block output at position i with full (causal) context: Block_{W+ΔW_i, b+Δb_i}([x]) = Block(Z)_i.
Here (a_i, r_i) are the taps of Z at position i and (a_x, r_x) those of [x] alone. Δb_i = ΔA_i + Δz_i contains
the swap Δz_i = Z_i − x of the token itself, not only the attention difference.

All ΔW_i share the right factor a_x, so  Σ_i ΔW_i has rank ≤ 1  and the normalised Frobenius inner product
⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖ ‖ΔW_j‖) is just the cosine of the left factors u_i = W (a_i − a_x).

The block is pre-ln (GPT-2 style): several heads, GELU, attention biases, trained-looking LayerNorms.
Use ``taps(params, cfg, Z)`` from the reference (exercise 7's taps for every kind): it returns (a, r), each (T, D).
"""
import numpy as np

from implicit_icl.reference import taps


def position_updates_last(params, cfg, Z):
    """P2's updates for every position, with the last token as the query, kept factored.

    Returns (u, a_x, delta_b): u (T, M) with u_i = W (a_i − a_x); a_x (D,); delta_b (T, D) with Δb_i = r_i − r_x.
    """
    raise NotImplementedError  # your code here


def delta_W_from_factors(u, a):
    """ΔW_i = u_i aᵀ / ‖a‖² for every row of u (T, M); a (D,). Returns (T, M, D)."""
    raise NotImplementedError  # your code here


def alignment(u):
    """The (T, T) matrix of ⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖_F ‖ΔW_j‖_F), computed from the left factors u (T, M) alone.
    Its diagonal is 1."""
    raise NotImplementedError  # your code here


def rank_of_sum(u, a, tol=1e-10):
    """The numerical rank of Σ_i ΔW_i: the number of singular values above tol × the largest (an int)."""
    raise NotImplementedError  # your code here
