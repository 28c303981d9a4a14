"""E6 (ours; a summary of a later P1 version reports a similar contrast, THEORY §5.4, UNCONFIRMED; §8.5): the same
step norms with an RNN as the contextual layer, against softmax attention, both untrained: which layer makes the
steps decay.

The RNN as the contextual layer (THEORY §5.4: a later P1 version uses one; its marginal updates do not converge).

P1's theorem needs nothing of attention: any contextual layer ``A(C, x)`` followed by an MLP gives the rank-1
update ``ΔW = W (A(C, x) − A(x)) A(x)ᵀ/‖A(x)‖²`` (THEORY §2). Here ``A`` is an Elman RNN read out at the query::

    h_0 = 0,   h_t = tanh(W_h h_{t−1} + W_z z_t + b_h),   A(z_1..z_T) = W_o h_T + b_o       (z_T = x, the query)

so ``A(c_1..c_i, x)`` for every prefix comes from one pass over the context (the state after ``c_1..c_i``, then one
step on ``x``). Unlike softmax attention, which averages (its increments shrink like 1/i, THEORY §8.5), the RNN's
state moves by O(1) with every token: its steps ``‖ΔW_{i+1} − ΔW_i‖`` need not shrink. The MLP on top is the
``plain`` block's (``out = MLP(A)``), from ``reference.layers.mlp``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.layers import mlp

from .plots import pyplot, save
from .statistics import TOL_F64, at_marks, bands, loglog_slope
from .text import fmt, header

KEY = "e6"
PAPER = {"source": "ours; a later P1 version reportedly uses an RNN as the contextual layer, as summarised by one "
                   "third party, THEORY §5.4 (UNCONFIRMED), §8.5",
         "claim": "with an RNN as the contextual layer the marginal updates stay large and oscillate (do not "
                  "converge)"}
# A log-log slope at or below this counts as "decays" (1/i is −1; a constant is 0).
DECAY_SLOPE = -0.5


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


def rnn_contrast(attention_untrained: list, prompts, d_mlp: int, seed: int, d_hidden: int = 16, fit_from: int = 5,
                 spectral_radius: float = 0.9) -> dict:
    """Step norms ``‖ΔW_{i+1} − ΔW_i‖`` against i with softmax attention (E2's untrained block, its trajectories
    ``attention_untrained``) and with an untrained RNN as the contextual layer (``init_rnn``, ``step_norms``), on the
    same prompts."""
    params = init_rnn(prompts.Z.shape[-1], d_hidden, d_mlp, seed, spectral_radius)
    runs = [step_norms(params, z[:-1], z[-1]) for z in prompts.Z]
    out = {"i": list(range(len(runs[0][0]))), "fit_from": fit_from, "n_prompts": len(runs), "d_hidden": d_hidden,
           "spectral_radius": spectral_radius, "decay_slope": DECAY_SLOPE,
           "rnn_identity_max_abs_diff": max(err for _, err in runs), "tol_f64": TOL_F64}
    for name, steps in (("attention", np.stack([t.step_norm for t in attention_untrained])),
                        ("rnn", np.stack([s for s, _ in runs]))):
        i = np.arange(steps.shape[1])
        med = np.median(steps, axis=0)
        slope = loglog_slope(i[i >= fit_from], med[i >= fit_from])
        out[name] = {"step_norm": bands(steps), "step_norm_slope": slope, "decays": bool(slope <= DECAY_SLOPE),
                     "step_norm_at": at_marks(med, start=1),
                     "last_over_first": float(med[-1] / med[1])}                # step at i = n−1 over i = 1
    out["agrees_f64"] = bool(out["rnn_identity_max_abs_diff"] <= TOL_F64)
    return out


def compute(study) -> dict | None:
    """E6 on E2's untrained block and an untrained RNN, E2's prompts (``--preset p1`` only, else None)."""
    m = study.block
    if m is None:
        return None
    study.log("E6: the same step norms with an RNN as the contextual layer (untrained)")
    return study.timed("E6 RNN contextual layer", lambda: rnn_contrast(
        study.trajectories["untrained"], study.prompts, m.cfg.d_mlp, study.seed))


def plot(report: dict, out: Path) -> list[str]:
    """Step norms against i: softmax attention vs an RNN as the contextual layer, both untrained."""
    e6 = report[KEY]
    plt = pyplot()
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
    return [save(fig, out / "e6_rnn_steps.png")]


VERDICTS = {(True, False): "Attention's steps decay and the RNN's do not",
            (True, True): "Both layers' steps decay here",
            (False, False): "Neither layer's steps decay here",
            (False, True): "The RNN's steps decay and attention's do not"}


def _findings(e6: dict, pe6: dict, keys: list) -> str:
    """E6's findings, conditioned on the numbers: which layer's steps decay, and whether the RNN's identity holds."""
    at, rn = e6["attention"], e6["rnn"]
    text = (f"{VERDICTS[(at['decays'], rn['decays'])]} (\"decays\": slope ≤ {fmt(e6['decay_slope'])} for "
            f"i ≥ {fmt(e6['fit_from'])}; step at i = {keys[-1]} over step at i = {keys[0]}: "
            f"{fmt(at['last_over_first'])} attention, {fmt(rn['last_over_first'])} RNN). "
            f"Reported (UNCONFIRMED): {pe6['claim']}. Source: {pe6['source']}. ")
    identity = (f"(largest error {fmt(e6['rnn_identity_max_abs_diff'])}, tolerance {fmt(e6['tol_f64'])}: "
                f"{fmt(e6['agrees_f64'])})")
    if not e6["agrees_f64"]:
        return text + (f"The identity check on the RNN FAILED {identity}, which the algebra does not allow: a bug, "
                       "not a finding.")
    if at["decays"] and not rn["decays"]:
        return text + ("The decay E2 shows is a property of averaging (attention's output is a running weighted "
                       "mean, THEORY §8.5), not of the implicit update or of learning: the identity holds for the "
                       f"RNN just as well {identity}, since P1's theorem needs any contextual layer, not attention.")
    return text + (f"The identity holds for the RNN just as well {identity}: P1's theorem needs any contextual "
                   "layer, not attention.")


def section(r: dict) -> list[str]:
    """E6's part of report.md: median step norms of both layers, and the findings."""
    e6, pe6 = r[KEY], r["paper"][KEY]
    at, rn = e6["attention"], e6["rnn"]
    keys = list(at["step_norm_at"])
    return ["## E6 — which contextual layer makes the steps decay: softmax attention vs an RNN (ours)", "",
            "![E6](e6_rnn_steps.png)", "",
            f"Both untrained, on the same {fmt(e6['n_prompts'])} prompts: E2's attention block at its initial weights "
            f"and an Elman RNN ({fmt(e6['d_hidden'])} units, recurrent spectral radius {fmt(e6['spectral_radius'])}) "
            "read out at the query, each followed by an MLP. Median step norm:", "",
            *header("i", keys + ["log-log slope"]),
            "| softmax attention | " + " | ".join(fmt(at["step_norm_at"][k]) for k in keys)
            + f" | {fmt(at['step_norm_slope'])} |",
            "| RNN | " + " | ".join(fmt(rn["step_norm_at"][k]) for k in keys) + f" | {fmt(rn['step_norm_slope'])} |",
            "", _findings(e6, pe6, keys), ""]
