"""E1–E6: the papers' experiments as functions returning plain dicts of numbers (the content of report.json).

- E1 (P1 Fig. 1): losses over training and the ΔW identity at every evaluation, float32 and float64.
- E2 (P1 Fig. 2): ``‖ΔW_{i+1} − ΔW_i‖`` and the relative change over i, trained against untrained (THEORY §8.5).
- E3 (P1 Fig. 3): test loss after i examples: implicit update vs online SGD on ``mlp.W`` vs least squares,
  and the alignment of the two updates.
- E4 (P2, THEORY §3b): per-block identity errors at every position, ``rank(Σ_i ΔW_i)``, token alignment; the
  composition of every block's last-token update is ours (THEORY §3c).
- E5 (the "thought patch" of Mazzawi et al. 2025, arXiv 2510.08734; our least-squares fit; a summary of a later P1
  version, THEORY §5.4, UNCONFIRMED; §8.2): a query-independent ΔW(C) fitted by least squares on K calibration
  queries, tested on new queries with the same context.
- E6 (ours; a summary of a later P1 version reports a similar contrast, THEORY §5.4, UNCONFIRMED; §8.5): the
  same step norms with an RNN as the contextual
  layer, against softmax attention, both untrained: which layer makes the steps decay.

E2–E4 use the float64 NumPy reference; E3's SGD and E5 run in torch float64, batched.
"""
from __future__ import annotations

import warnings

import numpy as np

from implicit_icl.reference import apply_update, block, model_forward, position_updates, trajectory
from implicit_icl.reference import apply_model_updates, model_updates
from implicit_icl.reference.tasks import least_squares_predictions, prediction, regression_prompts

from .evaluate import blocks_of
from .statistics import (bands, levels_off_at, loglog_slope, loss_curve, mean_of_medians,  # noqa: F401 (re-exported)
                         normalised_inner, null_pairs, squared_loss)

# Tolerances for "agrees to round-off": outputs are O(1), so these are ~100 ulps of float32 and ~5000 of float64.
TOL_F32 = 1e-5
TOL_F64 = 1e-12
# E2: log-log slopes closer than this count as "the same rate of decay" (1/i is slope −1).
GENERIC_SLOPE_GAP = 0.25
# E3: words for the median alignment (a normalised inner product in [−1, 1]).
ALIGNMENT_WORDS = ((0.7, "high and positive"), (0.2, "positive but far from 1"), (0.05, "weak but positive"),
                   (-0.05, "about zero"), (-1.01, "negative"))
# E3: the alignment is above its null (another task's SGD update) when it exceeds it by more than this: the width of
# the "about zero" band above.
NULL_MARGIN = 0.05


# ----------------------------------------------------------------------------------------------------------- E1
def e1(metrics: list[dict]) -> dict:
    """The training curves of one run and the largest prediction gap (with context vs via ΔW) per evaluation."""
    keys = ("step", "train_loss", "val_loss", "val_loss_via_update", "max_abs_diff_f32", "val_loss_f64",
            "val_loss_via_update_f64", "max_abs_diff_f64", "val_loss_zero")
    curves = {k: [r.get(k) for r in metrics] for k in keys}
    f32, f64 = max(curves["max_abs_diff_f32"]), max(curves["max_abs_diff_f64"])
    return {
        "curves": curves,
        "max_abs_diff_f32": f32, "max_abs_diff_f64": f64, "tol_f32": TOL_F32, "tol_f64": TOL_F64,
        "agrees_f32": bool(f32 <= TOL_F32), "agrees_f64": bool(f64 <= TOL_F64),
        "final_val_loss": curves["val_loss_f64"][-1], "initial_val_loss": curves["val_loss_f64"][0],
        "val_loss_zero": curves["val_loss_zero"][-1],
    }


# ----------------------------------------------------------------------------------------------------------- E2
def trajectories(params: dict, cfg, prompts) -> list:
    """The reference ``trajectory`` of every prompt (context = its examples, query = its last row)."""
    return [trajectory(params, cfg, z[:-1], z[-1]) for z in prompts.Z]


def _marks(last: int, start: int) -> list[int]:
    """The indices a table shows: ``start``, 1, 5, 10, 25 where they exist, and ``last``."""
    return sorted({k for k in (start, 1, 5, 10, 25) if start <= k < last} | {last})


