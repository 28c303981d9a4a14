"""``models.hf.load`` against transformers itself (issue 15 item 3): for every family a random tiny float64 model,
saved with ``save_pretrained(safe_serialization=True)`` into a temporary folder (no network), loaded by ours;
every hidden state and the logits agree to 1e-10, the identity holds at every layer and position, and all layers'
last-token updates reproduce the next-token logits from the query token alone. Then the bad folders.

transformers computes RMSNorm, the rotary cos/sin and (eager) the softmax in float32 even in a float64 model; the
reference computes them in float64. The oracle therefore replaces those forwards by the same formulas in float64
(``float64_oracle``) and uses ``sdpa`` attention (float64 throughout on the CPU); Gemma 2, which has no ``sdpa``
(soft-capped logits), gets ``float64_eager``: transformers' eager attention with the softmax in float64. One test
compares with the unpatched model at a tolerance that float32 round-off explains.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from implicit_icl.models import hf  # noqa: E402
from implicit_icl.reference import (  # noqa: E402
    Update, apply_model_updates, apply_update, block, block_output, model_forward, model_updates, position_updates,
)

T = transformers
IDS = [3, 17, 0, 42, 8, 8, 25]          # 7 tokens: longer than the sliding windows below
SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, bos_token_id=0,
             eos_token_id=1, pad_token_id=None)

# model_type → (config, class); every family's quirk switched on
FAMILIES = {
    "gpt2": lambda: (T.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
                                  eos_token_id=1), T.GPT2LMHeadModel),
    "llama": lambda: (T.LlamaConfig(intermediate_size=24, num_key_value_heads=2, **SMALL), T.LlamaForCausalLM),
    "llama-bias": lambda: (T.LlamaConfig(intermediate_size=24, num_key_value_heads=2, attention_bias=True,
                                         mlp_bias=True, tie_word_embeddings=True, **SMALL), T.LlamaForCausalLM),
    "mistral": lambda: (T.MistralConfig(intermediate_size=24, num_key_value_heads=2, sliding_window=3, head_dim=8,
                                        **SMALL), T.MistralForCausalLM),
    "qwen2": lambda: (T.Qwen2Config(intermediate_size=24, num_key_value_heads=1, use_sliding_window=True,
                                    sliding_window=3, layer_types=["full_attention", "sliding_attention"], **SMALL),
                      T.Qwen2ForCausalLM),
    "qwen3": lambda: (T.Qwen3Config(intermediate_size=24, num_key_value_heads=2, head_dim=6, **SMALL),
                      T.Qwen3ForCausalLM),
    "gemma": lambda: (T.GemmaConfig(intermediate_size=24, num_key_value_heads=2, head_dim=4, **SMALL),
                      T.GemmaForCausalLM),          # hidden_size 16: √d = 4 exactly (transformers rounds it to f32)
    # logits reach ~5 and attention logits ~2 here, so both caps bend them; 8^(−1/2) is not 1/√head_dim
    "gemma2": lambda: (T.Gemma2Config(intermediate_size=24, num_key_value_heads=2, head_dim=4, query_pre_attn_scalar=8,
                                      sliding_window=3, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                                      **SMALL), T.Gemma2ForCausalLM),
    "gpt_neox": lambda: (T.GPTNeoXConfig(intermediate_size=24, rope_parameters={"rope_type": "default",
                         "rope_theta": 500.0, "partial_rotary_factor": 0.5}, **_neox()), T.GPTNeoXForCausalLM),
    "gpt_neox-serial": lambda: (T.GPTNeoXConfig(intermediate_size=24, use_parallel_residual=False, **_neox()),
                                T.GPTNeoXForCausalLM),
    "bert": lambda: (T.BertConfig(intermediate_size=24, max_position_embeddings=16, **SMALL), T.BertForMaskedLM),
}


def _neox():
    return dict(SMALL, num_attention_heads=2)        # d_head 8: partial rotary 0.5 → 4 dims, 0.25 → 2


def randomise(model, seed: int):
    """Weights far from transformers' tiny init, so that attention is far from uniform and every array matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            is_norm = "norm" in name.lower() or ".ln_" in name or "ln_f" in name
            p.copy_(1.0 + 0.1 * noise if is_norm and name.endswith("weight") else 0.4 * noise)


def float64_oracle(model, theta: float):
    """Replace transformers' float32 islands by the same formulas in float64 (module docstring)."""
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            gemma = name.startswith("Gemma")

            def rms(x, m=module, eps=eps, gemma=gemma):
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * (1.0 + m.weight) if gemma else m.weight * y
            module.forward = rms
        elif name.endswith("RotaryEmbedding"):
            dim = 2 * module.inv_freq.numel()

            def cos_sin(x, position_ids, dim=dim):
                inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                ang = position_ids[..., None].to(torch.float64) * inv
                emb = torch.cat((ang, ang), dim=-1)
                return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            module.forward = cos_sin
    return model


