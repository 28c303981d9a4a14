"""implicit-icl reproduce: E1–E6 on a tiny setting of the same code path, the report's provenance, the pieces."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from implicit_icl.checkpoint import load_checkpoint
from implicit_icl.reference import BlockConfig, block_output, init_block, init_model, join_stack
from implicit_icl.reference.tasks import regression_prompts

torch = pytest.importorskip("torch", reason="reproduce needs the torch extra")

from implicit_icl.experiments import e2_convergence as E2  # noqa: E402
from implicit_icl.experiments import e3_finetuning as E3  # noqa: E402
from implicit_icl.experiments import e4_stack_identities as E4  # noqa: E402
from implicit_icl.experiments import e5_thought_patch as E5  # noqa: E402
from implicit_icl.experiments import e6_rnn_steps as E6  # noqa: E402
from implicit_icl.experiments import statistics as S  # noqa: E402
from implicit_icl.experiments.report import fmt, render  # noqa: E402
from implicit_icl.experiments.reproduce import reproduce  # noqa: E402

# The quick path with smaller numbers: short training, few prompts (seconds instead of a minute).
TINY = {"train": {"p1": dict(steps=40, eval_every=20, checkpoint_every=20, val_prompts=16, n_points=20),
                  "p2": dict(steps=30, eval_every=15, checkpoint_every=15, val_prompts=8, n_points=12)},
        "e2_prompts": 12, "e3_held_out": 12, "e4_prompts": 2, "e5_test_queries": 20}
FIGURES = ["e1_training.png", "e2_convergence.png", "e3_finetuning.png", "e4_identity.png", "e4_alignment.png",
           "e5_thought_patch.png", "e6_rnn_steps.png"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    report = reproduce("p1", out, quick=True, settings=TINY, progress=False, log=lambda m: None)
    return out, report


def test_reproduce_writes_every_figure_and_both_reports(quick_run):
    out, report = quick_run
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["figures"] == FIGURES
    assert set(on_disk["timings_s"]) >= {"E1 train p1", "E4 train p2", "E4 identities", "E5 thought patch",
                                         "E6 RNN contextual layer", "figures"}
    # report.md is generated from report.json as written.
    assert (out / "report.md").read_text() == render(on_disk)


def test_reproduce_results_state_the_papers_facts(quick_run):
    _, r = quick_run
    e1, e3, e4 = r["e1"], r["e3"], r["e4"]
    assert e1["agrees_f32"] and e1["agrees_f64"]
    assert e1["curves"]["step"] == [0, 20, 40]
    # E2/E3 study the bundled model under --quick; it learns in context.
    assert "bundled" in r["models"]["E2/E3/E5"]["description"] and r["models"]["E2/E3/E5"]["step"] == 4000
    assert e3["full_length_ratio_to_zero"] <= 0.1   # seeded: measured 0.057 on these 12 tasks
    assert e3["implicit_falls_with_i"]
    assert e3["identity_max_abs_diff"] < S.TOL_F64
    assert e3["loss"]["implicit"][0] == pytest.approx(e3["loss"]["sgd"][0], rel=1e-12)  # i = 0: both are W_0
    assert e3["sgd_lr"] in r["settings"]["sgd_lr_grid"]
    e2 = r["e2"]
    assert len(e2["trained"]["step_norm"]["median"]) == len(e2["untrained"]["step_norm"]["median"]) == 50
    assert e4["agrees_f64"] and e4["rank_sum_delta_W_set"] == [1] and e4["n_blocks"] == 3
    assert np.array(e4["alignment_prompt0"]).shape == (3, 13, 13)
    e5 = r["e5"]                                   # seeded: the patch fails at K = 1 and works from K = 2-3 on
    at = e5["mse_patch_to_context_at"]
    assert e5["K"] == list(E5.PATCH_K) and e5["n_prompts"] == 12 and e5["n_test"] == 20
    assert at["1"] > 10 * at["50"] and e5["mse_no_update_to_context"] > 100 * at["50"]
    assert e5["calibration_rank"] == 2             # plain block, no attention bias: a(x) = W_o W_v (ξ, 0)
    assert e5["levels_at_K"] <= 10 and e5["per_query_alignment_median"] < 0.9
    e6 = r["e6"]                                   # seeded: attention decays like 1/i, the RNN does not
    assert e6["attention"]["decays"] and not e6["rnn"]["decays"] and e6["agrees_f64"]
    assert e6["attention"]["step_norm_slope"] < -0.7 and abs(e6["rnn"]["step_norm_slope"]) < 0.3


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?")
# Labels that contain digits but are not measurements: experiment and paper names, section and figure numbers,
# dtypes, the token (x_j, 0), "1/i", the time-less parts of the command line.
LABELS = re.compile(r"\bE[1-5]\b|\bP[12]\b|§\d+(?:\.\d+)?(?:–\d+)?|Fig\. \d|float(?:32|64)|\(x_j, 0\)|1/i|p[12]\b"
                    r"|`[^`]*`")


def _leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    else:
        yield x


def test_every_number_in_report_md_is_a_value_of_report_json(quick_run):
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    allowed = {fmt(v) for v in _leaves(r) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    allowed |= {str(k) for v in _leaves_dicts(r) for k in v}           # table columns are JSON keys ("i = 25")
    allowed |= {m for v in _leaves(r) if isinstance(v, str) for m in NUMBER.findall(v)}  # numbers inside strings
    text = LABELS.sub(" ", (out / "report.md").read_text())
    stray = [n for n in NUMBER.findall(text) if n not in allowed and n.lstrip("-") not in allowed]
    assert not stray, f"numbers in report.md that are not values of report.json: {stray[:10]}"


def _leaves_dicts(x):
    if isinstance(x, dict):
        yield x
        for v in x.values():
            yield from _leaves_dicts(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves_dicts(v)


def test_render_changes_when_a_number_changes(quick_run):
    """The provenance test above would pass on a constant text; this one shows the numbers flow from the JSON."""
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    r["e1"]["max_abs_diff_f64"] = 1.2345e-13
    r["e3"]["loss_at"]["sgd"]["1"] = 0.98765
    md = render(r)
    assert "1.23e-13" in md and "0.988" in md


def test_report_claims_follow_the_numbers(quick_run):
    """The sentences of report.md that state a finding are conditioned on report.json: with the opposite numbers
    the report must not keep claiming overlap, decay, learning in context or a shared direction."""
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    md = render(r)
    assert "The curves overlap as P1 reports" in md and "It does here too" in md
    assert "The model learns in context" in md
    r["e1"]["agrees_f32"] = False
    r["e2"]["trained"]["decay_ratio"] = 1.5
    r["e3"].update(full_length_ratio_to_zero=0.8, implicit_falls_with_i=False, sgd_falls_with_i=False,
                   alignment_verdict="about zero")
    assert "One patch fitted on K =" in md and "The exact per-query updates differ" in md
    assert "nearly matches it" in md
    assert "Attention's steps decay and the RNN's do not" in md and "a property of averaging" in md
    r["e5"].update(patch_over_no_update=0.3, per_query_alignment_median=0.97, levels_at_K=50)
    r["e6"]["rnn"]["decays"] = True
    md = render(r)
    for claim in ("The curves overlap as P1 reports", "It does here too", "The model learns in context",
                  "both losses fall with i", "share a task-specific direction without", "keeps improving",
                  "One patch fitted on K =", "The exact per-query updates differ", "nearly matches it",
                  "Query dependence (THEORY §8.2) is real", "no single patch stands for the context",
                  "Attention's steps decay and the RNN's do not", "a property of averaging"):
        assert claim not in md, claim
    for honest in ("differ by more than the tolerance", "Here it does not decrease", "does NOT clearly learn",
                   "neither loss falls with i", "do not share a task-specific direction", "recovers only part",
                   "barely differ", "levels off later", "its fit, not query dependence",
                   "Both layers' steps decay here"):
        assert honest in md, honest


def test_e3_shared_direction_needs_the_alignment_above_its_null(quick_run):
    """A positive alignment no larger than the null (another task's SGD update) is not a shared direction."""
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    r["e3"].update(alignment_verdict="positive but far from 1", alignment_above_null=False)
    md = render(r)
    assert "do not share a task-specific direction" in md and "share a task-specific direction without" not in md
    r["e3"]["alignment_above_null"] = True
    assert "share a task-specific direction without" in render(r)


def test_e6_identity_sentence_follows_the_check(quick_run):
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    r["e6"]["rnn"]["decays"] = True
    text = render(r).split("## E6")[1]
    assert "The identity holds for the RNN just as well" in text and "a property of averaging" not in text
    r["e6"].update(agrees_f64=False, rnn_identity_max_abs_diff=0.3)
    text = render(r).split("## E6")[1]
    assert "identity check on the RNN FAILED" in text and "holds for the RNN" not in text


def test_e5_claims_cover_each_combination(quick_run):
    """Whether the per-query updates differ and whether one patch works are independent facts: each of the four
    combinations gets its own sentence, and none contradicts the other."""
    out, _ = quick_run
    base = json.loads((out / "report.json").read_text())
    cases = {(0.4, 1e-3): "nearly matches it", (0.97, 1e-3): "nearly one update here",
             (0.4, 0.3): "no single patch stands for the context", (0.97, 0.3): "its fit, not query dependence"}
    for (alignment, ratio), sentence in cases.items():
        r = json.loads(json.dumps(base))
        r["e5"].update(per_query_alignment_median=alignment, patch_over_no_update=ratio)
        e5_text = render(r).split("## E5")[1].split("## Timing")[0]
        assert sentence in e5_text, (alignment, ratio)
        assert ("barely differ" in e5_text) == (alignment > 0.9)
        assert ("reproduces the in-context predictions" in e5_text) == (ratio < 0.01)
        assert ("Query dependence (THEORY §8.2) is real" in e5_text) == (alignment < 0.9 and ratio < 0.01)


def test_thought_patch_of_one_query_is_its_implicit_update_for_every_kind():
    """The least-squares patch (ΔW = (A⁺U)ᵀ, Δb = mean Δb_k) of a single query is that query's own update, so it
    reproduces the in-context output for every block kind (biases and LayerNorms on): the orientation of the solve
    and the bias part are right. Two queries: the patch fits both to round-off (K ≤ d_model, generic a's)."""
    from implicit_icl.reference import KINDS, apply_update, implicit_update, taps
    from implicit_icl.reference.blocks import sequence

    for kind in KINDS:
        cfg = BlockConfig(d_model=4, d_mlp=12, n_heads=2, kind=kind, activation="gelu", attn_bias=True)
        params = init_block(cfg, 3, bias_std=0.3, ln_std=0.3)
        rng = np.random.default_rng(1)
        C, X = rng.standard_normal((6, 4)), rng.standard_normal((2, 4))
        tap = lambda Z: tuple(t[-1] for t in taps(params, cfg, Z))                    # noqa: E731
        a_C, r_C = zip(*(tap(sequence(C, x)) for x in X))
        a_x, r_x = zip(*(tap(x[None]) for x in X))
        a_C, r_C, a_x, r_x = map(np.array, (a_C, r_C, a_x, r_x))
        u = (a_C - a_x) @ params["mlp.W"].T
        dW, db = E5.thought_patch(a_x[:1], u[:1], (r_C - r_x)[:1])
        exact = implicit_update(params, cfg, C, X[0])
        np.testing.assert_allclose(dW, exact.delta_W, atol=1e-13)
        np.testing.assert_allclose(db, exact.delta_b, atol=1e-13)
        dW2, db2 = E5.thought_patch(a_x, u, r_C - r_x)
        patched = dict(params, **{"mlp.W": params["mlp.W"] + dW2})
        for k in range(2):                                     # ΔW fits both queries' pre-activations exactly
            np.testing.assert_allclose(patched["mlp.W"] @ a_x[k], params["mlp.W"] @ a_C[k], atol=1e-12)
        one = apply_update(params, exact)
        np.testing.assert_allclose(block_output(one, cfg, C[:0], X[0]), block_output(params, cfg, C, X[0]),
                                   atol=1e-12)


def test_rnn_contextual_layer_identity_and_prefix_taps():
    """The RNN's prefix taps equal running it on each prefix, and P1's identity holds for it (any contextual layer)."""
    p = E6.init_rnn(3, 5, 8, seed=0)
    rng = np.random.default_rng(0)
    C, x = rng.standard_normal((6, 3)), rng.standard_normal(3)
    taps = E6.prefix_taps(p, C, x)
    for i in range(7):
        h = np.zeros(5)
        for z in list(C[:i]) + [x]:
            h = np.tanh(p["rnn.W_h"] @ h + p["rnn.W_z"] @ z + p["rnn.b_h"])
        np.testing.assert_allclose(taps[i], p["rnn.W_o"] @ h + p["rnn.b_o"], atol=1e-14)
    assert np.max(np.abs(np.linalg.eigvals(p["rnn.W_h"]))) == pytest.approx(0.9)
    steps, err = E6.step_norms(p, C, x)
    assert steps.shape == (6,) and err < 1e-13 and np.all(steps > 0)


def test_levels_off_at_needs_every_larger_K_to_stay_close():
    assert S.levels_off_at({1: 0.5, 2: 0.0015, 3: 0.01, 50: 0.001}, 2.0) == 50      # K = 3 is worse again
    assert S.levels_off_at({1: 0.5, 2: 0.0015, 3: 0.0012, 50: 0.001}, 2.0) == 2
    assert S.levels_off_at({1: 0.5, 50: float("nan")}, 2.0) is None


def test_e5_needs_two_test_queries():
    cfg = BlockConfig(d_model=3, d_mlp=4)
    with pytest.raises(ValueError, match="n_test must be at least 2"):
        E5.patch_errors(init_block(cfg, 0), cfg, regression_prompts(1, 4, 2, seed=0), n_test=1, seed=0)


def test_sgd_step_matches_the_reference_gradient():
    """One online SGD step on mlp.W, checked against the hand-derived gradient of (ŷ − y)² in NumPy.

    For a plain ReLU block on a token alone: ŷ = W_out[-1]·relu(W a + b) + b_out[-1], so
    ∇_W = 2(ŷ − y) (W_out[-1] ⊙ 1[W a + b > 0]) aᵀ. float64 on both sides: agreement to 1e-12.
    """
    cfg = BlockConfig(d_model=3, d_mlp=16, n_heads=2, d_head=3, kind="plain")
    params = init_block(cfg, seed=5, bias_std=0.3)
    prompts = regression_prompts(4, 3, 2, seed=9)
    lr = 0.1
    pred, dW = E3.sgd_runs(params, cfg, prompts, lr)
    for r in range(4):
        W = params["mlp.W"].copy()
        for j in range(3):
            token = np.append(prompts.x[r, j], 0.0)
            a = params["attn.W_o"] @ (params["attn.W_v"] @ token)          # A([x]) = W_o W_v x (THEORY §10.7)
            pre = W @ a + params["mlp.b"]
            y_hat = params["mlp.W_out"][-1] @ np.maximum(pre, 0) + params["mlp.b_out"][-1]
            grad = 2 * (y_hat - prompts.y[r, j]) * np.outer(params["mlp.W_out"][-1] * (pre > 0), a)
            W = W - lr * grad
            np.testing.assert_allclose(dW[r, j + 1], W - params["mlp.W"], rtol=0, atol=1e-12)
        after = dict(params, **{"mlp.W": W})
        assert pred[r, 3] == pytest.approx(block_output(after, cfg, np.zeros((0, 3)), prompts.query[r])[-1], abs=1e-12)


def test_e3_null_and_learning_rate_sweep_match_an_independent_computation():
    """E3's new fields on a tiny case, recomputed task by task with plain loops: the alignment as
    vdot/(norm·norm) of the flattened matrices, the null pairing task r with task r − 1 (task 0 with the last),
    the loss at each mark as a mean of squares. SGD itself is checked against a hand gradient above."""
    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=3, kind="plain")
    params = init_block(cfg, seed=2, bias_std=0.3)
    prompts, held_out = regression_prompts(4, 6, 2, seed=3), regression_prompts(3, 6, 2, seed=4)
    grid = (0.01, 0.3)
    r = E3.finetuning(params, cfg, prompts, E2.trajectories(params, cfg, prompts), held_out, grid)
    trs = E2.trajectories(params, cfg, prompts)
    cos = lambda A, B: float(np.vdot(A, B) / (np.linalg.norm(A) * np.linalg.norm(B)))       # noqa: E731
    for lr in grid:
        pred, dW = E3.sgd_runs(params, cfg, prompts, lr)
        same = np.array([[cos(trs[t].delta_W(i), dW[t, i]) for i in range(1, 7)] for t in range(4)])
        null = np.array([[cos(trs[t].delta_W(i), dW[t - 1, i]) for i in range(1, 7)] for t in range(4)])
        row = r["sgd_lr_sweep"][f"{lr:g}"]
        assert row["alignment_median_mean"] == pytest.approx(np.mean(np.median(same, axis=0)), abs=1e-12)
        assert row["alignment_null_median_mean"] == pytest.approx(np.mean(np.median(null, axis=0)), abs=1e-12)
        for k, v in row["loss_at"].items():
            assert v == pytest.approx(np.mean([(pred[t, int(k)] - prompts.target[t]) ** 2 for t in range(4)]),
                                      rel=1e-12)
        assert row["held_out_score"] == r["sgd_lr_grid_scores"][f"{lr:g}"]
        if lr == r["sgd_lr"]:
            assert r["alignment_null_median_mean"] == row["alignment_null_median_mean"]
            assert r["alignment_null_at"]["6"] == pytest.approx(np.median(null[:, -1]), abs=1e-12)
            assert r["alignment_above_null"] == (row["alignment_median_mean"] - row["alignment_null_median_mean"]
                                                 > E3.NULL_MARGIN)
    assert list(r["sgd_lr_sweep"]) == ["0.01", "0.3"] and list(row["loss_at"]) == ["1", "5", "6"]


