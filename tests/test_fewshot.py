"""The bundled few-shot learner (issue 15 item 4): transformers loads ``implicit_icl/data/fewshot`` unchanged and
agrees with our torch forward; the model really learns in context; training is seeded and resumes bit-identically;
the tokenizer round-trips a prompt.

transformers computes RMSNorm and the rotary cos/sin in float32 even in a float64 model (``LlamaRMSNorm`` casts to
float32, ``LlamaRotaryEmbedding.forward`` forms its angles with ``.float()``); ours computes them in float64. The
1e-10 comparison therefore patches those two forwards with the same formulas in float64 (``float64_oracle`` of
``test_hf_families``, the one place that patch lives) and runs ``sdpa`` attention, which is float64 throughout on the
CPU; one comparison with the stock model is held to what float32 round-off explains.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from test_hf_families import float64_oracle  # noqa: E402  (tests/ is on sys.path under pytest)

from implicit_icl.experiments import fewshot_model, fewshot_task  # noqa: E402
from implicit_icl.experiments.fewshot_accuracy import bundled_folder, evaluate  # noqa: E402
from implicit_icl.experiments.presets import get_preset  # noqa: E402

FOLDER = bundled_folder()
CHANCE = 1 / fewshot_task.N_VALUES


def _prompts(k: int, n: int, seed: int) -> fewshot_task.Prompts:
    return fewshot_task.eval_prompts(k, n, np.random.default_rng(seed))


def _transformers_model(**kw):
    return transformers.LlamaForCausalLM.from_pretrained(FOLDER, dtype=torch.float64, local_files_only=True,
                                                         **kw).eval()


def test_bundled_folder_is_the_preset_and_small():
    files = sorted(p.name for p in FOLDER.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 1_000_000
    params, cfg = fewshot_model.load_folder(FOLDER)
    preset = get_preset("fewshot")
    assert cfg == preset.cfg and fewshot_model.n_blocks_of(params) == preset.n_blocks
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["model_type"] == "llama" and config["torch_dtype"] == "float32"
    meta = _safetensors(FOLDER / "model.safetensors")[1]                  # how it was trained, in its header
    assert meta["step"] == str(preset.steps) and "train --preset fewshot --seed 0 " in meta["trained_by"]


def test_transformers_logits_equal_our_torch_forward_in_float64():
    model = float64_oracle(_transformers_model(attn_implementation="sdpa"), get_preset("fewshot").cfg.rope_theta)
    params, cfg = fewshot_model.load_folder(FOLDER, dtype=torch.float64)
    ids = torch.as_tensor(_prompts(8, 16, seed=5).ids)                                   # (16, 17)
    with torch.no_grad():
        theirs = model(ids).logits
    ours = fewshot_model.logits(params, cfg, ids)
    scale = max(1.0, float(theirs.abs().max()))
    assert float((ours - theirs).abs().max()) < 1e-10 * scale


def test_stock_transformers_agrees_to_float32_round_off():
    """Unpatched (RMSNorm and rotary angles in float32): float32's eps 6e-8 times O(10) activations through two
    layers bounds the difference by 1e-5 of the logits' scale; that it is above 1e-12 shows what the patch fixes."""
    model = _transformers_model()
    params, cfg = fewshot_model.load_folder(FOLDER, dtype=torch.float64)
    ids = torch.as_tensor(_prompts(8, 16, seed=5).ids)
    with torch.no_grad():
        theirs = model(ids).logits
    diff = float((fewshot_model.logits(params, cfg, ids) - theirs).abs().max())
    assert 1e-12 < diff < 1e-5 * max(1.0, float(theirs.abs().max()))


def test_bundled_model_learns_in_context():
    """At k = 8 shown pairs the bundled model names the query's value far above chance; with the context removed
    (the same query key alone) it cannot beat chance, since the mapping is new in every prompt."""
    params, cfg = fewshot_model.load_folder(FOLDER, dtype=torch.float32)
    eight = evaluate(params, cfg, _prompts(8, 400, seed=11))
    assert eight["accuracy"] > 0.9
    assert eight["accuracy_alone"] < CHANCE + 0.08      # 400 prompts: 0.08 is over 6 standard errors (0.012)
    none = evaluate(params, cfg, _prompts(0, 400, seed=12))
    assert none["accuracy"] < CHANCE + 0.08


def test_the_tokenizer_round_trips_a_prompt():
    from implicit_icl.models.hf_files import read_tokenizer

    tok = read_tokenizer(FOLDER)
    text = "a 3 c 7 f 15 c"
    enc = tok.encode(text)
    assert enc.ids == [fewshot_task.VOCAB.index(w) for w in text.split()]
    assert tok.decode(enc.ids) == text == fewshot_task.prompt_text(enc.ids)
    assert tok.encode("a zebra").ids == [fewshot_task.KEY0, fewshot_task.VOCAB.index("[UNK]")]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"))
    assert fast(text).input_ids == enc.ids


