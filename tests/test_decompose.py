"""The few-shot decomposition and transfer (``models.decompose``, ``explain --model/--decompose``; issue 15 item 5).

A tiny random Llama (gated blocks) and a tiny random GPT-NeoX (parallel blocks) are built with transformers in
float64 and saved with ``save_pretrained`` (no network), with the few-shot task's word-level tokenizer. Every
statistic is checked against an independent computation: the pieces (ΔW only, Δb only, one layer) against
transformers' own forward with its weights patched by hand and Δb added by a hook; KL, probability and rank by
scipy; the fitted patch by its defining equations.
"""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
scipy_special = pytest.importorskip("scipy.special")

from test_hf_families import float64_oracle, randomise  # noqa: E402

from implicit_icl.cli import main  # noqa: E402
from implicit_icl.experiments import fewshot_task  # noqa: E402
from implicit_icl.models import decompose as D  # noqa: E402
from implicit_icl.models import hf  # noqa: E402
from implicit_icl.models.bundled import fewshot_dir, load_model  # noqa: E402
from implicit_icl.reference.update import reading_parts  # noqa: E402

T = transformers
PROMPT = "a 3 c 7 f 1 h 12 c"          # key → value pairs, then the query "c" (answer "7")
SMALL = dict(vocab_size=len(fewshot_task.VOCAB), hidden_size=16, num_hidden_layers=2, bos_token_id=None,
             eos_token_id=None, pad_token_id=None)
BUILD = {"llama": lambda: (T.LlamaConfig(intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                                         **SMALL), T.LlamaForCausalLM),
         "gpt_neox": lambda: (T.GPTNeoXConfig(intermediate_size=24, num_attention_heads=2, **SMALL),
                              T.GPTNeoXForCausalLM)}
TOL = 1e-10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``family → (folder, our model, transformers model patched to float64 throughout)``."""
    out = {}
    for family, build in BUILD.items():
        torch.manual_seed(0)
        config, cls = build()
        model = cls._from_config(config, attn_implementation="sdpa", dtype=torch.float64).eval()
        randomise(model, seed=3)
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder, safe_serialization=True)
        fewshot_task.tokenizer().save(str(folder / "tokenizer.json"))
        out[family] = folder, hf.load(folder), float64_oracle(model, 10000.0)
    return out


def _ids(model, text=PROMPT):
    return model.tokenize(text)[0]


def _transformers_alone(tmodel, family, query_id, updates, which):
    """transformers' next-token logits of the query token alone, ``which[ℓ]`` ∈ {None, "W", "b", "both"} saying
    which part of layer ℓ's update goes in: ``W_gate``/``W_up`` (or NeoX's ``dense_h_to_4h``) patched by
    ``u_k aᵀ/‖a‖²`` formed here, ``Δb`` added to the layer's output by a forward hook."""
    m = copy.deepcopy(tmodel)
    layers = m.model.layers if family == "llama" else m.gpt_neox.layers
    hooks = []
    with torch.no_grad():
        for l, (layer, up, w) in enumerate(zip(layers, updates, which)):
            if w in ("W", "both"):
                a = up.a / (up.a @ up.a)
                if family == "llama":
                    parts = reading_parts(up, _cfg_of(layer))
                    layer.mlp.gate_proj.weight += torch.as_tensor(np.outer(parts["W_gate"], a))
                    layer.mlp.up_proj.weight += torch.as_tensor(np.outer(parts["W_up"], a))
                else:
                    layer.mlp.dense_h_to_4h.weight += torch.as_tensor(np.outer(up.u, a))
            if w in ("b", "both"):
                db = torch.as_tensor(up.delta_b)
                hooks.append(layer.register_forward_hook(
                    lambda mod, i, o, db=db: (o[0] + db,) + tuple(o[1:]) if isinstance(o, tuple) else o + db))
        try:
            logits = m(torch.tensor([[int(query_id)]])).logits[0, -1].numpy()
        finally:
            for h in hooks:
                h.remove()
    return logits


