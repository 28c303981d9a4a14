"""Exercise 5: token-by-token dynamics as gradient descent (reference solution).

P1 §3, Proposition 3.1 (arXiv 2507.16003). Fix the query x and feed the context one token at a time. Write
A_i := A(c_1..c_i, x) (so A_0 = A(x)) and W_0 = W. Absorbing the first i tokens gives

    W_i = W_0 + ΔW_0(c_1..c_i) = W_0 + W_0 (A_i − A_0) A_0ᵀ / ‖A_0‖²,     T_{W_i}(x) = T_{W_0}(c_1..c_i, x).

Consecutive matrices follow online gradient descent on a LINEAR loss:

    W_{i+1} = W_i − h ∇_W L_i(W_i),   h = 1/‖A(x)‖²,   L_i(W) = trace(Δ_iᵀ W),
    Δ_i = W_0 (A_i − A_{i+1}) A(x)ᵀ            (step i consumes token c_{i+1}).

Because L_i is linear, ∇_W L_i(W) = Δ_i whatever W is: the "gradient descent" is an exact rewriting of a
telescoping sum, not a fitted optimiser (THEORY §4, §8.4).

You may use ``attention(params, cfg, Z)`` from the reference.
"""
import numpy as np

from implicit_icl.reference import attention


def prefix_taps(params, cfg, context, query):
    """A_i = A(c_1..c_i, x) for i = 0..n, stacked: shape (n + 1, D). Row 0 is A(x), the query alone."""
    n = context.shape[0]
    return np.stack([attention(params, cfg, np.concatenate([context[:i], query[None]]))[-1]
                     for i in range(n + 1)])                                   # (n + 1, D)


def step_size(params, cfg, query):
    """h = 1/‖A(x)‖² (a float): the step size, set by the query alone."""
    A_x = attention(params, cfg, query[None])[0]
    return float(1.0 / (A_x @ A_x))


def W_sequence(params, cfg, context, query):
    """W_i = W_0 + W_0 (A_i − A_0) A_0ᵀ/‖A_0‖² for i = 0..n, stacked: shape (n + 1, M, D). W_0 = params["mlp.W"]."""
    A = prefix_taps(params, cfg, context, query)                               # (n + 1, D)
    W0 = params["mlp.W"]
    u = (A - A[0]) @ W0.T                                                      # (n + 1, M): W_0 (A_i − A_0)
    return W0 + u[:, :, None] * A[0][None, None, :] / (A[0] @ A[0])            # (n + 1, M, D)


def gradients(params, cfg, context, query):
    """Δ_i = W_0 (A_i − A_{i+1}) A(x)ᵀ for i = 0..n−1, stacked: shape (n, M, D)."""
    A = prefix_taps(params, cfg, context, query)                               # (n + 1, D)
    g = (A[:-1] - A[1:]) @ params["mlp.W"].T                                   # (n, M): W_0 (A_i − A_{i+1})
    return g[:, :, None] * A[0][None, None, :]                                 # (n, M, D)


def linear_loss(W, Delta):
    """L(W) = trace(Δᵀ W) = Σ_jk Δ_jk W_jk, a scalar.

    Written with ``*`` and ``.sum()`` it works on NumPy arrays AND on torch tensors, and the grader differentiates
    it with torch autograd; NumPy-only code (np.trace) is differentiated by finite differences instead.
    """
    return (Delta * W).sum()
