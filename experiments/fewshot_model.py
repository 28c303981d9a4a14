"""The bundled few-shot learner as a Llama-architecture language model in torch, and its Hugging Face folder (ours;
issue 15 item 4; THEORY §11).

The model: token embeddings → ``n_blocks`` ``gated`` blocks (``backends.torch_ops.block``: RMSNorm, rotary,
grouped-query attention, SwiGLU) → a final RMSNorm → an LM head (not tied). It is transformers'
``LlamaForCausalLM`` with ``attention_bias = mlp_bias = False``, so the MLP biases ``mlp.b`` and ``mlp.b_out`` of
the reference's block are zero and not trained.

Params are a flat dict: ``embed.tokens`` ``(V, D)``, ``blocks.<l>.<block key>`` (the reference's names without the
two biases), ``norm.g`` ``(D,)``, ``lm_head.W`` ``(V, D)``. ``hf_state`` names them as transformers does; reading a
folder back goes through ``models.hf.load`` (its Llama mapping, the one reader), so ``save_folder`` followed by
``params_from_hf`` is the identity and a test checks it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from implicit_icl.backends import torch_ops
from implicit_icl.checkpoint import atomic_write_bytes
from implicit_icl.reference.config import BlockConfig, param_shapes

from . import fewshot_task

FROZEN = ("mlp.b", "mlp.b_out")          # zero in a Llama block (mlp_bias = False): never trained, never saved
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def block_keys(cfg: BlockConfig) -> list[str]:
    """The trained keys of one block: the reference's ``param_shapes`` less ``FROZEN``."""
    return [k for k in param_shapes(cfg) if k not in FROZEN]


def init_params(cfg: BlockConfig, n_blocks: int, vocab: int, seed: int) -> dict:
    """Float32 params from ``seed``: blocks as ``torch_ops.init_block`` (``U(±1/√fan_in)``, gains 1), embeddings
    ``N(0, 1)`` (RMSNorm follows, so their scale does not matter), head ``U(±1/√D)``, final gain 1."""
    gen = torch.Generator().manual_seed(seed)
    D = cfg.d_model
    params = {"embed.tokens": torch.randn((vocab, D), generator=gen)}
    for l in range(n_blocks):
        block = torch_ops.init_block(cfg, gen)
        params.update({f"blocks.{l}.{k}": block[k] for k in block_keys(cfg)})
    params["norm.g"] = torch.ones(D)
    params["lm_head.W"] = (torch.rand((vocab, D), generator=gen) * 2 - 1) / math.sqrt(D)
    return params


def block_view(params: dict, cfg: BlockConfig, l: int) -> dict:
    """Block ``l``'s params under the reference's keys, with the zero ``FROZEN`` biases."""
    prefix = f"blocks.{l}."
    view = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    W = view["mlp.W"]
    view["mlp.b"] = W.new_zeros(W.shape[0])
    view["mlp.b_out"] = W.new_zeros(cfg.d_model)
    return view


def n_blocks_of(params: dict) -> int:
    return len({k.split(".")[1] for k in params if k.startswith("blocks.")})


def logits(params: dict, cfg: BlockConfig, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(..., T, V)`` of token ids ``(..., T)`` (positions ``0..T−1``)."""
    H = params["embed.tokens"][ids]                                                   # (..., T, D)
    for l in range(n_blocks_of(params)):
        H = torch_ops.block(block_view(params, cfg, l), cfg, H)
    return torch_ops.rms_norm(H, params["norm.g"], cfg.ln_eps) @ params["lm_head.W"].T


# ------------------------------------------------------------------------------------ the Hugging Face folder

#: our block key → transformers' ``model.layers.<l>.`` suffix (``mlp.W`` is ``[W_gate; W_up]``, split in two)
HF_BLOCK = {"attn.W_q": "self_attn.q_proj.weight", "attn.W_k": "self_attn.k_proj.weight",
            "attn.W_v": "self_attn.v_proj.weight", "attn.W_o": "self_attn.o_proj.weight",
            "ln1.g": "input_layernorm.weight", "ln2.g": "post_attention_layernorm.weight",
            "mlp.W_out": "mlp.down_proj.weight"}
HF_REST = {"embed.tokens": "model.embed_tokens.weight", "norm.g": "model.norm.weight", "lm_head.W": "lm_head.weight"}


def hf_config(cfg: BlockConfig, n_blocks: int, vocab: int, max_positions: int) -> dict:
    """``config.json`` for ``LlamaForCausalLM`` (transformers ``LlamaConfig`` field names)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
            "vocab_size": vocab, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_mlp,
            "num_hidden_layers": n_blocks, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.ln_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "max_position_embeddings": max_positions, "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "pretraining_tp": 1, "attention_dropout": 0.0, "use_cache": True,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def hf_state(params: dict, cfg: BlockConfig) -> dict[str, np.ndarray]:
    """Our params (torch or NumPy) under transformers' names, as contiguous float32 NumPy arrays."""
    out = {}
    for key, value in params.items():
        arr = np.ascontiguousarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value,
                                   dtype=np.float32)
        if key in HF_REST:
            out[HF_REST[key]] = arr
            continue
        _, l, name = key.split(".", 2)
        prefix = f"model.layers.{l}."
        if name == "mlp.W":
            out[prefix + "mlp.gate_proj.weight"] = np.ascontiguousarray(arr[:cfg.d_mlp])
            out[prefix + "mlp.up_proj.weight"] = np.ascontiguousarray(arr[cfg.d_mlp:])
        else:
            out[prefix + HF_BLOCK[name]] = arr
    return out


def save_folder(folder, params: dict, cfg: BlockConfig, max_positions: int, metadata: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (float32; ``metadata`` in its header, as strings) and
    ``tokenizer.json`` into ``folder``, each atomically."""
    from safetensors.numpy import save

    folder = Path(folder)
    vocab = params["embed.tokens"].shape[0]
    config = hf_config(cfg, n_blocks_of(params), vocab, max_positions)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(folder / CONFIG, lambda f: f.write(text.encode("utf-8")))
    blob = save(hf_state(params, cfg), metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(folder / WEIGHTS, lambda f: f.write(blob))
    tok = fewshot_task.tokenizer().to_str(pretty=True)
    atomic_write_bytes(folder / TOKENIZER, lambda f: f.write(tok.encode("utf-8")))
    return folder


def params_from_hf(model) -> tuple[dict, BlockConfig]:
    """Our params (NumPy, the loader's dtype) and block config from a ``models.hf.load`` Llama model."""
    if model.family != "llama" or model.parts.lm_head is model.parts.tokens:
        raise ValueError(f"{model.path}: expected an untied llama model, got {model.family}")
    cfg = model.cfgs[0]
    params = {"embed.tokens": model.parts.tokens, "norm.g": model.parts.final_norm.g, "lm_head.W": model.lm_head}
    for l, block in enumerate(model.blocks):
        params.update({f"blocks.{l}.{k}": block[k] for k in block_keys(cfg)})
    return params, cfg


def load_folder(folder, dtype=torch.float64) -> tuple[dict, BlockConfig]:
    """A saved few-shot model as torch params (``dtype``) and its block config, read by ``models.hf.load``."""
    from implicit_icl.models import hf

    params, cfg = params_from_hf(hf.load(folder, dtype=np.float64))
    return {k: torch.tensor(np.asarray(v), dtype=dtype) for k, v in params.items()}, cfg
