"""``explain`` over a corpus: each statistic per layer and query position, averaged over prompts, with a bootstrap CI.

For every prompt, every layer and three query positions (``first``: row 1, the first token after ``[CLS]`` for
BERT; ``middle``: row ``(1 + d) // 2``; ``last``: the model's default query row ``d``), :func:`analysis.explain_rows`
gives the figures ``implicit-icl explain`` prints for one sentence, and the same update on the matched random layer
is taken for ``n_seeds`` seeds (each random layer drawn once per run). Per prompt:

- ``top_share`` / ``top_share_random``: the largest marginal ``‖ΔW({c_j})‖`` over their sum, trained layer / mean
  over the random layers;
- ``relative_norm`` / ``relative_norm_random``: ``‖ΔW‖/‖W‖``, trained / mean over the random layers;
- ``transfer_ratio`` / ``own_ratio``: the medians over the context tokens of the two ratio columns (THEORY §8.2);
- ``top_is_first`` / ``top_is_first_random``: 1 when the largest marginal is row 0's (``[CLS]`` for BERT, the first
  token for a causal model), else 0, trained / mean over the random layers: over prompts, how often it is.

Each row of the result is the mean over prompts with a percentile bootstrap 95 % interval (:func:`bootstrap_ci`:
prompts resampled with replacement, seeded; every statistic of a row resamples the same prompts). The model is any
object with the interface of ``analysis`` (its module docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from implicit_icl.reference.checks import check_int

from .analysis import baseline, explain_rows, matched_random_block, split_query
from .explanations import top_share

POSITIONS = ("first", "middle", "last")
STATISTICS = ("top_share", "top_share_random", "relative_norm", "relative_norm_random", "transfer_ratio",
              "own_ratio", "top_is_first", "top_is_first_random")
N_BOOT, LEVEL = 2000, 0.95


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` ``(P,)`` and its percentile bootstrap interval at ``level``.

    ``n_boot`` resamples of P values drawn with replacement by ``np.random.default_rng(seed)``; ``lo``/``hi`` are
    the ``(1 ∓ level)/2`` percentiles of the resampled means (NumPy's default linear interpolation)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    check_int("n_boot", n_boot, low=1)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    index = np.random.default_rng(seed).integers(0, values.size, size=(n_boot, values.size))   # (B, P)
    means = values[index].mean(axis=1)                                                          # (B,)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(values.mean()), float(lo), float(hi)


def query_positions(default: int) -> dict:
    """``{"first": 1, "middle": (1 + default) // 2, "last": default}`` (distinct when ``default >= 3``)."""
    return {"first": 1, "middle": (1 + default) // 2, "last": default}


def prompt_statistics(model, text: str, layers: Sequence[int], randoms: dict) -> tuple[np.ndarray, float]:
    """``(values, identity)``: ``values[l, k, s]`` is statistic ``STATISTICS[s]`` of layer ``layers[l]`` at query
    position ``POSITIONS[k]`` for this text; ``identity`` the largest relative identity error met (round-off).
    ``randoms[layer]`` lists ``(random_block, seed)`` pairs."""
    tokens, H = model.text_hidden_states(text)
    positions = query_positions(model.default_position(tokens))
    if positions["last"] < 3:
        raise ValueError(f"prompt {text!r} has too few tokens ({tokens}) for three distinct query positions")
    values = np.empty((len(layers), len(POSITIONS), len(STATISTICS)))
    identity = 0.0
    for i, layer in enumerate(layers):
        params, cfg = model.blocks[layer], model.configs[layer]
        for k, name in enumerate(POSITIONS):
            p = positions[name]
            ex = explain_rows(params, cfg, H[layer], H[layer + 1], p, tokens=tokens, layer=layer, dynamics=False,
                              random=randoms[layer][0])
            others = [baseline(r, s, cfg, *split_query(H[layer], p, cfg.causal)[:2]) for r, s in randoms[layer][1:]]
            bases = [ex.baseline, *others]
            values[i, k] = (top_share(ex.marginal_norm), np.mean([top_share(b.marginal_norm) for b in bases]),
                            ex.relative_norm, np.mean([b.relative_norm for b in bases]),
                            np.median(ex.transfer_ratio), np.median(ex.own_ratio),
                            _top_is_first(ex.marginal_norm, ex.context_index),
                            np.mean([_top_is_first(b.marginal_norm, ex.context_index) for b in bases]))
            identity = max(identity, ex.identity_error / (1 + ex.output_scale))
    return values, identity


def _top_is_first(marginal_norm: np.ndarray, context_index: np.ndarray) -> float:
    """1.0 when the largest marginal belongs to row 0 of the text, else 0.0."""
    return float(context_index[int(np.argmax(marginal_norm))] == 0)


@dataclass(frozen=True)
class CorpusStatistics:
    """``values[p, l, k, s]``: prompt p, layer ``layers[l]``, position ``POSITIONS[k]``, statistic ``STATISTICS[s]``;
    ``summary[l, k, s]``: ``(mean, lo, hi)`` from :func:`bootstrap_ci`; ``identity_error``: the largest
    ``identity error / (1 + output scale)`` over every update computed."""

    prompts: tuple
    layers: tuple
    seeds: tuple
    n_boot: int
    boot_seed: int
    values: np.ndarray
    summary: np.ndarray
    identity_error: float

    def to_dict(self) -> dict:
        rows = [{"layer": layer, "position": name,
                 **{stat: dict(zip(("mean", "lo", "hi"), map(float, self.summary[l, k, s])),
                               values=[float(v) for v in self.values[:, l, k, s]])
                    for s, stat in enumerate(STATISTICS)}}
                for l, layer in enumerate(self.layers) for k, name in enumerate(POSITIONS)]
        return {"prompts": list(self.prompts), "n_prompts": len(self.prompts), "layers": list(self.layers),
                "positions": {"first": "row 1", "middle": "row (1 + last) // 2",
                              "last": "the default query (the last real token)"},
                "random_seeds": list(self.seeds), "bootstrap": {"n_boot": self.n_boot, "seed": self.boot_seed,
                                                                 "level": LEVEL, "resampled": "prompts"},
                "identity_error": self.identity_error, "rows": rows}


def corpus_statistics(model, prompts: Sequence[str], layers: Sequence[int], *, seeds: Sequence[int] = (0, 1, 2),
                      n_boot: int = N_BOOT, boot_seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> CorpusStatistics:
    """The statistics of :func:`prompt_statistics` for every prompt, and their means with bootstrap intervals;
    ``progress(done, total)`` is called after each prompt."""
    prompts, layers, seeds = tuple(prompts), tuple(int(l) for l in layers), tuple(int(s) for s in seeds)
    if not prompts or not layers or not seeds:
        raise ValueError("prompts, layers and seeds must each hold at least one entry")
    randoms = {l: [(matched_random_block(model.blocks[l], s), s) for s in seeds] for l in layers}
    values, identity = [], 0.0
    for done, text in enumerate(prompts, 1):
        v, e = prompt_statistics(model, text, layers, randoms)
        values.append(v)
        identity = max(identity, e)
        if progress is not None:
            progress(done, len(prompts))
    values = np.stack(values)                                                  # (P, L, K, S)
    summary = np.array([[[bootstrap_ci(values[:, l, k, s], n_boot, boot_seed) for s in range(len(STATISTICS))]
                         for k in range(len(POSITIONS))] for l in range(len(layers))])       # (L, K, S, 3)
    return CorpusStatistics(prompts=prompts, layers=layers, seeds=seeds, n_boot=n_boot, boot_seed=boot_seed,
                            values=values, summary=summary, identity_error=identity)
