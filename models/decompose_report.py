"""``explain --decompose``: the few-shot decomposition and transfer of ``models.decompose`` for one prompt (and, for
a task, over many prompts), with the untrained twin beside every figure, as text, Markdown and JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .corpus import bootstrap_ci
from .decompose import SHARE_FLOOR, decompose, induction_targets, transfer, untrained_twin

VARIANTS = (("all", "every layer's update (ΔW and Δb)"), ("none", "no update (query without context)"),
            ("delta_W", "only the ΔWs"), ("delta_b", "only the Δbs"))
PARALLEL_NOTE = ("ΔW = 0 exactly in every layer: a parallel-residual block's MLP reads N2(x), the query's own "
                 "vector, which the context never touches (THEORY §11), so 'only the ΔWs' is 'no update' and the "
                 "whole effect of the context is the Δbs.")
CLAIM = ("ours (THEORY §3c, §11): the query alone with every layer's update reproduces the prompt's next-token "
         "distribution (KL = round-off); the ΔW-only and Δb-only runs are not exact, and their gap is the measurement. "
         "Transfer of one query's updates to another: Mazzawi et al. 2025 (arXiv 2510.08734), THEORY §8.2; the patch "
         "fitted over K queries (least squares per layer, as E5): ours.")


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


def identity_max_kl(result: dict) -> float:
    """The largest KL, trained and untrained, of a query alone with its own updates in one :func:`one_prompt`
    result: the decomposition's full update and every transfer query's own (the identity, THEORY §3c)."""
    return max(max(abs(result[m]["decomposition"]["variants"]["all"]["kl"]),
                   result[m].get("transfer", {}).get("identity_max_kl", 0.0)) for m in ("trained", "untrained"))


def over_prompts(model, prompts, seed: int = 0, Ks=(1, 2, 4)) -> dict:
    """Means over ``prompts`` (each ``(ids, queries)``) of every figure of :func:`one_prompt`, trained and
    untrained (a figure a prompt does not define, a share or an accuracy, is left out of its mean), with
    ``intervals``: the 95 % bootstrap interval over prompts (``corpus.bootstrap_ci``) of the shares and of each
    variant's and transfer method's KL and accuracy, and ``identity_max_kl``: the largest KL of any prompt's query
    alone with its own updates (:func:`identity_max_kl`: the identity checked on every prompt, not on their mean).
    Prompt i's untrained twin is drawn with seed ``seed + i``, so the untrained means and intervals cover the twin's
    draw as well as the prompt."""
    runs = [one_prompt(model, ids, queries, seed + i, Ks) for i, (ids, queries) in enumerate(prompts)]
    out = {"n_prompts": len(runs), "twin_seeds": [seed, seed + len(runs) - 1],
           "identity_max_kl": max(identity_max_kl(r) for r in runs)}
    for name in ("trained", "untrained"):
        trees = [{**d["variants"], "share": {"delta_W": d["share_delta_W"], "delta_b": d["share_delta_b"]},
                  "layers": {str(l["layer"]): l for l in d["layers"]}}
                 for d in (r[name]["decomposition"] for r in runs)]
        out[name] = {"decomposition": _mean_tree(trees),
                     "intervals": {"share": {k: _interval([t["share"][k] for t in trees]) for k in
                                             ("delta_W", "delta_b")},
                                   "decomposition": {v: _figure_intervals([t[v] for t in trees]) for v, _ in
                                                     VARIANTS}}}
        if all("transfer" in r[name] for r in runs):
            transfers = [r[name]["transfer"] for r in runs]
            out[name]["transfer"] = _mean_tree(transfers) | {
                "identity_max_kl": max(t["identity_max_kl"] for t in transfers)}   # a largest, not a mean
            out[name]["intervals"]["transfer"] = {k: _figure_intervals([t[k] for t in transfers])
                                                  for k, v in transfers[0].items() if isinstance(v, dict)}
    return out


def _interval(values) -> list | None:
    """The 95 % bootstrap interval ``[lo, hi]`` over prompts of the defined values (``None``s left out; ``None``
    if fewer than 2 are defined)."""
    vals = [float(v) for v in values if v is not None]
    return list(bootstrap_ci(vals)[1:]) if len(vals) >= 2 else None


def _figure_intervals(reads: list[dict]) -> dict:
    return {k: _interval([r.get(k) for r in reads]) for k in ("kl", "correct")}


def _mean_tree(trees: list):
    """The element-wise mean of equally shaped nested dicts of numbers (booleans as 0/1; ``None`` stays)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _mean_tree([t[k] for t in trees]) for k in first}
    if isinstance(first, str):
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
    over = "share" in t                                           # means over prompts (over_prompts), not one prompt
    share_t = t.get("share", {"delta_W": t.get("share_delta_W"), "delta_b": t.get("share_delta_b")})
    share_u = u.get("share", {"delta_W": u.get("share_delta_W"), "delta_b": u.get("share_delta_b")})
    what = ("the mean over prompts of each prompt's 1 − KL(q)/KL(no update)" if over else
            "1 − KL(q)/KL(no update)")
    identity = (f"  'every layer's update': the largest KL over the prompts (and their transfer queries' own "
                f"updates), trained and untrained, is "
                f"{result['identity_max_kl']:.2g}" if over else f"  'every layer's update' KL = {tv['all']['kl']:.2g}")
    lines += ["",
              f"  share of the context's effect recovered, {what} (ours): only the ΔWs "
              f"{_share(share_t['delta_W'])} (untrained {_share(share_u['delta_W'])}), only the Δbs "
              f"{_share(share_t['delta_b'])} (untrained {_share(share_u['delta_b'])}); not a split of one whole: the "
              f"two need not add to 100 %, and with only the ΔWs each later layer's ΔW meets an input it was not "
              f"computed for",
              identity + ": the identity (round-off), not a finding"]
    if None in (*share_t.values(), *share_u.values()):
        lines.append(f"  n/a: the context moves the prediction by less than {SHARE_FLOOR:g} nats (KL with no update), "
                     f"too little for a ratio")
    if over:
        lines += intervals_lines(result, "share", (("delta_W", "share, only the ΔWs"),
                                                   ("delta_b", "share, only the Δbs")))
        lines += intervals_lines(result, "decomposition", VARIANTS[1:], header=False)
    if t.get("delta_W_zero"):
        lines.append("  " + PARALLEL_NOTE)
    return lines


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _bounds(interval, percent: bool) -> str:
    if interval is None:
        return "—"
    return "[" + ", ".join(f"{v:.1%}" if percent else f"{v:.3g}" for v in interval) + "]"


