"""The query's taps for many context subsets at once: every prefix, every leave-one-out (P1 Thm 2.2 for any Y).

The query ``x`` sits last, so whatever the mask, its attention over ``[C_S, x]`` (``C_S`` the kept context rows, in
order) is one softmax over the logits ``q_x·k_j/√d_head`` (``layers.attention_logits``: scaled and soft-capped as
the block says) of ``j ∈ S ∪ {x}`` (THEORY §8.5: a softmax-weighted mean
of the values). Projecting every row once and masking that one row of logits per subset gives the query's taps
``a(C_S, x)``, ``r(C_S, x)`` for K subsets in ``O(K·n·d_attn)`` time, instead of re-running the whole block
(``O(n²·d)`` per subset) as :func:`implicit_update` and :func:`trajectory` do on purpose (they are the ground
truth this module is checked against, tensor by tensor). Each subset's softmax subtracts its own maximum, so no
subset over- or underflows to 0/0, whatever the logits.

Used where many subsets of one context are wanted in NumPy: the marginal update of every context token and the
prefix dynamics of a real model's layer (``implicit-icl explain``). The torch backend's ``trajectory`` is the
O(n·d) scan for long contexts; this is O(n²·d) for all prefixes, fine up to a few thousand tokens.
"""
from __future__ import annotations

import numpy as np

from .blocks import check_context_query
from .kinds import attention_input, taps_from_attention
from .config import BlockConfig
from .dynamics import Trajectory, trajectory_from_taps
from .layers import attention_logits, attention_projections, merge_heads, softmax, visible
from .update import Update, _check_norm, update_from_taps
from .validation import params_like

CHUNK_ENTRIES = 1 << 22     # masked logits per chunk of subsets (K·H·(n+1) float64s, 32 MB): bounds the memory


def query_taps(params: dict, cfg: BlockConfig, context, query, keep) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)``, each ``(K, d_model)``: the query's taps with the context rows ``keep[k]`` (a ``(K, n)`` bool mask).

    Row k equals ``taps(params, cfg, sequence(context[keep[k]], query))`` at the query (to round-off), for
    causal and bidirectional blocks alike (the query is last, so it sees every row it is given).
    """
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    n = context.shape[0]
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.ndim != 2 or keep.shape[1] != n:
        raise ValueError(f"keep must be a boolean array of shape (K, {n}) (one row per subset of the {n} context "
                         f"tokens), got dtype {keep.dtype} and shape {keep.shape}")
    Z = np.concatenate([context, query[None, :]], axis=0)                 # (n+1, D)
    X = attention_input(params, cfg, Z)
    q, k, v = attention_projections(params, cfg, X)                       # (H, n+1, dh) each
    logits = attention_logits(cfg, q[:, -1:], k)[:, 0]                    # (H, n+1): the query's row
    logits = np.where(visible(cfg, [n], np.arange(n + 1))[0], logits, -np.inf)  # a sliding window hides old tokens
    K, H = keep.shape[0], cfg.n_heads
    heads = np.empty((K, H, cfg.head_dim))                                # (K, H, dh)
    step = max(1, CHUNK_ENTRIES // (H * (n + 1)))
    for lo in range(0, K, step):
        masked = np.where(with_query(keep[lo:lo + step])[:, None, :], logits[None], -np.inf)  # (k, H, n+1)
        heads[lo:lo + step] = np.einsum("khj,hjd->khd", softmax(masked, axis=-1), v)
    A = merge_heads(params, cfg, heads)                                   # (K, D)
    return taps_from_attention(params, cfg, query, A)                     # (K, D) each


def with_query(keep: np.ndarray) -> np.ndarray:
    """``[keep, True]``: the query always attends to itself, ``(k, n)`` → ``(k, n+1)``."""
    return np.concatenate([keep, np.ones((keep.shape[0], 1), dtype=bool)], axis=1)


def subset_updates(params: dict, cfg: BlockConfig, context, query, keep) -> Update:
    """For each subset k, the update that removes the context rows *not* kept: ``implicit_update(..., remove=~keep[k])``.

    P1 Thm 2.2 with ``Y = C \\ C_S``: ``u_k = W (a_C − a_S)``, ``a_k = a_S``, ``Δb_k = r_C − r_S``, so that
    ``T_W(C, x) = T_{W+ΔW_k}(C_S, x)``. Stacked: ``u`` ``(K, d_mlp)``, ``a`` and ``delta_b`` ``(K, d_model)``.
    """
    keep = np.asarray(keep)
    n = np.shape(context)[0] if np.ndim(context) == 2 else -1
    if keep.dtype == np.bool_ and keep.ndim == 2 and keep.shape[1] == n:   # one pass: the K subsets, then all of C
        keep = np.concatenate([keep, np.ones((1, n), dtype=bool)])
    a, r = query_taps(params, cfg, context, query, keep)                  # validates keep: (K+1, D) each
    a_S, r_S, a_C, r_C = a[:-1], r[:-1], a[-1:], r[-1:]
    _check_norm(a_S, cfg, "subset")
    return update_from_taps(np.asarray(params["mlp.W"]), a_C, r_C, a_S, r_S)   # u (K, M)


def marginal_updates(params: dict, cfg: BlockConfig, context, query) -> Update:
    """``Update`` of length n: entry j removes context token j alone, the others stay (``remove=[j]``)."""
    n = np.shape(context)[0] if np.ndim(context) == 2 else 0
    return subset_updates(params, cfg, context, query, ~np.eye(n, dtype=bool))


def prefix_trajectory(params: dict, cfg: BlockConfig, context, query) -> Trajectory:
    """:func:`trajectory` with the prefix taps from one masked pass instead of n+1 block re-runs (same fields)."""
    n = np.shape(context)[0] if np.ndim(context) == 2 else 0
    prefixes = np.tri(n + 1, n, k=-1, dtype=bool)                         # row i keeps c_1..c_i: (n+1, n)
    a_i, r_i = query_taps(params, cfg, context, query, prefixes)          # (n+1, D) each
    return trajectory_from_taps(params, cfg, a_i, r_i)
