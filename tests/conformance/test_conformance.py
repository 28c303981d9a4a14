"""Every scenario × every available backend/device/dtype, against the float64 reference (issue 3, DESIGN.md
"Backends and conformance"). Tolerances: ``tolerances.py``."""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings

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


#: the compiled scan's scenarios: one per distinct block shape of the scan (classic pre- and post-norm, rotary with
#: grouped-query heads, partial rotary in a parallel block, soft-capped logits with post norms) and the long one,
#: whose logit jumps make the compiled step flag slabs for the eager rescue. Each compiles two graphs (the norms, and
#: the per-prefix vectors when read) in ~10 s on two cores; IMPLICIT_ICL_COMPILED=all runs every trajectory scenario
COMPILED_NAMES = {"trajectory/pre-ln-gelu-h2-bias", "trajectory/post-ln-gelu-h2-bias", "trajectory/llama-gqa-rotary",
                  "trajectory/neox-partial-rotary", "trajectory/gemma2-softcap-post-norms"}
COMPILED_MODE = os.environ.get("IMPLICIT_ICL_COMPILED", "some")   # "all", "some" or "none" (a run that repeats
#: the suite for another reason: the CPU rehearsal of scripts/gpu_check.sh, whose compiled cases this run has)


def _compiled(names, ops, extra=()) -> list:
    """The scenarios of ``ops`` (and ``extra``) whose compiled path the suite checks, as pytest params: ``names``
    by default, all of them with ``IMPLICIT_ICL_COMPILED=all``; with ``=none`` one param (per target) skipped as "not
    selected"
    (what scripts/gpu_check_summary.py counts as deselected on purpose, not as a skipped case)."""
    if COMPILED_MODE not in ("all", "some", "none"):
        raise ValueError(f"IMPLICIT_ICL_COMPILED must be all, some or none, got {COMPILED_MODE!r}")
    if COMPILED_MODE == "none":
        skip = pytest.mark.skip(reason="not selected: IMPLICIT_ICL_COMPILED=none")
        return [pytest.param(None, id="none", marks=skip)]
    chosen = [s for s in SCENARIOS if s.op in ops and (COMPILED_MODE == "all" or s.name in names)]
    return [pytest.param(s, id=s.name) for s in chosen + list(extra)]


COMPILED = _compiled(COMPILED_NAMES, ("trajectory",), LONG[:1])


def _compiled_targets() -> list:
    """The torch float32 targets (the fast path's dtype), skipped where ``torch.compile`` cannot run."""
    out = []
    for t in targets():
        name, device, dtype = t.values[0]
        if name != "torch" or dtype != "float32":
            continue
        if not t.marks:                                  # torch is here (without it the target is skipped already)
            from implicit_icl.backends.torch_compile import compile_unavailable
            if why := compile_unavailable(device):
                t = pytest.param(t.values[0], id=t.id, marks=pytest.mark.skip(reason=why))
        out.append(t)
    return out


def test_the_compiled_scenarios_named_exist():
    """A renamed scenario must not drop out of the compiled checks silently."""
    names = {s.name for s in SCENARIOS}
    assert COMPILED_NAMES <= names and COMPILED_CALL_NAMES <= names


@pytest.mark.parametrize("target", _compiled_targets())
@pytest.mark.parametrize("sc", COMPILED)
def test_torch_compiled_scan_matches_reference(target, sc):
    """The compiled scan (``trajectory(..., compile=True)``) cut into slabs of 2 (37 for the long scenario), so that
    full slabs take the compiled step and the tail the eager one, equals the reference within the same tolerances as
    every other path; the long scenario's logit jumps go through the flagged-slab rescue."""
    from implicit_icl.backends.torch_scan import SLABS
    backend = backend_for(target)
    slab = 37 if sc in LONG else 2
    kept = SLABS["compiled"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")     # a failed compile is a failure here
        actual = run(backend, dataclasses.replace(sc, kwargs=dict(sc.kwargs, slab=slab, compile=True)))
    if sc.inputs["context"].shape[-2] >= slab:                               # a full slab: the compiled step's
        assert SLABS["compiled"] > kept, "no slab kept the compiled numbers: this checked the eager path only"
    expected = long_expected(0, target) if sc in LONG else expected_for(backend, sc, REFERENCE)
    compare(actual, expected, dtype_name(backend), sc.params)


#: the compiled block calls' scenarios (``compile=True``: ``block``, ``position_updates``, the stack's calls): the
#: classic kinds, causal and not, rotary with grouped-query heads, partial rotary in a parallel block, a sliding
#: window and soft-capped logits (the explicit softmax), each query convention, and two stacks. Each compiles one or
#: two graphs (~5 s each on two cores); IMPLICIT_ICL_COMPILED=all runs every scenario of these ops
COMPILED_CALL_NAMES = {
    "position_updates-own/llama-gqa-rotary", "position_updates-own/pre-ln-gelu-h2-bias",
    "position_updates-last/post-ln-gelu-h2-bias-noncausal", "position_updates-own/gemma-offset-window",
    "position_updates-last/neox-partial-rotary", "model_position_updates/gemma2-softcap-post-norms",
    "model_forward/post-ln"}
COMPILED_CALLS = _compiled(COMPILED_CALL_NAMES, ("block", "position_updates", "model_position_updates",
                                                 "model_forward"))


@functools.lru_cache(maxsize=None)
def compiled_backend_for(target):
    name, device, dtype = target
    return get_backend(name, device=device, dtype=dtype, compile=True)


@pytest.mark.parametrize("target", _compiled_targets())
@pytest.mark.parametrize("sc", COMPILED_CALLS)
def test_torch_compiled_calls_match_reference(target, sc):
    """``block``, ``position_updates`` and the stack's calls under ``torch.compile`` (``torch_compile``) equal the
    reference within the same tolerances as every other path, and really ran compiled (no compile failure fell
    back to the eager code: that would have checked the eager path only)."""
    from implicit_icl.bench.common import calls, ran_compiled
    before = calls()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")     # a failed compile is a failure here
        check_scenario(compiled_backend_for(target), sc)
    assert ran_compiled(before)[0] == "compiled"           # every call compiled: none fell back to eager code
