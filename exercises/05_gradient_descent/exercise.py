"""Exercise 5: token-by-token dynamics as gradient descent (your file).

Replace every `raise NotImplementedError` with your code, then run
    implicit-icl exercises check 5
or  pytest exercises/05_gradient_descent

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
    raise NotImplementedError  # your code here


def step_size(params, cfg, query):
    """h = 1/‖A(x)‖² (a float): the step size, set by the query alone."""
    raise NotImplementedError  # your code here


def W_sequence(params, cfg, context, query):
    """W_i = W_0 + W_0 (A_i − A_0) A_0ᵀ/‖A_0‖² for i = 0..n, stacked: shape (n + 1, M, D). W_0 = params["mlp.W"]."""
    raise NotImplementedError  # your code here


def gradients(params, cfg, context, query):
    """Δ_i = W_0 (A_i − A_{i+1}) A(x)ᵀ for i = 0..n−1, stacked: shape (n, M, D)."""
    raise NotImplementedError  # your code here


def linear_loss(W, Delta):
    """L(W) = trace(Δᵀ W) = Σ_jk Δ_jk W_jk, a scalar.

    Written with ``*`` and ``.sum()`` it works on NumPy arrays AND on torch tensors, and the grader differentiates
    it with torch autograd; NumPy-only code (np.trace) is differentiated by finite differences instead.
    """
    raise NotImplementedError  # your code here
