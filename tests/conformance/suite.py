"""The checks, as functions of a backend object: used by the parametrized tests and by any third party
(``check_backend(my_backend)`` runs every scenario and every bad input)."""
from __future__ import annotations

import pytest

from implicit_icl.backends import CORE
from implicit_icl.backends.numpy_backend import NumpyBackend

from .scenarios import Scenario, bad_inputs, call, compare, expected_for, long_scenarios, run, scenarios
from .tolerances import EPS

REFERENCE = NumpyBackend()


def dtype_name(backend) -> str:
    name = str(backend.dtype).removeprefix("torch.")
    if name not in EPS:
        raise ValueError(f"backend.dtype must be one of {sorted(EPS)} for the conformance suite, got {name!r}")
    return name


def offers(backend, op: str) -> bool:
    """Whether ``backend`` is to be checked on ``op``: every core method (a missing one fails), the theorem
    (``"identity"``, built from core methods), and an extension such as ``model_trajectory`` only if present."""
    return op == "identity" or op in CORE or hasattr(backend, op)


def require_op(backend, op: str) -> None:
    """Skip an extension the backend lacks; fail a missing core method (get_backend refuses such a backend, a
    hand-made object gets here)."""
    if not offers(backend, op):
        pytest.skip(f"backend {backend.name!r} has no {op!r} (an optional extension of the core API)")
    if op != "identity" and not hasattr(backend, op):
        raise AssertionError(f"backend {backend.name!r} has no {op!r}, a method of the core API")


def check_scenario(backend, sc: Scenario) -> dict[str, float]:
    """Run ``sc`` through ``backend`` and compare with the reference on the same (rounded) inputs."""
    require_op(backend, sc.op)
    actual = run(backend, sc)
    expected = expected_for(backend, sc, REFERENCE)
    return compare(actual, expected, dtype_name(backend), sc.params)


def check_bad_input(backend, case) -> None:
    """The backend raises the reference's error type, with a message naming the argument."""
    name, op, cfg, params, inputs, kwargs, err_type, word = case
    require_op(backend, op)
    with pytest.raises(Exception) as ref_err:
        call(REFERENCE, op, cfg, params, inputs, kwargs)
    assert type(ref_err.value) is err_type, f"the reference raised {type(ref_err.value).__name__} for {name}"
    assert word in str(ref_err.value), f"reference message for {name} lacks {word!r}: {ref_err.value}"
    with pytest.raises(Exception) as got:
        call(backend, op, cfg, params, inputs, kwargs)
    assert type(got.value) is err_type, (
        f"{name}: {backend!r} raised {type(got.value).__name__}({got.value}), the reference {err_type.__name__}")
    assert word in str(got.value), f"{name}: {backend!r}'s message does not name {word!r}: {got.value}"


def check_backend(backend) -> dict[str, dict[str, float]]:
    """Every scenario and every bad input through ``backend``; returns the relative errors per scenario."""
    errors = {sc.name: check_scenario(backend, sc) for sc in scenarios() + long_scenarios()
              if offers(backend, sc.op)}
    for case in bad_inputs():
        if offers(backend, case[1]):
            check_bad_input(backend, case)
    return errors
