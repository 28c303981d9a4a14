"""Contextual blocks ``T_W = M_W ∘ A`` of every kind on NumPy arrays: ``init_block``, ``attention``, ``taps``,
``block`` and ``block_output``. What makes each kind (its taps and head) is in ``kinds.py``, shared with the torch
backend; ``head`` and ``taps_from_attention`` are re-exported from there.
"""
from __future__ import annotations

import numpy as np

from .checks import check_int
from .config import BlockConfig, param_shapes
from .kinds import attention_input, head, taps_from_attention
from .layers import self_attention
from .validation import as_array, params_like


def init_block(cfg: BlockConfig, seed: int = 0, *, bias_std: float = 0.0, ln_std: float = 0.0) -> dict:
    """Random params for ``cfg``: weights ``N(0, 1/fan_in)``; biases ``N(0, bias_std²)``;
    norm gains ``1 + N(0, ln_std²)`` (as scales: Gemma's ``1 + g`` stores ``g = N(0, ln_std²)``) and LayerNorm
    shifts ``N(0, ln_std²)``.

    Non-zero ``bias_std``/``ln_std`` make every parameter matter, which is what identity checks want.
    """
    if not isinstance(cfg, BlockConfig):
        raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    params = {}
    rms_base = 1.0 - cfg.norm_offset                    # an RMSNorm gain that scales by 1 (Gemma's 1 + g: g = 0)
    for key, shape in param_shapes(cfg).items():
        if key.endswith(".g"):                           # norm gains: ln1, ln2 and the q/k norms
            rms = key.startswith("attn.") or cfg.norm_kind == "rms"
            params[key] = (rms_base if rms else 1.0) + ln_std * rng.standard_normal(shape)
        elif key.startswith("ln"):                       # LayerNorm shifts
            params[key] = ln_std * rng.standard_normal(shape)
        elif len(shape) == 2:
            params[key] = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            params[key] = bias_std * rng.standard_normal(shape)
    return params


def attention(params: dict, cfg: BlockConfig, Z) -> np.ndarray:
    """The block's contextual layer at every position, ``(T, d_model)``.

    For ``pre-ln`` blocks this is ``A(LN1 Z)``, the attention output added to the residual stream.
    """
    params = params_like(params, cfg)
    Z = as_array(Z, "Z", (None, cfg.d_model))
    return _attention(params, cfg, Z)


def _attention(params, cfg, Z, positions=None):
    return self_attention(params, cfg, attention_input(params, cfg, Z), positions)


def taps(params: dict, cfg: BlockConfig, Z: np.ndarray, positions=None) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)`` at every position, each ``(T, d_model)``: what ``W`` reads and the residual around the MLP.
    ``positions``: the rows' indices in the full sequence (default ``0..T−1``; rotary and sliding-window blocks
    read them)."""
    return taps_from_attention(params, cfg, Z, _attention(params, cfg, Z, positions))


def block(params: dict, cfg: BlockConfig, Z, positions=None) -> np.ndarray:
    """The block output at every position, ``(T, d_model)``; ``positions`` as in :func:`block_output`."""
    params = params_like(params, cfg)
    Z = as_array(Z, "Z", (None, cfg.d_model))
    if positions is not None:
        positions = check_positions(positions, Z.shape[0])
    return head(params, cfg, *taps(params, cfg, Z, positions))


def sequence(context: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``[C, x]``: the context rows followed by the query, ``(n + 1, d_model)``."""
    return np.concatenate([context, query[None, :]], axis=0)


def kept_positions(kept, n: int, positions=None) -> np.ndarray:
    """The positions of ``[C_kept, x]`` in the full ``[C, x]`` of ``n`` context tokens (whose positions are
    ``positions``, default ``0..n``): the kept rows', then the query's. Removing tokens is a mask, not a re-indexing
    (rotary positions and sliding windows keep them)."""
    full = np.arange(n + 1) if positions is None else np.asarray(positions)
    return np.concatenate([full[np.asarray(kept, dtype=np.int64)], full[-1:]])


def check_context_query(cfg: BlockConfig, context, query) -> tuple[np.ndarray, np.ndarray]:
    context = as_array(context, "context", (None, cfg.d_model))
    query = as_array(query, "query", (cfg.d_model,))
    return context, query


def block_output(params: dict, cfg: BlockConfig, context, query, positions=None) -> np.ndarray:
    """``T_W(C, x)``: the block output at the query's position, ``(d_model,)``; ``context`` may have 0 rows.

    ``positions`` (n + 1 increasing ints): where the context rows and the query sit in the full sequence, for a
    context with tokens removed (``kept_positions``); default ``0..n``. Only rotary and sliding-window blocks read
    them."""
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    if positions is not None:
        positions = check_positions(positions, context.shape[0] + 1)
    a, r = taps(params, cfg, sequence(context, query), positions)
    return head(params, cfg, a[-1], r[-1])


def check_positions(positions, T: int) -> np.ndarray:
    """``positions`` as ``T`` strictly increasing non-negative ints, or a ``ValueError`` naming it."""
    pos = np.asarray(positions)
    if pos.shape != (T,) or not np.issubdtype(pos.dtype, np.integer) or (T and pos[0] < 0) \
            or np.any(np.diff(pos) <= 0):
        raise ValueError(f"positions must be {T} strictly increasing non-negative ints (one per row of the context "
                         f"and the query), got {positions!r}")
    return pos.astype(np.int64)