def e2(trained: list, untrained: list, fit_from: int = 5) -> dict:
    """Step norms and relative changes against i (i = 0..n−1: the step that consumes token c_{i+1}).

    ``slope``: least-squares slope of log(median) against log(i) for i ≥ ``fit_from`` (−1 means ∝ 1/i).
    """
    out = {}
    for name, trs in (("trained", trained), ("untrained", untrained)):
        step = np.stack([t.step_norm for t in trs])                           # (R, n)
        rel = np.stack([t.relative_change for t in trs])                      # (R, n), nan at i = 0
        i = np.arange(step.shape[1])
        med_step = np.median(step, axis=0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)       # column i = 0 is all nan (ΔW_0 = 0)
            med_rel = np.nanmedian(rel, axis=0)
        fit = i >= fit_from
        out[name] = {
            "step_norm": bands(step), "relative_change": bands(rel),
            "step_norm_slope": loglog_slope(i[fit], med_step[fit]),
            "relative_change_slope": loglog_slope(i[fit], med_rel[fit]),
            "step_norm_at": {str(k): float(med_step[k]) for k in _marks(step.shape[1] - 1, start=1)},
            "relative_change_at": {str(k): float(med_rel[k]) for k in _marks(step.shape[1] - 1, start=1)},
            "decay_ratio": float(med_step[-1] / med_step[1]),
            "final_delta_W_norm": float(np.median([t.delta_W_norm[-1] for t in trs])),
        }
    tr_slope, un_slope = out["trained"]["step_norm_slope"], out["untrained"]["step_norm_slope"]
    if abs(tr_slope - un_slope) <= GENERIC_SLOPE_GAP:
        verdict = "at the same rate"
    else:
        verdict = "more slowly" if un_slope > tr_slope else "faster"
    out["generic"] = {
        "verdict": verdict, "slope_gap": abs(tr_slope - un_slope), "slope_gap_threshold": GENERIC_SLOPE_GAP,
        "scale_ratio": float(out["trained"]["step_norm_at"]["1"] / out["untrained"]["step_norm_at"]["1"]),
    }
    out["i"] = list(range(len(out["trained"]["step_norm"]["median"])))
    out["fit_from"] = fit_from
    out["n_prompts"] = len(trained)
    return out


# ----------------------------------------------------------------------------------------------------------- E3
def sgd_runs(params: dict, cfg, prompts, lr: float):
    """Online SGD on ``mlp.W`` alone: example j is the token ``(x_j, 0)`` run alone with target ``y_j``,
    one step per example in prompt order, loss ``(ŷ − y)²``. Batched over the prompts (one run each).

    Returns ``(pred, delta_W)``: the query's prediction after i steps, ``(R, n+1)``, and ``W_i − W_0``
    as ``(R, n+1, M, D)``. float64 torch, so the only approximation is the SGD itself.
    """
    import torch

    from implicit_icl.backends import torch_ops as T

    from .torch_model import head_with

    p = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    R, n = prompts.x.shape[:2]
    D = cfg.d_model
    tokens = torch.as_tensor(np.concatenate([prompts.x, np.zeros((R, n, 1))], axis=-1))   # (R, n, D): (x_j, 0)
    a_tok, r_tok = T.taps(p, cfg, tokens.reshape(R * n, 1, D))                            # each run alone
    a_tok, r_tok = a_tok.reshape(R, n, D), r_tok.reshape(R, n, D)
    a_q, r_q = (t[:, 0, :] for t in T.taps(p, cfg, torch.as_tensor(prompts.query)[:, None, :]))  # (R, D)
    y = torch.as_tensor(prompts.y)                                                         # (R, n)
    b_out = p["mlp.b_out"].expand(R, D)
    W = p["mlp.W"].expand(R, *p["mlp.W"].shape).clone()                                   # (R, M, D)
    preds, deltas = [], []
    for j in range(n + 1):
        with torch.no_grad():
            preds.append(head_with(p, cfg, a_q, r_q, W, b_out)[:, -1])
            deltas.append(W - p["mlp.W"])
        if j == n:
            break
        W.requires_grad_(True)
        loss = ((head_with(p, cfg, a_tok[:, j], r_tok[:, j], W, b_out)[:, -1] - y[:, j]) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, W)          # runs are independent: row r is run r's gradient
        W = (W - lr * grad).detach()
    return torch.stack(preds, 1).numpy(), torch.stack(deltas, 1).numpy()


