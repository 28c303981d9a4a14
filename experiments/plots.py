"""The figures of E1–E6 from report.json's numbers (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
COLORS = {"trained": "tab:blue", "untrained": "tab:gray", "implicit": "tab:blue", "sgd": "tab:orange",
          "least_squares": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})
    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _floor(values, floor):
    """Zeros cannot sit on a log axis: show them at ``floor`` (the plot says so)."""
    return np.maximum(np.asarray(values, dtype=float), floor)


def plot_e1(e1: dict, out: Path, title: str) -> str:
    plt = _plt()
    c = e1["curves"]
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
    ax1.set_title(f"E1 {title}: losses during training")
    ax1.legend(fontsize=8)
    ax2.semilogy(step, _floor(c["max_abs_diff_f32"], EPS64), "o-", ms=3, label="float32 (torch)")
    ax2.semilogy(step, _floor(c["max_abs_diff_f64"], EPS64 / 4), "s-", ms=3, label="float64 (NumPy reference)")
    ax2.axhline(EPS32, color="tab:blue", ls=":", lw=1, label="float32 eps")
    ax2.axhline(EPS64, color="tab:orange", ls=":", lw=1, label="float64 eps")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("max |ŷ(context) − ŷ(ΔW)| over validation prompts")
    ax2.set_title("E1: the two validation predictions differ by round-off")
    ax2.legend(fontsize=8)
    return _save(fig, out / "e1_training.png")


def _band(ax, x, band, color, label):
    """Median line and quartile band; ``None`` (JSON's nan) is drawn as a gap."""
    x = np.asarray(x)
    q25, med, q75 = (np.asarray(band[k], dtype=float) for k in ("q25", "median", "q75"))
    ax.fill_between(x, q25, q75, color=color, alpha=0.25, lw=0)
    ax.plot(x, med, "-", color=color, label=label)


def plot_e2(e2: dict, out: Path) -> str:
    plt = _plt()
    i = np.array(e2["i"])
    keep = i >= 1                                      # log x-axis; relative change is undefined at i = 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ylabel in ((axes[0], "step_norm", r"$\|\Delta W_{i+1} - \Delta W_i\|$"),
                            (axes[1], "relative_change", r"$\|\Delta W_{i+1} - \Delta W_i\| \,/\, \|\Delta W_i\|$")):
        for name in ("trained", "untrained"):
            band = {k: np.asarray(v, dtype=float)[keep] for k, v in e2[name][key].items()}
            slope = e2[name][f"{key}_slope"]
            _band(ax, i[keep], band, COLORS[name], f"{name}: median, quartile band (slope {slope:.2f})")
        ref = e2["trained"][key]["median"][1] / i[keep]
        ax.plot(i[keep], ref, ":", color="black", lw=1, label="∝ 1/i")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("i (context tokens already absorbed)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_title(f"E2: step norm over {e2['n_prompts']} prompts")
    axes[1].set_title("E2: relative change")
    return _save(fig, out / "e2_convergence.png")


def plot_e3(e3: dict, out: Path) -> str:
    plt = _plt()
    i = np.array(e3["i"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    labels = {"implicit": "implicit update ΔW_i (= model with i examples in context)",
              "sgd": f"online SGD on mlp.W, lr {e3['sgd_lr']:g}",
              "least_squares": "least squares (noise-free: ≈ 0 once i ≥ d)"}
    for name, label in labels.items():
        loss = np.array(e3["loss"][name])
        sem = np.array(e3["loss_sem"][name])
        y = _floor(loss, 1e-4)
        ax1.plot(i, y, "-", color=COLORS[name], label=label)
        ax1.fill_between(i, _floor(loss - sem, 1e-4), _floor(loss + sem, 1e-4), color=COLORS[name], alpha=0.2, lw=0)
    ax1.axhline(e3["loss_zero"], color="black", ls=":", lw=1, label="predicting 0")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-4 / 2, None)
    ax1.set_xlabel("i (examples used)")
    ax1.set_ylabel(f"test loss, mean ± s.e.m. over {e3['n_runs']} tasks (floor 1e-4)")
    ax1.set_title("E3: in-context (implicit ΔW) vs explicit finetuning")
    ax1.legend(fontsize=7.5, loc="lower right", bbox_to_anchor=(1.0, 0.08), framealpha=0.9)
    _band(ax2, e3["alignment_i"], e3["alignment"], "tab:purple", "same task: median, quartile band")
    _band(ax2, e3["alignment_i"], e3["alignment_null"], "tab:gray", "null (another task's SGD update)")
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_ylim(-1, 1)
    ax2.set_xlabel("i (examples used)")
    ax2.set_ylabel(r"$\langle \Delta W_{\mathrm{implicit}}, \Delta W_{\mathrm{SGD}} \rangle_F \,/\, "
                   r"(\|\cdot\|\,\|\cdot\|)$")
    ax2.set_title("E3: alignment of the implicit and SGD updates")
    ax2.legend(fontsize=8)
    return _save(fig, out / "e3_finetuning.png")


def plot_e4(e4: dict, out: Path) -> list[str]:
    plt = _plt()
    err = np.array(e4["identity_error_max"])          # (L, T)
    L, T = err.shape
    fig, ax = plt.subplots(figsize=(7, 4))
    for l in range(L):
        ax.semilogy(np.arange(1, T + 1), _floor(err[l], EPS64 / 4), "o-", ms=2.5,
                    label=f"block {l}: rank(Σ_i ΔW_i) = "
                          + " or ".join(str(v) for v in sorted(set(r[l] for r in e4["rank_sum_delta_W"]))))
    ax.axhline(EPS64, color="black", ls=":", lw=1, label="float64 eps")
    ax.set_xlabel("position i (T = N + 1 is the query)")
    ax.set_ylabel(f"max |error| over {e4['n_prompts']} prompts (0 drawn at eps/4)")
    ax.set_title("E4 (P2): block([x]; W+ΔW_i, b+Δb_i) vs block(H)_i, every position")
    ax.legend(fontsize=8)
    first = _save(fig, out / "e4_identity.png")
    align = np.array(e4["alignment_prompt0"])         # (L, T, T)
    fig, axes = plt.subplots(1, L, figsize=(3.6 * L + 1.6, 3.9), squeeze=False, constrained_layout=True)
    for l, ax in enumerate(axes[0]):
        im = ax.imshow(align[l], vmin=-1, vmax=1, cmap="RdBu_r", origin="lower",
                       extent=(0.5, T + 0.5, 0.5, T + 0.5))
        ax.set_title(f"block {l}")
        ax.set_xlabel("position j")
        if l == 0:
            ax.set_ylabel("position i")
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9,
                 label=r"$\langle \Delta W_i, \Delta W_j \rangle_F \,/\, (\|\Delta W_i\|\,\|\Delta W_j\|)$")
    fig.suptitle("E4 (P2): token alignment of the per-position updates (one prompt)")
    fig.savefig(out / "e4_alignment.png")
    plt.close(fig)
    return [first, "e4_alignment.png"]


def plot_e5(e5: dict, out: Path) -> str:
    """Thought patch: error of a query-independent ΔW(C) on new queries against the number K of calibration queries."""
    plt = _plt()
    K = np.array(e5["K"])
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    band = e5["mse_patch_to_context"]
    ax.plot(K, band["median"], "o-", color="tab:blue", label="patch ΔW(C) vs the in-context prediction (median)")
    ax.fill_between(K, band["q25"], band["q75"], color="tab:blue", alpha=0.2, lw=0, label="quartile band")
    ax.plot(K, [e5["mse_patch_to_target_at"][str(k)] for k in K], "s--", color="tab:green", ms=4,
            label="patch ΔW(C) vs the true ⟨w, x⟩ (median)")
    ax.axhline(e5["mse_context_to_target"], color="tab:green", ls=":", lw=1.2,
               label="in context (= exact per-query ΔW(C, x)) vs the true ⟨w, x⟩")
    ax.axhline(e5["mse_no_update_to_context"], color="black", ls=":", lw=1,
               label="no update (query alone, W) vs the in-context prediction")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(K, [str(k) for k in K])
    ax.minorticks_off()
    ax.set_xlabel("K (calibration queries the patch is fitted on)")
    ax.set_ylabel(f"mean squared error on {e5['n_test']} new queries")
    ax.set_title("E5: one query-independent ΔW(C) for all queries of a context")
    ax.legend(fontsize=7.5, loc="upper right", bbox_to_anchor=(1.0, 0.93))    # between the two dotted lines
    return _save(fig, out / "e5_thought_patch.png")


def plot_e6(e6: dict, out: Path) -> str:
    """Step norms against i: softmax attention vs an RNN as the contextual layer, both untrained."""
    plt = _plt()
    i = np.array(e6["i"])
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    for name, color, label in (("attention", "tab:gray", "softmax attention (E2's untrained block)"),
                               ("rnn", "tab:red", f"RNN, {e6['d_hidden']} units (untrained)")):
        band = e6[name]["step_norm"]
        keep = i >= 1
        ax.plot(i[keep], np.array(band["median"])[keep], "-", color=color,
                label=f"{label}: slope {e6[name]['step_norm_slope']:.2f}")
        ax.fill_between(i[keep], np.array(band["q25"])[keep], np.array(band["q75"])[keep], color=color, alpha=0.2,
                        lw=0)
    ref = np.array(e6["attention"]["step_norm"]["median"])[1] / i[i >= 1]
    ax.plot(i[i >= 1], ref, ":", color="black", lw=1, label="∝ 1/i")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("i (context tokens consumed)")
    ax.set_ylabel("‖ΔW_(i+1) − ΔW_i‖ (median, quartile band)")
    ax.set_title(f"E6: the contextual layer decides the decay ({e6['n_prompts']} prompts)")
    ax.legend(fontsize=8)
    return _save(fig, out / "e6_rnn_steps.png")

