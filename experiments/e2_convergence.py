"""E2 (P1 Fig. 2): ``‖ΔW_{i+1} − ΔW_i‖`` and the relative change over i, trained against untrained (THEORY §8.5).

float64 NumPy reference trajectories of the single block, on E2's prompts (which E3, E5 and E6 share).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from implicit_icl.reference import trajectory

from .plots import COLORS, median_band, pyplot, save
from .statistics import at_marks, bands, loglog_slope
from .text import fmt, header

KEY = "e2"
PAPER = {"source": "P1 v1 Fig. 2; THEORY §5.2, §8.5, §10.12",
         "claim": "‖ΔW_{i+1} − ΔW_i‖ decreases and vanishes as i grows (trained model)",
         "random_block_step_norm_at": {"1": 0.57, "5": 0.26, "10": 0.11, "25": 0.058, "49": 0.017},
         "random_block_d_model": 5}
# Log-log slopes closer than this count as "the same rate of decay" (1/i is slope −1).
GENERIC_SLOPE_GAP = 0.25


def trajectories(params: dict, cfg, prompts) -> list:
    """The reference ``trajectory`` of every prompt (context = its examples, query = its last row)."""
    return [trajectory(params, cfg, z[:-1], z[-1]) for z in prompts.Z]


def _curves(trs: list, fit_from: int) -> dict:
    """One model's step norms and relative changes over its trajectories: bands, slopes, values at the marks."""
    step = np.stack([t.step_norm for t in trs])                           # (R, n)
    rel = np.stack([t.relative_change for t in trs])                      # (R, n), nan at i = 0
    i = np.arange(step.shape[1])
    med_step = np.median(step, axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # column i = 0 is all nan (ΔW_0 = 0)
        med_rel = np.nanmedian(rel, axis=0)
    fit = i >= fit_from
    return {
        "step_norm": bands(step), "relative_change": bands(rel),
        "step_norm_slope": loglog_slope(i[fit], med_step[fit]),
        "relative_change_slope": loglog_slope(i[fit], med_rel[fit]),
        "step_norm_at": at_marks(med_step, start=1), "relative_change_at": at_marks(med_rel, start=1),
        "decay_ratio": float(med_step[-1] / med_step[1]),
        "final_delta_W_norm": float(np.median([t.delta_W_norm[-1] for t in trs])),
    }


def convergence(trained: list, untrained: list, fit_from: int = 5) -> dict:
    """Step norms and relative changes against i (i = 0..n−1: the step that consumes token c_{i+1}).

    ``slope``: least-squares slope of log(median) against log(i) for i ≥ ``fit_from`` (−1 means ∝ 1/i).
    """
    out = {name: _curves(trs, fit_from) for name, trs in (("trained", trained), ("untrained", untrained))}
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


def compute(study) -> dict | None:
    """E2 on the single block and its untrained twin (``--preset p1`` only, else None)."""
    if study.block is None:
        return None
    t = study.trajectories
    return convergence(t["trained"], t["untrained"])


def plot(report: dict, out: Path) -> list[str]:
    """Step norm and relative change against i, trained and untrained, log-log (``e2_convergence.png``)."""
    e2 = report[KEY]
    plt = pyplot()
    i = np.array(e2["i"])
    keep = i >= 1                                      # log x-axis; relative change is undefined at i = 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ylabel in ((axes[0], "step_norm", r"$\|\Delta W_{i+1} - \Delta W_i\|$"),
                            (axes[1], "relative_change", r"$\|\Delta W_{i+1} - \Delta W_i\| \,/\, \|\Delta W_i\|$")):
        for name in ("trained", "untrained"):
            band = {k: np.asarray(v, dtype=float)[keep] for k, v in e2[name][key].items()}
            slope = e2[name][f"{key}_slope"]
            median_band(ax, i[keep], band, COLORS[name], f"{name}: median, quartile band (slope {slope:.2f})")
        ref = e2["trained"][key]["median"][1] / i[keep]
        ax.plot(i[keep], ref, ":", color="black", lw=1, label="∝ 1/i")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("i (context tokens already absorbed)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_title(f"E2: step norm over {e2['n_prompts']} prompts")
    axes[1].set_title("E2: relative change")
    return [save(fig, out / "e2_convergence.png")]


def _table(e2: dict, pe2: dict, keys: list) -> list[str]:
    """Median step norm and relative change at the marks, trained and untrained, and THEORY's random block."""
    tr, un = e2["trained"], e2["untrained"]
    rb = pe2["random_block_step_norm_at"]
    return [*header("i", keys + ["log-log slope"]),
            "| step norm, trained | " + " | ".join(fmt(tr["step_norm_at"][k]) for k in keys)
            + f" | {fmt(tr['step_norm_slope'])} |",
            "| step norm, untrained (same architecture, its initial weights) | "
            + " | ".join(fmt(un["step_norm_at"][k]) for k in keys) + f" | {fmt(un['step_norm_slope'])} |",
            "| relative change, trained | " + " | ".join(fmt(tr["relative_change_at"][k]) for k in keys)
            + f" | {fmt(tr['relative_change_slope'])} |",
            "| relative change, untrained | " + " | ".join(fmt(un["relative_change_at"][k]) for k in keys)
            + f" | {fmt(un['relative_change_slope'])} |",
            "| THEORY §8.5: a random block (d_model " + fmt(pe2["random_block_d_model"]) + "), step norm | "
            + " | ".join(fmt(rb.get(k)) for k in keys) + " | |"]


def section(r: dict) -> list[str]:
    """E2's part of report.md: the table, and what of the decay is generic (the untrained block's)."""
    e2, pe2 = r[KEY], r["paper"][KEY]
    tr, un, g = e2["trained"], e2["untrained"], e2["generic"]
    keys = list(tr["step_norm_at"])
    decays = "It does here too" if tr["decay_ratio"] < 1 else "Here it does not decrease"
    text = (f"**What is generic.** P1 reports: {pe2['claim']}. {decays} (ratio of the median step norms at "
            f"i = {keys[-1]} and i = {keys[0]}: {fmt(tr['decay_ratio'])}), "
            f"but the untrained block decays {g['verdict']}: slope {fmt(un['step_norm_slope'])} against "
            f"{fmt(tr['step_norm_slope'])} for the trained model (fit for i ≥ {fmt(e2['fit_from'])}), and the "
            f"relative change at the last step is {fmt(un['relative_change_at'][keys[-1]])} untrained vs "
            f"{fmt(tr['relative_change_at'][keys[-1]])} trained. Softmax attention over i.i.d. tokens is a running "
            "weighted mean, so its increments shrink like 1/i whatever the weights (THEORY §8.5): the decay is not "
            f"evidence of learning. Compare the scale instead (step norm at i = {keys[0]}: "
            f"{fmt(tr['step_norm_at'][keys[0]])} trained, {fmt(un['step_norm_at'][keys[0]])} untrained; ratio of "
            f"medians {fmt(g['scale_ratio'])}) and the direction of the update, which E3 tests against the data.")
    return (["## E2 — convergence of the implicit dynamics (P1 Fig. 2)", "", "![E2](e2_convergence.png)", "",
             f"Median over {fmt(e2['n_prompts'])} prompts (quartile band in the figure).", ""]
            + _table(e2, pe2, keys) + ["", text, ""])
