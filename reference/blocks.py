"""Contextual blocks ``T_W = M_W ∘ A`` of every kind, defined through two taps (DESIGN.md "Block kinds").

Every kind is ``out = finish(r + MLP(a))`` where the *taps* are

- ``a``: the vector the MLP's first matrix ``W`` reads (the paper's ``A(C, x)`` for a bare block), and
- ``r``: the residual stream added around the MLP (zero for ``plain``).

``finish`` is the identity except for ``post-ln``, where it is ``LN2``. The implicit update only needs the taps:
``u = W (a_C − a_x)``, ``ΔW = u a_xᵀ/‖a_x‖²``, ``Δb_out = r_C − r_x``.
"""
from __future__ import annotations

import numpy as np

from .config import BlockConfig, param_shapes
from .layers import layer_norm, mlp, self_attention
from .validation import as_array, check_params


def init_block(cfg: BlockConfig, seed: int = 0, *, bias_std: float = 0.0, ln_std: float = 0.0) -> dict:
    """Random params for ``cfg``: weights ``N(0, 1/fan_in)``; biases ``N(0, bias_std²)``;
    LayerNorm gains ``1 + N(0, ln_std²)`` and shifts ``N(0, ln_std²)``.

    Non-zero ``bias_std``/``ln_std`` make every parameter matter, which is what identity checks want.
    """
    if not isinstance(cfg, BlockConfig):
        raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(seed)
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
    check_params(params, cfg)
    Z = as_array(Z, "Z", (None, cfg.d_model))
    return _attention(params, cfg, Z)


def _attention(params, cfg, Z):
    if cfg.kind == "pre-ln":
        Z = layer_norm(Z, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
    return self_attention(params, cfg, Z)


def taps(params: dict, cfg: BlockConfig, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)`` at every position, each ``(T, d_model)``: what ``W`` reads and the residual around the MLP."""
    return taps_from_attention(params, cfg, Z, _attention(params, cfg, Z))


def taps_from_attention(params: dict, cfg: BlockConfig, Z: np.ndarray, A: np.ndarray):
    """The taps ``(a, r)`` given the block input ``Z`` and its contextual layer's output ``A`` (broadcasting)."""
    if cfg.kind == "plain":
        return A, np.zeros_like(A)
    if cfg.kind == "p1-skip":
        return A, Z + A
    if cfg.kind == "residual":
        r = Z + A
        return r, r
    if cfg.kind == "pre-ln":
        r = Z + A
        return layer_norm(r, params["ln2.g"], params["ln2.b"], cfg.ln_eps), r
    if cfg.kind == "post-ln":
        h = layer_norm(Z + A, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
        return h, h
    raise ValueError(f"unknown block kind {cfg.kind!r}")


def head(params: dict, cfg: BlockConfig, a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The rest of the block after the taps: ``finish(r + MLP(a))``."""
    out = r + mlp(params, cfg, a)
    if cfg.kind == "post-ln":
        out = layer_norm(out, params["ln2.g"], params["ln2.b"], cfg.ln_eps)
    return out


def block(params: dict, cfg: BlockConfig, Z) -> np.ndarray:
    """The block output at every position, ``(T, d_model)``."""
    check_params(params, cfg)
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
    check_params(params, cfg)
    context, query = check_context_query(cfg, context, query)
    a, r = taps(params, cfg, sequence(context, query))
    return head(params, cfg, a[-1], r[-1])
