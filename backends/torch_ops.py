"""Differentiable torch versions of the reference's block functions, batched over leading dimensions.

Same conventions as ``implicit_icl.reference``: params is a flat dict of tensors keyed by checkpoint names,
weights ``[out, in]``, sequences ``(..., T, d_model)``. These are the building blocks of the torch backend
and of training; they are checked tensor by tensor against the NumPy reference in the tests.
Import this module only where torch is installed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from implicit_icl.reference.config import BlockConfig


def _bias(params: dict, key: str):
    return params.get(key)


def self_attention(params: dict, cfg: BlockConfig, X: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax self-attention at every position, ``(..., T, d_model) → (..., T, d_model)``."""
    *batch, T, _ = X.shape
    H, dh = cfg.n_heads, cfg.head_dim
    q = F.linear(X, params["attn.W_q"], _bias(params, "attn.b_q"))        # (..., T, H*dh)
    k = F.linear(X, params["attn.W_k"], _bias(params, "attn.b_k"))
    v = F.linear(X, params["attn.W_v"], _bias(params, "attn.b_v"))
    # exactly one batch dimension: the fused (flash / memory-efficient) kernels accept only 4-D inputs, and any
    # other rank falls back to the math path, which forms the (T × T) logits (2.5 GB and 50× slower at T = 8k)
    B = math.prod(batch)
    q, k, v = (m.reshape(B, T, H, dh).transpose(1, 2) for m in (q, k, v))        # (B, H, T, dh)
    heads = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)          # (B, H, T, dh)
    heads = heads.transpose(1, 2).reshape(*batch, T, H * dh)                        # (..., T, H*dh)
    return F.linear(heads, params["attn.W_o"], _bias(params, "attn.b_o"))         # (..., T, d_model)


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def activation(cfg: BlockConfig, x: torch.Tensor) -> torch.Tensor:
    """The reference's activations: relu, exact erf GELU, GELU's tanh approximation (GPT-2's ``gelu_new``)."""
    if cfg.activation == "relu":
        return F.relu(x)
    return F.gelu(x, approximate="tanh" if cfg.activation == "gelu_tanh" else "none")


def mlp(params: dict, cfg: BlockConfig, a: torch.Tensor, W=None, b_out=None) -> torch.Tensor:
    """``W_out σ(W a + b) + b_out``; ``W``/``b_out`` override the params (for updated weights)."""
    W = params["mlp.W"] if W is None else W
    b_out = params["mlp.b_out"] if b_out is None else b_out
    hidden = activation(cfg, F.linear(a, W, params["mlp.b"]))        # (..., d_mlp)
    return F.linear(hidden, params["mlp.W_out"], b_out)                # (..., d_model)


def attention(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """The contextual layer as the block uses it (``A(LN1 Z)`` for ``pre-ln``)."""
    if cfg.kind == "pre-ln":
        Z = layer_norm(Z, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
    return self_attention(params, cfg, Z)


def taps_from_attention(params: dict, cfg: BlockConfig, Z: torch.Tensor, A: torch.Tensor):
    """``(a, r)`` from the tokens ``Z`` and their attention outputs ``A`` (same shapes)."""
    if cfg.kind == "plain":
        return A, torch.zeros_like(A)
    if cfg.kind == "p1-skip":
        return A, Z + A
    if cfg.kind == "residual":
        return Z + A, Z + A
    if cfg.kind == "pre-ln":
        r = Z + A
        return layer_norm(r, params["ln2.g"], params["ln2.b"], cfg.ln_eps), r
    if cfg.kind == "post-ln":
        h = layer_norm(Z + A, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
        return h, h
    raise ValueError(f"unknown block kind {cfg.kind!r}")


def taps(params: dict, cfg: BlockConfig, Z: torch.Tensor):
    """``(a, r)`` at every position, each ``(..., T, d_model)``."""
    return taps_from_attention(params, cfg, Z, attention(params, cfg, Z))


def head(params: dict, cfg: BlockConfig, a, r, W=None, b_out=None) -> torch.Tensor:
    """``finish(r + MLP(a))`` with optional replacement ``W`` / ``b_out``."""
    out = r + mlp(params, cfg, a, W=W, b_out=b_out)
    if cfg.kind == "post-ln":
        out = layer_norm(out, params["ln2.g"], params["ln2.b"], cfg.ln_eps)
    return out


def block(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """The block output at every position, ``(..., T, d_model)``."""
    return head(params, cfg, *taps(params, cfg, Z))


def init_block(cfg: BlockConfig, generator: torch.Generator | None = None, dtype=torch.float32,
               device=None) -> dict:
    """Trainable params with PyTorch-style init: weights ``U(±1/√fan_in)``, biases zero, LN ``g=1, b=0``."""
    from implicit_icl.reference.config import param_shapes

    params = {}
    for key, shape in param_shapes(cfg).items():
        if key.endswith(".g"):
            t = torch.ones(shape, dtype=dtype, device=device)
        elif len(shape) == 2:
            bound = 1.0 / math.sqrt(shape[1])
            t = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1).mul_(bound).to(device)
        else:
            t = torch.zeros(shape, dtype=dtype, device=device)
        params[key] = t
    return params