def intervals_lines(result: dict, part: str, rows, header: bool = True) -> list[str]:
    """95 % bootstrap intervals over the prompts (``over_prompts``) of ``part``'s figures ``rows`` ((key, label)):
    shares as they are, else each row's accuracy and KL, trained beside untrained; ``header``: the line saying so
    first (left out to continue the lines of another part)."""
    t, u = result["trained"]["intervals"].get(part), result["untrained"]["intervals"].get(part)
    if t is None:
        return []
    first, last = result.get("twin_seeds", (None, None))
    lines = [f"  95 % bootstrap intervals over the {result['n_prompts']} prompts (trained; untrained, a twin of its "
             f"own per prompt, seeds {first}–{last}):"] if header else []
    for key, label in rows:
        if part == "share":
            lines.append(f"    {label}: {_bounds(t[key], True)}; {_bounds(u[key], True)}")
        else:
            lines.append(f"    {label}: accuracy {_bounds(t[key]['correct'], True)}; {_bounds(u[key]['correct'], True)}"
                         f" · KL {_bounds(t[key]['kl'], False)}; {_bounds(u[key]['kl'], False)}")
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
    if "intervals" in result["trained"]:
        lines += intervals_lines(result, "transfer", rows)
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
    text = json.dumps(report, indent=2, allow_nan=False)        # strict JSON: an undefined figure is null, not NaN
    atomic_write_bytes(js, lambda f: f.write(text.encode()))
    return [md, js]
