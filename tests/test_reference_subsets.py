"""``reference.subsets``: one masked attention pass per subset equals re-running the block on that subset.

Tolerance: ``identities.tol`` (1e-12 × (1 + scale)), as for every reference identity: both routes are float64 with
the same operations in a different order (one softmax row instead of the full T × T attention), ~1e-15 apart.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import implicit_icl.reference.subsets as subsets
from implicit_icl.identities import make_scenario, max_err, run_check, tol
from implicit_icl.reference import ACTIVATIONS, KINDS, BlockConfig, ZeroNormError, implicit_update, taps, trajectory
from implicit_icl.reference.blocks import sequence
from implicit_icl.reference.subsets import marginal_updates, prefix_trajectory, query_taps, subset_updates

TRAJECTORY_FIELDS = ["a", "delta", "u", "delta_b", "delta_W_norm", "step_norm", "grad_u", "loss", "grad_norm",
                     "pred_context", "pred_update"]


@st.composite
def scenarios(draw):
    kind = draw(st.sampled_from(KINDS))
    cfg = BlockConfig(d_model=draw(st.integers(2, 7)), d_mlp=draw(st.integers(1, 12)),
                      n_heads=draw(st.sampled_from([1, 2, 4])), d_head=draw(st.integers(1, 3)), kind=kind,
                      activation=draw(st.sampled_from(ACTIVATIONS)), causal=draw(st.booleans()),
                      attn_bias=draw(st.booleans()))
    return make_scenario(cfg, n=draw(st.integers(0, 25)), seed=draw(st.integers(0, 2**16)))


@given(s=scenarios(), data=st.data())
def test_query_taps_equal_the_reruns_for_random_subsets(s, data):
    n = s.context.shape[0]
    rows = data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=5))
    keep = np.array(rows, dtype=bool).reshape(len(rows), n)
    a, r = query_taps(s.params, s.cfg, s.context, s.query, keep)
    for k in range(keep.shape[0]):
        want_a, want_r = (t[-1] for t in taps(s.params, s.cfg, sequence(s.context[keep[k]], s.query)))
        assert max_err(a[k], want_a) <= tol(want_a) and max_err(r[k], want_r) <= tol(want_r)


@given(s=scenarios())
def test_prefix_trajectory_is_the_reference_trajectory(s):
    fast, slow = prefix_trajectory(s.params, s.cfg, s.context, s.query), trajectory(s.params, s.cfg, s.context,
                                                                                  s.query)
    for name in TRAJECTORY_FIELDS:
        got, want = getattr(fast, name), getattr(slow, name)
        assert got.shape == want.shape, name
        assert max_err(got, want) <= tol(want), name
    assert fast.h == pytest.approx(slow.h, rel=1e-12)
    np.testing.assert_array_equal(np.isnan(fast.relative_change), np.isnan(slow.relative_change))


@given(s=scenarios())
def test_marginal_updates_are_the_leave_one_out_updates(s):
    loo = marginal_updates(s.params, s.cfg, s.context, s.query)
    assert loo.u.shape == (s.context.shape[0], s.cfg.d_in)
    for j in range(s.context.shape[0]):
        want = implicit_update(s.params, s.cfg, s.context, s.query, remove=[j])
        for name in ("u", "a", "delta_b"):
            assert max_err(getattr(loo[j], name), getattr(want, name)) <= tol(getattr(want, name)), (j, name)


@pytest.mark.parametrize("kind", KINDS)
def test_subset_updates_follow_thm_2_2_and_the_verify_check(kind):
    s = make_scenario(BlockConfig(d_model=6, d_mlp=10, n_heads=2, kind=kind, activation="gelu"), n=15, seed=4)
    keep = np.ones((2, 15), dtype=bool)
    keep[0, s.remove] = False
    keep[1, :] = False                                                  # remove all: the corollary Y = C
    ups = subset_updates(s.params, s.cfg, s.context, s.query, keep)
    for k, remove in enumerate([s.remove, np.arange(15)]):
        want = implicit_update(s.params, s.cfg, s.context, s.query, remove=remove)
        assert max_err(ups.u[k], want.u) <= tol(want.u)
    assert run_check("subsets: one pass = re-runs", s)["ok"]


def test_extreme_logits_neither_overflow_nor_lose_the_small_weights():
    """Logits of order ±1e4: each subset's softmax subtracts its own maximum, so a subset without the dominant
    token still averages the others (no 0/0), as the re-run does."""
    cfg = BlockConfig(d_model=4, d_mlp=6, n_heads=1, kind="plain", activation="relu")
    s = make_scenario(cfg, n=12, seed=5)
    params = dict(s.params, **{"attn.W_q": s.params["attn.W_q"] * 300.0, "attn.W_k": s.params["attn.W_k"] * 300.0})
    logits = (params["attn.W_q"] @ s.query) @ (params["attn.W_k"] @ s.context.T) / np.sqrt(cfg.head_dim)
    assert np.abs(logits).max() > 1e3                                  # the regime the test is about
    loo = marginal_updates(params, cfg, s.context, s.query)
    tr = prefix_trajectory(params, cfg, s.context, s.query)
    assert np.all(np.isfinite(loo.u)) and np.all(np.isfinite(tr.u))
    for j in range(12):
        want = implicit_update(params, cfg, s.context, s.query, remove=[j])
        assert max_err(loo.u[j], want.u) <= tol(want.u)
    assert max_err(tr.u, trajectory(params, cfg, s.context, s.query).u) <= tol(tr.u)


def test_memory_is_bounded_by_chunking_the_subsets(monkeypatch):
    """A chunk smaller than one subset's logits still gives the same taps (the loop over chunks is exercised)."""
    s = make_scenario(BlockConfig(d_model=6, d_mlp=8, n_heads=2, kind="pre-ln"), n=30, seed=6)
    keep = np.random.default_rng(0).random((17, 30)) < 0.5
    whole = query_taps(s.params, s.cfg, s.context, s.query, keep)
    monkeypatch.setattr(subsets, "CHUNK_ENTRIES", 1)
    chunked = query_taps(s.params, s.cfg, s.context, s.query, keep)
    for w, c in zip(whole, chunked):
        assert max_err(w, c) <= tol(w)


