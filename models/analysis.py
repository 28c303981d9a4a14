"""What ``implicit-icl explain`` computes for a layer of any loaded model: one model-independent analysis.

The loaders (``minilm.py`` today, one module per family later) turn a checkpoint into reference params dicts; this
module reads nothing but the small interface below, so a new family reuses it unchanged.

The model interface
-------------------
An object ``model`` with:

- ``model.blocks``: a sequence of reference params dicts, one per layer (``blocks[l]["mlp.W"]`` is the paper's W);
- ``model.configs``: a sequence of ``BlockConfig``, one per layer (the same object ``L`` times for most models);
- ``model.text_hidden_states(text) -> (tokens, H)``: the token strings ``(T,)`` and the hidden states
  ``H = [H^0, …, H^L]``, each ``(T, d_model)`` float64, ``H^0`` the input of layer 0 and ``H^{l+1} = block_l(H^l)``;
  ``model.text_hidden_states(text, pair)`` is called only when a second segment is asked for (``--pair``);
- ``model.default_position(tokens) -> int``: the query token used when none is given;
- ``model.layer_name``: how the checkpoint names a layer, for error messages (e.g. ``"BERT's encoder.layer.<l>"``).

The choices (THEORY §3c, §8)
----------------------------
- The query is the row ``p`` of layer ℓ's input ``H^ℓ``; its context is every other row in text order for a
  bidirectional layer, the rows before ``p`` for a causal one (``split_query``). Removing a token "at layer ℓ"
  removes it from layer ℓ's attention only: layers ``< ℓ`` already mixed the whole text into every row.
- ``ΔW`` is a rewriting of what attention did for this query at this layer, exact by algebra (THEORY §8.1),
  query-dependent (§8.2) and the minimum-norm choice among infinitely many (§8.3). Nothing in the model changes.
- The marginals and the prefix dynamics come from one masked pass of the query's attention row per subset of the
  context (``reference.subsets``), checked against re-running the layer.
- The baseline is the same computation on :func:`matched_random_block` of the layer with the same input rows.
"""
from __future__ import annotations

import numpy as np

from implicit_icl.reference import (
    BlockConfig, Trajectory, Update, apply_model_updates, apply_update, block, block_output, implicit_update,
    model_forward, model_updates, position_updates,
)
from implicit_icl.reference.blocks import head, taps
from implicit_icl.reference.checks import is_int
from implicit_icl.reference.subsets import marginal_updates, prefix_trajectory

from .explanations import Baseline, LayerExplanation, ModelExplanation

__all__ = ["check_layer", "explain_all_layers", "explain_layer", "explain_rows", "matched_random_block",
           "resolve_position", "split_query", "text_trajectories", "transfer_ratios"]


def resolve_position(tokens, position: int | None, default: int) -> int:
    """``position`` as a row index (negative counts from the end); ``None`` gives ``default``."""
    T = len(tokens)
    if position is None:
        return default
    if not is_int(position) or not -T <= position < T:
        raise ValueError(f"position must be an int in [-{T}, {T}) for these {T} tokens {tokens}, got {position!r}")
    return int(position) % T


def check_layer(model, layer) -> int:
    L = len(model.blocks)
    if not is_int(layer) or not 0 <= layer < L:
        raise ValueError(f"layer must be an int in [0, {L}) ({model.layer_name}), got {layer!r}")
    return int(layer)


