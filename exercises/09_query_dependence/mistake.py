"""Exercise 9: the update belongs to its query, and one least-squares patch for many queries (a DELIBERATELY WRONG solution).

For teachers and CI: patch averages the K exact updates ΔW(C, x_k) instead of solving ΔW a_k = u_k in least
squares. K = 1 is still right; with several queries the average fits none of them.

For a query x: ΔW(C, x) = u aᵀ/‖a‖², a = a(x), u = W (a(C, x) − a(x)), and Δb = r(C, x) − r(x)
(P1 Thm 2.2; ``implicit_update`` returns them as Update(u, a, delta_b)). It is exact for x and, in general,
wrong for any other query x′ (THEORY §8.2). A patch for K queries: ΔW A = U in least squares, ΔW = U A⁺ with
A = [a_1 … a_K] (D × K), U = [u_1 … u_K] (M × K); Δb the mean of the Δb_k.
"""
import numpy as np

from implicit_icl.reference import apply_update, block_output, implicit_update


def output_with_update_of(params, cfg, context, x, x_other):
    """T_{W+ΔW(C,x), b+Δb(C,x)}(x_other): x_other run ALONE through the block updated for x, shape (D,).

    For x_other = x this is T_W(C, x) (the theorem); for another query it is not T_W(C, x_other).
    """
    updated = apply_update(params, implicit_update(params, cfg, context, x))
    return block_output(updated, cfg, context[:0], x_other)                     # (D,): no context


def patch(params, cfg, context, queries):
    """One update for all K queries (rows of ``queries``, shape (K, D)): returns (delta_W (M, D), delta_b (D,)).

    delta_W is the minimum-norm least-squares solution of delta_W a_k = u_k for every k (the u_k, a_k of each
    query's own implicit update); delta_b is the mean of their delta_b. K = 1 gives that query's own update.
    """
    updates = [implicit_update(params, cfg, context, q) for q in queries]
    delta_W = np.mean([up.delta_W for up in updates], axis=0)                   # (M, D): the average of the updates
    delta_b = np.mean([up.delta_b for up in updates], axis=0)                   # (D,)
    return delta_W, delta_b


def patch_misses(params, cfg, context, delta_W, delta_b, test_queries):
    """For each test query x (rows of ``test_queries``, (T, D)): max |T_{W+ΔW, b+Δb}(x alone) − T_W(C, x)|, shape (T,).

    How far the patched block, run on the query alone, is from what the context does for that query.
    """
    patched = dict(params, **{"mlp.W": params["mlp.W"] + delta_W, "mlp.b_out": params["mlp.b_out"] + delta_b})
    return np.array([np.max(np.abs(block_output(patched, cfg, context[:0], x) - block_output(params, cfg, context, x)))
                     for x in test_queries])                                    # (T,)