def _cfg_of(layer):
    class C:                                   # reading_parts reads kind and d_mlp only
        kind = "gated"
        d_mlp = layer.mlp.gate_proj.weight.shape[0]
    return C


def _kl_scipy(p_logits, q_logits):
    return float(np.sum(scipy_special.rel_entr(scipy_special.softmax(p_logits), scipy_special.softmax(q_logits))))


@pytest.mark.parametrize("family", list(BUILD))
def test_every_update_reproduces_the_prompt_and_each_piece_matches_transformers(tiny, family):
    folder, ours, tmodel = tiny[family]
    ids = _ids(ours)
    dec = D.decompose(ours, ids)
    from implicit_icl.reference import model_updates
    updates = model_updates(list(ours.blocks), list(ours.cfgs), ours.embed(ids))
    with torch.no_grad():
        want_ctx = tmodel(torch.tensor([ids.tolist()])).logits[0, -1].numpy()
    scale = max(1.0, float(np.abs(want_ctx).max()))
    np.testing.assert_allclose(dec.reference, want_ctx, rtol=0, atol=TOL * scale)
    assert abs(dec.read("all")["kl"]) <= TOL                        # the identity: KL = round-off
    L = len(updates)
    cases = {"all": ["both"] * L, "none": [None] * L, "delta_W": ["W"] * L, "delta_b": ["b"] * L}
    cases |= {l: [("both" if k == l else None) for k in range(L)] for l in range(L)}
    for name, which in cases.items():
        got = dec.per_layer[name] if isinstance(name, int) else dec.variants[name]
        want = _transformers_alone(tmodel, family, ids[-1], updates, which)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL * scale, err_msg=f"{family} {name}")
        read = dec.read_layer(name) if isinstance(name, int) else dec.read(name)
        assert read["kl"] == pytest.approx(_kl_scipy(dec.reference, want), abs=1e-9)
        q, top = scipy_special.softmax(want), int(np.argmax(want_ctx))
        assert read["p_top"] == pytest.approx(q[top], abs=1e-10)
        assert read["rank_top"] == 1 + int(np.flatnonzero(np.argsort(-q) == top)[0])
    share = 1 - _kl_scipy(dec.reference, dec.variants["delta_W"]) / _kl_scipy(dec.reference, dec.variants["none"])
    assert dec.share("delta_W") == pytest.approx(share, abs=1e-9)
    if family == "gpt_neox":                     # parallel: ΔW = 0 exactly, ΔW-only is no update, Δb-only is exact
        assert dec.delta_W_zero and np.array_equal(dec.variants["delta_W"], dec.variants["none"])
        assert abs(dec.read("delta_b")["kl"]) <= TOL
    else:
        assert not dec.delta_W_zero and dec.read("delta_W")["kl"] > 1e-6


def test_transfer_own_patch_and_summary(tiny):
    _, ours, _ = tiny["llama"]
    ids = _ids(ours)
    context, queries = ids[:-1], [int(ids[-1]), int(ids[0]), int(ids[4]), int(ids[6])]      # c, a, f, h
    targets = D.induction_targets(context, queries)
    assert [fewshot_task.VOCAB[t] for t in targets] == ["7", "3", "1", "12"]
    tr = D.transfer(ours, context, queries, targets, Ks=(1, 2, 3))
    Q = len(queries)
    for t in range(Q):
        assert abs(D.kl_divergence(tr.reference[t], tr.own[t])) <= TOL          # its own updates: exact
        np.testing.assert_allclose(tr.patch[1][t], tr.cross[(t + 1) % Q][t], rtol=0, atol=1e-10)  # K=1: rank 1
    pairs = [_kl_scipy(tr.reference[t], tr.cross[s][t]) for s in range(Q) for t in range(Q) if s != t]
    summary = tr.summary()
    assert summary["transfer"]["kl"] == pytest.approx(np.mean(pairs), abs=1e-9) and summary["transfer"]["n"] == 12
    own = [abs(_kl_scipy(tr.reference[t], tr.own[t])) for t in range(Q)]        # the identity on every query
    assert summary["identity_max_kl"] == pytest.approx(max(own), abs=1e-15) and max(own) <= TOL
    correct = np.mean([np.argmax(tr.patch[3][t]) == targets[t] for t in range(Q)])
    assert summary["patch_K3"]["correct"] == pytest.approx(correct)
    assert summary["with_context"]["correct"] == pytest.approx(
        np.mean([np.argmax(tr.reference[t]) == targets[t] for t in range(Q)]))