def test_e5_patch_errors_match_an_independent_computation():
    """E5's patch error, recomputed query by query with the NumPy reference (``block_output`` with the dense patch,
    not the batched torch head): the same calibration and test queries (E5's seeded stream), a residual block so
    that the mean Δb is exercised too. ``thought_patch`` itself is checked by hand in test_statistics.py."""
    from implicit_icl.reference import taps
    from implicit_icl.reference.blocks import sequence

    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=3, kind="residual", activation="gelu")
    params = init_block(cfg, seed=6, bias_std=0.3)
    prompts, K_grid, n_test, seed = regression_prompts(2, 4, 2, seed=5), (1, 2, 4), 3, 7
    r = E5.patch_errors(params, cfg, prompts, n_test, seed, K_grid=K_grid)
    rng = np.random.default_rng([seed, 5])
    patch_err, none_err = {K: [] for K in K_grid}, []
    for C in prompts.context:
        X = np.concatenate([rng.standard_normal((4 + n_test, 2)), np.zeros((4 + n_test, 1))], axis=1)
        a_C, r_C = map(np.array, zip(*(tuple(t[-1] for t in taps(params, cfg, sequence(C, x))) for x in X)))
        a_x, r_x = map(np.array, zip(*(tuple(t[0] for t in taps(params, cfg, x[None])) for x in X)))
        y_ctx = np.array([block_output(params, cfg, C, x)[-1] for x in X[4:]])
        y_none = np.array([block_output(params, cfg, C[:0], x)[-1] for x in X[4:]])
        none_err.append(np.mean((y_none - y_ctx) ** 2))
        for K in K_grid:
            dW, db = E5.thought_patch(a_x[:K], (a_C[:K] - a_x[:K]) @ params["mlp.W"].T, (r_C - r_x)[:K])
            patched = dict(params, **{"mlp.W": params["mlp.W"] + dW, "mlp.b_out": params["mlp.b_out"] + db})
            y = np.array([block_output(patched, cfg, C[:0], x)[-1] for x in X[4:]])
            patch_err[K].append(np.mean((y - y_ctx) ** 2))
    for K in K_grid:
        assert r["mse_patch_to_context_at"][str(K)] == pytest.approx(np.median(patch_err[K]), rel=1e-9, abs=1e-15)
    assert r["mse_no_update_to_context"] == pytest.approx(np.median(none_err), rel=1e-9)
    assert r["patch_over_no_update"] == pytest.approx(np.median(patch_err[4]) / np.median(none_err), rel=1e-9)


