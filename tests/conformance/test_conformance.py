"""Every scenario × every available backend/device/dtype, against the float64 reference (issue 3, DESIGN.md
"Backends and conformance"). Tolerances: ``tolerances.py``."""
from __future__ import annotations

import dataclasses
import functools

import pytest

from implicit_icl.backends import get_backend

from .scenarios import bad_inputs, compare, expected_for, long_scenarios, run, scenarios
from .suite import REFERENCE, check_bad_input, check_scenario, dtype_name, require_op
from .targets import targets
from .tolerances import FLOAT64_TARGET, tolerance

SCENARIOS = scenarios()
BAD = bad_inputs()
LONG = long_scenarios()


@functools.lru_cache(maxsize=None)
def backend_for(target):
    name, device, dtype = target
    return get_backend(name, device=device, dtype=dtype)


@pytest.mark.parametrize("target", targets())
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_matches_reference(target, sc):
    check_scenario(backend_for(target), sc)


@functools.lru_cache(maxsize=None)
def long_expected(i: int, target) -> dict:
    """The reference's outputs for ``LONG[i]`` on the inputs rounded for ``target`` (it re-runs every prefix:
    seconds, so once per dtype)."""
    return expected_for(backend_for(target), LONG[i], REFERENCE)


def _check_long(backend, target, i: int, **kwargs) -> None:
    """``check_scenario`` for ``LONG[i]`` with the cached expected outputs; ``kwargs`` go to the backend only."""
    sc = LONG[i]
    require_op(backend, sc.op)
    actual = run(backend, dataclasses.replace(sc, kwargs=dict(sc.kwargs, **kwargs)))
    compare(actual, long_expected(i, target), dtype_name(backend), sc.params)


@pytest.mark.parametrize("target", targets())
@pytest.mark.parametrize("i", range(len(LONG)), ids=[s.name for s in LONG])
def test_long_context_scenario_matches_reference(target, i):
    _check_long(backend_for(target), target, i)


@pytest.mark.parametrize("target", [t for t in targets() if t.values[0][0] == "torch"])
@pytest.mark.parametrize("slab", [1, 37, 256])
def test_torch_scan_is_the_same_across_slab_boundaries(target, slab):
    """The torch scan cut into slabs of ``slab`` context tokens (carrying the running max, the sums and the
    previous taps across slab boundaries) still equals the reference, through the long scenario's logit jumps."""
    _check_long(backend_for(target), target, 0, slab=slab)


@pytest.mark.parametrize("target", [t for t in targets() if t.values[0][0] == "torch"])
@pytest.mark.parametrize("elements", [600, 5000])
def test_torch_stack_pass_is_the_same_across_chunk_boundaries(target, elements):
    """The torch stack's prefix pass cut into chunks of about ``elements`` logits (2 or 8 query rows of 301 at a
    time, where the default takes all at once) still equals the reference on every device and dtype."""
    _check_long(backend_for(target), target, 1, elements=elements)


def test_the_issues_float64_target_follows_from_the_suite_tolerance():
    """Issue 3 asks torch float64 on the CPU to agree with the reference to 1e-12 relative on every scenario.
    ``check_close`` already bounds every float64 error by K·eps·scale = 1.4e-14·scale, which is stricter; this pins
    the implication, so that loosening K past the target fails here instead of dropping it silently."""
    assert tolerance("float64", 1.0) <= FLOAT64_TARGET


@pytest.mark.parametrize("target", targets(include_numpy=True))
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_like_reference(target, case):
    check_bad_input(backend_for(target), case)
