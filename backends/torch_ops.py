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


def positions_of(X: torch.Tensor, positions=None) -> torch.Tensor:
    """The rows' positions in the full sequence: ``positions`` (any int sequence) or ``0..T−1``, as a tensor."""
    if positions is None:
        return torch.arange(X.shape[-2], device=X.device)
    return torch.as_tensor(positions, device=X.device)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float, dim: int) -> torch.Tensor:
    """Rotary positions (rotate-half convention) of the first ``dim`` entries of each head row, as
    ``reference.layers.rotate``: ``x`` (..., T, dh), ``positions`` (T,). Angles in float64 where ``x`` is float64."""
    half = dim // 2
    fdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=x.device, dtype=fdt) / dim)     # (dim/2,)
    angle = positions.to(fdt)[:, None] * inv_freq                                            # (T, dim/2)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:dim], x[..., dim:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def heads(params: dict, cfg: BlockConfig, X: torch.Tensor, key: str, positions=None) -> torch.Tensor:
    """Project ``X`` with ``attn.W_<key>`` (and its bias) and split into heads: ``(..., T, D) → (..., H, T, dh)``;
    queries and keys then get the q/k norm and the rotary positions where the config has them (``positions`` as in
    :func:`positions_of`), and a grouped-query block's key/value heads are repeated for their query heads."""
    y = F.linear(X, params[f"attn.W_{key}"], params.get(f"attn.b_{key}"))             # (..., T, H'*dh)
    n = cfg.n_heads if key == "q" else cfg.kv_heads
    y = y.reshape(*y.shape[:-1], n, cfg.head_dim).transpose(-3, -2)                    # (..., H', T, dh)
    if key in "qk" and cfg.qk_norm:
        y = rms_norm(y, params[f"attn.{key}_norm.g"], cfg.ln_eps, cfg.norm_offset)
    if key in "qk" and cfg.rotary:
        y = rotate(y, positions_of(X, positions), cfg.rope_theta, cfg.rotary)
    return y if key == "q" else repeat_kv(cfg, y, -3)                                 # (..., H, T, dh)


def repeat_kv(cfg: BlockConfig, x: torch.Tensor, dim: int) -> torch.Tensor:
    """A grouped-query block's key/value heads, the axis ``dim`` of ``x`` (``kv_heads`` long), each repeated for the
    ``n_heads // kv_heads`` query heads it serves (``n_heads`` long); ``x`` itself without grouping. The one spelling
    of the repeat, for activations ``(..., H', T, dh)`` and weights ``(H', dh, D)`` alike."""
    return x if cfg.kv_heads == cfg.n_heads else x.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=dim)


def merge_heads(params: dict, cfg: BlockConfig, o: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """``W_o concat_h(o) + b_o``: ``(..., H, T, dh) → (..., T, D)``; ``bias=False`` for increments."""
    flat = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], cfg.d_attn)          # (..., T, H*dh)
    return F.linear(flat, params["attn.W_o"], params.get("attn.b_o") if bias else None)