@pytest.mark.parametrize("keep, match", [
    (np.ones((2, 4), dtype=bool), r"keep must be a boolean array of shape \(K, 5\)"),
    (np.ones((2, 5)), "keep must be a boolean array"),
    (np.ones(5, dtype=bool), "keep must be a boolean array"),
])
def test_bad_keep_is_named(keep, match):
    s = make_scenario(BlockConfig(d_model=3, d_mlp=4), n=5, seed=0)
    with pytest.raises(ValueError, match=match):
        query_taps(s.params, s.cfg, s.context, s.query, keep)


def test_bad_context_and_zero_query_raise_like_the_reference():
    s = make_scenario(BlockConfig(d_model=3, d_mlp=4, kind="plain"), n=5, seed=0)
    with pytest.raises(ValueError, match="context must have shape"):
        marginal_updates(s.params, s.cfg, s.context[:, :2], s.query)
    zero = dict(s.params, **{"attn.W_v": np.zeros_like(s.params["attn.W_v"])})   # A ≡ 0: a = 0, ΔW undefined
    with pytest.raises(ZeroNormError):
        prefix_trajectory(zero, s.cfg, s.context, s.query)
    with pytest.raises(ZeroNormError):
        marginal_updates(zero, s.cfg, s.context, s.query)


def test_a_mask_that_drops_the_query_from_its_own_attention_is_caught(monkeypatch):
    """Mutation: if the query did not attend to itself, the check against the re-runs must fail by far."""
    s = make_scenario(BlockConfig(d_model=6, d_mlp=8, n_heads=2, kind="residual"), n=10, seed=7)
    assert run_check("subsets: one pass = re-runs", s)["ok"]
    right = subsets.with_query

    def without_self(keep):                          # the query skips itself whenever it has any context
        mask = right(keep)
        mask[:, -1] = ~keep.any(axis=1)
        return mask

    monkeypatch.setattr(subsets, "with_query", without_self)
    row = run_check("subsets: one pass = re-runs", s)
    assert not row["ok"] and row["max_abs_err"] > 1e3 * row["tol"], row
