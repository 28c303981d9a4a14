"""E1 (P1 Fig. 1): losses over training and the ΔW identity at every evaluation, float32 and float64.

The chosen preset is trained (``Study.training``); its metrics record, at every evaluation, the validation loss with
context and via ΔW (the query alone through ``W + ΔW``) and the largest gap between the two predictions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from implicit_icl.identities import ALGEBRA_ONLY, FORWARD_CHECKED

from .plots import EPS32, EPS64, floored, pyplot, save
from .statistics import TOL_F32, TOL_F64
from .text import fmt, span

KEY = "e1"
# What the papers (and the sources THEORY.md cites) report; copied into report.json["paper"]["e1"].
PAPER = {"source": "P1 v1 Fig. 1; THEORY §5.1, §10.13",
         "claim": "the validation curve computed via ΔW overlaps the ordinary validation curve",
         "replication_max_abs_diff_f32": [1e-7, 1e-6], "replication_loss": 0.13, "replication_n_points": 100}


def summarise(metrics: list[dict]) -> dict:
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


def compute(study) -> dict:
    """E1 on the chosen preset's training run (trained, or resumed, into ``OUT/train_<preset>``)."""
    _, metrics = study.training
    return summarise(metrics)


def plot(report: dict, out: Path) -> list[str]:
    """The losses during training, and the gap between the two validation predictions (``e1_training.png``)."""
    plt = pyplot()
    c = report[KEY]["curves"]
    step = np.array(c["step"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    train = np.array([np.nan if v is None else v for v in c["train_loss"]], dtype=float)
    ax1.plot(step, train, "-", color="tab:gray", label="train (mean over the steps since the last evaluation)")
    ax1.plot(step, c["val_loss"], "-", color="tab:blue", lw=3, alpha=0.6, label="validation, with context")
    ax1.plot(step, c["val_loss_via_update"], "--", color="tab:red", lw=1.5,
             label="validation via ΔW (query alone, W+ΔW)")
    ax1.axhline(c["val_loss_zero"][-1], color="black", ls=":", lw=1, label="predicting 0")
    ax1.set_yscale("log")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("mean squared error")
    ax1.set_title(f"E1 {report['preset']}: losses during training")
    ax1.legend(fontsize=8)
    ax2.semilogy(step, floored(c["max_abs_diff_f32"], EPS64), "o-", ms=3, label="float32 (torch)")
    ax2.semilogy(step, floored(c["max_abs_diff_f64"], EPS64 / 4), "s-", ms=3, label="float64 (NumPy reference)")
    ax2.axhline(EPS32, color="tab:blue", ls=":", lw=1, label="float32 eps")
    ax2.axhline(EPS64, color="tab:orange", ls=":", lw=1, label="float64 eps")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("max |ŷ(context) − ŷ(ΔW)| over validation prompts")
    ax2.set_title("E1: the two validation predictions differ by round-off")
    ax2.legend(fontsize=8)
    return [save(fig, out / "e1_training.png")]


def section(r: dict) -> list[str]:
    """E1's part of report.md: the table against the papers and whether the curves overlap."""
    e1, P = r[KEY], r["paper"]
    if r["preset"] == "p1":
        paper_loss = (f"replication ≈ {fmt(P['e1']['replication_loss'])} at N = "
                      f"{fmt(P['e1']['replication_n_points'])} (its own prompts and model: indicative only)")
    else:
        paper_loss = f"no confirmed figure ({P['recipe_p2']['losses']})"
    L = ["## E1 — losses during training and the ΔW identity (P1 Fig. 1)", "", "![E1](e1_training.png)", "",
         "| | ours | papers |", "|---|---|---|",
         f"| validation loss, first → last evaluation (the Models table's prompts) | {fmt(e1['initial_val_loss'])} → "
         f"{fmt(e1['final_val_loss'])} (predicting 0: {fmt(e1['val_loss_zero'])}) | {paper_loss} |",
         f"| max \\|ŷ(context) − ŷ(ΔW)\\|, float32 (torch) | {fmt(e1['max_abs_diff_f32'])} "
         f"(tolerance {fmt(e1['tol_f32'])}: {fmt(e1['agrees_f32'])}) | replication "
         f"{span(P['e1']['replication_max_abs_diff_f32'])} |",
         f"| same, re-checked in float64 (NumPy reference) | {fmt(e1['max_abs_diff_f64'])} "
         f"(tolerance {fmt(e1['tol_f64'])}: {fmt(e1['agrees_f64'])}) | \"machine precision\" |", ""]
    if e1["agrees_f32"] and e1["agrees_f64"]:
        L.append(f"The curves overlap as P1 reports ({P['e1']['claim']}). This is guaranteed by algebra, not "
                 "learned: the identity holds at step 0 (random weights) exactly as at the end (THEORY §8.1).")
    else:
        L.append(f"P1 reports that {P['e1']['claim']}; here the two predictions differ by more than the tolerance "
                 "stated above, which the algebra (THEORY §8.1) does not allow: a bug or an overflow, not a finding.")
    return L + ["", f"**What the identity checks test.** {ALGEBRA_ONLY} That goes for E1's overlap, E4's identity "
                    f"errors and `implicit-icl verify`. {FORWARD_CHECKED}", ""]
