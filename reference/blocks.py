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
    LayerNorm gains ``1 + N(0, ln_std²)`` and shifts ``N(0, ln_std²)``.

    Non-zero ``bias_std``/``ln_std`` make every parameter matter, which is what identity checks want.
    """
    if not isinstance(cfg, BlockConfig):
        raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    params = {}
    for key, shape in param_shapes(cfg).items():
        if key.startswith("ln"):
            base = 1.0 if key.endswith(".g") else 0.0
            params[key] = base + ln_std * rng.standard_normal(shape)
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


def _attention(params, cfg, Z):
    return self_attention(params, cfg, attention_input(params, cfg, Z))


def taps(params: dict, cfg: BlockConfig, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)`` at every position, each ``(T, d_model)``: what ``W`` reads and the residual around the MLP."""
    return taps_from_attention(params, cfg, Z, _attention(params, cfg, Z))


def block(params: dict, cfg: BlockConfig, Z) -> np.ndarray:
    """The block output at every position, ``(T, d_model)``."""
    params = params_like(params, cfg)
    Z = as_array(Z, "Z", (None, cfg.d_model))
    return head(params, cfg, *taps(params, cfg, Z))


def sequence(context: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``[C, x]``: the context rows followed by the query, ``(n + 1, d_model)``."""
    return np.concatenate([context, query[None, :]], axis=0)


def check_context_query(cfg: BlockConfig, context, query) -> tuple[np.ndarray, np.ndarray]:
    context = as_array(context, "context", (None, cfg.d_model))
    query = as_array(query, "query", (cfg.d_model,))
    return context, query


def block_output(params: dict, cfg: BlockConfig, context, query) -> np.ndarray:
    """``T_W(C, x)``: the block output at the query's position, ``(d_model,)``; ``context`` may have 0 rows."""
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    a, r = taps(params, cfg, sequence(context, query))
    return head(params, cfg, a[-1], r[-1])
