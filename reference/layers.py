"""The pieces of a transformer block as plain NumPy functions (float64, column-vector weights ``[out, in]``)."""
from __future__ import annotations

import numpy as np
from .config import BlockConfig


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtract the row maximum before exponentiating."""
    if x.size == 0:                       # no tokens (T = 0): nothing to normalise, and np.max has no identity
        return np.zeros(x.shape)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its exact erf form, ``x Φ(x)`` (PyTorch's default, not the tanh approximation)."""
    from scipy.special import erf   # imported here: scipy.special costs ~0.2 s, paid only by GELU blocks

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, ``½x(1 + tanh(√(2/π)(x + 0.044715x³)))``: GPT-2's ``gelu_new``."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


ACTIVATION_FNS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis: ``g ⊙ (x − mean) / sqrt(var + eps) + b`` (population variance)."""
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + eps) + b


def _bias(params: dict, key: str, size: int) -> np.ndarray:
    return params[key] if key in params else np.zeros(size)


def attention_projections(params: dict, cfg: BlockConfig, X: np.ndarray):
    """Queries, keys and values per head, each ``(H, T, d_head)``: ``W_q x + b_q`` etc., split into heads."""
    T = X.shape[0]
    q = X @ params["attn.W_q"].T + _bias(params, "attn.b_q", cfg.d_attn)   # (T, H*dh)
    k = X @ params["attn.W_k"].T + _bias(params, "attn.b_k", cfg.d_attn)   # (T, H*dh)
    v = X @ params["attn.W_v"].T + _bias(params, "attn.b_v", cfg.d_attn)   # (T, H*dh)
    return tuple(m.reshape(T, cfg.n_heads, cfg.head_dim).transpose(1, 0, 2) for m in (q, k, v))  # (H, T, dh)


def merge_heads(params: dict, cfg: BlockConfig, heads: np.ndarray) -> np.ndarray:
    """``W_o concat_h(heads) + b_o``: ``heads`` ``(..., H, d_head)`` → ``(..., d_model)``."""
    flat = heads.reshape(*heads.shape[:-2], cfg.d_attn)                    # (..., H*dh)
    return flat @ params["attn.W_o"].T + _bias(params, "attn.b_o", cfg.d_model)


def self_attention(params: dict, cfg: BlockConfig, X: np.ndarray) -> np.ndarray:
    """Multi-head softmax self-attention at every position.

    ``A(X)_i = W_o concat_h( Σ_{j} softmax_j(q_i·k_j / √d_head) v_j ) + b_o`` with ``j ≤ i`` when causal.
    ``X`` is ``(T, d_model)``; a length-1 sequence gives ``A([x]) = W_o (W_v x + b_v) + b_o`` (THEORY §10.7).
    """
    T = X.shape[0]
    q, k, v = attention_projections(params, cfg, X)                        # (H, T, dh) each
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(cfg.head_dim)              # (H, T, T)
    if cfg.causal:
        logits = np.where(np.tril(np.ones((T, T), dtype=bool)), logits, -np.inf)
    heads = softmax(logits, axis=-1) @ v                                   # (H, T, dh)
    return merge_heads(params, cfg, heads.transpose(1, 0, 2))              # (T, d_model)


def mlp(params: dict, cfg: BlockConfig, a: np.ndarray, W=None, b_out=None) -> np.ndarray:
    """``MLP(a) = W_out σ(W a + b) + b_out``; ``W = params["mlp.W"]`` is the paper's first dense layer.
    ``W``/``b_out`` replace the params' (updated weights)."""
    W = params["mlp.W"] if W is None else W
    b_out = params["mlp.b_out"] if b_out is None else b_out
    pre = a @ W.T + params["mlp.b"]                                                  # (..., d_mlp)
    return ACTIVATION_FNS[cfg.activation](pre) @ params["mlp.W_out"].T + b_out       # (..., d_model)


zeros_like = np.zeros_like
