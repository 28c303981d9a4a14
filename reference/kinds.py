"""What each block kind is, written once for every backend (DESIGN.md "Block kinds").

Every kind is ``out = finish(r + MLP(a))`` and differs from the others in three places only:

- :func:`attention_input`: what the contextual layer reads (``LN1 z`` for ``pre-ln``, ``z`` otherwise);
- :func:`taps_from_attention`: the *taps* given the attention output ``A``: ``a``, the vector the MLP's first
  matrix ``W`` reads (the paper's ``A(C, x)`` for a bare block), and ``r``, the residual stream added around the
  MLP (zero for ``plain``);
- :func:`head`: the rest of the block after the taps, ``finish(r + MLP(a))`` (``finish`` is ``LN2`` for
  ``post-ln``, the identity otherwise).

The implicit update needs the taps and nothing else (``update.update_from_taps``). These functions use only what
NumPy arrays and torch tensors share (``+``, ``@``, broadcasting) and the layer functions of an ``ops`` module,
which each backend provides with the same names (``layer_norm``, ``mlp``, ``zeros_like``): ``reference.layers``
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
}


def attention_input(params: dict, cfg, Z, ops=numpy_ops):
    """What the block's contextual layer reads, same shape as ``Z``: ``LN1 Z`` for ``pre-ln``, ``Z`` otherwise."""
    if cfg.kind == "pre-ln":
        return ops.layer_norm(Z, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
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
    if cfg.kind == "pre-ln":
        r = Z + A
        return ops.layer_norm(r, params["ln2.g"], params["ln2.b"], cfg.ln_eps), r
    if cfg.kind == "post-ln":
        h = ops.layer_norm(Z + A, params["ln1.g"], params["ln1.b"], cfg.ln_eps)
        return h, h
    raise ValueError(f"unknown block kind {cfg.kind!r}")


def head(params: dict, cfg, a, r, ops=numpy_ops, W=None, b_out=None):
    """The rest of the block after the taps: ``finish(r + MLP(a))``; ``W``/``b_out`` replace ``mlp.W``/``mlp.b_out``
    (updated weights; a ``W`` with leading batch dimensions applies one matrix per row of ``a``)."""
    out = r + ops.mlp(params, cfg, a, W=W, b_out=b_out)
    if cfg.kind == "post-ln":
        out = ops.layer_norm(out, params["ln2.g"], params["ln2.b"], cfg.ln_eps)
    return out