def test_e4_on_a_random_stack_meets_p2_identities():
    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=2, kind="pre-ln", activation="gelu")
    params = join_stack(init_model(cfg, 2, seed=1, bias_std=0.2, ln_std=0.2))
    r = E4.stack_identities(params, cfg, 2, regression_prompts(2, 6, 2, seed=3))
    assert r["agrees_f64"] and r["identity_error_overall"] < 1e-12 and r["composition_error_max"] < 1e-12
    assert r["rank_sum_delta_W_set"] == [1]
    align = np.array(r["alignment_prompt0"])
    np.testing.assert_allclose(np.diagonal(align, axis1=1, axis2=2), 1.0, atol=1e-12)   # THEORY §10.17
    np.testing.assert_allclose(align, np.swapaxes(align, 1, 2), atol=1e-12)


def test_e2_sees_the_generic_decay_in_two_random_blocks():
    """Two untrained blocks: the verdict must be 'the same rate' (THEORY §8.5: the decay is generic)."""
    cfg = BlockConfig(d_model=3, d_mlp=16, n_heads=2, d_head=4, kind="plain")
    prompts = regression_prompts(20, 30, 2, seed=2)
    a = E2.trajectories(init_block(cfg, seed=1), cfg, prompts)
    b = E2.trajectories(init_block(cfg, seed=2), cfg, prompts)
    r = E2.convergence(a, b)
    assert r["trained"]["step_norm_slope"] < -0.5 and r["untrained"]["step_norm_slope"] < -0.5
    assert r["generic"]["verdict"] == "at the same rate"


