"""Every scenario × every available backend/device/dtype, against the float64 reference (issue 3, DESIGN.md
"Backends and conformance"). Tolerances: ``tolerances.py``."""
from __future__ import annotations

import functools

import pytest

from implicit_icl.backends import get_backend

from .scenarios import bad_inputs, scenarios
from .suite import check_bad_input, check_scenario
from .targets import targets
from .tolerances import FLOAT64_TARGET

SCENARIOS = scenarios()
BAD = bad_inputs()


@functools.lru_cache(maxsize=None)
def backend_for(target):
    name, device, dtype = target
    return get_backend(name, device=device, dtype=dtype)


@pytest.mark.parametrize("target", targets())
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_matches_reference(target, sc):
    backend = backend_for(target)
    errors = check_scenario(backend, sc)
    if target[0] == "torch" and target[2] == "float64":
        worst = max(errors.values())
        assert worst <= FLOAT64_TARGET, f"{sc.name}: relative error {worst:.2e} > {FLOAT64_TARGET} ({errors})"


@pytest.mark.parametrize("target", targets(include_numpy=True))
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_like_reference(target, case):
    check_bad_input(backend_for(target), case)
