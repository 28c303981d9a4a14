"""E3 (P1 Fig. 3): test loss after i examples: implicit update vs online SGD on ``mlp.W`` vs least squares, and the
alignment of the two updates with its null (another task's SGD update), for every SGD learning rate of the grid.

The implicit side comes from E2's trained trajectories (float64 NumPy reference); SGD runs in torch float64, batched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from implicit_icl.reference.tasks import least_squares_predictions, prediction

from .plots import COLORS, floored, median_band, pyplot, save
from .statistics import (at_marks, bands, loss_curve, marks, mean_of_medians, normalised_inner, null_pairs,
                         squared_loss)
from .text import fmt, header

KEY = "e3"
PAPER = {"source": "P1 v1 Fig. 3; THEORY §5.3",
         "claim": "the finetuned (SGD) and the ΔW-updated model's test losses decrease in a similar way; a later "
                  "version reports high positive alignment of the two updates (UNCONFIRMED)",
         "n_runs": 100}
SGD_LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# Words for the median alignment (a normalised inner product in [−1, 1]).
ALIGNMENT_WORDS = ((0.7, "high and positive"), (0.2, "positive but far from 1"), (0.05, "weak but positive"),
                   (-0.05, "about zero"), (-1.01, "negative"))
# The alignment is above its null (another task's SGD update) when it exceeds it by more than this: the width of
# the "about zero" band above.
NULL_MARGIN = 0.05


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
        rows[f"{lr:g}"] = {
            "held_out_score": scores[f"{lr:g}"],
            "loss_at": at_marks(loss, start=1),
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
        "alignment_at": {str(k): float(np.nanmedian(align[:, k])) for k in marks(n, start=1)},
        "alignment_verdict": next(w for t, w in ALIGNMENT_WORDS if mean > t),
        "alignment_null": bands(null[:, 1:]), "alignment_null_median_mean": mean_of_medians(null[:, 1:]),
        "alignment_null_at": {str(k): float(np.nanmedian(null[:, k])) for k in marks(n, start=1)},
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
        "loss_at": {name: at_marks(curves[name], start=0) for name in curves},
        "sgd_minus_implicit_at_n": float(sgd[-1] - implicit[-1]),
        "comparison": ("the implicit update's test loss is lower than SGD's" if implicit[-1] < sgd[-1] else
                       "online SGD's test loss is lower than the implicit update's"),
        "full_length_ratio_to_zero": float(implicit[-1] / loss_zero),
        "implicit_falls_with_i": bool(implicit[-1] < implicit[1] and implicit[n // 2] < implicit[1]),
        "sgd_falls_with_i": bool(sgd[-1] < sgd[1] and sgd[n // 2] < sgd[1]),
    }


def finetuning(params: dict, cfg, prompts, trained_trajectories: list, held_out, grid) -> dict:
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


def compute(study) -> dict | None:
    """E3 on the single block, E2's prompts and trajectories (``--preset p1`` only, else None)."""
    m = study.block
    if m is None:
        return None
    study.log("E3: implicit update vs online SGD vs least squares")
    return study.timed("E3 SGD + least squares", lambda: finetuning(
        m.params, m.cfg, study.prompts, study.trajectories["trained"], study.held_out, SGD_LR_GRID))


