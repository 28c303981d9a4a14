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


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (swish), ``x σ(x)``: the gate of Llama's SwiGLU."""
    from scipy.special import expit  # the logistic σ without overflow for very negative x

    return x * expit(x)


ACTIVATION_FNS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu}


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis: ``g ⊙ (x − mean) / sqrt(var + eps) + b`` (population variance)."""
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + eps) + b


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float, offset: float = 0.0) -> np.ndarray:
    """RMSNorm over the last axis: ``(offset + g) ⊙ x / sqrt(mean(x²) + eps)`` (Gemma: ``offset = 1``)."""
    return (offset + g) * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rotate(x: np.ndarray, positions: np.ndarray, theta: float, dim: int) -> np.ndarray:
    """Rotary position embedding of the first ``dim`` entries of each row of ``x`` ``(..., T, d_head)``, the rest
    passed through, in the rotate-half convention (Llama, GPT-NeoX): pair ``(x_k, x_{k+dim/2})`` at position ``p``
    turns by the angle ``p / theta^(2k/dim)``. Angles in float64 (``transformers`` computes them in float32)."""
    half = dim // 2
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)                    # (dim/2,)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq       # (T, dim/2)
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2, rest = x[..., :half], x[..., half:dim], x[..., dim:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _bias(params: dict, key: str, size: int) -> np.ndarray:
    return params[key] if key in params else np.zeros(size)


def attention_projections(params: dict, cfg: BlockConfig, X: np.ndarray, positions=None):
    """Queries, keys and values per head, each ``(H, T, d_head)``: ``W_q x + b_q`` etc., split into heads; then the
    q/k norm (Qwen3) and the rotary positions (``positions``, default ``0..T−1``) where the config has them; a
    grouped-query block's ``kv_heads`` key/value heads are each repeated for their ``n_heads // kv_heads`` queries."""
    T = X.shape[0]
    q = X @ params["attn.W_q"].T + _bias(params, "attn.b_q", cfg.d_attn)   # (T, H*dh)
    k = X @ params["attn.W_k"].T + _bias(params, "attn.b_k", cfg.d_kv)     # (T, Hkv*dh)
    v = X @ params["attn.W_v"].T + _bias(params, "attn.b_v", cfg.d_kv)     # (T, Hkv*dh)
    q = q.reshape(T, cfg.n_heads, cfg.head_dim).transpose(1, 0, 2)          # (H, T, dh)
    k, v = (m.reshape(T, cfg.kv_heads, cfg.head_dim).transpose(1, 0, 2) for m in (k, v))  # (Hkv, T, dh)
    if cfg.qk_norm:
        q = rms_norm(q, params["attn.q_norm.g"], cfg.ln_eps, cfg.norm_offset)
        k = rms_norm(k, params["attn.k_norm.g"], cfg.ln_eps, cfg.norm_offset)
    if cfg.rotary:
        pos = np.arange(T) if positions is None else positions
        q, k = (rotate(m, pos, cfg.rope_theta, cfg.rotary) for m in (q, k))
    group = cfg.n_heads // cfg.kv_heads
    return q, np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)   # (H, T, dh) each


def merge_heads(params: dict, cfg: BlockConfig, heads: np.ndarray) -> np.ndarray:
    """``W_o concat_h(heads) + b_o``: ``heads`` ``(..., H, d_head)`` → ``(..., d_model)``."""
    flat = heads.reshape(*heads.shape[:-2], cfg.d_attn)                    # (..., H*dh)
    return flat @ params["attn.W_o"].T + _bias(params, "attn.b_o", cfg.d_model)


def visible(cfg: BlockConfig, q_pos: np.ndarray, k_pos: np.ndarray) -> np.ndarray:
    """Which keys each query sees, ``(Tq, Tk)`` bool, from their positions: all, or ``p_j ≤ p_i`` when causal, and
    within the last ``sliding_window`` positions (``p_i − p_j < window``) for a sliding-window block. Only the rows
    asked for are formed (one query row against n keys is O(n), not O(n²))."""
    q_pos, k_pos = np.asarray(q_pos)[:, None], np.asarray(k_pos)[None, :]
    seen = k_pos <= q_pos if cfg.causal else np.ones((q_pos.shape[0], k_pos.shape[1]), dtype=bool)
    if cfg.sliding_window is not None:
        seen = seen & ((q_pos - k_pos) < cfg.sliding_window)
    return seen


