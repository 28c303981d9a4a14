"""Token-by-token implicit dynamics for a fixed query (P1 §3, Prop. 3.1; App. B's factorised form).

With ``W_0 = W`` and ``W_i = W_0 + ΔW_0(c_1..c_i)``, the block with ``i`` tokens of context equals the block
with ``W_i`` on the query alone. Consecutive ``W_i`` follow online "gradient descent"
``W_{i+1} = W_i − h ∇_W L_i(W_i)`` with ``h = 1/‖a‖²`` and the *linear* loss ``L_i(W) = tr(Δ_iᵀ W)``,
``Δ_i = W_0 (a_i − a_{i+1}) aᵀ``. This is an exact rewriting of a telescoping sum, not a fitted optimiser
(THEORY §4, §8.4): ``∇L_i`` does not depend on W and ``h`` is set by the query.
"""
from __future__ import annotations

import numpy as np

from .blocks import check_context_query, head, kept_positions, sequence, taps
from .config import BlockConfig
from .trajectories import Trajectory
from .update import Update, _check_norm, apply_update, bias_key, update_from_taps
from .validation import params_like


def trajectory(params: dict, cfg: BlockConfig, context, query) -> Trajectory:
    """The implicit dynamics over every prefix ``c_1..c_i`` (i = 0..n) of ``context`` for one ``query``.

    The reference re-runs attention on each prefix (O(n²) per prefix, O(n³) in all); the torch backend computes
    the same in one O(n) scan.
    """
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    n = context.shape[0]
    prefix_taps = [tuple(t[-1] for t in taps(params, cfg, sequence(context[:i], query), kept_positions(range(i), n)))
                   for i in range(n + 1)]                               # the query keeps its position n
    a_i = np.stack([t[0] for t in prefix_taps])                          # (n+1, D)
    r_i = np.stack([t[1] for t in prefix_taps])                          # (n+1, D)
    return trajectory_from_taps(params, cfg, a_i, r_i)


def trajectory_from_taps(params: dict, cfg: BlockConfig, a_i: np.ndarray, r_i: np.ndarray) -> Trajectory:
    """The :class:`Trajectory` given the query's taps with the first i context tokens, ``a_i``, ``r_i`` (n+1, D).

    Everything after the taps: the factors, norms, steps, linear losses and both predictions (the query alone
    through the *formed* matrix ``W_i``, an honest check of the identity, not a shortcut through the factors).
    """
    n = a_i.shape[0] - 1
    W0 = np.asarray(params["mlp.W"], dtype=np.float64)
    a, r = a_i[0], r_i[0]                                                # the query alone
    _check_norm(a, cfg, "the query")
    a_norm = np.linalg.norm(a)
    delta = a_i - a                                                      # (n+1, D)
    prefixes = update_from_taps(W0, a_i, r_i, a, r)                      # u (n+1, M), delta_b (n+1, D)
    u, delta_b = prefixes.u, prefixes.delta_b
    delta_W_norm = np.linalg.norm(u, axis=1) / a_norm                    # (n+1,)
    u_steps = np.diff(u, axis=0)                                         # (n, M)
    step_norm = np.linalg.norm(u_steps, axis=1) / a_norm                 # (n,)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_change = np.where(delta_W_norm[:-1] > 0, step_norm / delta_W_norm[:-1], np.nan)
    grad_u = -u_steps                                                    # (n, M): Δ_i = grad_u_i aᵀ
    W_i_a = a @ W0.T + u[:-1]                                            # (n, M): W_i a = W_0 a + u_i
    loss = np.sum(grad_u * W_i_a, axis=1)                                # tr(Δ_iᵀ W_i) = grad_uᵀ W_i a
    grad_norm = np.linalg.norm(grad_u, axis=1) * a_norm
    pred_context = head(params, cfg, a_i, r_i)                           # (n+1, D): T_{W_0}(c_1..c_i, x)
    pred_update = np.stack([
        head(apply_update(params, Update(u[i], a, delta_b[i])), cfg, a, r) for i in range(n + 1)
    ])                                                                   # (n+1, D): the query alone, W_i
    return Trajectory(
        W0=W0, a=a, r=r, delta_W_norm=delta_W_norm, step_norm=step_norm, relative_change=relative_change,
        h=float(1.0 / (a_norm * a_norm)), loss=loss, grad_norm=grad_norm, params=params, cfg=cfg,
        kept=dict(delta=delta, delta_b=delta_b, steps=np.diff(a_i, axis=0), u=u, grad_u=grad_u,
                  pred_context=pred_context, pred_update=pred_update),
    )


def factorised_update(params: dict, cfg: BlockConfig, context, query) -> dict:
    """P1 App. B: remove the context tokens from the *front*, one at a time.

    ``W_i = W_{i−1}(I + h_i A_i)`` with ``h_i = 1/‖a(c_{i+1}..c_n, x)‖²`` and
    ``A_i = [a(c_i..c_n, x) − a(c_{i+1}..c_n, x)] a(c_{i+1}..c_n, x)ᵀ``; the bias telescopes to ``r_C − r_x``.
    Returns new params whose ``mlp.W`` is ``W_0 ∏_{i=1}^{n}(I + h_i A_i)``. Its action on the query's tap
    equals that of ``W_0 + ΔW(C)``, so ``T_{W_n}(x) = T_{W_0}(C, x)``; the matrices themselves differ in
    general (``W_n`` is not the minimum-norm update).
    """
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    n = context.shape[0]
    suffix_taps = [tuple(t[-1] for t in taps(params, cfg, sequence(context[i:], query),
                                             kept_positions(range(i, n), n))) for i in range(n + 1)]
    W = np.array(params["mlp.W"], dtype=np.float64)
    for i in range(1, n + 1):                      # step i removes c_i from c_i..c_n
        a_with, a_without = suffix_taps[i - 1][0], suffix_taps[i][0]
        _check_norm(a_without, cfg, f"the suffix starting at context token {i}")
        # W (I + h A) = W + h (W δ) sᵀ: a rank-1 correction, never forming I + hA.
        W = W + np.outer(W @ (a_with - a_without), a_without) / (a_without @ a_without)
    new = dict(params)
    new["mlp.W"] = W
    key = bias_key(params)
    new[key] = np.asarray(params[key]) + (suffix_taps[0][1] - suffix_taps[n][1])
    return new
