"""Each Hugging Face family's ``config.json`` and tensor names, mapped to the reference's ``BlockConfig`` and params
dicts (DESIGN.md "Conventions"; THEORY §11). One function per family, each citing the transformers module whose
forward it reproduces; ``FAMILIES`` maps ``model_type`` to it. Every tensor of the checkpoint must be consumed
(``Tensors.refuse_unused``) and every config field read (``Fields.refuse_unread``, before any tensor is read):
whatever the reference would not compute is refused by name instead of being dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicit_icl.reference import BlockConfig

from .hf_config import ACTIVATIONS, Fields, rope, sliding_windows


@dataclass(frozen=True)
class Norm:
    """A final (or embedding) norm: ``kind`` ``"rms"`` (``(offset + g) ⊙ x/rms``) or ``"layer"``."""

    kind: str
    g: np.ndarray
    b: np.ndarray | None
    eps: float
    offset: float = 0.0


@dataclass(frozen=True)
class Parts:
    """What a family contributes to a model: the blocks and everything around them (see ``hf.HFModel``)."""

    cfgs: tuple
    blocks: tuple
    tokens: np.ndarray                      # (V, D) token embeddings
    final_norm: Norm | None
    lm_head: np.ndarray | None              # (V, D), the embeddings themselves when tied
    layer_name: str
    positions: np.ndarray | None = None     # (P, D) learned absolute positions (GPT-2, BERT)
    embed_scale: float = 1.0                # Gemma: √d
    token_type: np.ndarray | None = None    # BERT: type-0 row added to every token
    embed_norm: Norm | None = None          # BERT: LayerNorm of the embeddings
    head_transform: dict | None = None      # BERT's MLM transform: W, b, activation, norm
    lm_head_bias: np.ndarray | None = None  # BERT's decoder bias
    final_softcap: float | None = None      # Gemma 2: logits become cap · tanh(logits/cap)


class Tensors:
    """The checkpoint's tensors, looked up under the family's base prefix or none, converted to ``dtype``,
    shape-checked and marked as used."""

    def __init__(self, state: dict, prefixes: tuple, dtype, ignore: tuple = ()):
        self.state, self.prefixes, self.dtype, self.ignore, self.used = state, prefixes, dtype, ignore, set()

    def key(self, name: str) -> str | None:
        for prefix in ("",) + self.prefixes:
            if prefix + name in self.state:
                return prefix + name
        return None

    def has(self, name: str) -> bool:
        return self.key(name) is not None

    def take(self, name: str, shape: tuple) -> np.ndarray:
        key = self.key(name)
        if key is None:
            where = " or ".join(repr(p + name) for p in self.prefixes + ("",))
            raise ValueError(f"the safetensors weights lack the tensor {where}")
        arr = self.state[key]
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"tensor {key!r} has dtype {arr.dtype}, expected a floating-point dtype")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        self.used.add(key)
        out = np.array(arr, dtype=self.dtype)
        out.setflags(write=False)
        return out

    def maybe(self, name: str, shape: tuple, present: bool) -> np.ndarray | None:
        return self.take(name, shape) if present else None

    def refuse_unused(self):
        for key in sorted(self.state):
            if key not in self.used and not any(part in key for part in self.ignore):
                raise ValueError(f"tensor {key!r} is in the checkpoint but not computed by the reference for this "
                                 f"config (an unsupported feature?): refusing rather than dropping it")


def tied(f: Fields, default: bool) -> bool:
    """``tie_word_embeddings`` (transformers ties the LM head to the token embeddings, and ``save_pretrained`` then
    leaves the head out of the file)."""
    value = f.get("tie_word_embeddings", default)
    if not isinstance(value, bool):
        raise ValueError(f"config.json field 'tie_word_embeddings' must be true or false, got {value!r}")
    return value


def lm_head(t: Tensors, tokens: np.ndarray, name: str, is_tied: bool) -> np.ndarray:
    """The LM head ``(V, D)``: the token embeddings when tied, else the tensor ``name``."""
    return tokens if is_tied else t.take(name, tokens.shape)


def _linear(t: Tensors, name: str, out: int, inp: int, bias: bool) -> tuple:
    return t.take(f"{name}.weight", (out, inp)), t.maybe(f"{name}.bias", (out,), bias)


# ------------------------------------------------------------------------------ Llama-shaped (gated) decoders


def gated_family(config: dict, state: dict, dtype, family: str) -> Parts:
    """Llama (transformers ``models/llama/modeling_llama.py``), Mistral (``mistral``: a sliding window in every
    layer), Qwen2 (``qwen2``: q/k/v biases, per-layer windows), Qwen3 (``qwen3``: q/k RMSNorm over each head before
    the rotation), Gemma (``gemma``: RMSNorm ``(1 + g)``, embeddings × √d, GeGLU ``gelu_pytorch_tanh``) and Gemma 2
    (``gemma2``, ``models/gemma2/modeling_gemma2.py``: Gemma's plus :func:`_gemma2`). Each layer is
    ``r = z + A(N1 z)``, ``out = r + W_down(act(W_gate N2 r) ⊙ W_up N2 r)``; the reference's ``mlp.W`` is
    ``[W_gate; W_up]`` and ``mlp.b_out`` a new zero bias (where the implicit update's Δb goes; Gemma 2: ``mlp.b_post``
    after the post-MLP norm)."""
    f = Fields(config, family)
    D, M, L = f.need("hidden_size"), f.need("intermediate_size"), f.need("num_hidden_layers")
    H, V = f.need("num_attention_heads"), f.need("vocab_size")
    Hkv = f.number("num_key_value_heads", f.get("num_key_value_heads", H))
    dh = f.number("head_dim", f.get("head_dim", D // H))
    gemma = family in ("gemma", "gemma2")
    extra = _gemma2(f) if family == "gemma2" else {}
    final_softcap = extra.pop("final_softcap", None)
    activation = _activation(f, family)
    theta, partial = rope(f)
    if partial != 1.0:
        raise ValueError(f"config.json partial_rotary_factor = {partial} is not supported for {family}")
    # Qwen2Attention: q/k/v biases always, none on o_proj; MistralAttention: none; the others: attention_bias on all
    # four. A field the family's transformers module does not read is read here as inert.
    read_bias = bool(f.get("attention_bias", False))
    attn_bias = family == "qwen2" or (read_bias and family != "mistral")
    o_bias = attn_bias and family != "qwen2"
    mlp_bias = bool(f.get("mlp_bias", False)) if family == "llama" else False
    _refusals(f, family)
    windows = sliding_windows(f, L, every_layer=family == "mistral", alternating=family == "gemma2") \
        if family not in ("llama", "gemma") else [None] * L
    eps = f.number("rms_norm_eps", f.get("rms_norm_eps", 1e-6), float)
    offset = 1.0 if gemma else 0.0
    is_tied = tied(f, default=gemma)
    f.refuse_unread()
    t = Tensors(state, ("model.",), dtype, ignore=("rotary_emb.inv_freq",))
    cfgs, blocks = [], []
    for l in range(L):
        cfg = BlockConfig(d_model=D, d_mlp=M, n_heads=H, kind="gated", activation=activation, causal=True,
                          ln_eps=eps, d_head=dh, attn_bias=attn_bias, n_kv_heads=Hkv, norm="rms", norm_offset=offset,
                          rope_theta=theta, qk_norm=family == "qwen3", sliding_window=windows[l], **extra)
        cfgs.append(cfg)
        blocks.append(_gated_block(t, cfg, f"layers.{l}.", attn_bias, o_bias, mlp_bias))
    tokens = t.take("embed_tokens.weight", (V, D))
    parts = Parts(cfgs=tuple(cfgs), blocks=tuple(blocks), tokens=tokens,
                  final_norm=Norm("rms", t.take("norm.weight", (D,)), None, eps, offset),
                  lm_head=lm_head(t, tokens, "lm_head.weight", is_tied),
                  layer_name=f"{family}'s model.layers.<l>", embed_scale=float(np.sqrt(D)) if gemma else 1.0,
                  final_softcap=final_softcap)
    t.refuse_unused()
    return parts


def _refusals(f: Fields, family: str) -> None:
    """The fields a family reads only to refuse the values the reference does not compute."""
    if family == "llama":
        f.get("is_llama_config")                                  # SmolLM's marker, read by nothing
        f.require("rope_interleaved", (None, False), "transformers' Llama rotates halves, not interleaved pairs")
        f.require("pretraining_tp", (None, 1), "only pretraining_tp = 1 (one matmul per projection) is computed")
    if family in ("gemma", "gemma2"):
        f.require("use_bidirectional_attention", (None, False), "the reference's Gemma is causal")


def _gemma2(f: Fields) -> dict:
    """Gemma 2's fields: norms after the attention and the MLP (``post_norms``), the attention logits scaled by
    ``query_pre_attn_scalar^(−1/2)`` and soft-capped by ``attn_logit_softcapping``, the final logits soft-capped by
    ``final_logit_softcapping`` (``Gemma2ForCausalLM.forward``); either cap may be null (none)."""
    caps = {}
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = f.get(name)
        caps[name] = None if value is None else f.number(name, value, float)
    return dict(post_norms=True, attn_scale=f.need("query_pre_attn_scalar", float) ** -0.5,
                attn_softcap=caps["attn_logit_softcapping"], final_softcap=caps["final_logit_softcapping"])


def _activation(f: Fields, family: str) -> str:
    """``hidden_act`` (SiLU by default). Gemma: ``GemmaConfig`` maps the legacy ``"gelu"`` to the tanh form, and
    older files also carry ``hidden_activation``, which must then agree. Gemma 2: ``Gemma2MLP`` reads
    ``hidden_activation`` as it is (``"gelu"`` there is the erf form)."""
    if family == "gemma2":
        return f.choose("hidden_activation", ACTIVATIONS, "gelu_pytorch_tanh")
    if family != "gemma":
        return f.choose("hidden_act", ACTIVATIONS, "silu")
    table = dict(ACTIVATIONS, gelu="gelu_tanh")
    act = f.choose("hidden_act", table, "gelu_pytorch_tanh")
    if f.config.get("hidden_activation") is not None and f.choose("hidden_activation", table, None) != act:
        raise ValueError(f"config.json fields 'hidden_act' and 'hidden_activation' disagree "
                         f"({f.config.get('hidden_act')!r} vs {f.config['hidden_activation']!r}): refusing to guess")
    f.get("hidden_activation")
    return act


def _gated_block(t: Tensors, cfg: BlockConfig, p: str, attn_bias: bool, o_bias: bool, mlp_bias: bool) -> dict:
    D, M, Hd, K = cfg.d_model, cfg.d_mlp, cfg.d_attn, cfg.d_kv
    params = {"ln1.g": t.take(p + "input_layernorm.weight", (D,))}
    if cfg.post_norms:                         # Gemma 2: post_attention_layernorm is the norm after the attention
        params.update({"ln2.g": t.take(p + "pre_feedforward_layernorm.weight", (D,)),
                       "ln_post_attn.g": t.take(p + "post_attention_layernorm.weight", (D,)),
                       "ln_post_mlp.g": t.take(p + "post_feedforward_layernorm.weight", (D,)),
                       "mlp.b_post": np.zeros(D, dtype=t.dtype)})
    else:
        params["ln2.g"] = t.take(p + "post_attention_layernorm.weight", (D,))
    for name, rows in (("q", Hd), ("k", K), ("v", K)):
        params[f"attn.W_{name}"], b = _linear(t, f"{p}self_attn.{name}_proj", rows, D, attn_bias)
        if b is not None:
            params[f"attn.b_{name}"] = b
    params["attn.W_o"], b_o = _linear(t, p + "self_attn.o_proj", D, Hd, o_bias)
    if b_o is not None:
        params["attn.b_o"] = b_o
    if cfg.qk_norm:
        params["attn.q_norm.g"] = t.take(p + "self_attn.q_norm.weight", (cfg.head_dim,))
        params["attn.k_norm.g"] = t.take(p + "self_attn.k_norm.weight", (cfg.head_dim,))
    W_gate, b_gate = _linear(t, p + "mlp.gate_proj", M, D, mlp_bias)
    W_up, b_up = _linear(t, p + "mlp.up_proj", M, D, mlp_bias)
    W_down, b_down = _linear(t, p + "mlp.down_proj", D, M, mlp_bias)
    zeros = np.zeros(M, dtype=W_up.dtype)
    params.update({
        "mlp.W": np.concatenate([W_gate, W_up]),                                           # (2M, D)
        "mlp.b": np.concatenate([zeros if b_gate is None else b_gate, zeros if b_up is None else b_up]),
        "mlp.W_out": W_down,
        "mlp.b_out": np.zeros(D, dtype=W_down.dtype) if b_down is None else b_down,
    })
    return params


# ----------------------------------------------------------------------------------------------- GPT-NeoX


def gpt_neox(config: dict, state: dict, dtype, family: str = "gpt_neox") -> Parts:
    """GPT-NeoX / Pythia (transformers ``models/gpt_neox/modeling_gpt_neox.py``): LayerNorms, rotary on the first
    ``partial_rotary_factor`` (old name ``rotary_pct``) of each head, and ``use_parallel_residual``:
    ``out = z + A(N1 z) + MLP(N2 z)`` (the reference's ``parallel``) or, when false, ``r = z + A(N1 z)``,
    ``out = r + MLP(N2 r)`` (``pre-ln`` with rotary). The fused ``query_key_value`` ``(3·D, D)`` is laid out per
    head: rows ``[q_h; k_h; v_h]`` for h = 0..H−1 (``GPTNeoXAttention.forward`` views it as ``(…, H, 3·d_head)``)."""
    f = Fields(config, family)
    D, M, L = f.need("hidden_size"), f.need("intermediate_size"), f.need("num_hidden_layers")
    H, V = f.need("num_attention_heads"), f.need("vocab_size")
    if D % H:
        raise ValueError(f"config.json num_attention_heads = {H} must divide hidden_size = {D}")
    dh = D // H
    theta, partial = rope(f, default_partial=0.25)               # GPTNeoXConfig's default rotary_pct
    rotary_dim = int(dh * partial)                                # GPTNeoXAttention.rotary_ndims
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"config.json partial_rotary_factor = {partial} gives {rotary_dim} rotary dimensions of "
                         f"d_head = {dh}: the reference rotates an even number >= 2")
    parallel = f.get("use_parallel_residual", True)
    bias = bool(f.get("attention_bias", True))
    f.get("is_decoder")                                           # not read by GPTNeoXForCausalLM's forward
    cfg = BlockConfig(d_model=D, d_mlp=M, n_heads=H, kind="parallel" if parallel else "pre-ln",
                      activation=f.choose("hidden_act", ACTIVATIONS, "gelu"), causal=True,
                      ln_eps=f.number("layer_norm_eps", f.get("layer_norm_eps", 1e-5), float), attn_bias=bias,
                      norm="layer", rope_theta=theta, rotary_dim=rotary_dim)
    is_tied = tied(f, default=False)
    f.refuse_unread()
    t = Tensors(state, ("gpt_neox.",), dtype, ignore=("rotary_emb.inv_freq", ".attention.bias",
                                                       ".attention.masked_bias"))
    blocks = tuple(_neox_block(t, cfg, f"layers.{l}.", bias) for l in range(L))
    tokens = t.take("embed_in.weight", (V, D))
    parts = Parts(cfgs=(cfg,) * L, blocks=blocks, tokens=tokens,
                  final_norm=Norm("layer", t.take("final_layer_norm.weight", (D,)),
                                  t.take("final_layer_norm.bias", (D,)), cfg.ln_eps),
                  lm_head=lm_head(t, tokens, "embed_out.weight", is_tied),
                  layer_name="GPT-NeoX's gpt_neox.layers.<l>")
    t.refuse_unused()
    return parts


def _neox_block(t: Tensors, cfg: BlockConfig, p: str, bias: bool) -> dict:
    D, M, H, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.head_dim
    W, b = _linear(t, p + "attention.query_key_value", 3 * D, D, bias)
    W = W.reshape(H, 3, dh, D)                                    # per head: [q_h; k_h; v_h]
    params = {f"attn.W_{n}": np.ascontiguousarray(W[:, k].reshape(D, D)) for k, n in enumerate("qkv")}
    if b is not None:
        b = b.reshape(H, 3, dh)
        params.update({f"attn.b_{n}": np.ascontiguousarray(b[:, k].reshape(D)) for k, n in enumerate("qkv")})
    params["attn.W_o"], b_o = _linear(t, p + "attention.dense", D, D, bias)
    if b_o is not None:
        params["attn.b_o"] = b_o
    for ln, name in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
        params[f"{ln}.g"], params[f"{ln}.b"] = t.take(p + name + ".weight", (D,)), t.take(p + name + ".bias", (D,))
    params["mlp.W"], params["mlp.b"] = _linear(t, p + "mlp.dense_h_to_4h", M, D, True)
    params["mlp.W_out"], params["mlp.b_out"] = _linear(t, p + "mlp.dense_4h_to_h", D, M, True)
    return params