def test_fit_patch_solves_its_equations_with_minimum_norm(tiny):
    _, ours, _ = tiny["llama"]
    ids = _ids(ours)
    ups = [D.with_context(ours, np.append(ids[:-1], q))[1] for q in ids[[0, 2, 4]]]
    for l, (dW, db) in enumerate(D.fit_patch(ups)):
        a = np.stack([u[l].a for u in ups])                                     # (3, D), D = 16 > 3
        np.testing.assert_allclose(a @ dW.T, np.stack([u[l].u for u in ups]), rtol=0, atol=1e-10)
        P = a.T @ np.linalg.pinv(a.T)                                           # projector onto span(a_k)
        np.testing.assert_allclose(dW @ P, dW, rtol=0, atol=1e-10)              # rows in span(a): minimum norm
        np.testing.assert_allclose(db, np.mean([u[l].delta_b for u in ups], axis=0), rtol=0, atol=1e-14)


def test_untrained_twin_keeps_shapes_and_config_not_weights(tiny):
    _, ours, _ = tiny["llama"]
    twin, again = D.untrained_twin(ours, seed=4), D.untrained_twin(ours, seed=4)
    assert twin.cfgs == ours.cfgs
    for b, t, t2 in zip(ours.blocks, twin.blocks, again.blocks):
        assert b.keys() == t.keys()
        for k in b:
            assert t[k].shape == b[k].shape and np.array_equal(t[k], t2[k])
            if np.std(b[k]) == 0:                     # an absent bias (zeros) stays itself: N(0, 0)
                assert np.array_equal(t[k], b[k])
            else:
                assert not np.allclose(t[k], b[k])
                assert np.std(t[k]) == pytest.approx(np.std(b[k]), rel=0.5)      # the same scale
    assert twin.lm_head.shape == ours.lm_head.shape and not np.allclose(twin.lm_head, ours.lm_head)
    assert not np.allclose(twin.parts.tokens, ours.parts.tokens)
    assert not np.array_equal(D.untrained_twin(ours, seed=5).blocks[0]["mlp.W"], twin.blocks[0]["mlp.W"])


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_explain_any_folder_every_layer_and_parallel_said(tiny, capsys):
    assert main(["explain", "--model", str(tiny["llama"][0]), PROMPT]) == 0
    out = capsys.readouterr().out
    assert "every layer · query token 8 'c'" in out and "[ok]" in out
    assert main(["explain", "--model", str(tiny["gpt_neox"][0]), PROMPT, "--layer", "1", "--no-prefix"]) == 0
    out = capsys.readouterr().out
    assert "ΔW = 0 exactly" in out and "the whole effect of the context is Δb" in out


def test_cli_decompose_report(tiny, tmp_path, capsys):
    folder = tiny["gpt_neox"][0]
    assert main(["explain", "--model", str(folder), "--decompose", PROMPT, "--report", str(tmp_path / "r"),
                 "--queries", "a f"]) == 0
    out = capsys.readouterr().out
    assert "only the ΔWs" in out and "ΔW = 0 exactly in every layer" in out and "patch fitted on K = 1" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["ok"] and report["query_tokens"] == ["c", "a", "f"]
    dec = D.decompose(hf.load(folder), _ids(hf.load(folder)))
    got = report["prompt"]["trained"]["decomposition"]
    assert got["variants"]["delta_b"]["kl"] == pytest.approx(dec.read("delta_b")["kl"], abs=1e-15)
    assert "untrained" in report["prompt"] and "transfer" in report["prompt"]["untrained"]
    assert "## Few-shot decomposition and transfer" in (tmp_path / "r" / "report.md").read_text()