def visible(cfg: BlockConfig, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """Which keys each query sees, ``(Tq, Tk)`` bool, as ``reference.layers.visible``; ``None`` when a plain causal
    (or full) mask is enough (the fused kernels' fast path)."""
    if cfg.sliding_window is None:
        return None
    seen = (q_pos[:, None] - k_pos[None, :]) < cfg.sliding_window
    return seen & (k_pos[None, :] <= q_pos[:, None]) if causal else seen


def self_attention(params: dict, cfg: BlockConfig, X: torch.Tensor, positions=None, alone: bool = False):
    """Multi-head softmax self-attention at every position, ``(..., T, d_model) → (..., T, d_model)``; with
    ``alone``, also every token's attention run alone (:func:`alone_attention`) from the same value heads:
    ``(A, A_alone)``."""
    *batch, T, _ = X.shape
    # exactly one batch dimension: the fused (flash / memory-efficient) kernels accept only 4-D inputs, and any
    # other rank falls back to the math path, which forms the (T × T) logits (2.5 GB and 50× slower at T = 8k)
    X = X.reshape(math.prod(batch), T, X.shape[-1])
    q, k, v = (heads(params, cfg, X, key, positions) for key in "qkv")               # (B, H, T, dh)
    pos = positions_of(X, positions)
    mask = visible(cfg, pos, pos, cfg.causal)
    o = attend(cfg, q, k, v, mask, is_causal=cfg.causal and mask is None)
    A = merge_heads(params, cfg, o).reshape(*batch, T, cfg.d_model)                  # (..., T, d_model)
    if not alone:
        return A
    return A, merge_heads(params, cfg, v).reshape(*batch, T, cfg.d_model)             # softmax over one logit: v


def softcap(s: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap · tanh(s/cap)`` (``cap=None``: ``s``), as ``reference.layers.softcap``."""
    return s if cap is None else cap * torch.tanh(s / cap)


def attend(cfg: BlockConfig, q, k, v, mask=None, is_causal: bool = False) -> torch.Tensor:
    """``softmax(softcap(q·k · logit_scale))`` over the visible keys, times ``v``: ``(..., H, Tq, dh)``.
    ``scaled_dot_product_attention`` (with ``cfg.attn_scale`` as its ``scale``) where the logits are not capped; an
    explicit softmax where they are (the fused kernels have no soft-cap), which forms the ``Tq × Tk`` logits."""
    if cfg.attn_softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=cfg.attn_scale)
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype      # logits in >= float32
    s = softcap(q.to(acc) @ k.to(acc).transpose(-1, -2) * cfg.logit_scale, cfg.attn_softcap)   # (..., H, Tq, Tk)
    if is_causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, -torch.inf)
    return (torch.softmax(s, -1) @ v.to(acc)).to(v.dtype)


def query_attention(params: dict, cfg: BlockConfig, X: torch.Tensor, positions=None) -> torch.Tensor:
    """The attention output at the *last* position of ``X`` only, ``(..., T, D) → (..., D)``: one query row
    against ``T`` keys, O(T·d) (the causal mask never hides anything from the last position)."""
    pos = positions_of(X, positions)
    q = heads(params, cfg, X[..., -1:, :], "q", pos[-1:])                           # (..., H, 1, dh)
    k, v = heads(params, cfg, X, "k", pos), heads(params, cfg, X, "v", pos)          # (..., H, T, dh)
    mask = visible(cfg, pos[-1:], pos, causal=True)
    return merge_heads(params, cfg, attend(cfg, q, k, v, mask))[..., 0, :]


def alone_attention(params: dict, cfg: BlockConfig, X: torch.Tensor) -> torch.Tensor:
    """``A([x])`` for every token of ``X`` run alone, ``(..., T, D)``: softmax over one logit is exactly 1, so
    ``A([x]) = W_o (W_v x + b_v) + b_o`` (THEORY §10.7), of ``N1 x`` for the pre-norm kinds; rotary and q/k norms
    touch only the one logit."""
    X = kinds.attention_input(params, cfg, X, OPS)
    v = F.linear(X, params["attn.W_v"], params.get("attn.b_v"))                        # (..., T, Hkv*dh)
    v = repeat_kv(cfg, v.reshape(*v.shape[:-1], cfg.kv_heads, cfg.head_dim), -2)      # each kv head serves a group
    return F.linear(v.reshape(*v.shape[:-2], cfg.d_attn), params["attn.W_o"], params.get("attn.b_o"))


def rms_norm(x: torch.Tensor, g: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last axis, ``(offset + g) ⊙ x/sqrt(mean(x²) + eps)``, as ``reference.layers.rms_norm``."""
    if x.dtype in (torch.float16, torch.bfloat16):     # the mean square in float32 (float16's x² overflows at 256)
        xf = x.float()
        return ((offset + g.float()) * xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (offset + g) * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will keep any of ``tensors``: then no op may write into a buffer it reads or owns
    (in-place activations, ``matmul(out=)``)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def activation(cfg: BlockConfig, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The reference's activations: relu, exact erf GELU, GELU's tanh approximation (GPT-2's ``gelu_new``), SiLU.
    ``overwrite``: into ``x``'s own buffer where autograd need not keep it (the same numbers, one buffer fewer)."""
    inplace = overwrite and not needs_grad(x)
    if cfg.activation == "relu":
        return F.relu(x, inplace=inplace)
    if cfg.activation == "silu":
        return F.silu(x, inplace=inplace)
    approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
    return torch.ops.aten.gelu_(x, approximate=approximate) if inplace else F.gelu(x, approximate=approximate)


def mlp(params: dict, cfg: BlockConfig, a: torch.Tensor, W=None, b_out=None) -> torch.Tensor:
    """``W_out σ(W a + b) + b_out`` (the gated MLP: ``W_out (σ(W_gate a + b_gate) ⊙ (W_up a + b_up))`` with
    ``W = [W_gate; W_up]``); ``W``/``b_out`` override the params (updated weights). A ``W`` with leading batch
    dimensions ``(..., M, D)`` applies one matrix per row of ``a`` ``(..., D)``. The pre-activations are this
    function's own: the hidden units overwrite them (a buffer of ``(..., d_in)`` fewer; no page faults from the
    allocator handing a fresh one back to the system and taking it again)."""
    W = params["mlp.W"] if W is None else W
    b_out = params["mlp.b_out"] if b_out is None else b_out
    if W.dim() == 2:
        return mlp_from_pre(params, cfg, F.linear(a, W, params["mlp.b"]), b_out, overwrite=True)
    pre = torch.einsum("...md,...d->...m", W, a) + params["mlp.b"]                     # (..., d_in)
    return hidden(cfg, pre, overwrite=True) @ params["mlp.W_out"].T + b_out


def hidden(cfg: BlockConfig, pre: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The MLP's hidden units from its pre-activations ``W a + b``: ``σ(pre)``, or ``σ(gate) ⊙ up`` for the gated
    MLP, ``(..., d_in) → (..., d_mlp)``; ``overwrite``: in ``pre``'s buffer (:func:`activation`)."""
    if cfg.kind == "gated":
        gate, up = pre[..., :cfg.d_mlp], pre[..., cfg.d_mlp:]
        if overwrite and not needs_grad(pre):
            return activation(cfg, gate, overwrite=True).mul_(up)                   # a view of pre: no new buffer
        return activation(cfg, gate) * up
    return activation(cfg, pre, overwrite)


def mlp_from_pre(params: dict, cfg: BlockConfig, pre: torch.Tensor, b_out: torch.Tensor,
                 overwrite: bool = False) -> torch.Tensor:
    """``W_out hidden(pre) + b_out``: the MLP after its first matrix, ``(..., d_in) → (..., d_model)``;
    ``overwrite``: the hidden units in ``pre``'s buffer (the caller's ``pre`` is then gone)."""
    return F.linear(hidden(cfg, pre, overwrite), params["mlp.W_out"], b_out)


zeros_like = torch.zeros_like


def cat(tensors, axis: int) -> torch.Tensor:
    """``torch.cat`` under the name every ``ops`` module gives it."""
    return torch.cat(tensors, dim=axis)


def amax(x: torch.Tensor, axis: int) -> torch.Tensor:
    """The largest entry along ``axis`` (every ``ops`` module's name for it)."""
    return x.amax(axis)

OPS = sys.modules[__name__]      # this module as the ``ops`` of ``reference.kinds``


def attention(params: dict, cfg: BlockConfig, Z: torch.Tensor, positions=None) -> torch.Tensor:
    """The contextual layer as the block uses it (``A(N1 Z)`` for the pre-norm kinds)."""
    return self_attention(params, cfg, kinds.attention_input(params, cfg, Z, OPS), positions)


def attention_with_alone(params: dict, cfg: BlockConfig, Z: torch.Tensor):
    """``(A, A_alone)``: :func:`attention` at every position, and every token's own run alone
    (:func:`alone_attention`), from one normalisation and one value projection (what P2's updates at every position
    read: no second pass over the tokens)."""
    return self_attention(params, cfg, kinds.attention_input(params, cfg, Z, OPS), alone=True)


def attention_input(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """What the contextual layer reads (``N1 Z`` for the pre-norm kinds, ``Z`` otherwise): ``reference.kinds``."""
    return kinds.attention_input(params, cfg, Z, OPS)


def taps_from_attention(params: dict, cfg: BlockConfig, Z: torch.Tensor, A: torch.Tensor):
    """``(a, r)`` from the tokens ``Z`` and their attention outputs ``A`` (same shapes): ``reference.kinds``."""
    return kinds.taps_from_attention(params, cfg, Z, A, OPS)


def taps(params: dict, cfg: BlockConfig, Z: torch.Tensor, positions=None):
    """``(a, r)`` at every position, each ``(..., T, d_model)``."""
    return taps_from_attention(params, cfg, Z, attention(params, cfg, Z, positions))


def head(params: dict, cfg: BlockConfig, a, r, W=None, b_out=None, delta_b=None) -> torch.Tensor:
    """``finish(r + MLP(a))`` with optional replacement ``W`` / ``b_out`` and a bias update ``delta_b``:
    ``reference.kinds``."""
    return kinds.head(params, cfg, a, r, OPS, W=W, b_out=b_out, delta_b=delta_b)


def block(params: dict, cfg: BlockConfig, Z: torch.Tensor) -> torch.Tensor:
    """The block output at every position, ``(..., T, d_model)``."""
    return head(params, cfg, *taps(params, cfg, Z))


def matmul_into(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``x @ y`` written into ``out`` (every ``ops`` module's name for it)."""
    return torch.matmul(x, y, out=out)


def stacked_buffers(shapes, like: torch.Tensor) -> list[torch.Tensor]:
    """Empty tensors of the given ``shapes`` (``like``'s dtype and device) carved out of one allocation: a stack's
    outputs in one buffer, which the allocator keeps for the next call (glibc hands a freed block of tens of MB at the
    top of its heap back to the system unless one such block was freed before; the pages then fault again, about
    2 µs each) and which huge pages can back. A view keeps the whole buffer alive."""
    sizes = [math.prod(s) for s in shapes]
    flat = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
    return [chunk.view(s) for chunk, s in zip(flat.split(sizes), shapes)]


def init_block(cfg: BlockConfig, generator: torch.Generator | None = None, dtype=torch.float32,
               device=None) -> dict:
    """Trainable params with PyTorch-style init: weights ``U(±1/√fan_in)``, biases zero, norms scaling by 1 and
    shifting by 0."""
    from implicit_icl.reference.config import param_shapes

    params = {}
    for key, shape in param_shapes(cfg).items():
        if key.endswith(".g"):                     # a gain that scales by 1 (Gemma's 1 + g: g = 0)
            rms = key.startswith("attn.") or cfg.norm_kind == "rms"
            t = torch.full(shape, 1.0 - cfg.norm_offset if rms else 1.0, dtype=dtype, device=device)
        elif len(shape) == 2:
            bound = 1.0 / math.sqrt(shape[1])
            t = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1).mul_(bound).to(device)
        else:
            t = torch.zeros(shape, dtype=dtype, device=device)
        params[key] = t
    return params
