"""The text of ``implicit-icl explain``: one layer's report, the all-layers table, the query-dependence verdict.

``Labels`` names what differs between models (the model, its first MLP matrix, where Δb goes); the numbers come
from ``models.analysis`` only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-12   # × (1 + output scale): float64 round-off of a few hundred-term sums, as `implicit-icl verify`
BAR = 24


@dataclass(frozen=True)
class Labels:
    """What the text calls the model (``name``), layer ℓ's first MLP matrix (``matrix``) and where ``Δb`` goes
    (``bias``); ``parallel``: the blocks are parallel-residual (``ΔW = 0`` exactly, THEORY §11)."""

    name: str = "all-MiniLM-L6-v2"
    matrix: str = "intermediate.dense"
    bias: str = "(added inside LN2, with the residual h)"
    parallel: bool = False


MINILM = Labels()
PARALLEL = ("ΔW = 0 exactly: a parallel-residual block's MLP reads N2(x), the query's own vector, which the context "
            "never touches (THEORY §11); the whole effect of the context is Δb.")


def labels_for(model, name: str) -> Labels:
    """The labels of a loaded model: MiniLM's, or from an ``HFModel``'s block kind."""
    cfg = model.configs[0]
    if getattr(model, "family", None) is None:
        return MINILM
    matrix = {"gated": "W = [W_gate; W_up], mlp.gate_proj and mlp.up_proj", "parallel": "the MLP's first matrix"
              }.get(cfg.kind, "the MLP's first matrix")
    bias = {"post-ln": "(added inside LN2, with the residual h)"}.get(cfg.kind, "(added to the block's output)")
    return Labels(name=name, matrix=matrix, bias=bias, parallel=all(c.kind == "parallel" for c in model.configs))

def _bar(value: float, top: float) -> str:
    n = 0 if top <= 0 else round(BAR * value / top)
    return "█" * n + " " * (BAR - n)


def _tokens_line(tokens, p: int) -> str:
    return " ".join(f"[{i}:{t}]" if i == p else f"{i}:{t}" for i, t in enumerate(tokens))


def _ok(error: float, scale: float) -> bool:
    return error <= TOLERANCE * (1.0 + scale)


def format_layer(ex, labels: Labels = MINILM) -> str:
    """The one-layer report as text."""
    W_shape = "×".join(str(s) for s in (ex.update.u.shape[0], ex.update.a.shape[0]))
    lines = [
        f"{labels.name} · layer {ex.layer} · query token {ex.position} {ex.query_token!r}",
        f"tokens  {_tokens_line(ex.tokens, ex.position)}",
        "",
        f"implicit update of layer {ex.layer}'s first MLP matrix W ({W_shape}, {labels.matrix}) for this query:",
        f"  ‖ΔW‖_F = ‖ΔW‖_2    {ex.delta_W_norm:12.6g}    rank 1: ΔW = u aᵀ/‖a‖², ‖a‖ = {ex.update.a_norm_sq ** 0.5:.6g}",
        f"  ‖W‖_F              {ex.W_norm:12.6g}",
        f"  ‖ΔW‖ / ‖W‖         {ex.relative_norm:12.4%}",
        f"  ‖Δb_out‖           {ex.delta_b_norm:12.6g}    {labels.bias}",
        *([f"  {PARALLEL} (marginals and prefix steps below are 0 for the same reason.)"] if labels.parallel else []),
        f"  identity error     {ex.identity_error:12.3g}    max |T_(W+ΔW, b+Δb)(x alone) − model's layer output|, "
        f"outputs up to {ex.output_scale:.3g}  [{'ok' if _ok(ex.identity_error, ex.output_scale) else 'FAIL'}]",
        "",
        "which context tokens move W (marginal: remove that token alone from layer "
        f"{ex.layer}'s attention; prefix step: add it, in text order):",
        f"  {'idx':>4} {'token':<14} {'‖ΔW({c_j})‖':>12}  {'':<{BAR}} {'‖Δb({c_j})‖':>12} {'prefix step':>12}"
        + (f" {'random layer':>13}" if ex.baseline is not None else "")
        + (f" {'ΔW on c_j':>10}" if ex.transfer_ratio is not None else "")
        + (f" {'own ΔW_j':>9}" if ex.own_ratio is not None else ""),
    ]
    top = float(ex.marginal_norm.max()) if ex.marginal_norm.size else 0.0
    for k, (i, m, mb) in enumerate(zip(ex.context_index, ex.marginal_norm, ex.marginal_bias_norm)):
        step = f"{ex.dynamics.step_norm[k]:12.4g}" if ex.dynamics is not None else f"{'-':>12}"
        base = f" {ex.baseline.marginal_norm[k]:13.4g}" if ex.baseline is not None else ""
        base += f" {ex.transfer_ratio[k]:9.2f}×" if ex.transfer_ratio is not None else ""
        base += f" {ex.own_ratio[k]:8.2f}×" if ex.own_ratio is not None else ""
        lines.append(f"  {int(i):>4} {ex.tokens[i][:14]:<14} {m:12.4g}  {_bar(m, top)} {mb:12.4g} {step}{base}")
    if ex.marginal_norm.size:
        lines.append(f"  (marginals need not add up to ‖ΔW(C)‖ = {ex.delta_W_norm:.4g}: attention is not additive)")
    if ex.dynamics is not None:
        lines.append(f"  prefix dynamics: max |T_(W_i, b_i)(x) − T_W(c_1..c_i, x)| over all prefixes = "
                     f"{ex.dynamics.prediction_error.max():.3g}")
    if ex.transfer_ratio is not None and ex.transfer_ratio.size:
        lines += ["", *query_dependence_lines(ex)]
    if ex.baseline is not None and ex.marginal_norm.size:
        from implicit_icl.models.explanations import top_share

        b = ex.baseline
        lines += [
            "",
            f"baseline: a random layer of the same shapes and weight scale (seed {b.seed}), same input rows:",
            f"  ‖ΔW‖ / ‖W‖         trained {ex.relative_norm:8.3%}    random {b.relative_norm:8.3%}",
            f"  top token's share  trained {top_share(ex.marginal_norm):8.1%}    random "
            f"{top_share(b.marginal_norm):8.1%}    (largest marginal / sum of marginals)",
        ]
    return "\n".join(lines)


def transfer_verdict(query_median: float, own_median: float | None) -> str:
    """One honest sentence comparing this query's ΔW on the other tokens with each token's own ΔW (the control).

    Both are median miss ratios (1 = no better than W alone). Without ``Δb`` even a token's own ΔW leaves the
    residual part of its miss, so the query's ratio is read against the own one, not against 0: ``gain`` is the
    share of the own ΔW's improvement ``1 − own`` that the query's ΔW also gets, ``1 − query``."""
    q = f"{query_median:.2f}×"
    if own_median is None or not np.isfinite(own_median):
        return (f"this query's ΔW on the other tokens: median {q}"
                + (" (no better than W alone)" if query_median >= 1 else "") + "; no control to read it against.")
    o = f"{own_median:.2f}×"
    if own_median >= 1:
        return (f"even each token's own ΔW does not bring it closer (median {o}; this query's ΔW: {q}), so at this "
                "layer the comparison says nothing about query dependence.")
    gain = (1 - query_median) / (1 - own_median)
    how = "no better than W alone" if query_median >= 1 else f"{gain:.0%} of what the own ΔW gains"
    head = f"the query's ΔW on other tokens: {q} ({how}); each token's own ΔW: {o}"
    if gain <= 0.25:
        return head + ". Little or none of a token's own improvement carries over: the update belongs to its " \
                      "query (THEORY §8.2)."
    if gain >= 0.75:
        return head + ". Here the query's ΔW serves the other tokens about as well as their own (THEORY §8.2 " \
                      "says it need not)."
    return head + ". Part of a token's own improvement carries over."


def query_dependence_lines(ex) -> list[str]:
    """The query-dependence paragraph under the table: what the two ratio columns are, and the verdict."""
    helped = [ex.tokens[i] for i, t in zip(ex.context_index, ex.transfer_ratio) if t < 1]
    q_med = float(np.median(ex.transfer_ratio))
    own = ex.own_ratio if ex.own_ratio is not None and np.size(ex.own_ratio) else None
    o_med = float(np.median(own)) if own is not None else None
    lines = [
        "query dependence (THEORY §8.2): a ΔW (without Δb) applied to token j's row run alone; its miss of token j's "
        "own layer output relative to the miss with W unchanged (1× = no better than W alone):",
        f"  'ΔW on c_j'  this query's ΔW:        median {q_med:.2f}×, closer for {len(helped)} of "
        f"{ex.transfer_ratio.size} tokens"
        + (f" ({', '.join(repr(t) for t in helped[:6])}{', …' if len(helped) > 6 else ''})" if helped else ""),
    ]
    if o_med is not None:
        lines.append(f"  'own ΔW_j'   token j's own ΔW_j (control: query c_j, every other row its context): "
                     f"median {o_med:.2f}×, closer for {int(np.sum(own < 1))} of {own.size}")
        lines.append("  (the control is not 0×: without Δb no ΔW reaches a token's output, the residual part of "
                     "its miss stays)")
    lines.append(f"  verdict: {transfer_verdict(q_med, o_med)}")
    return lines


def format_model(ex, labels: Labels = MINILM) -> str:
    """The all-layers report as text."""
    lines = [
        f"{labels.name} · every layer · query token {ex.position} {ex.tokens[ex.position]!r}",
        f"tokens  {_tokens_line(ex.tokens, ex.position)}",
        "",
        f"  {'layer':>5} {'‖ΔW‖':>10} {'‖W‖':>10} {'‖ΔW‖/‖W‖':>10} {'‖Δb‖':>10} {'identity err':>13}"
        + (f" {'random layer ‖ΔW‖/‖W‖':>23}" if ex.baselines is not None else ""),
    ]
    for l, d in enumerate(ex.to_dict()["layers"]):
        base = f" {d['baseline_relative_norm']:23.3%}" if ex.baselines is not None else ""
        lines.append(f"  {l:>5} {d['delta_W_norm']:10.4g} {d['W_norm']:10.4g} {d['relative_norm']:10.3%} "
                     f"{d['delta_b_norm']:10.4g} {d['identity_error']:13.3g}{base}")
    L = len(ex.updates)
    lines += [
        "",
        f"composed: the query's embedding alone through the {L} updated layers vs the model's last hidden state at "
        f"token {ex.position}: max |diff| = {ex.composed_error:.3g} (outputs up to {ex.output_scale:.3g})  "
        f"[{'ok' if _ok(ex.composed_error, ex.output_scale) else 'FAIL'}]",
        "each layer's update uses its input with context (x^ℓ = H^ℓ[query]); together they replace the whole text.",
        *([f"every layer: {PARALLEL}"] if labels.parallel else []),
    ]
    return "\n".join(lines)


NOTE = ("note: exact by algebra, whatever the weights (THEORY §8.1); ΔW belongs to this query token and layer only "
        "(§8.2) and is the minimum-norm one of infinitely many (§8.3). No weight of the model changes.")