def plot(report: dict, out: Path) -> list[str]:
    """Test loss against i, and the alignment with its null (``e3_finetuning.png``)."""
    e3 = report[KEY]
    plt = pyplot()
    i = np.array(e3["i"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    labels = {"implicit": "implicit update ΔW_i (= model with i examples in context)",
              "sgd": f"online SGD on mlp.W, lr {e3['sgd_lr']:g}",
              "least_squares": "least squares (noise-free: ≈ 0 once i ≥ d)"}
    for name, label in labels.items():
        loss = np.array(e3["loss"][name])
        sem = np.array(e3["loss_sem"][name])
        y = floored(loss, 1e-4)
        ax1.plot(i, y, "-", color=COLORS[name], label=label)
        ax1.fill_between(i, floored(loss - sem, 1e-4), floored(loss + sem, 1e-4), color=COLORS[name], alpha=0.2, lw=0)
    ax1.axhline(e3["loss_zero"], color="black", ls=":", lw=1, label="predicting 0")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-4 / 2, None)
    ax1.set_xlabel("i (examples used)")
    ax1.set_ylabel(f"test loss, mean ± s.e.m. over {e3['n_runs']} tasks (floor 1e-4)")
    ax1.set_title("E3: in-context (implicit ΔW) vs explicit finetuning")
    ax1.legend(fontsize=7.5, loc="lower right", bbox_to_anchor=(1.0, 0.08), framealpha=0.9)
    median_band(ax2, e3["alignment_i"], e3["alignment"], "tab:purple", "same task: median, quartile band")
    median_band(ax2, e3["alignment_i"], e3["alignment_null"], "tab:gray", "null (another task's SGD update)")
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_ylim(-1, 1)
    ax2.set_xlabel("i (examples used)")
    ax2.set_ylabel(r"$\langle \Delta W_{\mathrm{implicit}}, \Delta W_{\mathrm{SGD}} \rangle_F \,/\, "
                   r"(\|\cdot\|\,\|\cdot\|)$")
    ax2.set_title("E3: alignment of the implicit and SGD updates")
    ax2.legend(fontsize=8)
    return [save(fig, out / "e3_finetuning.png")]


def section(r: dict) -> list[str]:
    """E3: the setup and its fairness, the loss curves, the alignment and its null, the learning-rate grid."""
    e3, pe3 = r[KEY], r["paper"][KEY]
    la = e3["loss_at"]
    keys = list(la["implicit"])
    L = []
    add = L.append
    add("## E3 — in-context (implicit ΔW) vs explicit finetuning (P1 Fig. 3)")
    add("")
    add("![E3](e3_finetuning.png)")
    add("")
    add(f"{fmt(e3['n_runs'])} test tasks (P1: {fmt(pe3['n_runs'])} runs). SGD: online, one example at a time in "
        f"prompt order, on `mlp.W` only; example j is the token (x_j, 0) run alone with target y_j. Its learning "
        f"rate {fmt(e3['sgd_lr'])} is the best of the grid by mean test loss over i on {fmt(e3['n_held_out'])} "
        "held-out tasks (never the test tasks)"
        + (" — it lies at the edge of the grid." if e3["sgd_lr_at_grid_edge"] else "."))
    add("")
    add("**The comparison is not like for like.** SGD's learning rate is tuned (above); the implicit update has "
        "nothing to tune. SGD learns one update of `W` for every query from the labelled examples, while the "
        "implicit ΔW_i is built for the one test query (a different ΔW for another query, THEORY §8.2). So SGD's "
        "lower loss, where it is lower, partly reflects a weakly trained block, not a better learner.")
    add("")
    L += header("test loss at i =", keys)
    for name, label in (("implicit", "implicit ΔW_i (= in context)"),
                        ("sgd", f"online SGD on W, lr {fmt(e3['sgd_lr'])}"), ("least_squares", "least squares")):
        add(f"| {label} | " + " | ".join(fmt(la[name][k]) for k in keys) + " |")
    add(f"| alignment ⟨ΔW_impl, ΔW_SGD⟩, same task (median) | "
        + " | ".join(fmt(e3["alignment_at"].get(k)) for k in keys) + " |")
    add(f"| null: ⟨ΔW_impl, ΔW_SGD⟩ of another task (median) | "
        + " | ".join(fmt(e3["alignment_null_at"].get(k)) for k in keys) + " |")
    add("")
    _sweep_table(e3, add)
    add(_findings(e3, pe3, keys[-1]))
    add("")
    return L


def _sweep_table(e3: dict, add) -> None:
    """Every learning rate of the grid on the test tasks: the SGD curve and alignment do not hide behind the winner."""
    sweep = e3["sgd_lr_sweep"]
    keys = list(next(iter(sweep.values()))["loss_at"])
    add("The whole grid, each learning rate run on the same test tasks (the choice used only the held-out score):")
    add("")
    add("| SGD lr | held-out score | " + " | ".join(f"test loss at i = {k}" for k in keys)
        + " | alignment, same task | null, another task |")
    add("|---|---|" + "---|" * len(keys) + "---|---|")
    for lr, row in sweep.items():
        mark = " (chosen)" if float(lr) == e3["sgd_lr"] else ""
        add(f"| {lr}{mark} | {fmt(row['held_out_score'])} | " + " | ".join(fmt(row["loss_at"][k]) for k in keys)
            + f" | {fmt(row['alignment_median_mean'])} | {fmt(row['alignment_null_median_mean'])} |")
    worse = [lr for lr, row in sweep.items() if row["worse_than_zero_at_n"]]
    add("")
    add("Alignments are the mean over i of the median over tasks. "
        + (f"At lr {', '.join(worse)} SGD ends worse than predicting 0 (it diverges or overshoots)."
           if worse else "Every learning rate ends better than predicting 0."))
    add("")


def _findings(e3: dict, pe3: dict, last: str) -> str:
    """E3's findings, each sentence conditioned on the numbers."""
    la = e3["loss_at"]
    implicit_falls, sgd_falls = e3["implicit_falls_with_i"], e3["sgd_falls_with_i"]
    learns = e3["full_length_ratio_to_zero"] <= 0.1 and implicit_falls       # the bar of the issue (P1 §4)
    falls = {(True, True): "both losses fall with i", (True, False): "the implicit loss falls with i, SGD's "
             "does not", (False, True): "SGD's loss falls with i, the implicit one does not",
             (False, False): "neither loss falls with i"}[(implicit_falls, sgd_falls)]
    shares = e3["alignment_verdict"] not in ("about zero", "negative") and e3["alignment_above_null"]
    text = (("The model learns in context" if learns else
             "The model does NOT clearly learn in context (the bar: at most a tenth of the loss of predicting 0 "
             "at the full prompt length, falling with i)")
            + f": at the full prompt length its loss is {fmt(e3['full_length_ratio_to_zero'])} × that of "
            f"predicting 0 ({fmt(e3['loss_zero'])}); it falls with i: {fmt(implicit_falls)}. "
            f"Paper: {pe3['claim']}. Ours: {falls} (implicit: {fmt(implicit_falls)}, SGD: {fmt(sgd_falls)}); "
            f"at i = {last} {e3['comparison']}. The alignment is {e3['alignment_verdict']} (mean of the median "
            f"over i: {fmt(e3['alignment_median_mean'])}, against {fmt(e3['alignment_null_median_mean'])} for the "
            "null that pairs each task's implicit update with another task's SGD update; above the null: "
            f"{fmt(e3['alignment_above_null'])}, margin {fmt(e3['alignment_null_margin'])}): "
            + ("the two updates share a task-specific direction without being the same update" if shares else
               "the two updates do not share a task-specific direction")
            + " (the implicit ΔW_i is rank 1 with right factor A(x_q); SGD's sums rank-1 steps with right factors "
            "A(x_j)).")
    if sgd_falls and la["sgd"][last] < la["implicit"][last]:
        text += (" Where the curves differ in level, the single softmax block's in-context estimate is limited by "
                 "what the block learned (its validation loss is in the Models table), while online SGD with a "
                 "tuned step keeps improving on noise-free examples.")
    if la["least_squares"][last] < min(la["implicit"][last], la["sgd"][last]):
        text += " Least squares is exact after d examples (noise-free tasks), far below both."
    return text + (f" The implicit prediction equals the in-context one to {fmt(e3['identity_max_abs_diff'])} "
                   "(float64).")
