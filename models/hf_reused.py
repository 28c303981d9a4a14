"""The two families whose tensor mapping the project already had, behind ``hf.load``: GPT-2 (``models/gpt2.py``,
Conv1D ``[in, out]`` weights transposed) and BERT (``models/minilm.py``'s ``config_from_json`` and
``params_from_state``). This module only adds what ``hf.load`` needs around them: the config fields each family
reads (the rest refused), the learned position embeddings, the final norm or head, and the used-tensor bookkeeping.
"""
from __future__ import annotations

import numpy as np

from . import gpt2, minilm
from .hf_config import Fields
from .hf_families import Norm, Parts, Tensors, lm_head, tied

GPT2_LAYER = ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight", "attn.c_attn.bias",
              "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
              "mlp.c_proj.bias")


def gpt2_family(config: dict, state: dict, dtype, family: str = "gpt2") -> Parts:
    """GPT-2 (transformers ``models/gpt2/modeling_gpt2.py``): ``pre-ln`` blocks with biases, ``H⁰ = wte[id] +
    wpe[t]``, ``ln_f``, and the LM head tied to ``wte`` (``GPT2LMHeadModel``) unless ``tie_word_embeddings`` is
    false. The block mapping is ``gpt2.from_gpt2_state``'s."""
    f = Fields(config, family)
    for name in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size"):
        f.need(name)
    for name in ("activation_function", "n_inner", "layer_norm_epsilon", "scale_attn_weights",
                 "scale_attn_by_inverse_layer_idx"):
        f.get(name)                                   # checked by gpt2.config_from_gpt2
    f.get("n_ctx")                                    # the old name of n_positions, read by nothing
    f.get("reorder_and_upcast_attn")                  # the same function, computed in float32 by transformers
    f.require("add_cross_attention", (None, False), "GPT-2 with cross-attention is an encoder-decoder")
    is_tied = tied(f, default=True)
    f.refuse_unread()
    t = Tensors(state, ("transformer.",), dtype, ignore=(".attn.bias", ".attn.masked_bias"))
    model = gpt2.from_gpt2_state(state, config)
    D, L = model.cfg.d_model, len(model.blocks)
    for l in range(L):
        for name in GPT2_LAYER:
            t.used.add(t.key(f"h.{l}.{name}"))
    tokens = t.take("wte.weight", (f.need("vocab_size"), D))
    positions = t.take("wpe.weight", (f.need("n_positions"), D))
    final = Norm("layer", t.take("ln_f.weight", (D,)), t.take("ln_f.bias", (D,)), model.cfg.ln_eps)
    head = lm_head(t, tokens, "lm_head.weight", is_tied)
    blocks = tuple({k: _as(v, dtype) for k, v in p.items()} for p in model.blocks)
    parts = Parts(cfgs=(model.cfg,) * L, blocks=blocks, tokens=tokens, final_norm=final, lm_head=head,
                  layer_name="GPT-2's transformer.h.<l>", positions=positions)
    t.refuse_unused()
    return parts


def bert_family(config: dict, state: dict, dtype, family: str = "bert") -> Parts:
    """BERT (transformers ``models/bert/modeling_bert.py``; all-MiniLM-L6-v2 is one): ``post-ln`` blocks, no causal
    mask, ``H⁰ = LN(word[id] + position[t] + token_type[0])``. ``BertForMaskedLM``'s head, when the checkpoint has
    it: ``logits = W_dec LN(gelu(W_t h + b_t)) + b`` with ``W_dec`` tied to the word embeddings unless
    ``tie_word_embeddings`` is false. The layer mapping is ``minilm.params_from_state``'s."""
    f = Fields(config, family)
    for name in ("hidden_act", "position_embedding_type", "hidden_size", "intermediate_size",
                 "num_attention_heads", "layer_norm_eps"):
        f.get(name)                                   # checked by minilm.config_from_json
    for name in [k for k in config if k.startswith("pooler_")]:
        f.get(name)                                   # the pooler (sentence head) is outside the hidden states
    f.require("is_decoder", (None, False), "the reference's BERT is the bidirectional encoder")
    f.require("add_cross_attention", (None, False), "BERT with cross-attention is an encoder-decoder")
    L, V, S = f.need("num_hidden_layers"), f.need("vocab_size"), f.need("type_vocab_size")
    is_tied = tied(f, default=True)                   # BertForMaskedLM's decoder; unused without a head
    f.refuse_unread()
    cfg = minilm.config_from_json(config)
    D = cfg.d_model
    t = Tensors(state, ("bert.",), dtype, ignore=("position_ids", "pooler.", "cls.seq_relationship."))
    bare = {name: state[t.key(name)] for name in _bert_names(L) if t.has(name)}
    embeddings, blocks = minilm.params_from_state(bare, L, cfg)
    t.used.update(t.key(name) for name in bare)
    word = t.take("embeddings.word_embeddings.weight", (V, D))
    P = embeddings["position"].shape[0]
    parts = dict(cfgs=(cfg,) * L, blocks=tuple({k: _as(v, dtype) for k, v in p.items()} for p in blocks),
                 tokens=word, final_norm=None, lm_head=None, layer_name="BERT's encoder.layer.<l>",
                 positions=t.take("embeddings.position_embeddings.weight", (P, D)),
                 token_type=t.take("embeddings.token_type_embeddings.weight", (S, D))[0],
                 embed_norm=Norm("layer", t.take("embeddings.LayerNorm.weight", (D,)),
                                 t.take("embeddings.LayerNorm.bias", (D,)), cfg.ln_eps))
    if t.has("cls.predictions.transform.dense.weight"):
        p = "cls.predictions."
        parts.update(head_transform={
            "W": t.take(p + "transform.dense.weight", (D, D)), "b": t.take(p + "transform.dense.bias", (D,)),
            "activation": cfg.activation, "norm": Norm("layer", t.take(p + "transform.LayerNorm.weight", (D,)),
                                                       t.take(p + "transform.LayerNorm.bias", (D,)), cfg.ln_eps)},
            lm_head=lm_head(t, word, p + "decoder.weight", is_tied),
            lm_head_bias=t.take(p + "bias", (V,)))
        if t.has(p + "decoder.bias"):                 # older files store the same bias twice
            t.take(p + "decoder.bias", (V,))
    t.refuse_unused()
    return Parts(**parts)


def _bert_names(L: int) -> list[str]:
    return list(minilm.EMBEDDING_KEYS.values()) + [f"encoder.layer.{l}.{v}" for l in range(L)
                                                   for v in minilm.LAYER_KEYS.values()]


def _as(arr, dtype) -> np.ndarray:
    out = np.array(arr, dtype=dtype)
    out.setflags(write=False)
    return out