def softcap(s: np.ndarray, cap: float | None) -> np.ndarray:
    """Soft-capping ``cap · tanh(s/cap)`` (Gemma 2's attention and final logits); ``cap=None``: ``s`` unchanged."""
    return s if cap is None else cap * np.tanh(s / cap)


def attention_logits(cfg: BlockConfig, q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``softcap(q·k · logit_scale)``: ``q`` ``(H, Tq, dh)``, ``k`` ``(H, Tk, dh)`` → ``(H, Tq, Tk)``; the scale is
    ``1/√d_head`` unless ``cfg.attn_scale`` says otherwise, the cap ``cfg.attn_softcap`` (before any mask)."""
    return softcap(q @ k.transpose(0, 2, 1) * cfg.logit_scale, cfg.attn_softcap)


def self_attention(params: dict, cfg: BlockConfig, X: np.ndarray, positions=None) -> np.ndarray:
    """Multi-head softmax self-attention at every position.

    ``A(X)_i = W_o concat_h( Σ_{j} softmax_j(q_i·k_j / √d_head) v_j ) + b_o`` with ``j ≤ i`` when causal (the
    logits through :func:`attention_logits`: Gemma 2's scale and soft-cap).
    ``X`` is ``(T, d_model)``; a length-1 sequence gives ``A([x]) = W_o (W_v x + b_v) + b_o`` (THEORY §10.7).
    ``positions`` (default ``0..T−1``) are the tokens' indices in the full sequence: rotary and the sliding window
    read them, so removing tokens keeps the others' positions (a mask, not a re-indexing).
    """
    T = X.shape[0]
    positions = np.arange(T) if positions is None else np.asarray(positions)
    q, k, v = attention_projections(params, cfg, X, positions)             # (H, T, dh) each
    logits = attention_logits(cfg, q, k)                                   # (H, T, T)
    logits = np.where(visible(cfg, positions, positions), logits, -np.inf)
    heads = softmax(logits, axis=-1) @ v                                   # (H, T, dh)
    return merge_heads(params, cfg, heads.transpose(1, 0, 2))              # (T, d_model)


def mlp(params: dict, cfg: BlockConfig, a: np.ndarray, W=None, b_out=None) -> np.ndarray:
    """``MLP(a) = W_out σ(W a + b) + b_out``; ``W = params["mlp.W"]`` is the paper's first dense layer.
    The gated MLP (kind ``gated``) reads ``W = [W_gate; W_up]``: ``W_out (σ(W_gate a + b_gate) ⊙ (W_up a + b_up))``.
    ``W``/``b_out`` replace the params' (updated weights)."""
    W = params["mlp.W"] if W is None else W
    b_out = params["mlp.b_out"] if b_out is None else b_out
    return mlp_from_pre(params, cfg, a @ W.T + params["mlp.b"], b_out)               # pre: (..., d_in)


def mlp_from_pre(params: dict, cfg: BlockConfig, pre: np.ndarray, b_out) -> np.ndarray:
    """The MLP after its first matrix: ``W_out σ(pre) + b_out``, or ``W_out (σ(gate) ⊙ up) + b_out`` for the gated
    MLP; ``(..., d_in) → (..., d_model)``."""
    act = ACTIVATION_FNS[cfg.activation]
    hidden = act(pre[..., :cfg.d_mlp]) * pre[..., cfg.d_mlp:] if cfg.kind == "gated" else act(pre)   # (..., d_mlp)
    return hidden @ params["mlp.W_out"].T + b_out                                    # (..., d_model)


def cat(arrays, axis: int) -> np.ndarray:
    """``np.concatenate`` under the name every ``ops`` module gives it."""
    return np.concatenate(arrays, axis=axis)


def matmul_into(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``x @ y`` written into ``out`` (every ``ops`` module's name for it)."""
    return np.matmul(x, y, out=out)


def amax(x: np.ndarray, axis: int) -> np.ndarray:
    """The largest entry along ``axis`` (every ``ops`` module's name for it)."""
    return np.max(x, axis=axis)


zeros_like = np.zeros_like
