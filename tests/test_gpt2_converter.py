"""GPT-2's Conv1D checkpoints in the reference's layout (DESIGN.md: "Converters exist for checkpoints stored
[in, out] (GPT-2 Conv1D) and are tested").

Against an independent implementation: HF transformers' ``GPT2Model`` (a test-only dependency; randomly initialised
from a config, no download) in float64, layer by layer, and the implicit update on its converted blocks. Float64
on values of order 1-10 after sums of at most a few hundred terms: ``1e-12 × (1 + scale)`` leaves ~100× margin over
round-off, while a wrong split of c_attn, a missing transpose or the erf GELU instead of tanh miss by ≥ 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest

from implicit_icl.models import gpt2
from implicit_icl.reference import apply_update, block, block_output, implicit_update, position_updates

TOL = 1e-12


def _tol(x) -> float:
    return TOL * (1.0 + float(np.max(np.abs(x))))


CONFIG = dict(n_embd=16, n_head=4, n_layer=3, n_positions=32, vocab_size=50, n_inner=None,
              activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)


def _hf_model(torch, transformers, config: dict):
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(**config)).double().eval()
    with torch.no_grad():                     # HF initialises biases and LayerNorms to 0 and 1: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch", reason="the comparison with HF GPT-2 needs torch")
    transformers = pytest.importorskip("transformers", reason="the comparison with HF GPT-2 needs transformers "
                                                               "(the dev extra)")
    model, state = _hf_model(torch, transformers, CONFIG)
    return torch, model, state


@pytest.mark.parametrize("change", [dict(n_inner=40), dict(activation_function="gelu"),
                                    dict(activation_function="relu"), dict(layer_norm_epsilon=0.5),
                                    dict(n_head=8, n_embd=32), dict(n_head=1)])
def test_other_configs_match_hf_too(change):
    torch = pytest.importorskip("torch", reason="the comparison with HF GPT-2 needs torch")
    transformers = pytest.importorskip("transformers", reason="needs transformers (the dev extra)")
    config = dict(CONFIG, **change)
    model, state = _hf_model(torch, transformers, config)
    ours = gpt2.from_gpt2_state(state, model.config)                    # an HF GPT2Config is accepted too
    want = _hf_hidden(torch, model, IDS)
    H = ours.forward(IDS)
    for l in range(config["n_layer"]):
        np.testing.assert_allclose(H[l], want[l], rtol=0, atol=_tol(want[l]), err_msg=f"{change}: block {l}")
    np.testing.assert_allclose(H[-1], want[-1], rtol=0, atol=_tol(want[-1]), err_msg=f"{change}: ln_f")


def _hf_hidden(torch, model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]     # embeddings, block 0..L-2 outputs, ln_f(last block)


IDS = [3, 17, 42, 8, 8, 1, 30, 12, 5]


def test_every_block_and_the_final_layer_norm_match_hf_gpt2(hf):
    torch, model, state = hf
    ours = gpt2.from_gpt2_state(state, CONFIG)
    assert ours.cfg.kind == "pre-ln" and ours.cfg.activation == "gelu_tanh" and ours.cfg.causal
    H = ours.forward(IDS)
    want = _hf_hidden(torch, model, IDS)
    assert len(want) == CONFIG["n_layer"] + 1 and len(H) == CONFIG["n_layer"] + 2
    for l in range(CONFIG["n_layer"]):                                 # HF's hidden_states[l] = input of block l
        np.testing.assert_allclose(H[l], want[l], rtol=0, atol=_tol(want[l]), err_msg=f"input of block {l}")
    np.testing.assert_allclose(H[-1], want[-1], rtol=0, atol=_tol(want[-1]), err_msg="ln_f(last block)")


def test_the_implicit_update_holds_on_gpt2_blocks(hf):
    """P1 Thm 2.2 at the last token and P2 at every position, on the converted blocks with HF's own inputs."""
    torch, model, state = hf
    ours = gpt2.from_gpt2_state(state, CONFIG)
    want = _hf_hidden(torch, model, IDS)
    for l, params in enumerate(ours.blocks[:-1]):
        Z, out = want[l], want[l + 1]                                   # HF's input and output of block l
        upd = implicit_update(params, ours.cfg, Z[:-1], Z[-1])
        alone = block_output(apply_update(params, upd), ours.cfg, Z[:0], Z[-1])
        np.testing.assert_allclose(alone, out[-1], rtol=0, atol=_tol(out))
        ups = position_updates(params, ours.cfg, Z)
        for i in (0, 4, len(IDS) - 1):
            got = block_output(apply_update(params, ups[i]), ours.cfg, Z[:0], Z[i])
            np.testing.assert_allclose(got, out[i], rtol=0, atol=_tol(out))