def split_query(H: np.ndarray, p: int, causal: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(context, query, context_index)``: the rows row ``p`` attends to besides itself, in text order (every
    other row; the rows before ``p`` when ``causal``), row ``p``, and their indices."""
    context_index = np.arange(p) if causal else np.delete(np.arange(H.shape[0]), p)      # (n,)
    return H[context_index], H[p], context_index


def matched_random_block(params: dict, seed: int | tuple = 0) -> dict:
    """A random layer of the same shapes and scale: every array redrawn i.i.d. ``N(mean, std)`` of the trained one.

    The baseline that tells learned structure from what any layer of these shapes and weight scales does to the
    same inputs (THEORY §8.1: the identity itself holds for every weight). LayerNorm gains (mean ≈ 1) keep their
    level; each array gets its own stream ``default_rng([seed, k])`` (k = the key's rank; a tuple ``seed`` is spread:
    ``[*seed, k]``), so the draw depends only on the seed.
    """
    out = {}
    for k, key in enumerate(sorted(params)):
        value = np.asarray(params[key], dtype=np.float64)
        rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), k])
        out[key] = rng.normal(float(value.mean()), float(value.std()), size=value.shape)
    return out


def baseline(random: dict, seed: int, cfg: BlockConfig, context, query, marginals: bool = True) -> Baseline:
    """The update and (with ``marginals``) every marginal on ``random``, the layer redrawn with ``seed``."""
    return Baseline(seed=seed, delta_W_norm=float(implicit_update(random, cfg, context, query).norm),
                    W_norm=float(np.linalg.norm(random["mlp.W"])),
                    marginal_norm=np.asarray(marginal_updates(random, cfg, context, query).norm, dtype=float)
                    if marginals else np.zeros(0))


def _text_hidden_states(model, text: str, pair: str | None):
    """``model.text_hidden_states(text)``, or ``(text, pair)`` when a second segment is given."""
    return model.text_hidden_states(text) if pair is None else model.text_hidden_states(text, pair)


def explain_layer(model, text: str, layer: int, position: int | None = None, *, pair: str | None = None,
                  dynamics: bool = True, baseline_seed: int | None = 0) -> LayerExplanation:
    """The rank-1 update of layer ``layer``'s ``mlp.W`` (and the bias update) for the query token ``position``
    (default: ``model.default_position``); with ``baseline_seed`` (not ``None``) also on
    :func:`matched_random_block` of the layer, same inputs."""
    layer = check_layer(model, layer)
    tokens, H = _text_hidden_states(model, text, pair)
    p = resolve_position(tokens, position, model.default_position(tokens))
    params = model.blocks[layer]
    random = None if baseline_seed is None else (matched_random_block(params, baseline_seed), baseline_seed)
    return explain_rows(params, model.configs[layer], H[layer], H[layer + 1], p, tokens=tokens, layer=layer,
                        dynamics=dynamics, random=random)


def explain_rows(params: dict, cfg: BlockConfig, H_in: np.ndarray, H_out: np.ndarray, p: int, *, tokens: list,
                 layer: int, dynamics: bool = True, random: tuple[dict, int] | None = None) -> LayerExplanation:
    """:func:`explain_layer` on one layer's input and output rows ``H_in``, ``H_out`` ``(T, D)`` for the query row
    ``p``; ``random`` is ``(matched_random_block(params, seed), seed)`` for the baseline, or ``None``."""
    context, query, context_index = split_query(H_in, p, cfg.causal)
    upd = implicit_update(params, cfg, context, query)
    alone = block_output(apply_update(params, upd), cfg, context[:0], query)     # T_{W+ΔW}(x), (D,)
    target = H_out[p]                                                            # the model's own output
    marginal = marginal_updates(params, cfg, context, query)     # = implicit_update(remove=[j]) for each j: (n, ·)
    return LayerExplanation(
        layer=layer, position=p, tokens=list(tokens), context_index=context_index, update=upd,
        W_norm=float(np.linalg.norm(params["mlp.W"])),
        identity_error=float(np.max(np.abs(alone - target))), output_scale=float(np.max(np.abs(target))),
        marginal_norm=np.asarray(marginal.norm, dtype=float),
        marginal_bias_norm=np.linalg.norm(marginal.delta_b, axis=-1),
        dynamics=prefix_trajectory(params, cfg, context, query) if dynamics and len(context_index) else None,
        baseline=None if random is None else baseline(random[0], random[1], cfg, context, query),
        **transfer_ratios(params, cfg, upd, H_in, H_out, context_index),
    )


def transfer_ratios(params: dict, cfg: BlockConfig, upd: Update, H_in: np.ndarray, H_out: np.ndarray,
                    index: np.ndarray) -> dict:
    """``transfer_ratio`` (the query's ``ΔW`` on the rows ``index``) and ``own_ratio`` (each row's own ``ΔW_j``, the
    control), from one run of those rows alone (see :class:`LayerExplanation`)."""
    if not len(index):
        return {"transfer_ratio": np.zeros(0), "own_ratio": np.zeros(0)}
    a, r = _alone_taps(params, cfg, H_in[index])                                 # (n, D) each
    targets = H_out[index]
    unchanged = _misses(params, cfg, a, r, targets)                              # the miss with W alone, (n,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"transfer_ratio": _query_update_misses(params, upd, cfg, a, r, targets) / unchanged,
                "own_ratio": _own_update_misses(params, cfg, H_in, index, a, r, targets) / unchanged}


def _alone_taps(params: dict, cfg: BlockConfig, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)``, each ``(n, D)``: the taps of every row run *alone* (a length-1 sequence, as ``T_W(c_j)``)."""
    alone = [taps(params, cfg, row[None, :]) for row in rows]
    return np.concatenate([t[0] for t in alone]), np.concatenate([t[1] for t in alone])


def _misses(params: dict, cfg: BlockConfig, a: np.ndarray, r: np.ndarray, targets: np.ndarray,
            pre_shift: np.ndarray | None = None) -> np.ndarray:
    """``‖head(a_k, r_k) − target_k‖`` per row, the rows being run alone (their taps ``a``, ``r``); ``pre_shift[k]``
    is added to row k's MLP pre-activation ``W a_k + b``: ``ΔW_k a_k`` for a per-row update ``ΔW_k`` of ``W``."""
    if pre_shift is not None:                              # (W + ΔW_k) a_k + b = W a_k + (b + ΔW_k a_k), row by row
        params = dict(params, **{"mlp.b": np.asarray(params["mlp.b"]) + pre_shift})
    return np.linalg.norm(head(params, cfg, a, r) - targets, axis=-1)


def _query_update_misses(params: dict, upd: Update, cfg: BlockConfig, a: np.ndarray, r: np.ndarray,
                         targets: np.ndarray) -> np.ndarray:
    """Per row (its taps ``a``, ``r`` run alone): its miss with the query's ``ΔW`` (without ``Δb``),
    ``‖T_{W+ΔW}(c_j) − target_j‖``; over the miss with W alone it is ``transfer_ratio``."""
    updated = apply_update(params, Update(upd.u, upd.a, np.zeros_like(upd.delta_b)))     # W + ΔW, b_out unchanged
    return _misses(updated, cfg, a, r, targets)


def _own_update_misses(params: dict, cfg: BlockConfig, H_in: np.ndarray, index: np.ndarray, a: np.ndarray,
                       r: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The control for :func:`_query_update_misses` (``own_ratio``): per row j of ``index``, its miss with its *own*
    ``ΔW_j`` (``position_updates(query="own")``: the update for the query ``H_in[j]`` with the rows it attends to as
    its context), again without its ``Δb_j``. ``ΔW_j = u_j a_jᵀ/‖a_j‖²`` acts on row j's own MLP input ``a_j`` as
    ``ΔW_j a_j = u_j (a_j·a_j)/‖a_j‖²`` (the product, in factored form: no n matrices)."""
    own = position_updates(params, cfg, H_in, query="own")                 # (T, ·): one update per row
    u, a_own = own.u[index], own.a[index]                                  # (n, M), (n, D); a_own == a: row alone
    shift = u * (np.sum(a_own * a, axis=-1) / np.sum(a_own * a_own, axis=-1))[:, None]   # ΔW_j a_j: (n, M)
    return _misses(params, cfg, a, r, targets, pre_shift=shift)


def explain_all_layers(model, text: str, position: int | None = None, *,
                       pair: str | None = None, baseline_seed: int | None = 0) -> ModelExplanation:
    """Per-layer last-token updates (``model_updates``) with the query's row moved last, and their composition;
    with ``baseline_seed`` also each layer's update on its matched random layer (same input rows)."""
    tokens, H = _text_hidden_states(model, text, pair)
    p = resolve_position(tokens, position, model.default_position(tokens))
    blocks, cfgs = list(model.blocks), list(model.configs)
    causal = {c.causal for c in cfgs}
    if len(causal) != 1:
        raise ValueError("model.configs must be all causal or all bidirectional to compose the layers' updates")
    order = np.append(split_query(H[0], p, causal.pop())[2], p)            # the rows the query sees, query last
    updates = model_updates(blocks, cfgs, H[0][order])
    updated = apply_model_updates(blocks, updates)
    alone = model_forward(updated, cfgs, H[0][p][None, :])                  # the query's embedding alone
    layer_errors = np.array([
        np.max(np.abs(block(updated[l], cfgs[l], H[l][p][None, :])[0] - H[l + 1][p])) for l in range(len(blocks))
    ])
    return ModelExplanation(
        layer_scales=np.array([np.max(np.abs(H[l + 1][p])) for l in range(len(blocks))]),
        position=p, tokens=list(tokens), updates=updates,
        W_norms=np.array([np.linalg.norm(b["mlp.W"]) for b in blocks]), layer_errors=layer_errors,
        composed_error=float(np.max(np.abs(alone[-1][0] - H[-1][p]))), output_scale=float(np.max(np.abs(H[-1][p]))),
        baselines=None if baseline_seed is None else [
            baseline(matched_random_block(blocks[l], baseline_seed), baseline_seed, cfgs[l],
                     *split_query(H[l], p, cfgs[l].causal)[:2], marginals=False)
            for l in range(len(blocks))],
    )


def text_trajectories(model, text: str, layer: int, position: int | None = None, *,
                      baseline_seed: int | None = 0) -> tuple[list, Trajectory, Trajectory | None]:
    """Layer ``layer``'s implicit dynamics for one query token over its context in text order and, from the same
    hidden states, the same dynamics on :func:`matched_random_block` of the layer with the same input rows
    (``None`` when ``baseline_seed`` is ``None``): ``(token_strings, trajectory, baseline)``.

    ``token_strings`` is laid out as the reference's ``[C, x]``: ``token_strings[:-1]`` are the context tokens
    ``c_1..c_n`` in text order (step i of the trajectory adds ``token_strings[i-1]``), ``token_strings[-1]`` is the
    query token."""
    layer = check_layer(model, layer)
    tokens, H = model.text_hidden_states(text)
    p = resolve_position(tokens, position, model.default_position(tokens))
    params, cfg = model.blocks[layer], model.configs[layer]
    context, query, context_index = split_query(H[layer], p, cfg.causal)
    traj = prefix_trajectory(params, cfg, context, query)                     # = reference trajectory, one pass
    base = None if baseline_seed is None else prefix_trajectory(
        matched_random_block(params, baseline_seed), cfg, context, query)
    return [tokens[i] for i in context_index] + [tokens[p]], traj, base
