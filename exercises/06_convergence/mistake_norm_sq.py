"""Exercise 6: convergence of the implicit dynamics, trained model vs untrained (a DELIBERATELY WRONG solution).

For teachers and CI: step_norms divides by ‖A(x)‖² (as ΔW's formula does) instead of ‖A(x)‖.

P1 §4 (arXiv 2507.16003), Fig. 2 in v1: on in-context linear regression, the marginal update
‖ΔW_{i+1} − ΔW_i‖ shrinks towards 0 as the number i of context tokens consumed grows, "like converging gradient
descent". With ΔW_i = W_0 (A_i − A_0) A_0ᵀ/‖A_0‖² (exercise 5) the step is rank 1 and its norm comes from the factors:

    ‖ΔW_{i+1} − ΔW_i‖ = ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖,        ‖ΔW_i‖ = ‖W_0 (A_i − A_0)‖ / ‖A(x)‖.

THEORY §8.5: softmax attention over i.i.d. tokens is a running weighted mean, so the steps shrink roughly like
1/i EVEN IN AN UNTRAINED BLOCK. An honest plot puts a random-init baseline next to the trained model.

A prompt is a row stack Z (n + 1, D): n context rows (x_i, y_i) and the query row (x_q, 0) last.
You may use ``attention(params, cfg, Z)`` from the reference.
"""
import numpy as np

from implicit_icl.reference import attention


def _prefix_taps(params, cfg, context, query):
    """A_i = A(c_1..c_i, x) for i = 0..n, (n + 1, D) (exercise 5)."""
    return np.stack([attention(params, cfg, np.concatenate([context[:i], query[None]]))[-1]
                     for i in range(context.shape[0] + 1)])


def step_norms(params, cfg, context, query):
    """‖ΔW_{i+1} − ΔW_i‖ for i = 0..n−1, shape (n,): entry i is the step that consumes token c_{i+1}.

    Use the factors: ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖ (never form the matrices).
    """
    A = _prefix_taps(params, cfg, context, query)                    # (n + 1, D)
    steps = np.diff(A, axis=0) @ params["mlp.W"].T                   # (n, M): W_0 (A_{i+1} − A_i)
    return np.linalg.norm(steps, axis=1) / (A[0] @ A[0])             # (n,)


def delta_W_norms(params, cfg, context, query):
    """‖ΔW_i‖ for i = 0..n, shape (n + 1,); entry 0 is 0 (no context, no update)."""
    A = _prefix_taps(params, cfg, context, query)                    # (n + 1, D)
    return np.linalg.norm((A - A[0]) @ params["mlp.W"].T, axis=1) / np.linalg.norm(A[0])


def mean_step_norms(params, cfg, Z):
    """The step norms averaged over a batch of prompts Z (B, n + 1, D) (context = Z[b, :-1], query = Z[b, -1]).
    Returns (n,)."""
    return np.mean([step_norms(params, cfg, z[:-1], z[-1]) for z in Z], axis=0)


def decay_exponent(steps):
    """The exponent p of a power law steps[k] ≈ c (k + 1)^p, by a least-squares line through
    (log(k + 1), log steps[k]), k = 0..n−1. A float; p ≈ −1 means the steps shrink like 1/i."""
    k = np.arange(1, len(steps) + 1)
    return float(np.polyfit(np.log(k), np.log(steps), 1)[0])