def choose_sgd_lr(params: dict, cfg, held_out, grid) -> tuple[float, dict]:
    """The learning rate with the lowest mean test loss over i = 1..n on held-out tasks (never the test tasks)."""
    scores = {}
    for lr in grid:
        pred, _ = sgd_runs(params, cfg, held_out, lr)
        score = float(np.mean(squared_loss(pred[:, 1:], held_out.target)))
        scores[f"{lr:g}"] = score if np.isfinite(score) else float("inf")
    best = min(grid, key=lambda lr: scores[f"{lr:g}"])
    return best, scores


def sgd_sweep(params: dict, cfg, prompts, grid, delta_W_implicit: np.ndarray) -> dict:
    """Online SGD on the test tasks at every learning rate of ``grid`` (not only the chosen one):
    ``{lr: (pred, alignment, null)}``, with ``pred`` ``(R, n+1)`` and, per task and i, the alignment of its
    ``W_i − W_0`` with the implicit ``ΔW_i`` of the same task (``alignment``) and of another task (``null``:
    :func:`null_pairs`), both ``(R, n+1)``. ``delta_W_implicit``: ``(R, n+1, M, D)``."""
    out = {}
    for lr in grid:
        pred, dW_sgd = sgd_runs(params, cfg, prompts, lr)
        out[lr] = (pred, normalised_inner(delta_W_implicit, dW_sgd),
                   normalised_inner(delta_W_implicit, null_pairs(dW_sgd)))
    return out


def _sweep_rows(sweep: dict, scores: dict, target: np.ndarray, loss_zero: float) -> dict:
    """The report's learning-rate table: per lr its held-out score, test loss at the marks, alignments."""
    rows = {}
    for lr, (pred, align, null) in sweep.items():
        loss = np.mean(squared_loss(pred, target), axis=0)                        # (n+1,)
        n = len(loss) - 1
        rows[f"{lr:g}"] = {
            "held_out_score": scores[f"{lr:g}"],
            "loss_at": {str(k): float(loss[k]) for k in _marks(n, start=1)},
            "worse_than_zero_at_n": bool(not loss[-1] <= loss_zero),             # nan (diverged) counts as worse
            "alignment_median_mean": mean_of_medians(align[:, 1:]),
            "alignment_null_median_mean": mean_of_medians(null[:, 1:]),
        }
    return rows


def _alignment_fields(align: np.ndarray, null: np.ndarray) -> dict:
    """E3's alignment of the chosen SGD run and its null (i = 1..n; i = 0 has ΔW = 0 on both sides)."""
    n = align.shape[1] - 1
    mean = mean_of_medians(align[:, 1:])
    return {
        "alignment": bands(align[:, 1:]), "alignment_i": list(range(1, n + 1)), "alignment_median_mean": mean,
        "alignment_at": {str(k): float(np.nanmedian(align[:, k])) for k in _marks(n, start=1)},
        "alignment_verdict": next(w for t, w in ALIGNMENT_WORDS if mean > t),
        "alignment_null": bands(null[:, 1:]), "alignment_null_median_mean": mean_of_medians(null[:, 1:]),
        "alignment_null_at": {str(k): float(np.nanmedian(null[:, k])) for k in _marks(n, start=1)},
        "alignment_null_margin": NULL_MARGIN,
        "alignment_above_null": bool(mean - mean_of_medians(null[:, 1:]) > NULL_MARGIN),
    }


