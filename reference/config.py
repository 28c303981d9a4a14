"""BlockConfig: the shape and kind of one contextual block (DESIGN.md "Conventions").

A block is described by a frozen config plus a flat dict of named arrays (the params).
The block kinds differ only in their two *taps* (see ``kinds.py``):

========== ================================================ ================= ====================
kind       block                                            ``a`` (W reads)    bias update
========== ================================================ ================= ====================
plain      ``out = MLP(A)``                      (P1 Thm 2.2) ``A``              none
p1-skip    ``out = z + A + MLP(A)``              (P1 App. A)  ``A``              ``Δr`` on b_out
residual   ``r = z + A(z)``, ``out = r + MLP(r)``              ``r``              ``Δr`` on b_out
pre-ln     ``r = z + A(LN1 z)``, ``out = r + MLP(LN2 r)``      ``LN2 r``          ``Δr`` on b_out
post-ln    ``h = LN1(z + A(z))``, ``out = LN2(h + MLP(h))``    ``h``              ``Δh`` on b_out
gated      ``r = z + A(N1 z)``, ``out = r + GLU(N2 r)``       ``N2 r``           ``Δr`` on b_out
gated +    ``r = z + N1'(A(N1 z))``,                           ``N2 r``           ``Δr`` on b_post
post_norms ``out = r + N2'(GLU(N2 r)) + b_post``
parallel   ``out = z + A(N1 z) + MLP(N2 z)``                  ``N2 z``           ``ΔA`` on b_out
========== ================================================ ================= ====================

``gated`` is the Llama / Qwen / Mistral / Gemma block (THEORY §11): RMSNorm (``norm="rms"``, Gemma's ``1 + g`` with
``norm_offset=1``), rotary positions (``rope_theta``, ``rotary_dim``), grouped-query attention (``n_kv_heads``),
optional q/k/v biases (Qwen2, ``attn_bias``), q/k RMSNorm (Qwen3, ``qk_norm``), a sliding window (Mistral) and the
gated MLP ``W_down(act(W_gate a) ⊙ (W_up a))``. Both ``W_gate`` and ``W_up`` read ``a``, so the reference stores them
stacked as the one first matrix ``mlp.W = [W_gate; W_up]`` ``(2·d_mlp, d_model)`` (Phi-3's fused ``gate_up_proj``):
the one update ``u = W(a_C − a_x)`` then gives both ``u_gate`` and ``u_up`` with the same right factor
``a_x/‖a_x‖²``, and ``mlp.W_out`` is ``W_down``. ``parallel`` is GPT-NeoX / Pythia: attention and MLP read the same
input, so the MLP never sees the context: ``ΔW = 0`` exactly and the whole effect of the context is ``Δb``.
Gemma 2 (``post_norms``) adds a norm after the attention (``ln_post_attn``, part of the contextual layer) and one
after the MLP (``ln_post_mlp``); ``mlp.b_out`` then sits inside that norm, so the block gets a bias after it,
``mlp.b_post`` (zero in a checkpoint), where ``Δb`` goes (THEORY §11); its attention logits may be soft-capped
(``attn_softcap``) and scaled by ``attn_scale`` instead of ``1/√d_head``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .checks import check_bool, check_int, check_positive_float, is_int

KINDS = ("plain", "p1-skip", "residual", "pre-ln", "post-ln", "gated", "parallel")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
NORMS = ("layer", "rms")
NORMED_KINDS = ("pre-ln", "post-ln", "gated", "parallel")    # the kinds with two norms, ln1 and ln2
POST_NORMS = ("ln_post_attn", "ln_post_mlp")     # Gemma 2's norms after the attention and after the MLP


@dataclass(frozen=True)
class BlockConfig:
    """Hyper-parameters of one block.

    d_model:    width of the token vectors (the paper's d).
    d_mlp:      width of the MLP hidden layer (rows of the paper's W, m).
    n_heads:    number of attention heads.
    kind:       one of ``KINDS``.
    activation: ``"relu"``, ``"gelu"`` (exact erf form, BERT) or ``"gelu_tanh"`` (GPT-2's tanh approximation).
    causal:     causal mask in self-attention (both papers' default).
    ln_eps:     LayerNorm epsilon, a finite number > 0 (only used by ``pre-ln`` and ``post-ln``: with 0 a constant
                input would divide 0 by 0).
    d_head:     width of one head; default ``d_model // n_heads`` (which must then divide).
    attn_bias:  whether ``init_block`` creates the q/k/v/o biases.
    n_kv_heads: key/value heads (grouped-query attention; each serves ``n_heads // n_kv_heads`` query heads);
                default ``n_heads``.
    norm:       ``"layer"`` (LayerNorm, with a shift) or ``"rms"`` (RMSNorm, no shift) for ``ln1``/``ln2``; default
                ``"rms"`` for ``gated``, ``"layer"`` otherwise.
    norm_offset: RMSNorm's gain is ``norm_offset + g`` (Gemma: 1; others 0).
    rope_theta: rotary position embeddings with this base (``None``: none); positions are the tokens' indices in
                the full sequence, kept when tokens are removed (removal is a mask, not a re-indexing).
    rotary_dim: how many leading dimensions of each head rotate (GPT-NeoX's ``rotary_pct``); default ``d_head``.
    qk_norm:    RMSNorm of every query and key head before the rotation (Qwen3), gains ``attn.q_norm.g``/``k_norm.g``.
    sliding_window: a token attends to the ``sliding_window`` latest positions only, itself included (Mistral).
    post_norms: (``gated`` only) Gemma 2's norms after the attention and after the MLP, ``ln_post_attn``/
                ``ln_post_mlp``, and the bias ``mlp.b_post`` after the latter (where ``Δb`` goes).
    attn_softcap: attention logits become ``cap · tanh(s/cap)`` before the mask and softmax (Gemma 2).
    attn_scale: the attention logits' scale ``q·k · attn_scale``; default ``1/√d_head`` (Gemma 2:
                ``query_pre_attn_scalar^(−1/2)``).
    """

    d_model: int
    d_mlp: int
    n_heads: int = 1
    kind: str = "plain"
    activation: str = "relu"
    causal: bool = True
    ln_eps: float = 1e-5
    d_head: int | None = None
    attn_bias: bool = False
    n_kv_heads: int | None = None
    norm: str | None = None
    norm_offset: float = 0.0
    rope_theta: float | None = None
    rotary_dim: int | None = None
    qk_norm: bool = False
    sliding_window: int | None = None
    post_norms: bool = False
    attn_softcap: float | None = None
    attn_scale: float | None = None

    def __post_init__(self):
        for name in ("d_model", "d_mlp", "n_heads"):
            check_int(f"BlockConfig.{name}", getattr(self, name), low=1)
        for name in ("causal", "attn_bias", "qk_norm", "post_norms"):
            check_bool(f"BlockConfig.{name}", getattr(self, name))
        if self.kind not in KINDS:
            raise ValueError(f"BlockConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BlockConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        check_positive_float("BlockConfig.ln_eps", self.ln_eps)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"BlockConfig.n_heads={self.n_heads} must divide d_model={self.d_model} "
                    "(or give d_head explicitly)"
                )
        elif not is_int(self.d_head) or self.d_head < 1:
            raise ValueError(f"BlockConfig.d_head must be a positive int or None, got {self.d_head!r}")

        self._check_modern_fields()

    def _check_modern_fields(self):
        """The fields of the modern kinds (THEORY §11): GQA, norms, rotary, q/k norm, sliding window."""
        if self.n_kv_heads is not None:
            check_int("BlockConfig.n_kv_heads", self.n_kv_heads, low=1)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"BlockConfig.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"BlockConfig.norm must be one of {NORMS} or None, got {self.norm!r}")
        if isinstance(self.norm_offset, bool) or not isinstance(self.norm_offset, (int, float)) \
                or not math.isfinite(self.norm_offset):
            raise ValueError(f"BlockConfig.norm_offset must be a finite number, got {self.norm_offset!r}")
        if self.rope_theta is not None:
            check_positive_float("BlockConfig.rope_theta", self.rope_theta)
        elif self.rotary_dim is not None:
            raise ValueError("BlockConfig.rotary_dim needs rope_theta (rotary positions), got rope_theta=None")
        if self.rotary_dim is not None:
            check_int("BlockConfig.rotary_dim", self.rotary_dim, low=2, high=self.head_dim)
            if self.rotary_dim % 2:
                raise ValueError(f"BlockConfig.rotary_dim must be even (pairs of dimensions rotate), got "
                                 f"{self.rotary_dim}")
        elif self.rope_theta is not None and self.head_dim % 2:
            raise ValueError(f"BlockConfig.d_head must be even for rotary positions, got {self.head_dim}")
        if self.sliding_window is not None:
            check_int("BlockConfig.sliding_window", self.sliding_window, low=1)
        for name in ("attn_softcap", "attn_scale"):
            if getattr(self, name) is not None:
                check_positive_float(f"BlockConfig.{name}", getattr(self, name))
        if self.post_norms and self.kind != "gated":
            raise ValueError(f"BlockConfig.post_norms needs kind='gated' (Gemma 2's block), got kind={self.kind!r}")

    @property
    def norm_kind(self) -> str:
        """``"layer"`` or ``"rms"``: the norm of ``ln1``/``ln2`` (``norm``, or the kind's default)."""
        return self.norm or ("rms" if self.kind == "gated" else "layer")

    @property
    def logit_scale(self) -> float:
        """What ``q·k`` is multiplied by: ``attn_scale``, default ``1/√d_head``."""
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_kv_heads``, default ``n_heads``)."""
        return self.n_kv_heads or self.n_heads

    @property
    def d_kv(self) -> int:
        """Rows of ``W_k`` and ``W_v``: ``kv_heads · head_dim``."""
        return self.kv_heads * self.head_dim

    @property
    def rotary(self) -> int:
        """Leading dimensions of each head that rotate: 0 without rotary positions."""
        if self.rope_theta is None:
            return 0
        return self.rotary_dim if self.rotary_dim is not None else self.head_dim

    @property
    def d_in(self) -> int:
        """Rows of the MLP's first matrix ``mlp.W``: ``2·d_mlp`` for the gated MLP (``[W_gate; W_up]``)."""
        return 2 * self.d_mlp if self.kind == "gated" else self.d_mlp

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def d_attn(self) -> int:
        """Width of the concatenated heads (rows of W_q, W_k, W_v)."""
        return self.n_heads * self.head_dim

    def to_dict(self) -> dict:
        """The fields as a dict; the modern kinds' fields only where they differ from their defaults, so that a
        classic block's record (checkpoint metadata, reports) reads as it did before they existed."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in MODERN_DEFAULTS or v != MODERN_DEFAULTS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BlockConfig fields: {sorted(unknown)}")
        return cls(**d)


MODERN_DEFAULTS = {"n_kv_heads": None, "norm": None, "norm_offset": 0.0, "rope_theta": None, "rotary_dim": None,
                   "qk_norm": False, "sliding_window": None, "post_norms": False, "attn_softcap": None,
                   "attn_scale": None}


def param_shapes(cfg: BlockConfig, include_attn_bias: bool | None = None) -> dict[str, tuple[int, ...]]:
    """The expected shape of every parameter of a block, keyed by checkpoint name ([out, in] convention)."""
    D, M, H, K = cfg.d_model, cfg.d_mlp, cfg.d_attn, cfg.d_kv
    shapes = {
        "attn.W_q": (H, D), "attn.W_k": (K, D), "attn.W_v": (K, D), "attn.W_o": (D, H),
        "mlp.W": (cfg.d_in, D), "mlp.b": (cfg.d_in,), "mlp.W_out": (D, M), "mlp.b_out": (D,),
    }
    if include_attn_bias if include_attn_bias is not None else cfg.attn_bias:
        shapes.update({"attn.b_q": (H,), "attn.b_k": (K,), "attn.b_v": (K,), "attn.b_o": (D,)})
    if cfg.qk_norm:
        shapes.update({"attn.q_norm.g": (cfg.head_dim,), "attn.k_norm.g": (cfg.head_dim,)})
    if cfg.kind in NORMED_KINDS:
        for ln in ("ln1", "ln2") + (POST_NORMS if cfg.post_norms else ()):
            shapes[f"{ln}.g"] = (D,)
            if cfg.norm_kind == "layer":
                shapes[f"{ln}.b"] = (D,)
    if cfg.post_norms:
        shapes["mlp.b_post"] = (D,)
    return shapes