def _copy_with(src, dst, **edit):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text()) | edit
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("case, named", [
    ("missing", "is not a folder"), ("mamba", "model_type 'mamba' is not supported"),
    ("queries-alone", "--queries and --report go with --decompose"),
])
def test_cli_bad_model_is_one_line_exit_2(tiny, tmp_path, capsys, case, named):
    folder = {"missing": tmp_path / "nope",
              "mamba": lambda: _copy_with(tiny["llama"][0], tmp_path / "m", model_type="mamba"),
              "queries-alone": tiny["llama"][0]}[case]
    folder = folder() if callable(folder) else folder
    argv = ["explain", "--model", str(folder), PROMPT] + (["--queries", "a"] if case == "queries-alone" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and err.startswith("implicit-icl explain: "), err


# ------------------------------------------------------------------------------------- the bundled model


def test_bundled_fewshot_decomposes_exactly_and_answers():
    if not (fewshot_dir() / "config.json").is_file():
        pytest.skip("the bundled few-shot model is not in this tree (implicit-icl train --preset fewshot)")
    model = load_model("fewshot")
    prompt = "a 3 c 7 f 1 h 12 b 9 k 0 m 5 d 2 c"
    dec = D.decompose(model, _ids(model, prompt), target=fewshot_task.VOCAB.index("7"))
    assert abs(dec.read("all")["kl"]) <= TOL and dec.read("all")["correct"]        # with context it answers "7"
    json.dumps(dec.to_dict())


def test_walkthrough_on_a_folder_says_parallel_and_checks_round_off(tiny, tmp_path, capsys):
    pytest.importorskip("textual")
    from implicit_icl.tui.data import text_data

    data = text_data(str(tiny["gpt_neox"][0]), PROMPT)
    assert data.layer == 1 and data.n_layers == 2 and data.n == 8                # the last layer, 8 context tokens
    assert np.all(data.trajectory.delta_W_norm == 0) and "ΔW = 0 exactly" in data.notes[0]
    llama = text_data(str(tiny["llama"][0]), PROMPT, layer=0)
    assert llama.notes == () and llama.trajectory.delta_W_norm[-1] > 0
    assert max(llama.output_error(i) for i in range(llama.n + 1)) < 1e-12 * (1 + llama.output_norms(llama.n)[0])
    out = tmp_path / "w.txt"
    assert main(["walkthrough", "--model", str(tiny["gpt_neox"][0]), PROMPT, "--export", str(out)]) == 0
    assert "ΔW = 0 exactly" in out.read_text()


def test_a_query_without_an_answer_is_left_out_of_the_accuracy_not_a_crash(tiny):
    """A query whose key the context never shows has no answer: it is left out of the accuracy (``n_correct``
    counts the scored ones) and kept in every other mean; before, the summary raised ``KeyError: 'correct'``
    whenever some queries had an answer and others did not."""
    _, ours, _ = tiny["llama"]
    ids = _ids(ours)
    unseen = _ids(ours, "k")[0]                                         # never in PROMPT
    context, queries = ids[:-1], [int(ids[-1]), int(unseen), int(ids[0])]
    targets = D.induction_targets(context, queries)
    assert targets[1] is None and None not in (targets[0], targets[2])
    tr = D.transfer(ours, context, queries, targets, Ks=(1,))
    summary = tr.summary()
    scored = [(s, t) for s in range(3) for t in range(3) if s != t and targets[t] is not None]
    assert summary["transfer"]["n"] == 6 and summary["transfer"]["n_correct"] == len(scored) == 4
    assert summary["transfer"]["correct"] == pytest.approx(
        np.mean([np.argmax(tr.cross[s][t]) == targets[t] for s, t in scored]))
    assert summary["transfer"]["kl"] == pytest.approx(np.mean(
        [_kl_scipy(tr.reference[t], tr.cross[s][t]) for s in range(3) for t in range(3) if s != t]), abs=1e-9)


def test_a_share_is_not_given_where_the_context_barely_moves_the_prediction(tiny):
    """``share`` is the ratio of two KLs: where the context moves the prediction by less than ``SHARE_FLOOR`` nats
    it is ``None`` (null in JSON, "n/a" in the text), not a number made of round-off."""
    _, ours, _ = tiny["llama"]
    dec = D.decompose(ours, _ids(ours))
    assert dec.read("none")["kl"] >= D.SHARE_FLOOR and dec.share("delta_W") == pytest.approx(
        1 - dec.read("delta_W")["kl"] / dec.read("none")["kl"])
    still = D.Decomposition(ids=dec.ids, reference=dec.variants["none"] + 1e-4 * np.arange(dec.reference.size),
                            variants=dec.variants, per_layer=dec.per_layer, delta_W_norms=dec.delta_W_norms,
                            delta_b_norms=dec.delta_b_norms, delta_W_zero=False)
    assert 0 < still.read("none")["kl"] < D.SHARE_FLOOR and still.share("delta_W") is None
    assert json.loads(json.dumps(still.to_dict(), allow_nan=False))["share_delta_W"] is None


def test_the_means_over_prompts_carry_bootstrap_intervals_and_the_largest_identity_error(tiny):
    """``over_prompts``: each mean with its 95 % bootstrap interval over prompts, recomputed here from each prompt's
    own figures (``one_prompt``, prompt i's untrained twin drawn with seed i) with ``corpus.bootstrap_ci``; the
    identity is the largest full-update KL of any prompt, not a mean (where errors of both signs could cancel)."""
    from implicit_icl.models.corpus import bootstrap_ci
    from implicit_icl.models.decompose_report import one_prompt, over_prompts

    _, ours, _ = tiny["llama"]
    prompts = [(_ids(ours, text), None) for text in (PROMPT, "a 3 c 7 f 1 h 12 a", "h 1 f 3 a 12 f", "c 7 a 3 c")]
    got = over_prompts(ours, prompts)
    runs = [one_prompt(ours, ids, None, seed=i) for i, (ids, _) in enumerate(prompts)]    # a twin per prompt
    for name in ("trained", "untrained"):
        decs = [r[name]["decomposition"] for r in runs]
        shares = [d["share_delta_W"] for d in decs if d["share_delta_W"] is not None]
        assert got[name]["decomposition"]["share"]["delta_W"] == pytest.approx(np.mean(shares))
        assert got[name]["intervals"]["share"]["delta_W"] == pytest.approx(list(bootstrap_ci(shares)[1:]))
        kls = [d["variants"]["none"]["kl"] for d in decs]
        assert got[name]["intervals"]["decomposition"]["none"]["kl"] == pytest.approx(list(bootstrap_ci(kls)[1:]))
    assert got["twin_seeds"] == [0, 3]
    assert got["identity_max_kl"] == max(abs(r[m]["decomposition"]["variants"]["all"]["kl"]) for r in runs
                                         for m in ("trained", "untrained"))


def test_cli_decompose_a_query_the_context_never_shows(capsys):
    """The bundled few-shot model on a prompt whose query key is not among the shown pairs: the command reports
    (its transfer queries mix answered and unanswered ones), exit 0, and says the means are with intervals."""
    if not (fewshot_dir() / "config.json").is_file():
        pytest.skip("the bundled few-shot model is not in this install")
    assert main(["explain", "--model", "fewshot", "--decompose", "a 3 c 7 f", "--prompts", "3"]) == 0
    out = capsys.readouterr().out
    assert "95 % bootstrap intervals over the 3 prompts" in out and "the largest KL over the prompts" in out
    assert "own updates), trained and untrained, is" in out
