"""Fuzz the public library (issue 17): every public function of the reference, and the torch backend where torch is
installed, given one generated bad value (a wrong type, a wrong shape, nan or inf, a huge or negative number, an odd
string, a bool for an int) raises a ``ValueError`` (a ``ZeroNormError`` is one) that names the argument, never
another exception, a silent result or a hang.

Every case keeps every other argument valid, so an accepted bad value shows up as a returned result (a failure).
The number of examples per strategy is IMPLICIT_ICL_FUZZ_EXAMPLES (default 15; a few seconds in all).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from implicit_icl import reference as ref
from implicit_icl.reference.tasks import regression_prompts

EXAMPLES = int(os.environ.get("IMPLICIT_ICL_FUZZ_EXAMPLES", "15"))
try:                             # imported once here, so that no case's time limit pays for torch's first import
    from implicit_icl.backends import get_backend
    TORCH = get_backend("torch", dtype="float64")
except ModuleNotFoundError:
    TORCH = None
fuzz = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

CFG = ref.BlockConfig(d_model=4, d_mlp=6, n_heads=2, kind="pre-ln", activation="gelu")
P = ref.init_block(CFG, 0, bias_std=0.1, ln_std=0.1)
C = np.random.default_rng(0).standard_normal((5, 4))
X = np.random.default_rng(1).standard_normal(4)

odd_text = st.text(max_size=8)
not_a_number = st.one_of(odd_text, st.none(), st.just([]), st.just({}), st.just(object()), st.just(1j))
bad_int = st.one_of(not_a_number, st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(max_value=0))
bad_float = st.one_of(not_a_number, st.booleans(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0,
                                                                    -1.0, -1e300]))


def _array_with(shape, value):
    a = np.ones(shape)
    a.flat[len(a.flat) // 2] = value
    return a


bad_vector = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf")]).map(lambda v: _array_with((4,), v)),
    st.integers(0, 9).filter(lambda k: k != 4).map(lambda k: np.ones(k)),     # wrong width
    st.just(np.ones((2, 4))), st.just(np.ones(4, dtype=bool)), st.just(np.ones(4, dtype=complex)),
    st.just(np.array(["a"] * 4)), st.just("abcd"), st.just(None), st.just([[1, 2], [3]]))
bad_context = st.one_of(
    st.sampled_from([float("nan"), float("inf")]).map(lambda v: _array_with((5, 4), v)),
    st.integers(1, 6).filter(lambda k: k != 4).map(lambda k: np.ones((5, k))),
    st.just(np.ones(4)), st.just(np.ones((2, 5, 4, 1))), st.just(np.ones((5, 4), dtype=bool)),
    st.just(np.ones((5, 4), dtype=complex)), st.just(None), st.just("context"))
bad_remove = st.one_of(st.just([5]), st.just([-1]), st.just([1, 1]), st.just([0.5]), st.just([[0, 1]]),
                       st.just(["a"]), st.integers(min_value=5).map(lambda k: [k]))


def refused(call, *names: str) -> None:
    """``call()`` must raise a ValueError whose message names one of ``names``."""
    with pytest.raises(ValueError) as info:
        call()
    assert any(n in str(info.value) for n in names), f"{info.value!r} names none of {names}"


@fuzz
@given(field=st.sampled_from(["d_model", "d_mlp", "n_heads"]), value=bad_int)
def test_block_config_counts(field, value):
    refused(lambda: ref.BlockConfig(**dict(dict(d_model=4, d_mlp=6, n_heads=2), **{field: value})), field)


@fuzz
@given(field=st.sampled_from(["causal", "attn_bias", "qk_norm"]), value=st.one_of(odd_text, st.integers(), st.none()))
def test_block_config_flags(field, value):
    refused(lambda: ref.BlockConfig(d_model=4, d_mlp=6, **{field: value}), field)


@fuzz
@given(field=st.sampled_from(["ln_eps", "rope_theta"]), value=bad_float)
def test_block_config_positive_numbers(field, value):
    if field == "rope_theta" and value is None:
        return                                                         # None: no rotary positions, a valid choice
    refused(lambda: ref.BlockConfig(d_model=4, d_mlp=6, n_heads=2, **{field: value}), field)


@fuzz
@given(field=st.sampled_from(["kind", "activation", "norm"]), value=odd_text)
def test_block_config_names(field, value):
    refused(lambda: ref.BlockConfig(d_model=4, d_mlp=6, **{field: value}), field)


@fuzz
@given(seed=st.one_of(st.integers(max_value=-1), st.floats(), odd_text, st.booleans()))
def test_init_block_seed(seed):
    refused(lambda: ref.init_block(CFG, seed), "seed")


@fuzz
@given(query=bad_vector)
def test_query(query):
    for op in (ref.implicit_update, ref.block_output, ref.trajectory):
        refused(lambda: op(P, CFG, C, query), "query")


@fuzz
@given(context=bad_context)
def test_context(context):
    for op in (ref.implicit_update, ref.block_output, ref.trajectory):
        refused(lambda: op(P, CFG, context, X), "context")


@fuzz
@given(remove=bad_remove)
def test_remove(remove):
    refused(lambda: ref.implicit_update(P, CFG, C, X, remove=remove), "remove")


@fuzz
@given(key=st.sampled_from(sorted(P)), value=st.one_of(bad_vector, st.just(np.ones((3, 3))), st.just("W")))
def test_params_values(key, value):
    v = np.asarray(value) if isinstance(value, np.ndarray) else None
    assume(v is None or v.shape != np.shape(P[key]) or v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)))
    refused(lambda: ref.block(dict(P, **{key: value}), CFG, C), key)


@fuzz
@given(key=odd_text.filter(lambda k: k not in ref.param_shapes(CFG, include_attn_bias=True)))
def test_params_unknown_keys(key):
    refused(lambda: ref.block(dict(P, **{key: np.ones(4)}), CFG, C), repr(key))


@fuzz
@given(query=st.one_of(odd_text.filter(lambda q: q not in ("own", "last")), st.none(), st.integers()))
def test_position_updates_query(query):
    refused(lambda: ref.position_updates(P, CFG, np.vstack([C, X]), query=query), "query")


@fuzz
@given(update=st.one_of(st.none(), odd_text, st.just(np.ones(6)), st.just({"u": 1})))
def test_apply_update(update):
    refused(lambda: ref.apply_update(P, update), "update")


@fuzz
@given(name=st.sampled_from(["n_prompts", "n_points", "d"]), value=bad_int)
def test_regression_prompts(name, value):
    if name == "n_points" and isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return                                                         # 0 examples is a valid prompt (the query)
    refused(lambda: regression_prompts(**dict(dict(n_prompts=2, n_points=3, d=2), **{name: value})), name)


def _batch_of_queries(q) -> bool:
    """(2, 4) float rows: a batch of two queries, which the torch backend takes (its leading batch dimensions)."""
    return isinstance(q, np.ndarray) and q.shape == (2, 4) and q.dtype == np.float64


@fuzz
@given(query=bad_vector.filter(lambda q: not _batch_of_queries(q)), context=st.one_of(st.none(), bad_context))
def test_torch_backend_refuses_what_the_reference_refuses(query, context):
    if TORCH is None:
        pytest.skip("the torch backend needs torch (pip install 'implicit-icl[torch]')")
    refused(lambda: TORCH.implicit_update(P, CFG, C, query), "query")
    if context is not None:
        refused(lambda: TORCH.trajectory(P, CFG, context, X), "context")
