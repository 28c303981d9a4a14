"""Few-shot accuracy of the bundled learner against the number of shown pairs, with and without the context (ours;
issue 15 item 4).

For each ``k`` a seeded batch of ``fewshot_task.eval_prompts``: the model's greedy next token after the prompt
("with context") and after the query key alone ("no context": the same query, the context removed) is compared
with the value the prompt's mapping gives it. Chance is ``1/N_VALUES``; a model that reads nothing from the
context can do no better than chance on average, whatever its weights. Beside them: the untrained twin (every array
redrawn ``N(mean, std)`` of the trained one, ``models.analysis.matched_random_block``, seed 0) with the context, and
each accuracy's 95 % Wilson score interval (ours: the counts are binomial, 1,000 prompts per row).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from implicit_icl.models.analysis import matched_random_block

from . import fewshot_model, fewshot_task

KS = (0, 1, 2, 4, 8, 16)
TABLE_SEED = 2_000_003          # the seed of the table's prompts (distinct from training and validation seeds)
Z95 = 1.959963984540054         # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
    """The Wilson score interval ``[lo, hi]`` of the proportion ``successes / n`` (95 % with the default ``z``):
    ``(p + z²/2n ± z √(p(1−p)/n + z²/4n²)) / (1 + z²/n)``; it stays inside [0, 1] and is not empty at 0 or
    n."""
    p, zz = successes / n, z * z
    centre, half = p + zz / (2 * n), z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return [(centre - half) / (1 + zz / n), (centre + half) / (1 + zz / n)]


def untrained_twin(params: dict, seed: int = 0) -> dict:
    """Every array of ``params`` redrawn i.i.d. ``N(mean, std)`` of the trained one (``matched_random_block``), in
    the params' dtype: the same shapes and weight scales, nothing learned."""
    drawn = matched_random_block({k: v.detach().cpu().numpy() for k, v in params.items()}, seed)
    return {k: torch.as_tensor(drawn[k], dtype=v.dtype) for k, v in params.items()}


@torch.no_grad()
def evaluate(params: dict, cfg, prompts: fewshot_task.Prompts) -> dict:
    """``loss`` (cross-entropy of the target after the prompt), ``accuracy`` and ``accuracy_alone`` (the query key
    alone) on one batch of prompts, with their counts ``correct`` and ``correct_alone``."""
    target = torch.as_tensor(prompts.target)
    with_context = fewshot_model.logits(params, cfg, torch.as_tensor(prompts.ids))[:, -1]
    alone = fewshot_model.logits(params, cfg, torch.as_tensor(prompts.alone))[:, -1]
    correct, correct_alone = (int((x.argmax(-1) == target).sum()) for x in (with_context, alone))
    return {"loss": float(F.cross_entropy(with_context.to(torch.float64), target)),
            "accuracy": correct / len(target), "accuracy_alone": correct_alone / len(target),
            "correct": correct, "correct_alone": correct_alone}


def accuracy_table(params: dict, cfg, ks=KS, n_prompts: int = 1000, seed: int = TABLE_SEED) -> list[dict]:
    """One row per ``k``: ``k``, ``prompts``, ``accuracy``, ``accuracy_alone``, ``loss`` (and the counts), each
    accuracy's Wilson interval (``*_interval``), and ``accuracy_untrained`` with its interval: the untrained twin
    (:func:`untrained_twin`, seed 0) with the context; the prompts of each ``k`` are drawn from
    ``default_rng([seed, k])``."""
    twin, rows = untrained_twin(params), []
    for k in ks:
        prompts = fewshot_task.eval_prompts(k, n_prompts, np.random.default_rng([seed, k]))
        row = {"k": k, "prompts": n_prompts, **evaluate(params, cfg, prompts)}
        untrained = evaluate(twin, cfg, prompts)["correct"]
        row |= {"accuracy_interval": wilson_interval(row["correct"], n_prompts),
                "accuracy_alone_interval": wilson_interval(row["correct_alone"], n_prompts),
                "accuracy_untrained": untrained / n_prompts,
                "accuracy_untrained_interval": wilson_interval(untrained, n_prompts)}
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table as Markdown."""
    def acc(r, key):
        lo, hi = r[f"{key}_interval"]
        return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = ["| shown pairs k | accuracy with context | accuracy, query alone | untrained twin, with context | "
             "loss with context (nats) |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {acc(r, 'accuracy')} | {acc(r, 'accuracy_alone')} | {acc(r, 'accuracy_untrained')} | "
              f"{r['loss']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def bundled_table(folder=None, n_prompts: int = 1000) -> dict:
    """The table of the bundled model (or of the model in ``folder``), in float32 as trained, with its settings."""
    folder = Path(folder) if folder is not None else bundled_folder()
    params, cfg = fewshot_model.load_folder(folder, dtype=torch.float32)
    return {"model": str(folder.name), "chance": 1 / fewshot_task.N_VALUES, "seed": TABLE_SEED,
            "rows": accuracy_table(params, cfg, n_prompts=n_prompts)}


def bundled_folder() -> Path:
    """``implicit_icl/data/fewshot``: the bundled model (trained by ``implicit-icl train --preset fewshot``)."""
    from implicit_icl.checkpoint import DATA_DIR

    return DATA_DIR / "fewshot"


def write_docs(table: dict, json_path, md_path) -> None:
    """``table`` as JSON and as the Markdown page ``md_path`` (docs/fewshot.md)."""
    Path(json_path).write_text(json.dumps(table, indent=2) + "\n")
    rows = table["rows"]
    n = rows[0]["prompts"]
    Path(md_path).write_text(
        "# The bundled few-shot learner\n\n"
        "A Llama-architecture model (2 gated blocks: RMSNorm, SwiGLU, rotary, 4 query heads sharing 2 key/value "
        "heads; d_model 64) trained by `implicit-icl train --preset fewshot` (seed 0) on a key → value task whose "
        "mapping is drawn afresh in every prompt (`experiments/fewshot_task.py`), so only the context can tell a "
        "key's value. Shipped in the Hugging Face format in `implicit_icl/data/fewshot/`.\n\n"
        f"Greedy accuracy on {n} seeded prompts per row (`fewshot_accuracy.accuracy_table`, seed {table['seed']}): "
        "k distinct (key, value) pairs, then a query among the shown keys. \"Query alone\" runs the same query "
        "key with the context removed. \"Untrained twin\": every array redrawn N(mean, std) of the trained one "
        "(seed 0), with the context. Each accuracy with its 95 % Wilson score interval over the prompts (ours). "
        f"Chance is 1/16 = {table['chance']:.4f}.\n\n"
        + markdown(rows) +
        "\nRegenerate from the repository root with `python -m implicit_icl.experiments.fewshot_accuracy` "
        "(writes this page and `docs/fewshot.json`).\n")


if __name__ == "__main__":           # python -m implicit_icl.experiments.fewshot_accuracy [DIR]  (default: docs)
    import sys

    docs = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    docs.mkdir(parents=True, exist_ok=True)
    result = bundled_table()
    write_docs(result, docs / "fewshot.json", docs / "fewshot.md")
    print(markdown(result["rows"]), end="")
