"""Length buckets for ``TorchModel``'s ragged batches (``models.hf_torch``): a list of 1-D prompts of different
lengths run as a few padded batches of similar lengths instead of one ``(B, T_max)`` batch.

**The rule** (``length_buckets``). The prompts are sorted by length, longest first (ties in the caller's order), and
cut greedily into runs: a bucket starts at the longest prompt not yet placed, of length ``T_g``, and takes the next
(shorter or equal) prompts while its padded size stays within ``1 + slack`` of its real tokens,

    ``B_g · T_g ≤ (1 + slack) · Σ_{b ∈ g} len_b``.

A lone prompt has no padding, so every prompt finds a bucket; prompts of equal length add no padding, so a batch of
one length is one bucket; ``slack = inf`` is one bucket (the whole batch padded to its longest prompt), ``slack = 0``
one bucket per distinct length. Summed over the buckets, the padded tokens of the whole batch — its compute and
activation memory, layer by layer — are at most ``(1 + slack) · Σ_b len_b``, whatever the spread of lengths (one
long prompt and many short ones cost about their real tokens, not ``B · T_max``). A bucket starting at ``T_g`` keeps
every prompt of length ≥ ``T_g / (1 + slack)`` (their mean is then long enough), so each bucket starts below
``1 / (1 + slack)`` of the one before: at most ``1 + log(T_max / T_min) / log(1 + slack)`` buckets (and at most one
per distinct length), one call each: lengths 3, 40, 5, 38, 4 make the buckets (40, 38) and (5, 4, 3), 95 padded
tokens where one batch would hold 5 · 40 = 200.

**Numbers.** Each bucket is padded on the *right* to its own longest prompt. Under causal attention no real token
attends to a pad and every real token keeps its position ``0..len−1``, so a prompt's rows do not depend on the other
prompts of its bucket, nor on which bucket it is in: the results are those of the prompt run alone, to the round-off
of a batched matmul (which may block and sum in another order for another batch shape). ``in_buckets`` puts the
results back in the caller's order.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["SLACK", "in_buckets", "length_buckets", "padded"]

#: the default padding allowance of a bucket (module docstring): at most 25% more tokens than its prompts hold
SLACK = 0.25


def length_buckets(lengths, slack: float = SLACK) -> list[list[int]]:
    """The buckets of prompts of ``lengths`` (module docstring), each a list of indices into ``lengths``, longest
    first; every index appears in exactly one bucket, and each bucket ``g`` has ``len(g) · max len ≤ (1 + slack) ·
    Σ len`` (``slack ≥ 0``, ``inf`` allowed)."""
    lengths = [int(n) for n in lengths]
    if any(n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive integers, got {lengths}")
    if isinstance(slack, bool) or not (isinstance(slack, numbers.Real) and slack >= 0):    # NaN fails too
        raise ValueError(f"slack must be a number >= 0 (inf allowed), got {slack!r}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])                 # stable: ties in input order
    buckets: list[list[int]] = []
    real = T = 0
    for i in order:
        n = lengths[i]
        if buckets and (math.isinf(slack) or (len(buckets[-1]) + 1) * T <= (1 + slack) * (real + n)):
            buckets[-1].append(i)
            real += n
        else:
            buckets.append([i])
            real = T = n
    return buckets


def padded(rows: list[np.ndarray]) -> np.ndarray:
    """``rows`` (1-D prompts) as one ``(B, T_max)`` array, each padded on the right with its own last token (a real
    id that no real position attends to under causal attention)."""
    T = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, T - len(r)), mode="edge") for r in rows])                # (B, T_max)


def in_buckets(rows: list[np.ndarray], run, slack: float = SLACK) -> list:
    """``run(group)`` on each length bucket of ``rows`` (``group`` its prompts, longest first; ``run`` returns one
    result per prompt of ``group``, in that order), the results as one list in the order of ``rows``."""
    out = [None] * len(rows)
    for bucket in length_buckets([len(r) for r in rows], slack):
        results = run([rows[i] for i in bucket])
        if len(results) != len(bucket):
            raise RuntimeError(f"a bucket of {len(bucket)} prompts gave {len(results)} results")
        for i, result in zip(bucket, results):
            out[i] = result
    return out