mats = arrays(np.float64, (4, 3), elements=st.floats(-10, 10, allow_subnormal=False))


@settings(max_examples=50, deadline=None)
@given(mats, mats, st.floats(0.1, 10))
def test_normalised_inner_product_is_a_cosine(A, B, c):
    v = S.normalised_inner(A, B)
    if not A.any() or not B.any():   # a zero matrix has no direction
        assert np.isnan(v)
        return
    assert -1 - 1e-12 <= v <= 1 + 1e-12
    assert v == pytest.approx(S.normalised_inner(c * A, B), abs=1e-9)
    assert v == pytest.approx(S.normalised_inner(B, A), abs=1e-12)
    if np.linalg.norm(A) > 1e-3:
        assert S.normalised_inner(A, A) == pytest.approx(1.0, abs=1e-12)


def test_cli_rejects_a_foreign_checkpoint_before_training(tmp_path):
    bad = tmp_path / "weights.npz"
    np.savez(bad, w=np.zeros(2))
    out = subprocess.run([sys.executable, "-m", "implicit_icl", "reproduce", "--quick", "--out", str(tmp_path / "o"),
                          "--checkpoint", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2                                          # a bad argument, as in walkthrough
    assert f"--checkpoint: checkpoint {bad}: no __meta__ record" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o" / "train_p1").exists()


def test_cli_rejects_a_negative_seed_by_name(tmp_path, capsys):
    from implicit_icl.cli import main

    assert main(["reproduce", "--quick", "--out", str(tmp_path / "o"), "--seed", "-1", "--no-progress"]) == 2
    assert "--seed must be from 0 to 2**64 - 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reproduce_p2_runs_e1_and_e4_on_the_same_stack(tmp_path):
    r = reproduce("p2", tmp_path, quick=True, settings=TINY, progress=False, log=lambda m: None)
    assert r["e2"] is None and r["e3"] is None
    assert r["models"]["E4"]["path"] == r["models"]["E1"]["path"]
    assert r["figures"] == ["e1_training.png", "e4_identity.png", "e4_alignment.png"]
    assert r["e1"]["agrees_f64"] and r["e4"]["agrees_f64"]
    md = (tmp_path / "report.md").read_text()
    assert "## E4" in md and "## E2" not in md


# ---- Regression tests for review findings: the Models table's prompts, --checkpoint's use and checks, threads.
# A smaller run than TINY for tests that only need the plumbing (seconds, most of it drawing the figures).
MICRO = {"train": {"p1": dict(steps=4, eval_every=2, checkpoint_every=2, val_prompts=4, n_points=6),
                   "p2": dict(steps=4, eval_every=2, checkpoint_every=2, val_prompts=4, n_points=6)},
         "e2_prompts": 6, "e3_held_out": 4, "e4_prompts": 1, "e5_test_queries": 4}


def _bare_stack(path, n_blocks=2):
    """A valid stack checkpoint as `save_checkpoint(path, params, cfg)` writes it: no preset, seed or step."""
    from implicit_icl.checkpoint import save_checkpoint

    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=2, kind="residual", activation="gelu")
    return save_checkpoint(path, join_stack(init_model(cfg, n_blocks, seed=1)), cfg)


def test_models_table_scores_every_model_on_the_same_prompts(quick_run):
    """Review: the quick run (64 prompts) and the bundled model (256) were scored on different prompts, so a
    300-step model looked better than the 4000-step one. Every row now uses E1's validation prompts."""
    out, r = quick_run
    common = r["settings"]["val_prompts"]
    p1 = r["settings"]["train"]["p1"]
    assert common == {"n_prompts": p1["val_prompts"], "n_points": p1["n_points"], "d": p1["d"],
                      "seed": p1["val_seed"]}
    rows = r["models"]
    assert {role: m["val_prompts"] for role, m in rows.items()} == {role: common for role in rows}
    zero = {m["val_loss_zero"] for m in rows.values()}
    assert len(zero) == 1 and zero == {r["e1"]["val_loss_zero"]}         # one baseline: the same prompts
    assert rows["E1"]["val_loss"] == pytest.approx(r["e1"]["final_val_loss"], rel=1e-12)  # E1's curve, same set
    bundled = rows["E2/E3/E5"]                                           # rescored, not its recorded 256-prompt loss
    assert bundled["val_loss"] != bundled["recorded_val_loss"]
    md = (out / "report.md").read_text()
    assert f"on the same {common['n_prompts']} validation prompts (N = {common['n_points']} examples" in md


def test_quick_settings_keep_the_presets_validation_prompts():
    """--quick trains on shorter runs but validates on the full presets' prompts, those the bundled model used."""
    from implicit_icl.experiments.presets import get_preset
    from implicit_icl.experiments.reproduce import SETTINGS
    from implicit_icl.experiments.study import validation_set

    for name in ("p1", "p2"):
        quick = get_preset(name).with_overrides(**SETTINGS["quick"]["train"][name])
        assert validation_set(quick) == validation_set(get_preset(name)) == validation_set(get_preset("p1"))


@pytest.fixture(scope="module")
def bare_stack_run(tmp_path_factory):
    """`reproduce --preset p1 --checkpoint <stack without a preset record>`, recording the torch thread count each
    experiment ran on (the caller's count is 2, so that a forgotten one-thread guard shows on any machine)."""
    out = tmp_path_factory.mktemp("bare_stack")
    stack = _bare_stack(out / "stack.npz")
    threads = {}

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            threads.setdefault(name, set()).add(torch.get_num_threads())
            return fn(*args, **kwargs)
        return wrapper

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        targets = {"trajectories": (E2, "trajectories"), "e3": (E3, "finetuning"), "e4": (E4, "stack_identities"),
                   "e5": (E5, "patch_errors"), "e6": (E6, "rnn_contrast")}
        for name, (module, attr) in targets.items():
            mp.setattr(module, attr, recording(name, getattr(module, attr)))
        torch.set_num_threads(2)
        try:
            report = reproduce("p1", out / "run", quick=True, checkpoint=stack, settings=MICRO, progress=False,
                               log=lambda m: None)
            after = torch.get_num_threads()
        finally:
            torch.set_num_threads(before)
    return stack, report, threads, after


def test_a_stack_checkpoint_without_a_preset_record_is_studied_in_e4(bare_stack_run):
    """Review: such a checkpoint crashed reproduce with KeyError 'preset' after E1–E3, E5, E6 had run. Its prompt
    length falls back to the p2 preset's N, as the p1 path does."""
    stack, r, _, _ = bare_stack_run
    assert r["models"]["E4"]["path"] == str(stack) and "--checkpoint" in r["models"]["E4"]["description"]
    assert r["e4"]["n_blocks"] == 2 and r["e4"]["agrees_f64"]
    assert r["e4"]["positions"] == MICRO["train"]["p2"]["n_points"] + 1
    assert r["models"]["E4"]["step"] is None and r["models"]["E4"]["val_loss"] is not None


def test_every_experiment_runs_on_one_torch_thread(bare_stack_run):
    """Review: E5 ran on torch's default thread count, 10× slower than on one on a 2-core machine."""
    _, _, threads, after = bare_stack_run
    assert set(threads) == {"trajectories", "e3", "e4", "e5", "e6"}
    assert all(seen == {1} for seen in threads.values()), threads
    assert after == 2                                                     # the caller's count is restored


def test_a_single_block_checkpoint_with_preset_p2_is_refused_before_anything_runs(tmp_path):
    """Review: with --preset p2 a --checkpoint was silently ignored. A block has no experiment there: refused."""
    from implicit_icl.checkpoint import CheckpointError, default_checkpoint_path

    with pytest.raises(CheckpointError, match=r"single block, but with `preset` p2 only E1 and E4 run"):
        reproduce("p2", tmp_path / "o", quick=True, checkpoint=default_checkpoint_path(), settings=MICRO,
                  progress=False, log=lambda m: None)
    assert not (tmp_path / "o").exists()


def test_a_stack_checkpoint_with_preset_p2_is_studied_in_e4(tmp_path):
    stack = _bare_stack(tmp_path / "stack.npz", n_blocks=1)
    r = reproduce("p2", tmp_path / "o", quick=True, checkpoint=stack, settings=MICRO, progress=False,
                  log=lambda m: None)
    assert r["models"]["E4"]["path"] == str(stack) and r["models"]["E1"]["path"] != str(stack)
    assert r["e4"]["n_blocks"] == 1


@pytest.mark.parametrize("meta, message", [
    ({"preset": "p2"}, "its meta 'preset' must be a record"),
    ({"preset": {"n_points": "50"}}, "its meta 'preset.n_points' must be a whole number >= 1, got '50'"),
    ({"seed": -1}, "its meta 'seed' must be a whole number from 0 to 2\\*\\*64 - 1, got -1"),
    ({"step": "4000"}, "its meta 'step' must be a whole number >= 0, got '4000'"),
    ({"preset": {"n_points": 0}}, "its meta 'preset.n_points' must be a whole number >= 1, got 0"),
])
def test_a_checkpoint_with_an_unusable_meta_record_is_refused_before_anything_runs(tmp_path, meta, message):
    from implicit_icl.checkpoint import CheckpointError, save_checkpoint

    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=2, kind="residual", activation="gelu")
    path = save_checkpoint(tmp_path / "stack.npz", join_stack(init_model(cfg, 2, seed=1)), cfg, **meta)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: {message}"):
        reproduce("p1", tmp_path / "o", quick=True, checkpoint=path, settings=MICRO, progress=False,
                  log=lambda m: None)
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_missing_checkpoint_without_creating_out(tmp_path, capsys):
    from implicit_icl.cli import main

    missing = tmp_path / "missing.npz"
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "o"), "--checkpoint", str(missing),
                 "--no-progress"]) == 2
    assert f"implicit-icl reproduce: error: --checkpoint: checkpoint {missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["block-with-p2", "bad-meta", "wrong-width"])
