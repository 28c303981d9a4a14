"""GPT-2 checkpoints in the reference's layout: Conv1D weights ``[in, out]`` → params ``[out, in]`` (DESIGN.md).

GPT-2 (and the many models that copied its code) stores every dense layer as a ``Conv1D`` whose weight is
``[in, out]`` and computes ``x @ weight + bias``; the reference's weights act on column vectors, ``[out, in]``,
so each one is transposed. Its attention's query, key and value maps are fused into one ``c_attn`` of width
``3·d_model``, split here in that order. Each GPT-2 layer is the reference's ``pre-ln`` block::

    r = z + A(LN1 z),   out = r + W_out GELU_tanh(W LN2 r + b) + b_out      (causal, attention biases)

with ``W = mlp.c_fc.weightᵀ`` the paper's first MLP matrix. The HF names map as::

    h.{l}.ln_1.weight / .bias          → ln1.g / ln1.b        h.{l}.ln_2.weight / .bias  → ln2.g / ln2.b
    h.{l}.attn.c_attn.weight [D, 3D]   → attn.W_q | W_k | W_v  (each transposed to [D, D]), c_attn.bias → attn.b_*
    h.{l}.attn.c_proj.weight [D, D]    → attn.W_o (transposed), c_proj.bias → attn.b_o
    h.{l}.mlp.c_fc.weight [D, M]       → mlp.W [M, D],  c_fc.bias → mlp.b
    h.{l}.mlp.c_proj.weight [M, D]     → mlp.W_out [D, M], mlp.c_proj.bias → mlp.b_out

plus ``wte`` / ``wpe`` (token and position embeddings) and the final ``ln_f``. Arrays may be NumPy arrays or
anything ``numpy.asarray`` reads (torch tensors on the CPU); a ``transformer.`` prefix (``GPT2LMHeadModel``) is
accepted. No file format is read here: load the state dict with ``safetensors.numpy.load_file`` (no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicit_icl.reference import BlockConfig, block, layer_norm

#: GPT-2 config ``activation_function`` → the reference's activation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def conv1d_to_linear(weight, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A Conv1D weight ``[in, out]`` as a linear weight ``[out, in]`` (float64); ``shape`` is the ``[in, out]``
    the checkpoint must hold, and a mismatch names the key."""
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ([in, out], Conv1D layout), got {w.shape}")
    return np.ascontiguousarray(w.T)                                   # (out, in)


def config_from_gpt2(config) -> BlockConfig:
    """The ``BlockConfig`` of every layer of a GPT-2 ``config.json`` (a dict, or an HF ``GPT2Config``); refuses
    what the reference does not compute, naming the field."""
    config = _as_dict(config)
    act = config.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"config activation_function must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if not config.get("scale_attn_weights", True):
        raise ValueError("config scale_attn_weights must be true: the reference scales logits by 1/√d_head")
    if config.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("config scale_attn_by_inverse_layer_idx must be false: the reference scales every layer's "
                         "logits by 1/√d_head only")
    d = int(config["n_embd"])
    inner = config.get("n_inner")
    return BlockConfig(d_model=d, d_mlp=int(inner) if inner is not None else 4 * d, n_heads=int(config["n_head"]),
                       kind="pre-ln", activation=ACTIVATIONS[act], causal=True,
                       ln_eps=float(config.get("layer_norm_epsilon", 1e-5)), attn_bias=True)


def _as_dict(config) -> dict:
    if hasattr(config, "to_dict"):                                       # an HF PretrainedConfig
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict (config.json) or a GPT2Config, got {type(config).__name__}")
    return config


def _take(state: dict, key: str) -> np.ndarray:
    for name in (key, f"transformer.{key}"):
        if name in state:
            return np.asarray(state[name], dtype=np.float64)
    raise ValueError(f"state is missing {key!r} (nor is there 'transformer.{key}')")


def block_from_gpt2(state: dict, cfg: BlockConfig, layer: int) -> dict:
    """Layer ``layer`` of a GPT-2 state dict as the reference's params dict (see the module docstring)."""
    D, M, p = cfg.d_model, cfg.d_mlp, f"h.{layer}."

    def vector(key, n):
        v = _take(state, p + key)
        if v.shape != (n,):
            raise ValueError(f"{p + key} must have shape ({n},), got {v.shape}")
        return v

    qkv = conv1d_to_linear(_take(state, p + "attn.c_attn.weight"), p + "attn.c_attn.weight", (D, 3 * D))  # (3D, D)
    qkv_b = vector("attn.c_attn.bias", 3 * D)
    params = {
        "ln1.g": vector("ln_1.weight", D), "ln1.b": vector("ln_1.bias", D),
        "ln2.g": vector("ln_2.weight", D), "ln2.b": vector("ln_2.bias", D),
        "attn.W_o": conv1d_to_linear(_take(state, p + "attn.c_proj.weight"), p + "attn.c_proj.weight", (D, D)),
        "attn.b_o": vector("attn.c_proj.bias", D),
        "mlp.W": conv1d_to_linear(_take(state, p + "mlp.c_fc.weight"), p + "mlp.c_fc.weight", (D, M)),
        "mlp.b": vector("mlp.c_fc.bias", M),
        "mlp.W_out": conv1d_to_linear(_take(state, p + "mlp.c_proj.weight"), p + "mlp.c_proj.weight", (M, D)),
        "mlp.b_out": vector("mlp.c_proj.bias", D),
    }
    for k, name in enumerate("qkv"):                                    # c_attn's columns: queries, keys, values
        params[f"attn.W_{name}"] = qkv[k * D:(k + 1) * D]              # (D, D)
        params[f"attn.b_{name}"] = qkv_b[k * D:(k + 1) * D]
    return params


