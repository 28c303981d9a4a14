"""An RNN as the contextual layer (THEORY §5.4: a later P1 version uses one; its marginal updates do not converge).

P1's theorem needs nothing of attention: any contextual layer ``A(C, x)`` followed by an MLP gives the rank-1
update ``ΔW = W (A(C, x) − A(x)) A(x)ᵀ/‖A(x)‖²`` (THEORY §2). Here ``A`` is an Elman RNN read out at the query::

    h_0 = 0,   h_t = tanh(W_h h_{t−1} + W_z z_t + b_h),   A(z_1..z_T) = W_o h_T + b_o       (z_T = x, the query)

so ``A(c_1..c_i, x)`` for every prefix comes from one pass over the context (the state after ``c_1..c_i``, then one
step on ``x``). Unlike softmax attention, which averages (its increments shrink like 1/i, THEORY §8.5), the RNN's
state moves by O(1) with every token: its steps ``‖ΔW_{i+1} − ΔW_i‖`` need not shrink. The MLP on top is the
``plain`` block's (``out = MLP(A)``), from ``reference.layers.mlp``.
"""
from __future__ import annotations

import numpy as np

from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.layers import mlp


def init_rnn(d_model: int, d_hidden: int, d_mlp: int, seed: int, spectral_radius: float = 0.9) -> dict:
    """Random RNN + MLP parameters; ``W_h`` scaled to the given spectral radius (< 1: a contracting memory)."""
    rng = np.random.default_rng([seed, 6])
    W_h = rng.standard_normal((d_hidden, d_hidden))
    W_h *= spectral_radius / np.max(np.abs(np.linalg.eigvals(W_h)))
    return {
        "rnn.W_h": W_h,                                                          # (H, H)
        "rnn.W_z": rng.standard_normal((d_hidden, d_model)) / np.sqrt(d_model),  # (H, D)
        "rnn.b_h": 0.1 * rng.standard_normal(d_hidden),
        "rnn.W_o": rng.standard_normal((d_model, d_hidden)) / np.sqrt(d_hidden),  # (D, H)
        "rnn.b_o": 0.1 * rng.standard_normal(d_model),
        "mlp.W": rng.standard_normal((d_mlp, d_model)) / np.sqrt(d_model),       # (M, D): the paper's W
        "mlp.b": 0.1 * rng.standard_normal(d_mlp),
        "mlp.W_out": rng.standard_normal((d_model, d_mlp)) / np.sqrt(d_mlp),
        "mlp.b_out": 0.1 * rng.standard_normal(d_model),
    }


def _step(p: dict, h: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.tanh(h @ p["rnn.W_h"].T + z @ p["rnn.W_z"].T + p["rnn.b_h"])


def run(p: dict, Z: np.ndarray) -> np.ndarray:
    """``A(z_1..z_T)``: the RNN over the whole sequence ``Z`` (T, D), read out after the last row, ``(D,)``."""
    h = np.zeros(p["rnn.W_h"].shape[0])
    for z in Z:
        h = _step(p, h, z)
    return h @ p["rnn.W_o"].T + p["rnn.b_o"]


def prefix_taps(p: dict, context: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``A(c_1..c_i, x)`` for i = 0..n, ``(n+1, D)``: one pass over the context, one query step per prefix."""
    H = p["rnn.W_h"].shape[0]
    states = [np.zeros(H)]
    for c in context:                                                            # h_i after c_1..c_i
        states.append(_step(p, states[-1], c))
    h = _step(p, np.stack(states), query)                                        # (n+1, H): then x
    return h @ p["rnn.W_o"].T + p["rnn.b_o"]                                     # (n+1, D)


def step_norms(p: dict, context: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, float]:
    """``‖ΔW_{i+1} − ΔW_i‖`` for i = 0..n−1 (P1 Prop. 3.1 with the RNN's taps), and the largest identity error
    ``max_i |MLP_{W+ΔW_i}(A(x)) − MLP_W(A(c_1..c_i, x))|`` with both sides from :func:`run`, the RNN re-run on the
    query alone and on each checked prefix (every eighth, and the whole context): the theorem for an RNN."""
    a = prefix_taps(p, context, query)                                           # (n+1, D)
    u = (a - a[0]) @ p["mlp.W"].T                                                # (n+1, M)
    a_norm = np.linalg.norm(a[0])
    cfg = BlockConfig(d_model=a.shape[1], d_mlp=u.shape[1], activation="relu")
    alone = run(p, query[None])                                                  # A(x), independently of a[0]
    err = 0.0
    n = len(context)
    for i in sorted(set(range(0, n + 1, max(1, (n + 1) // 8))) | {n}):
        updated = dict(p, **{"mlp.W": p["mlp.W"] + np.outer(u[i], a[0]) / a_norm ** 2})
        with_context = run(p, np.concatenate([context[:i], query[None]]))        # A(c_1..c_i, x), re-run
        err = max(err, float(np.max(np.abs(mlp(updated, cfg, alone) - mlp(p, cfg, with_context)))))
    return np.linalg.norm(np.diff(u, axis=0), axis=1) / a_norm, err             # (n,), float