def test_cli_calls_every_unusable_checkpoint_a_bad_argument(tmp_path, capsys, case):
    """Not only a file that does not load: an unusable meta record, or a model no experiment can study with this
    --preset, is the argument's fault too (exit 2, one line naming --checkpoint), found before OUT is made. These
    used to pass the command line's check and fail inside reproduce (exit 1)."""
    from implicit_icl.checkpoint import default_checkpoint_path, save_checkpoint
    from implicit_icl.cli import main

    preset = "p1"
    if case == "block-with-p2":
        path, preset, says = default_checkpoint_path(), "p2", "a single block, but with --preset p2 only E1 and E4"
    elif case == "bad-meta":
        cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=2, d_head=2, kind="residual", activation="gelu")
        path = save_checkpoint(tmp_path / "stack.npz", join_stack(init_model(cfg, 2, seed=1)), cfg, step="4000")
        says = "its meta 'step' must be a whole number >= 0, got '4000'"
    else:
        cfg = BlockConfig(d_model=5, d_mlp=8, n_heads=1, kind="plain", activation="relu")
        path = save_checkpoint(tmp_path / "block.npz", init_block(cfg, seed=1), cfg)
        says = "d_model 5 does not fit the regression tokens"
    code = main(["reproduce", "--quick", "--preset", preset, "--out", str(tmp_path / "o"), "--checkpoint",
                 str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"implicit-icl reproduce: error: --checkpoint: checkpoint {path}: ") and says in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_report_text_fits_the_preset(quick_run):
    """With --preset p2 the report compares with P2's shapes, not with the p1 replication's recipe and loss."""
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    md = render(r)
    assert "8 heads × 4" in md and "replication ≈ 0.13 at N = 100" in md
    r["preset"] = "p2"
    md = render(r)
    assert "8 heads × 4" not in md and "replication ≈" not in md
    assert "P2's own code defaults to a larger stack" in md and "P2's trained losses are UNCONFIRMED" in md
    assert "3 `residual` blocks with 4 heads" in md


def test_e4_text_calls_both_identity_errors_round_off(quick_run):
    """Ours (~1e-15) and THEORY's ≤ 9e-16 are both float64 round-off; the text says so, or the failure if not."""
    out, _ = quick_run
    r = json.loads((out / "report.json").read_text())
    e4 = render(r).split("## E4")[1].split("## E5")[0]
    assert "are both float64 round-off, ours under the tolerance 1.00e-12" in e4
    r["e4"].update(agrees_f64=False, identity_error_overall=0.01)
    e4 = render(r).split("## E4")[1].split("## E5")[0]
    assert "both float64 round-off" not in e4 and "exceeds the tolerance" in e4


def test_a_training_folder_with_other_settings_is_named_without_resume_advice(tmp_path):
    """reproduce has no --val-prompts to match a folder made by another version's --quick: the message names the
    differing settings and where they may come from, not train's "resume with the recorded values"."""
    from implicit_icl.experiments.presets import get_preset
    from implicit_icl.experiments.study import train_or_resume
    from implicit_icl.checkpoint import CheckpointError

    small = dict(steps=4, eval_every=2, checkpoint_every=2, n_points=5)
    train_or_resume(get_preset("p1").with_overrides(val_prompts=4, **small), tmp_path, 0, False, lambda m: None)
    with pytest.raises(CheckpointError) as err:
        train_or_resume(get_preset("p1").with_overrides(val_prompts=8, **small), tmp_path, 0, False, lambda m: None)
    message = str(err.value)
    assert "recorded 4, given 8" in message and "older implicit-icl" in message and "use another `out`" in message
    assert "resume with" not in message
