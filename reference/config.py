"""BlockConfig: the shape and kind of one contextual block (DESIGN.md "Conventions").

A block is described by a frozen config plus a flat dict of named arrays (the params).
The five block kinds differ only in their two *taps* (see ``blocks.py``):

========== ================================================ ================= ====================
kind       block                                            ``a`` (W reads)    bias update
========== ================================================ ================= ====================
plain      ``out = MLP(A)``                      (P1 Thm 2.2) ``A``              none
p1-skip    ``out = z + A + MLP(A)``              (P1 App. A)  ``A``              ``Δr`` on b_out
residual   ``r = z + A(z)``, ``out = r + MLP(r)``              ``r``              ``Δr`` on b_out
pre-ln     ``r = z + A(LN1 z)``, ``out = r + MLP(LN2 r)``      ``LN2 r``          ``Δr`` on b_out
post-ln    ``h = LN1(z + A(z))``, ``out = LN2(h + MLP(h))``    ``h``              ``Δh`` on b_out
========== ================================================ ================= ====================
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .checks import check_bool, check_int, check_positive_float, is_int

KINDS = ("plain", "p1-skip", "residual", "pre-ln", "post-ln")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


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

    def __post_init__(self):
        for name in ("d_model", "d_mlp", "n_heads"):
            check_int(f"BlockConfig.{name}", getattr(self, name), low=1)
        for name in ("causal", "attn_bias"):
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

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def d_attn(self) -> int:
        """Width of the concatenated heads (rows of W_q, W_k, W_v)."""
        return self.n_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BlockConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BlockConfig fields: {sorted(unknown)}")
        return cls(**d)


def param_shapes(cfg: BlockConfig, include_attn_bias: bool | None = None) -> dict[str, tuple[int, ...]]:
    """The expected shape of every parameter of a block, keyed by checkpoint name ([out, in] convention)."""
    D, M, H = cfg.d_model, cfg.d_mlp, cfg.d_attn
    shapes = {
        "attn.W_q": (H, D), "attn.W_k": (H, D), "attn.W_v": (H, D), "attn.W_o": (D, H),
        "mlp.W": (M, D), "mlp.b": (M,), "mlp.W_out": (D, M), "mlp.b_out": (D,),
    }
    if include_attn_bias if include_attn_bias is not None else cfg.attn_bias:
        shapes.update({"attn.b_q": (H,), "attn.b_k": (H,), "attn.b_v": (H,), "attn.b_o": (D,)})
    if cfg.kind in ("pre-ln", "post-ln"):
        shapes.update({"ln1.g": (D,), "ln1.b": (D,), "ln2.g": (D,), "ln2.b": (D,)})
    return shapes
