"""The golden fixtures: the reference still produces them, and every backend reproduces them from the files alone
(no reference code in the loop). For float32/bfloat16 the stored outputs come from float64 inputs, so the
backend's error here also holds the rounding of the inputs to its dtype; the same ``K·eps·scale`` bound covers it
because these small blocks are well conditioned (a bad formula is still off by order 1·scale)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from implicit_icl.backends import get_backend

from .golden import ROOT, VERSION, files, load
from .scenarios import compare, run, scenarios
from .suite import REFERENCE, require_op
from .targets import targets

FILES = files()


def test_fixtures_exist_and_are_small():
    assert ROOT.name == f"v{VERSION}"
    assert len(FILES) >= 100, f"expected the golden fixtures in {ROOT}; run tests/conformance/make_golden.py"
    assert sum(f.stat().st_size for f in FILES) < 1_500_000      # 0.93 MB for the five classic kinds, 0.27 MB modern


def test_fixtures_are_the_current_scenarios():
    """One fixture per scenario, with the scenario's inputs: a scenario added or changed without rerunning
    ``make_golden.py`` would otherwise never reach the golden check."""
    stored = {sc.name: sc for sc in (load(f)[0] for f in FILES)}
    current = {sc.name: sc for sc in scenarios()}
    assert set(stored) == set(current), f"regenerate the fixtures: {sorted(set(stored) ^ set(current))}"
    for name, sc in current.items():
        for k, v in sc.inputs.items():
            assert np.array_equal(np.asarray(v, dtype=np.float64), stored[name].inputs[k]), f"{name}: input {k}"


@functools.lru_cache(maxsize=None)
def _backend(target):
    return get_backend(target[0], device=target[1], dtype=target[2])


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_reference_reproduces_golden(path):
    sc, outputs = load(path)
    compare(run(REFERENCE, sc), outputs, "float64", sc.params)


@pytest.mark.parametrize("target", targets())
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_backend_reproduces_golden(target, path):
    sc, outputs = load(path)
    backend = _backend(target)
    require_op(backend, sc.op)
    compare(run(backend, sc), outputs, str(backend.dtype).removeprefix("torch."), sc.params)


def test_golden_detects_a_changed_output(tmp_path):
    """A fixture whose stored output is perturbed by 1e-9 relative must fail the float64 comparison."""
    sc, outputs = load(FILES[0])
    key = next(iter(outputs))
    bad = dict(outputs)
    bad[key] = outputs[key] + 1e-9 * max(1.0, float(np.max(np.abs(outputs[key]))))
    with pytest.raises(AssertionError):
        compare(run(REFERENCE, sc), bad, "float64", sc.params)