def float64_eager(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """transformers' ``eager_attention_forward`` (Gemma 2's: scaled, soft-capped, masked) with the softmax in the
    inputs' float64 instead of float32."""
    from transformers.models.gemma2.modeling_gemma2 import repeat_kv
    k, v = (repeat_kv(t, module.num_key_value_groups) for t in (key, value))
    w = query @ k.transpose(2, 3) * scaling
    w = w if softcap is None else softcap * torch.tanh(w / softcap)
    w = torch.softmax(w if attention_mask is None else w + attention_mask, dim=-1)
    return (w @ v).transpose(1, 2).contiguous(), w


T.AttentionInterface.register("float64_eager", float64_eager)
T.masking_utils.AttentionMaskInterface.register("float64_eager", T.masking_utils.eager_mask)   # additive masks
ATTENTION = {"gemma2": "float64_eager"}          # every other family: sdpa

_SAVED: dict = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``family → (folder, transformers model in float64)``, built once per family."""
    def get(family: str):
        if family not in _SAVED:
            torch.manual_seed(0)
            config, cls = FAMILIES[family]()
            model = cls._from_config(config, attn_implementation=ATTENTION.get(family, "sdpa"),
                                     dtype=torch.float64).eval()
            randomise(model, seed=len(_SAVED))
            folder = tmp_path_factory.mktemp(family)
            model.save_pretrained(folder, safe_serialization=True)
            _SAVED[family] = folder, model, config
        return _SAVED[family]
    return get


def _theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", 10000.0))


def transformers_states(model, ids) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """transformers' ``hidden_states`` (the last one after the final norm), the last layer's own output (before
    it, from a hook) and the logits, as float64 NumPy."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)][0]
    caught = {}
    hook = layers[-1].register_forward_hook(lambda m, i, o: caught.setdefault("out", o[0] if isinstance(o, tuple)
                                                                               else o))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        hook.remove()
    return ([h[0].numpy() for h in out.hidden_states], caught["out"][0].numpy(), out.logits[0].numpy())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_matches_transformers(saved, family):
    folder, model, config = saved(family)
    ours = hf.load(folder)
    assert ours.family == family.split("-")[0] and ours.n_layers == 2
    float64_oracle(model, _theta(config))
    hs, last, logits = transformers_states(model, IDS)
    H = ours.hidden_states(IDS)
    for l in range(ours.n_layers):
        np.testing.assert_allclose(H[l], hs[l], rtol=0, atol=1e-10, err_msg=f"{family} H^{l}")
    np.testing.assert_allclose(H[-1], last, rtol=0, atol=1e-10, err_msg=f"{family} H^L")
    np.testing.assert_allclose(ours.final(H[-1]), hs[-1], rtol=0, atol=1e-10, err_msg=f"{family} final norm")
    np.testing.assert_allclose(ours.logits(IDS), logits, rtol=0, atol=1e-10 * max(1, np.abs(logits).max()),
                               err_msg=f"{family} logits")


def test_unpatched_transformers_agrees_to_float32_round_off(saved):
    """The stock float64 model (RMSNorm, rotary cos/sin and eager softmax in float32): the difference is float32
    round-off (eps 6e-8) carried through two layers of O(1)–O(10) values, so 1e-5 bounds it; ours is the float64
    one above."""
    torch.manual_seed(0)
    config, cls = FAMILIES["llama"]()
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float64).eval()
    randomise(model, seed=99)
    ours = hf.load(_save(model, saved("llama")[0].parent / "llama-stock"))
    _, _, logits = transformers_states(model, IDS)
    diff = np.abs(ours.logits(IDS) - logits).max()
    assert 1e-12 < diff < 1e-5 * max(1, np.abs(logits).max())


