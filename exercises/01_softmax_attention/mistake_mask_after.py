"""Exercise 1: softmax attention and the causal mask (a DELIBERATELY WRONG solution).

For teachers and CI: attention_weights masks AFTER the softmax (the future weights are zeroed once the rows
are normalised), so the rows no longer sum to 1.

P1 §2 (arXiv 2507.16003): the contextual layer A of a transformer block is softmax self-attention.
Shapes: T tokens, D = d_model, d_k = width of queries/keys/values. Weights act on column vectors (``[out, in]``),
tokens are rows, so ``Z @ W.T`` applies W to every token.
"""
import numpy as np


def softmax(x, axis=-1):
    """Softmax along ``axis``, numerically stable.

    softmax(x)_j = exp(x_j − m) / Σ_k exp(x_k − m),   m = max_k x_k

    Subtracting m changes nothing mathematically but keeps exp from overflowing (exp(710) = inf in float64).
    x: array of any shape. Returns an array of the same shape whose slices along ``axis`` sum to 1.
    """
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def causal_mask(T):
    """The causal mask: a (T, T) boolean array, True where query position i may attend to key position j (j ≤ i)."""
    return np.tril(np.ones((T, T), dtype=bool))


def attention_weights(Q, K, causal=True):
    """Attention weights α_ij = softmax_j( q_i · k_j / √d_k ), with α_ij = 0 for j > i when ``causal``.

    Q, K: (T, d_k). Returns (T, T); every row sums to 1. Masked logits are set to −inf before the softmax.
    """
    T, d_k = Q.shape
    logits = Q @ K.T / np.sqrt(d_k)                              # (T, T)
    weights = softmax(logits, axis=-1)
    if causal:
        weights = np.where(causal_mask(T), weights, 0.0)
    return weights


def self_attention(params, Z, causal=True):
    """Single-head softmax self-attention at every position:  A(Z)_i = W_o Σ_j α_ij W_v z_j.

    params: dict with "attn.W_q", "attn.W_k", "attn.W_v" of shape (d_k, D) and "attn.W_o" of shape (D, d_k).
    Z: (T, D), one token per row. Returns (T, D).
    """
    Q = Z @ params["attn.W_q"].T                                 # (T, d_k)
    K = Z @ params["attn.W_k"].T                                 # (T, d_k)
    V = Z @ params["attn.W_v"].T                                 # (T, d_k)
    heads = attention_weights(Q, K, causal) @ V                  # (T, d_k)
    return heads @ params["attn.W_o"].T                          # (T, D)