@pytest.mark.parametrize("mistake", ["no transpose of c_proj", "k and q swapped", "erf GELU"])
def test_a_wrong_conversion_misses_hf_by_far(hf, mistake):
    torch, model, state = hf
    ours = gpt2.from_gpt2_state(state, CONFIG)
    params, cfg = dict(ours.blocks[0]), ours.cfg
    if mistake == "no transpose of c_proj":
        params["attn.W_o"] = params["attn.W_o"].T
    elif mistake == "k and q swapped":
        params["attn.W_q"], params["attn.W_k"] = params["attn.W_k"], params["attn.W_q"]
        params["attn.b_q"], params["attn.b_k"] = params["attn.b_k"], params["attn.b_q"]
    else:
        from dataclasses import replace
        cfg = replace(cfg, activation="gelu")
    want = _hf_hidden(torch, model, IDS)
    miss = np.max(np.abs(block(params, cfg, want[0]) - want[1]))
    assert miss > 1e3 * _tol(want[1]), (mistake, miss)


SMALL = dict(n_embd=4, n_head=2, n_layer=1, n_inner=8, vocab_size=5, n_positions=6)


def _state(seed=0):
    return gpt2.random_state(SMALL, seed)


def test_random_state_is_a_seeded_checkpoint_in_conv1d_layout():
    a, b = gpt2.random_state(SMALL, 0), gpt2.random_state(SMALL, 1)
    assert a["h.0.attn.c_attn.weight"].shape == (4, 12) and a["h.0.mlp.c_proj.weight"].shape == (8, 4)
    np.testing.assert_array_equal(a["wte.weight"], gpt2.random_state(SMALL, 0)["wte.weight"])
    assert not np.array_equal(a["wte.weight"], b["wte.weight"])
    model = gpt2.from_gpt2_state(a, SMALL)
    H = model.forward([1, 2, 3])
    assert len(H) == 3 and all(h.shape == (3, 4) for h in H)


def test_conv1d_layout_is_transposed_and_c_attn_split_in_q_k_v_order():
    s = _state()
    p = gpt2.block_from_gpt2(s, gpt2.config_from_gpt2(SMALL), 0)
    W = s["h.0.attn.c_attn.weight"]                                     # (D, 3D): x @ W = [q | k | v]
    np.testing.assert_array_equal(p["attn.W_q"], W[:, :4].T)
    np.testing.assert_array_equal(p["attn.W_v"], W[:, 8:].T)
    np.testing.assert_array_equal(p["attn.b_k"], s["h.0.attn.c_attn.bias"][4:8])
    np.testing.assert_array_equal(p["mlp.W"], s["h.0.mlp.c_fc.weight"].T)              # (M, D): the paper's W
    assert p["mlp.W"].shape == (8, 4) and p["mlp.W_out"].shape == (4, 8)
    prefixed = {f"transformer.{k}": v for k, v in s.items()}                       # GPT2LMHeadModel naming
    np.testing.assert_array_equal(gpt2.from_gpt2_state(prefixed, SMALL).blocks[0]["attn.W_o"], p["attn.W_o"])


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("h.0.mlp.c_fc.bias"), "state is missing 'h.0.mlp.c_fc.bias'"),
    (lambda s: s.__setitem__("h.0.attn.c_attn.weight", np.zeros((12, 4))),
     r"h.0.attn.c_attn.weight must have shape \(4, 12\) \(\[in, out\], Conv1D layout\), got \(12, 4\)"),
    (lambda s: s.__setitem__("h.0.ln_1.bias", np.zeros(5)), r"h.0.ln_1.bias must have shape \(4,\)"),
    (lambda s: s.__setitem__("wpe.weight", np.zeros((6, 3))), r"wpe.weight must have shape \(n, 4\)"),
])
def test_bad_state_is_named(change, match):
    s = _state()
    change(s)
    with pytest.raises(ValueError, match=match):
        gpt2.from_gpt2_state(s, SMALL)


@pytest.mark.parametrize("field, value, match", [
    ("activation_function", "swish", "activation_function must be one of"),
    ("scale_attn_weights", False, "scale_attn_weights must be true"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx must be false"),
])
def test_unsupported_config_is_refused_by_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        gpt2.config_from_gpt2(dict(SMALL, **{field: value}))


@pytest.mark.parametrize("ids, match", [([], "non-empty"), ([0, 5], r"ids must lie in 0..4"),
                                        ([0] * 7, "at most 6 tokens"), ([0.5], "integer")])
def test_bad_ids_are_named(ids, match):
    model = gpt2.from_gpt2_state(_state(), SMALL)
    with pytest.raises(ValueError, match=match):
        model.embed(np.asarray(ids))