def _save(model, folder):
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("family", list(FAMILIES))
def test_identity_every_layer_and_position(saved, family):
    """Each layer ℓ, each position i: the update of ``position_updates`` applied to the block and the token
    ``H^ℓ_i`` run alone give ``block(H^ℓ)_i`` (THEORY §3b, §11)."""
    ours = hf.load(saved(family)[0])
    H = ours.hidden_states(IDS)
    for l, (params, cfg) in enumerate(zip(ours.blocks, ours.cfgs)):
        target = block(params, cfg, H[l])                                      # (T, D)
        ups = position_updates(params, cfg, H[l])
        scale = max(1.0, float(np.abs(target).max()), float(np.abs(H[l]).max()))
        for i in range(len(IDS)):
            one = Update(u=ups.u[i], a=ups.a[i], delta_b=ups.delta_b[i])
            got = block_output(apply_update(params, one), cfg, np.zeros((0, cfg.d_model)), H[l][i])
            np.testing.assert_allclose(got, target[i], rtol=0, atol=1e-12 * scale,
                                       err_msg=f"{family} layer {l} position {i}")
        if cfg.kind == "parallel":                                             # THEORY §11: ΔW = 0 exactly
            assert np.all(ups.u == 0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_all_layer_updates_give_next_token_logits(saved, family):
    """Every layer's last-token update in at once; the query token alone reproduces the next-token logits."""
    folder, model, config = saved(family)
    ours = hf.load(folder)
    H0 = ours.embed(IDS)
    patched = apply_model_updates(list(ours.blocks), model_updates(list(ours.blocks), list(ours.cfgs), H0))
    alone = model_forward(patched, list(ours.cfgs), H0[-1:])[-1][0]           # the query token's row of H0 only
    want = ours.logits(IDS)[-1]
    np.testing.assert_allclose(ours.logits_from(alone), want, rtol=0, atol=1e-10 * max(1, np.abs(want).max()))


# ------------------------------------------------------------------------------ files: shards, bf16, tokenizer


def test_sharded_checkpoint_loads_the_same(saved, tmp_path):
    folder, model, _ = saved("llama")
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="4KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    np.testing.assert_array_equal(hf.load(tmp_path).logits(IDS), hf.load(folder).logits(IDS))


def test_bfloat16_weights_widen_exactly(saved, tmp_path):
    _, model, config = saved("qwen3")
    bf = type(model)._from_config(config, dtype=torch.bfloat16)
    bf.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    bf.save_pretrained(tmp_path, safe_serialization=True)
    ours = hf.load(tmp_path)
    want = bf.model.layers[1].mlp.up_proj.weight.detach().to(torch.float64).numpy()
    np.testing.assert_array_equal(ours.blocks[1]["mlp.W"][config.intermediate_size:], want)
    assert ours.blocks[1]["mlp.W"].dtype == np.float64


def test_tokenizer_json_gives_tokenize_and_decode(saved, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    folder, model, _ = saved("llama")
    model.save_pretrained(tmp_path, safe_serialization=True)
    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = hf.load(tmp_path)
    ids, tokens = ours.tokenize("the cat sat on the mat")
    assert list(ids) == [1, 2, 3, 4, 1, 5] and tokens[1] == "cat"
    assert ours.decode(ids) == "the cat sat on the mat"
    got_tokens, H = ours.text_hidden_states("the cat sat")
    assert got_tokens == ["the", "cat", "sat"] and len(H) == 3 and ours.default_position(got_tokens) == 2
    with pytest.raises(ValueError, match="no tokenizer.json"):
        hf.load(folder).tokenize("the cat")


def test_the_bundled_minilm_folder_loads_as_bert():
    """all-MiniLM-L6-v2 (the extra ``real``) through ``hf.load``: the same hidden states as ``models.minilm``."""
    from implicit_icl.models import minilm
    try:
        folder = minilm.model_dir()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {exc}")
    ours, theirs = hf.load(folder), minilm.load_minilm(folder)
    ids, tokens = ours.tokenize("France is to Paris as Japan is to")
    assert tokens[0] == "[CLS]" and ours.lm_head is None and ours.default_position(tokens) == len(tokens) - 2
    for a, b in zip(ours.hidden_states(ids), minilm.forward(theirs, ids)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no language-model head"):
        ours.logits(ids)


# ------------------------------------------------------------------------------------------- bad folders


def _copy(src, dst, config_edit=None, drop_weights=False):
    import shutil
    shutil.copytree(src, dst)
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if drop_weights:
        (dst / "model.safetensors").unlink()
    return dst


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def test_missing_config_json_and_weights(saved, tmp_path):
    folder = saved("llama")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as err:
        hf.load(empty)
    assert "config.json" in _one_line(err) and isinstance(err.value, FileNotFoundError)
    with pytest.raises(ValueError) as err:
        hf.load(_copy(folder, tmp_path / "noweights", drop_weights=True))
    assert "model.safetensors" in _one_line(err)
    with pytest.raises(ValueError) as err:
        hf.load(tmp_path / "nowhere")
    assert "is not a folder" in _one_line(err)


def test_wrong_shape_and_extra_tensors_are_named(saved, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = saved("llama")[0]
    bad = _copy(folder, tmp_path / "shape")
    state = load_file(str(bad / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:, :-1].copy()
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        hf.load(bad)
    assert "'model.layers.1.mlp.up_proj.weight'" in _one_line(err) and "(24, 15)" in str(err.value)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.post_feedforward_layernorm.weight"] = np.ones(16)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        hf.load(bad)
    assert "'model.layers.0.post_feedforward_layernorm.weight'" in _one_line(err)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError) as err:
        hf.load(bad)
    assert "model.safetensors" in _one_line(err)


@pytest.mark.parametrize("edit, named", [
    (lambda c: c.update(model_type="mixtral"), "model_type 'mixtral'"),
    (lambda c: c.update(model_type="gemma3"), "rope_parameters per layer type"),
    (lambda c: c.pop("model_type"), "model_type None"),
    (lambda c: c.update(num_local_experts=4), "'num_local_experts'"),
    (lambda c: c.update(alibi=True), "'alibi'"),
    (lambda c: c.update(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "'linear'"),
    (lambda c: c.update(hidden_act="tanh"), "'hidden_act'"),
    (lambda c: c.update(tie_word_embeddings="yes"), "'tie_word_embeddings'"),
    (lambda c: c.update(pretraining_tp=2), "'pretraining_tp'"),
    (lambda c: c.update(num_hidden_layers=3), "'model.layers.2."),
    (lambda c: c.update(hidden_size=-16), "'hidden_size'"),
])
def test_unsupported_config_is_one_named_line(saved, tmp_path, edit, named):
    bad = _copy(saved("llama")[0], tmp_path / "bad", config_edit=edit)
    with pytest.raises(ValueError) as err:
        hf.load(bad)
    assert named in _one_line(err)


def test_older_config_spellings_load_the_same(saved, tmp_path):
    """transformers 4.x files (SmolLM's, TinyLlama's): ``rope_theta``/``rope_scaling: null`` at the top level,
    SmolLM's ``is_llama_config``/``rope_interleaved: false``/``transformers.js_config``; GPT-NeoX's ``rotary_pct``/
    ``rotary_emb_base``; Gemma's ``hidden_activation``. Same model, same logits."""
    def old_rope(c):
        c["rope_theta"], c["rope_scaling"] = c.pop("rope_parameters")["rope_theta"], None
        c.update({"is_llama_config": True, "rope_interleaved": False, "transformers.js_config": {}})

    def old_neox(c):
        rope = c.pop("rope_parameters")
        c.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])

    for family, edit in (("llama", old_rope), ("gpt_neox", old_neox),
                         ("gemma", lambda c: c.update(hidden_act="gelu", hidden_activation="gelu_pytorch_tanh"))):
        folder = saved(family)[0]
        old = hf.load(_copy(folder, tmp_path / family, config_edit=edit))
        np.testing.assert_array_equal(old.logits(IDS), hf.load(folder).logits(IDS))
    bad = _copy(saved("gemma")[0], tmp_path / "gemma-bad", config_edit=lambda c: c.update(hidden_activation="silu"))
    with pytest.raises(ValueError, match="'hidden_act' and 'hidden_activation' disagree"):
        hf.load(bad)


def test_gemma2_config_fields_reach_the_blocks(saved, tmp_path):
    """Gemma 2's fields as the blocks hold them: windows on layers 0, 2, … (``layer_types``, or Gemma2Config's
    default without it: same logits), scale ``query_pre_attn_scalar^(−1/2)``, both caps; a missing
    ``query_pre_attn_scalar`` and a stray ``hidden_act`` are refused by name."""
    folder = saved("gemma2")[0]
    ours = hf.load(folder)
    assert [c.sliding_window for c in ours.cfgs] == [3, None] and all(c.post_norms for c in ours.cfgs)
    assert {(c.attn_scale, c.attn_softcap) for c in ours.cfgs} == {(8 ** -0.5, 2.0)}
    assert ours.parts.final_softcap == 5.0 and np.abs(ours.logits(IDS)).max() < 5.0
    old = hf.load(_copy(folder, tmp_path / "types", config_edit=lambda c: c.pop("layer_types")))
    np.testing.assert_array_equal(old.logits(IDS), ours.logits(IDS))
    for edit, named in ((lambda c: c.pop("query_pre_attn_scalar"), "'query_pre_attn_scalar'"),
                        (lambda c: c.update(hidden_act="gelu"), "'hidden_act'")):
        with pytest.raises(ValueError) as err:
            hf.load(_copy(folder, tmp_path / named.strip("'"), config_edit=edit))
        assert named in _one_line(err)


@pytest.mark.parametrize("ids, named", [([], "non-empty"), ([[1, 2]], "1-D"), ([1.5], "integers"),
                                        ([0, 50], "0..49"), (list(range(17)), "at most 16")])
def test_bad_token_ids_are_named(saved, ids, named):
    ours = hf.load(saved("gpt2")[0])                  # 16 learned positions
    with pytest.raises(ValueError, match="token_ids") as err:
        ours.logits(ids)
    assert named in _one_line(err)