def _loss_fields(preds: dict, target: np.ndarray) -> dict:
    """E3's test-loss curves (mean and s.e.m. over tasks), the values at the marks and the comparisons."""
    curves, sem = {}, {}
    for name, pred in preds.items():
        curves[name], sem[name] = loss_curve(pred, target)
    implicit, sgd = np.array(curves["implicit"]), np.array(curves["sgd"])
    n = len(implicit) - 1
    loss_zero = float(np.mean(target ** 2))
    return {
        "i": list(range(n + 1)), "loss": curves, "loss_sem": sem, "loss_zero": loss_zero,
        "loss_at": {name: {str(k): float(curves[name][k]) for k in _marks(n, start=0)} for name in curves},
        "sgd_minus_implicit_at_n": float(sgd[-1] - implicit[-1]),
        "comparison": ("the implicit update's test loss is lower than SGD's" if implicit[-1] < sgd[-1] else
                       "online SGD's test loss is lower than the implicit update's"),
        "full_length_ratio_to_zero": float(implicit[-1] / loss_zero),
        "implicit_falls_with_i": bool(implicit[-1] < implicit[1] and implicit[n // 2] < implicit[1]),
        "sgd_falls_with_i": bool(sgd[-1] < sgd[1] and sgd[n // 2] < sgd[1]),
    }


def e3(params: dict, cfg, prompts, trained_trajectories: list, held_out, grid) -> dict:
    """Test loss against i for the implicit update, online SGD on W and least squares; the update alignment, its
    null (another task's SGD update) and the whole learning-rate grid on the test tasks.

    Fairness, stated in the report: SGD's learning rate is tuned on held-out tasks while the implicit update has
    nothing to tune, and SGD learns one update for all queries from labelled examples while ΔW_i is per query.
    """
    target = prompts.target
    pred_implicit = np.stack([prediction(t.pred_update) for t in trained_trajectories])      # (R, n+1)
    pred_context = np.stack([prediction(t.pred_context) for t in trained_trajectories])      # (R, n+1)
    dW_impl = np.stack([np.stack([t.delta_W(i) for i in range(t.n + 1)]) for t in trained_trajectories])
    lr, scores = choose_sgd_lr(params, cfg, held_out, grid)
    sweep = sgd_sweep(params, cfg, prompts, grid, dW_impl)
    pred_sgd, align, null = sweep[lr]
    pred_ls = least_squares_predictions(prompts.x, prompts.y, prompts.x_query)                # (R, n+1)
    out = _loss_fields({"implicit": pred_implicit, "sgd": pred_sgd, "least_squares": pred_ls}, target)
    return out | _alignment_fields(align, null) | {
        "sgd_lr": lr, "sgd_lr_grid_scores": scores, "sgd_lr_at_grid_edge": bool(lr in (min(grid), max(grid))),
        "sgd_lr_sweep": _sweep_rows(sweep, scores, target, out["loss_zero"]),
        "n_runs": len(target), "n_held_out": len(held_out.target),
        "identity_max_abs_diff": float(np.max(np.abs(pred_implicit - pred_context))),
    }


# ----------------------------------------------------------------------------------------------------------- E4
def numerical_rank(M: np.ndarray) -> int:
    """Rank with NumPy's default tolerance ``σ_max · max(shape) · eps``."""
    return int(np.linalg.matrix_rank(M))


def e4(params: dict, cfg, n_blocks: int, prompts) -> dict:
    """P2 on a stack: every block, every position, query = the block input's last token (P2's convention)."""
    blocks = blocks_of(params, n_blocks)
    L, T = len(blocks), prompts.Z.shape[1]
    err = np.zeros((len(prompts.Z), L, T))                 # max |block([x]; W+ΔW_i, b+Δb_i) − block(H)_i|
    ranks = np.zeros((len(prompts.Z), L), dtype=int)
    compose = np.zeros(len(prompts.Z))
    align = None
    for p_i, z in enumerate(prompts.Z):
        H = model_forward(blocks, cfg, z)                  # [H^0 .. H^L], each (T, D)
        for l, (bp, Hin) in enumerate(zip(blocks, H[:-1])):
            ups = position_updates(bp, cfg, Hin, query="last")
            for t in range(T):
                alone = block(apply_update(bp, ups[t]), cfg, Hin[-1:])[0]
                err[p_i, l, t] = np.max(np.abs(alone - H[l + 1][t]))
            dW = ups.delta_W                               # (T, M, D)
            ranks[p_i, l] = numerical_rank(dW.sum(0))
            if p_i == 0:
                a = normalised_inner(dW[:, None], dW[None, :])   # (T, T); nan where a ΔW_i is 0
                align = a[None] if align is None else np.concatenate([align, a[None]])
        updated = apply_model_updates(blocks, model_updates(blocks, cfg, z))
        compose[p_i] = np.max(np.abs(model_forward(updated, cfg, z[-1:])[-1][0] - H[-1][-1]))
    return {
        "n_blocks": L, "n_prompts": len(prompts.Z), "positions": T,
        "identity_error_max": err.max(axis=0).tolist(),           # (L, T) max over prompts
        "identity_error_max_per_block": err.max(axis=(0, 2)).tolist(),
        "identity_error_overall": float(err.max()),
        "rank_sum_delta_W": ranks.tolist(), "rank_sum_delta_W_set": sorted(set(ranks.ravel().tolist())),
        "composition_error_max": float(compose.max()),
        "alignment_prompt0": align.tolist(),                       # (L, T, T)
        "alignment_offdiag_median_per_block": [float(np.nanmedian(a[~np.eye(T, dtype=bool)])) for a in align],
        "tol_f64": TOL_F64, "agrees_f64": bool(err.max() <= TOL_F64 and compose.max() <= TOL_F64),
    }


# ----------------------------------------------------------------------------------------------------------- E5
PATCH_K = (1, 2, 3, 5, 10, 25, 50)
# E5: the patch "levels off" at the smallest K whose median error is within this factor of the largest K's.
LEVEL_FACTOR = 2.0


def thought_patch(a: np.ndarray, u: np.ndarray, delta_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One ``(ΔW, Δb)`` for K queries: the minimum-norm least-squares ``ΔW`` with ``ΔW a_k = u_k`` for all k
    (``ΔW = U A⁺``; ``a`` (K, D), ``u`` (K, M)) and the mean of their ``Δb_k`` (``delta_b`` (K, D)).
    With K = 1 it is the query's own implicit update, ``u aᵀ/‖a‖²`` (P1 Thm 2.2)."""
    dW = np.linalg.lstsq(a, u, rcond=None)[0].T                                            # (M, D): ΔW Aᵀ = Uᵀ
    return dW, delta_b.mean(axis=0)                                                         # (M, D), (D,)


def e5(params: dict, cfg, prompts, n_test: int, seed: int, K_grid=PATCH_K) -> dict:
    """Thought patch: one ``ΔW(C)`` for all queries of a context (THEORY §5.4; §8.2 says the exact one depends on x).

    For each prompt's context C, K calibration queries ``x_k = (ξ_k, 0)``, ``ξ_k ~ N(0, I_d)``, give the exact
    per-query factors ``u_k = W(a(C, x_k) − a(x_k))`` and ``a_k = a(x_k)``; the patch is the minimum-norm least-squares
    solution of ``ΔW a_k = u_k`` for all k (``ΔW = U A⁺``) and ``Δb`` the mean of the ``Δb_k`` (zero for plain
    blocks). On ``n_test`` new queries it is compared with the in-context prediction ``T_W(C, x)`` (which the exact
    per-query ``ΔW(C, x)`` reproduces to round-off), with no update at all, and with the true ``⟨w, x⟩``.
    float64 torch, batched over queries.
    """
    import torch

    from implicit_icl.backends import torch_ops as T

    from .torch_model import head_with

    if n_test < 2:
        raise ValueError(f"n_test must be at least 2 (pairs of test queries are compared), got {n_test}")
    p = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    R, n, D = prompts.context.shape
    d, Kmax = D - 1, max(K_grid)
    rng = np.random.default_rng([seed, 5])
    to_patch = {K: [] for K in K_grid}
    to_target = {K: [] for K in K_grid}
    none_ctx, none_target, ctx_target, alignment, ranks = [], [], [], [], []
    for r in range(R):
        xi = rng.standard_normal((Kmax + n_test, d))
        x = torch.as_tensor(np.concatenate([xi, np.zeros((len(xi), 1))], axis=1))          # (Q, D): (ξ, 0)
        C = torch.as_tensor(prompts.context[r]).expand(len(xi), n, D)                      # (Q, n, D)
        with torch.no_grad():
            a_C, r_C = (t[:, -1] for t in T.taps(p, cfg, torch.cat([C, x[:, None]], 1)))  # (Q, D) each
            a_x, r_x = (t[:, 0] for t in T.taps(p, cfg, x[:, None]))                       # the query alone
        u = (a_C - a_x) @ p["mlp.W"].T                                                      # (Q, M)
        W = p["mlp.W"].expand(len(xi), *p["mlp.W"].shape)
        b = p["mlp.b_out"].expand(len(xi), D)
        test = slice(Kmax, None)
        y_ctx = head_with(p, cfg, a_C, r_C, W, b)[test, -1].numpy()                         # T_W(C, x)
        y_none = head_with(p, cfg, a_x, r_x, W, b)[test, -1].numpy()                        # T_W(x)
        y_true = xi[test] @ prompts.w[r]
        none_ctx.append(np.mean((y_none - y_ctx) ** 2))
        none_target.append(np.mean((y_none - y_true) ** 2))
        ctx_target.append(np.mean((y_ctx - y_true) ** 2))
        for K in K_grid:
            dW, db = thought_patch(a_x[:K].numpy(), u[:K].numpy(), (r_C[:K] - r_x[:K]).numpy())
            Wp = (p["mlp.W"] + torch.as_tensor(dW)).expand(n_test, *p["mlp.W"].shape)
            b_out = (p["mlp.b_out"] + torch.as_tensor(db)).expand(n_test, D)
            y_patch = head_with(p, cfg, a_x[test], r_x[test], Wp, b_out)
            y_patch = y_patch[:, -1].numpy()
            to_patch[K].append(np.mean((y_patch - y_ctx) ** 2))
            to_target[K].append(np.mean((y_patch - y_true) ** 2))
        ranks.append(numerical_rank(a_x[:Kmax].numpy()))
        # how different the exact per-query updates are: ⟨ΔW(x), ΔW(x′)⟩_F / norms = cos(u, u′) cos(a, a′)
        ut, at = u[test].numpy(), a_x[test].numpy()
        cos_u = normalised_inner(ut[:-1, :, None], ut[1:, :, None])
        cos_a = normalised_inner(at[:-1, :, None], at[1:, :, None])
        alignment.append(np.median(cos_u * cos_a))
    med = {K: float(np.median(v)) for K, v in to_patch.items()}
    none = float(np.median(none_ctx))
    level = levels_off_at(med, LEVEL_FACTOR)
    return {
        "K": list(K_grid), "n_prompts": R, "n_test": n_test, "level_factor": LEVEL_FACTOR,
        "mse_patch_to_context": bands(np.array([to_patch[K] for K in K_grid]).T),
        "mse_patch_to_context_at": {str(K): med[K] for K in K_grid},
        "mse_patch_to_target_at": {str(K): float(np.median(v)) for K, v in to_target.items()},
        "mse_no_update_to_context": none,
        "mse_no_update_to_target": float(np.median(none_target)),
        "mse_context_to_target": float(np.median(ctx_target)),
        "patch_over_no_update": med[Kmax] / none,
        "levels_at_K": level,
        "patch_over_no_update_at_level": None if level is None else med[level] / none,
        "calibration_rank": int(np.median(ranks)), "d_model": D,
        "per_query_alignment_median": float(np.median(alignment)),
    }


# ----------------------------------------------------------------------------------------------------------- E6
# E6: a log-log slope at or below this counts as "decays" (1/i is −1; a constant is 0).
DECAY_SLOPE = -0.5


def e6(attention_untrained: list, prompts, d_mlp: int, seed: int, d_hidden: int = 16, fit_from: int = 5,
       spectral_radius: float = 0.9) -> dict:
    """Step norms ``‖ΔW_{i+1} − ΔW_i‖`` against i with softmax attention (E2's untrained block, its trajectories
    ``attention_untrained``) and with an untrained RNN as the contextual layer (``rnn.py``), on the same prompts."""
    from . import rnn

    params = rnn.init_rnn(prompts.Z.shape[-1], d_hidden, d_mlp, seed, spectral_radius)
    runs = [rnn.step_norms(params, z[:-1], z[-1]) for z in prompts.Z]
    out = {"i": list(range(len(runs[0][0]))), "fit_from": fit_from, "n_prompts": len(runs), "d_hidden": d_hidden,
           "spectral_radius": spectral_radius, "decay_slope": DECAY_SLOPE,
           "rnn_identity_max_abs_diff": max(err for _, err in runs), "tol_f64": TOL_F64}
    for name, steps in (("attention", np.stack([t.step_norm for t in attention_untrained])),
                        ("rnn", np.stack([s for s, _ in runs]))):
        i = np.arange(steps.shape[1])
        med = np.median(steps, axis=0)
        slope = loglog_slope(i[i >= fit_from], med[i >= fit_from])
        out[name] = {"step_norm": bands(steps), "step_norm_slope": slope, "decays": bool(slope <= DECAY_SLOPE),
                     "step_norm_at": {str(k): float(med[k]) for k in _marks(steps.shape[1] - 1, start=1)},
                     "last_over_first": float(med[-1] / med[1])}                # step at i = n−1 over i = 1
    out["agrees_f64"] = bool(out["rnn_identity_max_abs_diff"] <= TOL_F64)
    return out


def fresh_prompts(n_prompts: int, n_points: int, d: int, seed: int):
    """Fresh tasks for E2–E4, disjoint in seed from training (seed, t) and validation streams."""
    return regression_prompts(n_prompts, n_points, d, np.random.default_rng([seed, 3]))
