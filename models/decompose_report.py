"""``explain --decompose``: the few-shot decomposition and transfer of ``models.decompose`` for one prompt (and, for
a task, over many prompts), with the untrained twin beside every figure, as text, Markdown and JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .decompose import decompose, induction_targets, transfer, untrained_twin

VARIANTS = (("all", "every layer's update (ΔW and Δb)"), ("none", "no update (query without context)"),
            ("delta_W", "only the ΔWs"), ("delta_b", "only the Δbs"))
PARALLEL_NOTE = ("ΔW = 0 exactly in every layer: a parallel-residual block's MLP reads N2(x), the query's own "
                 "vector, which the context never touches (THEORY §11), so 'only the ΔWs' is 'no update' and the "
                 "whole effect of the context is the Δbs.")
CLAIM = ("ours (THEORY §3c, §11): the query alone with every layer's update reproduces the prompt's next-token "
         "distribution (KL = round-off); the ΔW-only and Δb-only runs are not exact, and their gap is the measurement. "
         "Transfer / patch: Mazzawi et al. 2025 (arXiv 2510.08734), THEORY §8.2.")


def one_prompt(model, ids, queries=None, seed: int = 0, Ks=(1, 2, 4)) -> dict:
    """The decomposition of ``ids`` (query last) and the transfer over ``queries`` (token ids, the prompt's own
    query first; ``None`` or fewer than 2: no transfer), on the model and on its untrained twin (``seed``)."""
    ids = np.asarray(ids, dtype=np.int64)
    context = ids[:-1]
    target = induction_targets(context, [ids[-1]])[0]
    twin = untrained_twin(model, seed)
    out = {"ids": ids.tolist(), "target": target, "twin_seed": seed}
    for name, m in (("trained", model), ("untrained", twin)):
        out[name] = {"decomposition": decompose(m, ids, target).to_dict()}
        if queries is not None and len(queries) >= 2:
            tr = transfer(m, context, queries, induction_targets(context, queries), Ks)
            out[name]["transfer"] = tr.summary()
    out["queries"] = None if queries is None else [int(q) for q in queries]
    return out


def over_prompts(model, prompts, seed: int = 0, Ks=(1, 2, 4)) -> dict:
    """Means over ``prompts`` (each ``(ids, queries)``) of every figure of :func:`one_prompt`, trained and
    untrained."""
    runs = [one_prompt(model, ids, queries, seed, Ks) for ids, queries in prompts]
    out = {"n_prompts": len(runs)}
    for name in ("trained", "untrained"):
        decs = [r[name]["decomposition"] for r in runs]
        out[name] = {"decomposition": _mean_tree([{**d["variants"], "share": {"delta_W": d["share_delta_W"],
                                                                             "delta_b": d["share_delta_b"]},
                                                   "layers": {str(l["layer"]): l for l in d["layers"]}}
                                                  for d in decs])}
        if all("transfer" in r[name] for r in runs):
            out[name]["transfer"] = _mean_tree([r[name]["transfer"] for r in runs])
    return out


def _mean_tree(trees: list):
    """The element-wise mean of equally shaped nested dicts of numbers (booleans as 0/1; ``None`` stays)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _mean_tree([t[k] for t in trees]) for k in first}
    if first is None or isinstance(first, str):
        return first
    vals = [float(t) for t in trees if t is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------------------------- text


def _row(label: str, t: dict, u: dict) -> str:
    acc = "" if t.get("correct") is None else f" {t['correct']:8.0%}  {u['correct']:8.0%}"
    return (f"  {label:<34} {t['kl']:10.4g} {u['kl']:10.4g}  {t['p_top']:8.3f} {u['p_top']:8.3f}  "
            f"{t.get('rank_top', float('nan')):6.3g} {u.get('rank_top', float('nan')):6.3g}  "
            f"{t['agrees']:6.0%} {u['agrees']:6.0%}{acc}")


def _head() -> list[str]:
    return [f"  {'':<34} {'KL(p‖q) nats':>21}  {'p(top token)':>17}  {'rank of top':>13}  {'top-1 = p':>13}"
            f"  {'accuracy':>17}",
            f"  {'':<34} {'trained':>10} {'untrained':>10}  {'trained':>8} {'untr.':>8}  {'trained':>6} "
            f"{'untr.':>6}  {'tr.':>6} {'untr.':>6}  {'trained':>8} {'untr.':>8}"]


def decomposition_lines(result: dict, tokens_of=None) -> list[str]:
    """The decomposition table: one row per variant and per layer, trained beside untrained."""
    t, u = result["trained"]["decomposition"], result["untrained"]["decomposition"]
    tv, uv = t.get("variants", t), u.get("variants", u)
    lines = ["few-shot decomposition of the next-token prediction: the query token alone, with …", *_head()]
    lines += [_row(what, tv[k], uv[k]) for k, what in VARIANTS]
    t_layers = t["layers"] if isinstance(t["layers"], list) else list(t["layers"].values())
    u_layers = u["layers"] if isinstance(u["layers"], list) else list(u["layers"].values())
    lines += [_row(f"only layer {l}'s update", a, b) for l, (a, b) in enumerate(zip(t_layers, u_layers))]
    share_t = t.get("share", {"delta_W": t.get("share_delta_W"), "delta_b": t.get("share_delta_b")})
    share_u = u.get("share", {"delta_W": u.get("share_delta_W"), "delta_b": u.get("share_delta_b")})
    lines += ["",
              f"  share of the context's effect recovered, 1 − KL(q)/KL(no update) (ours): only the ΔWs "
              f"{share_t['delta_W']:.1%} (untrained {share_u['delta_W']:.1%}), only the Δbs {share_t['delta_b']:.1%} "
              f"(untrained {share_u['delta_b']:.1%})",
              f"  'every layer's update' KL = {tv['all']['kl']:.2g}: the identity (round-off), not a finding"]
    if t.get("delta_W_zero"):
        lines.append("  " + PARALLEL_NOTE)
    return lines


TRANSFER_ROWS = (("with_context", "the query run with the context"), ("own", "its own updates (exact)"),
                 ("transfer", "another query's updates"), ("none", "no update"))


def transfer_lines(result: dict) -> list[str]:
    t, u = result["trained"].get("transfer"), result["untrained"].get("transfer")
    if t is None:
        return ["transfer: needs at least 2 queries (--queries)"]
    rows = list(TRANSFER_ROWS) + [(k, f"patch fitted on K = {k[7:]} other queries") for k in t if
                                  k.startswith("patch_K")]
    lines = ["transfer ('thought patch', Mazzawi et al. 2025): a query of the same context run alone with …",
             *_head()]
    lines += [_row(what, t[k], u[k]) for k, what in rows]
    return lines


def text(result: dict, title: str) -> str:
    return "\n".join([title, "", *decomposition_lines(result), "", *transfer_lines(result), "", f"({CLAIM})"])


# ------------------------------------------------------------------------------------------- the report


def markdown(report: dict) -> str:
    """The report's Markdown section: the one prompt and, when present, the means over the task's prompts."""
    parts = [f"## Few-shot decomposition and transfer: {report['model']}", "",
             f"Prompt `{report['text']}` (ids {report['prompt']['ids']}); untrained control: every array redrawn "
             f"N(mean, std) of the trained one, seed {report['prompt']['twin_seed']}. {CLAIM}", "", "```",
             *decomposition_lines(report["prompt"]), "", *transfer_lines(report["prompt"]), "```"]
    if report.get("task") is not None:
        task = report["task"]
        parts += ["", f"### Means over {task['n_prompts']} random prompts of the task ({task['what']})", "", "```",
                  *decomposition_lines(task), "", *transfer_lines(task), "```"]
    return "\n".join(parts) + "\n"


def write_report(folder, report: dict) -> list[Path]:
    """``report.md`` and ``report.json`` in ``folder`` (created), each written whole."""
    from implicit_icl.checkpoint import atomic_write_bytes

    folder = Path(folder)
    md, js = folder / "report.md", folder / "report.json"
    atomic_write_bytes(md, lambda f: f.write(markdown(report).encode()))
    atomic_write_bytes(js, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return [md, js]
