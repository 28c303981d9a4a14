"""Every [VERIFIED] fact of THEORY.md §10 (items 1–11, 14–18, 20, 21) for every block kind, to float64 round-off.

The facts themselves are written once in ``implicit_icl.identities`` (also used by ``implicit-icl verify``); each
returns ``(error, tolerance)`` with tolerance ``1e-12 × (1 + scale)`` (justified in that module's docstring).
``test_reference_mutation.py`` proves these checks fail when the update is computed wrongly.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from implicit_icl.identities import CHECKS, MUST_EXCEED, make_scenario, run_check
from implicit_icl.reference import ACTIVATIONS, KINDS, BlockConfig

SHAPES = [
    dict(d_model=5, d_mlp=20, n_heads=1, activation="relu", causal=True, attn_bias=False),
    dict(d_model=8, d_mlp=12, n_heads=4, activation="gelu", causal=False, attn_bias=True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("check", list(CHECKS))
def test_fact_holds(kind, shape, check):
    s = make_scenario(BlockConfig(kind=kind, **SHAPES[shape]), n=9, seed=shape)
    row = run_check(check, s)
    assert row["ok"], f"{check} on {s.label}: error {row['max_abs_err']:.3e} vs tol {row['tol']:.1e}"


# --- property tests over random shapes: d_model = 1, one head, many heads, contexts of length 1 … 1000 ---------

FAST_CHECKS = ["thm2.2 remove subset Y", "corollary Y=C", "rank(ΔW)=1", "‖ΔW‖_F=‖ΔW‖_2=‖u‖/‖a‖",
               "minimum-norm (lstsq) + null space", "pre-activations equal", "every position, last token (P2)",
               "stack composition (3 blocks, ours)"]


@st.composite
def block_configs(draw):
    kind = draw(st.sampled_from(KINDS))
    # LayerNorm of one feature is constant, so LN kinds need d_model >= 2 for the context to matter at all
    n_heads = draw(st.sampled_from([1, 2, 4, 8]))
    d_head = draw(st.integers(1, 4))
    d_model = draw(st.integers(2 if kind in ("pre-ln", "post-ln") else 1, 9))
    return BlockConfig(d_model=d_model, d_mlp=draw(st.integers(1, 24)), n_heads=n_heads, d_head=d_head, kind=kind,
                       activation=draw(st.sampled_from(ACTIVATIONS)), causal=draw(st.booleans()),
                       attn_bias=draw(st.booleans()))


@given(cfg=block_configs(), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_identities_property(cfg, n, seed):
    s = make_scenario(cfg, n, seed)
    for check in FAST_CHECKS:
        row = run_check(check, s)
        assert row["ok"], f"{check} on {cfg} n={n} seed={seed}: {row['max_abs_err']:.3e} > {row['tol']:.1e}"


@pytest.mark.parametrize("kind", KINDS)
def test_long_context_1000(kind):
    """A context of 1000 tokens: the identities still hold to the same relative tolerance."""
    s = make_scenario(BlockConfig(d_model=6, d_mlp=16, n_heads=2, kind=kind, activation="gelu"), n=1000, seed=3)
    for check in ["thm2.2 remove subset Y", "corollary Y=C", "every position, last token (P2)", "rank(ΔW)=1"]:
        row = run_check(check, s)
        assert row["ok"], f"{check}: {row['max_abs_err']:.3e} > {row['tol']:.1e}"


def test_d_model_one_single_head():
    s = make_scenario(BlockConfig(d_model=1, d_mlp=3, n_heads=1, kind="residual"), n=1, seed=0)
    for check in CHECKS:
        assert run_check(check, s)["ok"], check


def test_query_dependence_is_a_real_gap():
    """x's update applied to another query x′ is off by far more than round-off (THEORY §10.21)."""
    s = make_scenario(BlockConfig(d_model=5, d_mlp=20, kind="plain"), n=30, seed=0)
    row = run_check("query dependence (err>tol)", s)
    assert "query dependence (err>tol)" in MUST_EXCEED
    assert row["max_abs_err"] > 1e3 * row["tol"]
