"""Differentiable torch versions of the reference's block functions, batched over leading dimensions.

Same conventions as ``implicit_icl.reference``: params is a flat dict of tensors keyed by checkpoint names,
weights ``[out, in]``, sequences ``(..., T, d_model)``. These are the building blocks of the torch backend
and of training; they are checked tensor by tensor against the NumPy reference in the tests.
Import this module only where torch is installed.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from implicit_icl.reference import kinds
from implicit_icl.reference.config import BlockConfig


def heads(params: dict, cfg: BlockConfig, X: torch.Tensor, key: str) -> torch.Tensor:
    """Project ``X`` with ``attn.W_<key>`` (and its bias) and split into heads: ``(..., T, D) → (..., H, T, dh)``."""
    y = F.linear(X, params[f"attn.W_{key}"], params.get(f"attn.b_{key}"))             # (..., T, H*dh)
    return y.reshape(*y.shape[:-1], cfg.n_heads, cfg.head_dim).transpose(-3, -2)


def merge_heads(params: dict, cfg: BlockConfig, o: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """``W_o concat_h(o) + b_o``: ``(..., H, T, dh) → (..., T, D)``; ``bias=False`` for increments."""
    flat = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], cfg.d_attn)          # (..., T, H*dh)
    return F.linear(flat, params["attn.W_o"], params.get("attn.b_o") if bias else None)


def self_attention(params: dict, cfg: BlockConfig, X: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax self-attention at every position, ``(..., T, d_model) → (..., T, d_model)``."""
    *batch, T, _ = X.shape
    # exactly one batch dimension: the fused (flash / memory-efficient) kernels accept only 4-D inputs, and any
    # other rank falls back to the math path, which forms the (T × T) logits (2.5 GB and 50× slower at T = 8k)
    X = X.reshape(math.prod(batch), T, X.shape[-1])
    q, k, v = (heads(params, cfg, X, key) for key in "qkv")                          # (B, H, T, dh)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)                 # (B, H, T, dh)
    return merge_heads(params, cfg, o).reshape(*batch, T, cfg.d_model)               # (..., T, d_model)


def query_attention(params: dict, cfg: BlockConfig, X: torch.Tensor) -> torch.Tensor:
    """The attention output at the *last* position of ``X`` only, ``(..., T, D) → (..., D)``: one query row
    against ``T`` keys, O(T·d) (the causal mask never hides anything from the last position)."""
    q = heads(params, cfg, X[..., -1:, :], "q")                                     # (..., H, 1, dh)
    k, v = heads(params, cfg, X, "k"), heads(params, cfg, X, "v")                    # (..., H, T, dh)
    return merge_heads(params, cfg, F.scaled_dot_product_attention(q, k, v))[..., 0, :]


def alone_attention(params: dict, cfg: BlockConfig, X: torch.Tensor) -> torch.Tensor:
    """``A([x])`` for every token of ``X`` run alone, ``(..., T, D)``: softmax over one logit is exactly 1, so
    ``A([x]) = W_o (W_v x + b_v) + b_o`` (THEORY §10.7), of ``LN1 x`` for ``pre-ln``."""
    X = kinds.attention_input(params, cfg, X, OPS)
    return F.linear(F.linear(X, params["attn.W_v"], params.get("attn.b_v")), params["attn.W_o"], params.get("attn.b_o"))


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def activation(cfg: BlockConfig, x: torch.Tensor) -> torch.Tensor:
    """The reference's activations: relu, exact erf GELU, GELU's tanh approximation (GPT-2's ``gelu_new``)."""
    if cfg.activation == "relu":
        return F.relu(x)
    return F.gelu(x, approximate="tanh" if cfg.activation == "gelu_tanh" else "none")


def mlp(params: dict, cfg: BlockConfig, a: torch.Tensor, W=None, b_out=None) -> torch.Tensor:
    """``W_out σ(W a + b) + b_out``; ``W``/``b_out`` override the params (updated weights). A ``W`` with leading
    batch dimensions ``(..., M, D)`` applies one matrix per row of ``a`` ``(..., D)``."""
    W = params["mlp.W"] if W is None else W
    b_out = params["mlp.b_out"] if b_out is None else b_out
    if W.dim() == 2:
        return F.linear(activation(cfg, F.linear(a, W, params["mlp.b"])), params["mlp.W_out"], b_out)
    pre = torch.einsum("...md,...d->...m", W, a) + params["mlp.b"]                     # (..., d_mlp)
    return activation(cfg, pre) @ params["mlp.W_out"].T + b_out                         # (..., d_model)


zeros_like = torch.zeros_like
OPS = sys.modules[__name__]      # this module as the ``ops`` of ``reference.kinds``


def attention(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """The contextual layer as the block uses it (``A(LN1 Z)`` for ``pre-ln``)."""
    return self_attention(params, cfg, kinds.attention_input(params, cfg, Z, OPS))


def attention_input(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """What the contextual layer reads (``LN1 Z`` for ``pre-ln``, ``Z`` otherwise): ``reference.kinds``."""
    return kinds.attention_input(params, cfg, Z, OPS)


def taps_from_attention(params: dict, cfg: BlockConfig, Z: torch.Tensor, A: torch.Tensor):
    """``(a, r)`` from the tokens ``Z`` and their attention outputs ``A`` (same shapes): ``reference.kinds``."""
    return kinds.taps_from_attention(params, cfg, Z, A, OPS)


def taps(params: dict, cfg: BlockConfig, Z: torch.Tensor):
    """``(a, r)`` at every position, each ``(..., T, d_model)``."""
    return taps_from_attention(params, cfg, Z, attention(params, cfg, Z))


def head(params: dict, cfg: BlockConfig, a, r, W=None, b_out=None) -> torch.Tensor:
    """``finish(r + MLP(a))`` with optional replacement ``W`` / ``b_out``: ``reference.kinds``."""
    return kinds.head(params, cfg, a, r, OPS, W=W, b_out=b_out)


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