@dataclass(frozen=True)
class GPT2:
    """A GPT-2 model in the reference's layout: ``blocks`` (one params dict per layer), their ``cfg``, the
    embeddings ``wte`` (vocab, D) and ``wpe`` (positions, D), and the final LayerNorm ``ln_f`` = (g, b)."""

    cfg: BlockConfig
    blocks: tuple
    wte: np.ndarray
    wpe: np.ndarray
    ln_f: tuple

    def embed(self, ids) -> np.ndarray:
        """``wte[ids] + wpe[0..T−1]``, ``(T, D)``."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
            raise ValueError(f"ids must be a non-empty 1-D array of integer token ids, got {ids!r}")
        if ids.min() < 0 or ids.max() >= self.wte.shape[0]:
            raise ValueError(f"ids must lie in 0..{self.wte.shape[0] - 1}, got {int(ids.min())}..{int(ids.max())}")
        if ids.size > self.wpe.shape[0]:
            raise ValueError(f"ids must hold at most {self.wpe.shape[0]} tokens (n_positions), got {ids.size}")
        return self.wte[ids] + self.wpe[: ids.size]

    def forward(self, ids) -> list[np.ndarray]:
        """The hidden states ``[H^0, …, H^L]`` (each ``(T, D)``) and, last, ``ln_f(H^L)``."""
        H = [self.embed(ids)]
        for params in self.blocks:
            H.append(block(params, self.cfg, H[-1]))
        return H + [layer_norm(H[-1], *self.ln_f, self.cfg.ln_eps)]


def random_state(config, seed: int = 0) -> dict:
    """A random GPT-2 state dict in the checkpoint's own naming and Conv1D layout (for demos and tests: no weights
    are downloaded). Weights ``N(0, 0.2²)`` (ten times GPT-2's initialisation, so that attention is far from
    uniform); biases and LayerNorm parameters perturbed by 0.1 so that every parameter matters."""
    config = _as_dict(config)
    cfg = config_from_gpt2(config)
    D, M = cfg.d_model, cfg.d_mlp
    rng = np.random.default_rng(seed)

    def w(*shape):
        return 0.2 * rng.standard_normal(shape)

    def near(value, n):
        return value + 0.1 * rng.standard_normal(n)

    state = {"wte.weight": w(int(config["vocab_size"]), D), "wpe.weight": w(int(config["n_positions"]), D),
             "ln_f.weight": near(1.0, D), "ln_f.bias": near(0.0, D)}
    for l in range(int(config["n_layer"])):
        p = f"h.{l}."
        state.update({
            p + "ln_1.weight": near(1.0, D), p + "ln_1.bias": near(0.0, D),
            p + "ln_2.weight": near(1.0, D), p + "ln_2.bias": near(0.0, D),
            p + "attn.c_attn.weight": w(D, 3 * D), p + "attn.c_attn.bias": near(0.0, 3 * D),
            p + "attn.c_proj.weight": w(D, D), p + "attn.c_proj.bias": near(0.0, D),
            p + "mlp.c_fc.weight": w(D, M), p + "mlp.c_fc.bias": near(0.0, M),
            p + "mlp.c_proj.weight": w(M, D), p + "mlp.c_proj.bias": near(0.0, D),
        })
    return state


def from_gpt2_state(state: dict, config) -> GPT2:
    """A whole GPT-2 (``n_layer`` blocks, embeddings, ``ln_f``) from its state dict and ``config.json`` dict (or an
    HF ``GPT2Config``)."""
    config = _as_dict(config)
    cfg = config_from_gpt2(config)
    n_layer = int(config["n_layer"])
    blocks = tuple(block_from_gpt2(state, cfg, layer) for layer in range(n_layer))
    wte, wpe = _take(state, "wte.weight"), _take(state, "wpe.weight")
    for name, arr in (("wte.weight", wte), ("wpe.weight", wpe)):
        if arr.ndim != 2 or arr.shape[1] != cfg.d_model:
            raise ValueError(f"{name} must have shape (n, {cfg.d_model}), got {arr.shape}")
    return GPT2(cfg=cfg, blocks=blocks, wte=wte, wpe=wpe, ln_f=(_take(state, "ln_f.weight"), _take(state, "ln_f.bias")))
