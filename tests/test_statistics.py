"""Every statistic the report, README or ``explain`` prints, against a hand-computed answer on a small case; and the
known-bad variants of issue 19, each of which these checks must catch.

The checks are plain functions that take the statistic as an argument: the tests call them with the real function,
``test_known_bad_variants_are_caught`` with a mutant and expects the check to fail. Tolerances: the known answers are
closed forms evaluated in float64, so 1e-12 (a few hundred ulps) unless stated.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from implicit_icl.experiments import statistics as S
from implicit_icl.models import analysis, explanations
from implicit_icl.reference import BlockConfig, block, init_block, implicit_update, taps

TOL = 1e-12


# ------------------------------------------------------------------------------------------- known-answer checks
def check_alignment(normalised_inner) -> None:
    """⟨A, B⟩ = −1, ‖A‖ = √5, ‖B‖ = √2: the signed alignment is −1/√10; orthogonal matrices give 0; a matrix with
    itself (or a positive multiple) 1; a batch is handled matrix by matrix."""
    A = np.array([[1.0, 2.0], [0.0, 0.0]])
    B = np.array([[-1.0, 0.0], [0.0, 1.0]])
    assert normalised_inner(A, B) == pytest.approx(-1 / np.sqrt(10), abs=TOL)
    assert normalised_inner(A, np.array([[0.0, 0.0], [3.0, -1.0]])) == pytest.approx(0.0, abs=TOL)
    assert normalised_inner(A, 1e-200 * A) == pytest.approx(1.0, abs=TOL)     # no underflow at tiny scales
    batch = normalised_inner(np.stack([A, A]), np.stack([B, -B]))
    np.testing.assert_allclose(batch, [-1 / np.sqrt(10), 1 / np.sqrt(10)], atol=TOL)


def check_top_share(top_share) -> None:
    """Marginals 1, 2, 3, 4: the largest is 4 of a total 10, a share of 0.4; one token alone is 1."""
    assert top_share(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.4, abs=TOL)
    assert top_share(np.array([3.0, 1.0])) == pytest.approx(0.75, abs=TOL)
    assert top_share(np.array([0.0, 5.0, 0.0])) == pytest.approx(1.0, abs=TOL)


def check_slope(loglog_slope) -> None:
    """``y = 3/i`` has slope −1 in log-log exactly, ``y = 5 i^−2`` slope −2, a constant 0 (i = 5..49, as E2 fits)."""
    i = np.arange(5, 50)
    assert loglog_slope(i, 3.0 / i) == pytest.approx(-1.0, abs=1e-10)
    assert loglog_slope(i, 5.0 * i ** -2.0) == pytest.approx(-2.0, abs=1e-10)
    assert loglog_slope(i, np.full(i.shape, 0.7)) == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------------------------------- the tests
def test_alignment_is_the_signed_normalised_frobenius_product():
    check_alignment(S.normalised_inner)
    assert np.isnan(S.normalised_inner(np.zeros((2, 2)), np.eye(2)))             # a zero matrix has no direction
    assert np.isnan(S.normalised_inner(np.full((2, 2), np.inf), np.eye(2)))      # nor a diverged one


def test_top_share_is_the_largest_marginal_over_their_sum():
    check_top_share(explanations.top_share)
    assert np.isnan(explanations.top_share(np.zeros(3)))


def test_decay_slope_is_fitted_against_log_i():
    check_slope(S.loglog_slope)
    i = np.arange(0, 8)                         # i = 0 and non-positive or non-finite values are left out
    y = np.where(i > 0, 2.0 / np.maximum(i, 1), 7.0)
    y[3] = np.nan
    assert S.loglog_slope(i, y) == pytest.approx(-1.0, abs=1e-10)


def _trajectories(scale: float, n: int = 30, prompts: int = 3):
    """Stand-ins for ``trajectory`` results with step norm ``scale/i`` (``scale`` at i = 0)."""
    i = np.arange(n, dtype=float)
    step = scale / np.maximum(i, 1)
    rel = np.where(i > 0, 0.5 / np.maximum(i, 1), np.nan)
    return [SimpleNamespace(step_norm=step, relative_change=rel, delta_W_norm=np.full(n + 1, 2.0))
            for _ in range(prompts)]


def test_e2_reports_the_known_slope_decay_ratio_and_scale():
    from implicit_icl.experiments.e2_convergence import convergence

    r = convergence(_trajectories(2.0), _trajectories(0.5))
    for name in ("trained", "untrained"):
        assert r[name]["step_norm_slope"] == pytest.approx(-1.0, abs=1e-10)
        assert r[name]["relative_change_slope"] == pytest.approx(-1.0, abs=1e-10)
        assert r[name]["decay_ratio"] == pytest.approx(1 / 29, abs=TOL)         # (c/29) / (c/1)
    assert r["generic"]["scale_ratio"] == pytest.approx(4.0, abs=TOL)           # 2/1 over 0.5/1
    assert r["generic"]["verdict"] == "at the same rate" and r["generic"]["slope_gap"] == pytest.approx(0, abs=1e-10)
    assert r["trained"]["step_norm_at"]["10"] == pytest.approx(0.2, abs=TOL)


def test_null_pairing_pairs_every_task_with_the_previous_one():
    """Tasks 0, 1, 2 with updates E11, E12, E11 + E12: each with itself aligns at 1; the null pairs task r with
    task r − 1 (task 0 with task 2): cos(E11, E11+E12) = 1/√2, cos(E12, E11) = 0, cos(E11+E12, E12) = 1/√2."""
    E11, E12 = np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 0.0]])
    dW = np.stack([E11, E12, E11 + E12])[:, None]                               # (R, 1, 2, 2): one i per task
    np.testing.assert_allclose(S.normalised_inner(dW, dW), np.ones((3, 1)), atol=TOL)
    null = S.normalised_inner(dW, S.null_pairs(dW))
    np.testing.assert_allclose(null[:, 0], [1 / np.sqrt(2), 0.0, 1 / np.sqrt(2)], atol=TOL)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        S.null_pairs(dW[:1])


def test_mean_of_medians_and_loss_curve_by_hand():
    align = np.array([[0.1, 0.5], [0.3, np.nan], [0.2, 0.1]])                   # medians 0.2 and 0.3
    assert S.mean_of_medians(align) == pytest.approx(0.25, abs=TOL)
    assert np.isnan(S.mean_of_medians(np.full((2, 2), np.nan)))
    mean, sem = S.loss_curve(np.array([[0.0, 1.0], [2.0, 2.0]]), np.array([1.0, 2.0]))   # losses [[1, 0], [0, 0]]
    np.testing.assert_allclose(mean, [0.5, 0.0], atol=TOL)
    np.testing.assert_allclose(sem, [0.5 / np.sqrt(2), 0.0], atol=TOL)


def test_sgd_versus_implicit_gap_by_hand():
    """Two tasks, targets 1 and 2, i = 0..4: the losses are hand-computed means of squared errors."""
    from implicit_icl.experiments.e3_finetuning import _loss_fields

    target = np.array([1.0, 2.0])
    preds = {"implicit": np.array([[0, 0, 0.5, 0.8, 1], [0, 1, 1.5, 2, 2]]),   # (1, 1, .25, .04, 0), (4, 1, .25, 0, 0)
             "sgd": np.array([[0, 1, 1, 1, 0], [0, 0, 0, 1, 2.0]]),          # (1, 0, 0, 0, 1), (4, 4, 4, 1, 0)
             "least_squares": np.array([[0, 1, 1, 1, 1], [0, 2, 2, 2, 2.0]])}
    f = _loss_fields(preds, target)
    np.testing.assert_allclose(f["loss"]["implicit"], [2.5, 1.0, 0.25, 0.02, 0.0], atol=TOL)
    np.testing.assert_allclose(f["loss"]["sgd"], [2.5, 2.0, 2.0, 0.5, 0.5], atol=TOL)
    assert f["sgd_minus_implicit_at_n"] == pytest.approx(0.5, abs=TOL)
    assert f["comparison"] == "the implicit update's test loss is lower than SGD's"
    assert f["loss_zero"] == pytest.approx(2.5, abs=TOL) and f["full_length_ratio_to_zero"] == pytest.approx(0.0)
    assert f["implicit_falls_with_i"] and not f["sgd_falls_with_i"]            # SGD: 2 at i = n // 2 is not below 2
    assert f["loss_at"]["sgd"] == {"0": 2.5, "1": 2.0, "4": 0.5}


def test_thought_patch_by_hand():
    """ΔW a_k = u_k for K queries: with a = I the patch is Uᵀ; two queries with the same tap a = e1 but targets
    0 and 2 give their least-squares compromise 1 (and 0 on the unseen direction e2); Δb is the mean."""
    from implicit_icl.experiments.e5_thought_patch import thought_patch

    dW, db = thought_patch(np.eye(2), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), np.array([[1.0], [3.0]]))
    np.testing.assert_allclose(dW, [[1, 4], [2, 5], [3, 6]], atol=TOL)
    np.testing.assert_allclose(db, [2.0], atol=TOL)
    dW, _ = thought_patch(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0], [2.0]]), np.zeros((2, 1)))
    np.testing.assert_allclose(dW, [[1.0, 0.0]], atol=TOL)


def _uniform_block():
    """A bidirectional plain block whose attention is uniform (W_q = W_k = 0) and passes values through
    (W_v = W_o = I): A(Z)_i = mean(Z) at every i, and a token alone has A = itself."""
    cfg = BlockConfig(d_model=2, d_mlp=6, n_heads=1, d_head=2, kind="plain", activation="relu", causal=False)
    params = init_block(cfg, 4, bias_std=0.5)
    params.update({"attn.W_q": np.zeros((2, 2)), "attn.W_k": np.zeros((2, 2)),
                   "attn.W_v": np.eye(2), "attn.W_o": np.eye(2)})
    return params, cfg


def test_explain_ratios_by_hand():
    """Rows x = e1 (the query), c_1 = e1, c_2 = e2 through :func:`_uniform_block`. The query's ΔW = u e1ᵀ
    (‖a_x‖ = 1): on c_1 (tap e1, same set of keys) it gives the exact output, ratio 0; on c_2 (tap e2 ⟂ e1)
    ΔW e2 = 0, so the miss is W's own, ratio 1. Each row's own ΔW_j is exact for a plain block: ratio 0."""
    params, cfg = _uniform_block()
    H_in = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    H_out = block(params, cfg, H_in)
    upd = implicit_update(params, cfg, H_in[1:], H_in[0])
    assert np.allclose(upd.a, [1.0, 0.0]) and np.allclose(taps(params, cfg, H_in)[0], H_in.mean(0))
    r = analysis.transfer_ratios(params, cfg, upd, H_in, H_out, np.array([1, 2]))
    np.testing.assert_allclose(r["transfer_ratio"], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(r["own_ratio"], [0.0, 0.0], atol=1e-12)


def test_transfer_verdict_reads_the_gain_against_the_control():
    """gain = (1 − query)/(1 − own): 0.1/0.4 = 25 % (little carries over), 0.3/0.4 = 75 % (about as well)."""
    from implicit_icl.models.explain_text import transfer_verdict

    low = transfer_verdict(0.9, 0.6)
    assert "25% of what the own ΔW gains" in low and "belongs to its query" in low
    high = transfer_verdict(0.7, 0.6)
    assert "75% of what the own ΔW gains" in high and "about as well as their own" in high
    assert "no better than W alone" in transfer_verdict(1.03, 0.81)
    assert "says nothing about query dependence" in transfer_verdict(0.9, 1.1)


# ------------------------------------------------------------------------------------------- known-bad variants
def _abs_alignment(A, B):                        # |⟨A, B⟩| in the normalised alignment
    return np.abs(S.normalised_inner(A, B))


def _top_share_without_smallest(m):               # the smallest marginal dropped from the denominator
    m = np.asarray(m, dtype=float)
    return float(np.max(m) / (np.sum(m) - np.min(m)))


def _slope_log_i_plus_1(i, y):                    # the decay slope fitted against log(i + 1)
    i, y = np.asarray(i, dtype=float), np.asarray(y, dtype=float)
    ok = (i > 0) & np.isfinite(y) & (y > 0)
    return float(np.polyfit(np.log(i[ok] + 1), np.log(y[ok]), 1)[0])


@pytest.mark.parametrize("check, mutant", [(check_alignment, _abs_alignment),
                                           (check_top_share, _top_share_without_smallest),
                                           (check_slope, _slope_log_i_plus_1)],
                         ids=["abs-alignment", "top-share-drops-smallest", "slope-against-log-i-plus-1"])
def test_known_bad_variants_are_caught(check, mutant):
    """Issue 19's three mutants survived the suite before these checks; each must now fail its check."""
    with pytest.raises(AssertionError):
        check(mutant)


def test_known_bad_slope_is_caught_through_e2(monkeypatch):
    """The same mutant swapped into the module E2 calls: E2's reported slope leaves the known −1."""
    from implicit_icl.experiments import e2_convergence as E2
    from implicit_icl.experiments.e2_convergence import convergence

    monkeypatch.setattr(E2, "loglog_slope", _slope_log_i_plus_1)
    slope = convergence(_trajectories(2.0), _trajectories(0.5))["trained"]["step_norm_slope"]
    assert abs(slope + 1.0) > 0.05, slope
