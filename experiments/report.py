"""``report.md`` rendered from ``report.json`` alone: every number in the text is a value of the JSON.

``render(report)`` is a pure function of the dict: the run's header, the Models table and the training recipe, then
each experiment's ``section`` in the order of ``registry.EXPERIMENTS``, then the timings. The papers' reported values
(``PAPER``: each experiment's own, and the training recipes here) are copied into report.json's ``paper`` section
(cited to THEORY.md) so that they too come from the JSON.
"""
from __future__ import annotations

from .registry import EXPERIMENTS
from .text import fmt  # noqa: F401 (re-exported: the report's one number formatter)

# What the sources say about their training recipes; the recipe paragraph and E1's section quote them.
RECIPES = {
    "recipe": {"source": "THEORY §5, the PyTorch replication",
               "lr": 1e-3, "steps": 2000, "batch_size": 64, "n_heads": 8, "d_head": 4, "d_mlp": 128, "d": 2,
               "n_points": 50},
    "recipe_p2": {"source": "THEORY §10, P2's default shapes; its training recipe is UNCONFIRMED",
                  "losses": "P2's trained losses are UNCONFIRMED, THEORY §10.19",
                  "n_blocks": 5, "n_heads": 3, "d_mlp": 12, "kind": "pre-LN", "activation": "GELU", "n_points": 50},
}
# What the papers (and the sources THEORY.md cites) report; the numbers go into report.json["paper"].
PAPER = {exp.KEY: exp.PAPER for exp in EXPERIMENTS} | RECIPES


def render(r: dict) -> str:
    """The Markdown report of one ``implicit-icl reproduce`` run (a pure function of report.json)."""
    L = [f"# Reproduction report: preset `{r['preset']}`{' (quick)' if r['quick'] else ''}", "",
         f"Command: `{r['command']}` — seed {fmt(r['seed'])}, total time {fmt(r['total_s'])} s "
         f"(implicit-icl {r['versions']['implicit_icl']}, torch {r['versions']['torch']}, "
         f"numpy {r['versions']['numpy']}). Every number below is read from `report.json` of this run.", ""]
    _models_section(r, L.append)
    _recipe_paragraph(r, L.append)
    for exp in EXPERIMENTS:
        if r.get(exp.KEY):
            L += exp.section(r)
    L += ["## Timing", "", "| step | seconds |", "|---|---|"]
    L += [f"| {k} | {fmt(v)} |" for k, v in r["timings_s"].items()]
    L.append("")
    return "\n".join(L)


def _models_section(r: dict, add) -> None:
    """The Models table: every model scored on the same validation prompts (those of E1's run)."""
    common = r["settings"]["val_prompts"]
    add("## Models")
    add("")
    add("| role | model | steps | validation loss (float64) | predicting 0 |")
    add("|---|---|---|---|---|")
    unscored = []
    for role, m in r["models"].items():
        if m["val_prompts"] is None:
            unscored.append(f"{role} (tokens of width {fmt(m['d_model'])})")
        add(f"| {role} | {m['description']} | {fmt(m['step'])} | {fmt(m['val_loss'])} | {fmt(m['val_loss_zero'])} |")
    add("")
    text = (f"Every loss above is on the same {fmt(common['n_prompts'])} validation prompts (N = "
            f"{fmt(common['n_points'])} examples, d = {fmt(common['d'])}, seed {fmt(common['seed'])}): those E1's run "
            "is evaluated on, so the rows and E1's curve compare; predicting 0 is the baseline on those prompts.")
    if unscored:
        text += (" Not scored, since they cannot read tokens of width d + 1 = " + fmt(common["d"] + 1) + ": "
                 + ", ".join(unscored) + ".")
    add(text)
    add("")


def _recipe_paragraph(r: dict, add) -> None:
    """Our training recipe for the chosen preset, beside what the sources say about theirs."""
    P, t = r["paper"], r["settings"]["train"][r["preset"]]
    text = (f"Training recipe ({r['preset']}): Adam lr {fmt(t['lr'])}, batch {fmt(t['batch_size'])}, "
            f"{fmt(t['steps'])} steps, gradient-norm clip {fmt(t['grad_clip'])}, N = {fmt(t['n_points'])} examples, "
            f"d = {fmt(t['d'])}, " + (f"{fmt(t['n_blocks'])} " if t["n_blocks"] else "one ")
            + f"`{t['cfg']['kind']}` block{'s' if t['n_blocks'] else ''} with {fmt(t['cfg']['n_heads'])} heads of "
            f"width {fmt(t['cfg']['d_head'])}, "
            f"MLP {fmt(t['cfg']['d_mlp'])}, {t['cfg']['activation']}. ")
    if r["preset"] == "p1":
        rc = P["recipe"]
        text += (f"The replication THEORY §5 cites uses Adam lr {fmt(rc['lr'])}, {fmt(rc['steps'])} steps, batch "
                 f"{fmt(rc['batch_size'])}, {fmt(rc['n_heads'])} heads × {fmt(rc['d_head'])}, MLP {fmt(rc['d_mlp'])}; "
                 f"the paper's own values are UNCONFIRMED (source: {rc['source']}).")
    else:
        rc = P["recipe_p2"]
        text += (f"P2's own code defaults to a larger stack: {fmt(rc['n_blocks'])} {rc['kind']} {rc['activation']} "
                 f"blocks with {fmt(rc['n_heads'])} heads, MLP {fmt(rc['d_mlp'])}, N = {fmt(rc['n_points'])} "
                 f"(source: {rc['source']}); ours is smaller and residual (presets.py says why).")
    add(text)
    add("")
