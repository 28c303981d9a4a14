"""What each block kind is, written once for every backend (DESIGN.md "Block kinds").

Every kind is ``out = finish(r + MLP(a))`` and differs from the others in three places only:

- :func:`attention_input`: what the contextual layer reads (``N1 z`` for ``pre-ln``, ``gated`` and ``parallel``,
  ``z`` otherwise; ``N`` is LayerNorm or RMSNorm, :func:`norm`);
- :func:`taps_from_attention`: the *taps* given the attention output ``A``: ``a``, the vector the MLP's first
  matrix ``W`` reads (the paper's ``A(C, x)`` for a bare block), and ``r``, the residual stream added around the
  MLP (zero for ``plain``);
- :func:`head`: the rest of the block after the taps, ``finish(r + MLP(a))`` (``finish`` is ``LN2`` for
  ``post-ln``, the identity otherwise).

Gemma 2's ``post_norms`` (a ``gated`` block): the contextual layer ends with ``N1' = ln_post_attn``, so
``r = z + N1'(A)``; the MLP's output goes through ``N2' = ln_post_mlp`` and then the bias ``mlp.b_post``
(:func:`mlp_branch`). ``Δb`` is added after ``N2'`` (on ``mlp.b_post``): on ``mlp.b_out``, inside ``N2'``, it would
be normalised with the MLP's output and the identity would fail.

The implicit update needs the taps and nothing else (``update.update_from_taps``). These functions use only what
NumPy arrays and torch tensors share (``+``, ``@``, broadcasting) and the layer functions of an ``ops`` module,
which each backend provides with the same names (``layer_norm``, ``rms_norm``, ``mlp``, ``zeros_like``): ``reference.layers``
for NumPy (the default), ``backends.torch_ops`` for torch. A new kind is one branch in each function here.
"""
from __future__ import annotations

from . import layers as numpy_ops

# what the tap ``a`` is, per kind: the ZeroNormError names it
TAP_NAMES = {
    "plain": "a = A(C\\Y, x), the attention output",
    "p1-skip": "a = A(C\\Y, x), the attention output",
    "residual": "a = x + A(C\\Y, x), the residual stream",
    "pre-ln": "a = LN2(x + A(LN1 ·)), the normalised residual stream",
    "post-ln": "a = LN1(x + A(C\\Y, x)), the normalised residual stream",
    "gated": "a = N2(x + A(N1 ·)), the normalised residual stream",
    "parallel": "a = N2(x), the normalised query (the MLP never sees the context)",
}

PRE_NORM = ("pre-ln", "gated", "parallel")       # the kinds whose attention reads N1 z


def norm(params: dict, cfg, which: str, x, ops=numpy_ops):
    """The block's norm ``which`` (``"ln1"``/``"ln2"``) of ``x``: LayerNorm ``g ⊙ (x − μ)/σ + b`` or RMSNorm
    ``(offset + g) ⊙ x/rms(x)``, as ``cfg.norm_kind`` says."""
    if cfg.norm_kind == "rms":
        return ops.rms_norm(x, params[f"{which}.g"], cfg.ln_eps, cfg.norm_offset)
    return ops.layer_norm(x, params[f"{which}.g"], params[f"{which}.b"], cfg.ln_eps)


def attention_input(params: dict, cfg, Z, ops=numpy_ops):
    """What the block's contextual layer reads, same shape as ``Z``: ``N1 Z`` for the pre-norm kinds, ``Z``
    otherwise."""
    if cfg.kind in PRE_NORM:
        return norm(params, cfg, "ln1", Z, ops)
    return Z


def taps_from_attention(params: dict, cfg, Z, A, ops=numpy_ops):
    """The taps ``(a, r)`` given the block input ``Z`` and its contextual layer's output ``A`` (broadcasting)."""
    if cfg.kind == "plain":
        return A, ops.zeros_like(A)
    if cfg.kind == "p1-skip":
        return A, Z + A
    if cfg.kind == "residual":
        r = Z + A
        return r, r
    if cfg.kind in ("pre-ln", "gated"):
        r = Z + (norm(params, cfg, "ln_post_attn", A, ops) if cfg.post_norms else A)
        return norm(params, cfg, "ln2", r, ops), r
    if cfg.kind == "post-ln":
        h = norm(params, cfg, "ln1", Z + A, ops)
        return h, h
    if cfg.kind == "parallel":             # out = z + A + MLP(N2 z): the MLP reads z alone, A joins the residual
        return norm(params, cfg, "ln2", Z + ops.zeros_like(A), ops), Z + A      # (Z broadcast to A's shape)
    raise ValueError(f"unknown block kind {cfg.kind!r}")


def head(params: dict, cfg, a, r, ops=numpy_ops, W=None, b_out=None, delta_b=None):
    """The rest of the block after the taps: ``finish(r + MLP(a))``; ``W``/``b_out`` replace ``mlp.W``/``mlp.b_out``
    (updated weights; a ``W`` with leading batch dimensions applies one matrix per row of ``a``); ``delta_b`` is a
    bias update added where the block's bias is (:func:`mlp_branch`)."""
    return finish(params, cfg, r + mlp_branch(params, cfg, ops.mlp(params, cfg, a, W=W, b_out=b_out), ops, delta_b),
                  ops)


def mlp_branch(params: dict, cfg, m, ops=numpy_ops, delta_b=None):
    """What the MLP's output ``m`` adds to the residual: ``m``, or ``N2'(m) + b_post`` for ``post_norms``; plus the
    bias update ``delta_b`` where given. Adding it here equals adding it to the block's bias
    (``update.bias_key``): ``mlp.b_out`` enters ``m`` linearly, ``mlp.b_post`` comes after ``N2'``."""
    if cfg.post_norms:
        m = norm(params, cfg, "ln_post_mlp", m, ops) + params["mlp.b_post"]
    return m if delta_b is None else m + delta_b


def finish(params: dict, cfg, out, ops=numpy_ops):
    """The block's last step on ``r + MLP(a)``: ``LN2`` for ``post-ln``, nothing for the other kinds."""
    if cfg.kind == "post-ln":
        return norm(params, cfg, "ln2", out, ops)
    return out