def test_saving_then_loading_a_folder_is_the_identity(tmp_path):
    """``hf_state`` (our names → transformers') and ``models.hf``'s Llama reader are inverse."""
    cfg = get_preset("fewshot").cfg
    params = fewshot_model.init_params(cfg, 2, len(fewshot_task.VOCAB), seed=3)
    fewshot_model.save_folder(tmp_path, params, cfg, max_positions=40)
    back, back_cfg = fewshot_model.load_folder(tmp_path, dtype=torch.float32)
    assert back_cfg == cfg and sorted(back) == sorted(params)
    for k in params:
        assert torch.equal(back[k], params[k]), k


TINY = dict(n_points=6, batch_size=8, val_prompts=16, eval_every=5, checkpoint_every=5, steps=10)


def _train(out, **kw):
    from implicit_icl.experiments.fewshot_train import train

    return train(get_preset("fewshot").with_overrides(**TINY), out, progress=False, log=lambda m: None, **kw)


def test_training_is_seeded_and_resumes_bit_identically(tmp_path):
    full = _train(tmp_path / "full")
    part = _train(tmp_path / "part", stop_after=5)
    assert part.step == 5 and not (tmp_path / "part" / "model.safetensors").exists()
    resumed = _train(tmp_path / "part", resume=True)
    other = _train(tmp_path / "other", seed=1)
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k]), k
    assert not torch.equal(full.params["lm_head.W"], other.params["lm_head.W"])
    for name in ("metrics.jsonl", "config.json", "tokenizer.json"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "part" / name).read_bytes(), name
    # model.safetensors: the same tensors and header metadata (safetensors writes the metadata in hash order)
    a, b = (_safetensors(tmp_path / run / "model.safetensors") for run in ("full", "part"))
    assert a[1] == b[1] and a[1]["step"] == "10" and sorted(a[0]) == sorted(b[0])
    for name in a[0]:
        np.testing.assert_array_equal(a[0][name], b[0][name], err_msg=name)
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 5, 10]


def _safetensors(path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_resume_with_other_settings_is_refused(tmp_path):
    from implicit_icl.checkpoint import CheckpointError

    from implicit_icl.commands.train import interrupted_state

    _train(tmp_path / "run", stop_after=5)
    assert "(step 5) is kept" in interrupted_state(tmp_path / "run")          # what Ctrl-C prints
    with pytest.raises(CheckpointError, match="seed 0, not 1"):
        _train(tmp_path / "run", resume=True, seed=1)
    from implicit_icl.experiments.fewshot_train import train

    with pytest.raises(CheckpointError, match="`lr`: recorded"):
        train(get_preset("fewshot").with_overrides(**TINY, lr=1e-3), tmp_path / "run", resume=True,
              progress=False, log=lambda m: None)


def test_the_docs_table_is_the_bundled_model_s():
    """docs/fewshot.json (and the page rendered from it) is what ``bundled_table`` computes today: accuracies
    exactly (counts of 1000 greedy answers), losses to float32 round-off."""
    from pathlib import Path

    from implicit_icl.experiments.fewshot_accuracy import bundled_table

    recorded = json.loads((Path(__file__).resolve().parent.parent / "docs" / "fewshot.json").read_text())
    now = bundled_table()
    assert [r["k"] for r in now["rows"]] == [r["k"] for r in recorded["rows"]]
    for a, b in zip(now["rows"], recorded["rows"]):
        assert (a["accuracy"], a["accuracy_alone"]) == (b["accuracy"], b["accuracy_alone"]), a["k"]
        assert a["accuracy_untrained"] == b["accuracy_untrained"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4,
                                                                                                abs=1e-6)
        for key in ("accuracy", "accuracy_alone", "accuracy_untrained"):
            assert a[f"{key}_interval"] == pytest.approx(b[f"{key}_interval"], abs=1e-15)


def test_the_accuracy_intervals_are_wilson_score_intervals():
    """The table's 95 % intervals against SciPy's Wilson interval of a binomial proportion (an independent
    implementation), at the edges (0 and n successes) and inside, to 1e-12."""
    from scipy.stats import binomtest

    from implicit_icl.experiments.fewshot_accuracy import wilson_interval

    for k, n in ((0, 1000), (45, 1000), (1000, 1000), (3, 7), (500, 1000)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx([ci.low, ci.high], abs=1e-12), (k, n)


def test_the_untrained_twin_of_the_table_keeps_shapes_and_scales_not_weights():
    """The table's control: every array redrawn N(mean, std) of the trained one (seeded): same shapes and dtypes,
    means and spreads within sampling error of the trained arrays', no array equal to the trained one."""
    from implicit_icl.experiments.fewshot_accuracy import untrained_twin

    params, _ = fewshot_model.load_folder(FOLDER, dtype=torch.float32)
    twin = untrained_twin(params)
    assert twin.keys() == params.keys()
    for k, v in params.items():
        w = twin[k]
        assert w.shape == v.shape and w.dtype == v.dtype and not torch.equal(w, v), k
        if v.numel() >= 1000:                        # the sample std's relative error is about 1/√(2n) < 2.3 %
            assert float(w.std()) == pytest.approx(float(v.std()), rel=0.1), k
    assert all(torch.equal(a, b) for a, b in zip(untrained_twin(params).values(), twin.values()))   # seeded
