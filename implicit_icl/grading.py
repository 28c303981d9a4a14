"""Grading machinery for the course exercises in ``exercises/`` (graded by pytest or by ``implicit-icl exercises``).

An exercise is a folder ``exercises/NN_name/`` holding

- ``exercise.py``: the student's file (a stub of functions that ``raise NotImplementedError`` until solved),
- ``solution.py``: a reference solution, ``mistake.py``: a solution with one deliberate, common mistake,
- ``test_grade_NN.py``: the grader, plain functions ``test_*(student)`` that compare the student's functions
  with the NumPy reference ``implicit_icl.reference`` (the oracle), shape checks first and values after.

Which file is graded: ``exercise.py`` by default; ``solution`` or ``mistake`` or any path through the pytest options
``--solution`` / ``--mistake`` / ``--file PATH``, the environment variable ``IMPLICIT_ICL_EXERCISE`` (``solution``,
``mistake`` or a path), or the CLI's ``implicit-icl exercises check N [--solution] [--file PATH]``.

The graders need neither pytest nor torch: ``run_checks`` is a tiny runner that calls every ``test_*`` function
of a grader with the student's module, so a student with only ``pip install -e .`` can be graded. Under pytest
the same functions run through ``exercises/conftest.py``.

Failures raise ``GradingFailure`` (an ``AssertionError``) whose message teaches: which check, expected vs got,
where the largest difference is, and a hint.

This module is the one the graders and the ``exercises`` command import; it holds the value checks and re-exports
the rest, which lives beside it by what it does:

- ``grading_messages``: ``GradingFailure``, ``CallFailure``, ``fmt``, ``note`` and ``NOTES``;
- ``grading_calls``: ``call``, ``call_returning`` (calling the student's functions safely);
- ``grading_diagnose``: ``Mistake``, ``diagnose`` (naming the mistake in a wrong answer);
- ``grading_course``: where the course is, which file is graded, copying it, the hints, loading files;
- ``grading_plots``: ``save_plot``;
- ``grading_runner``: ``iter_checks``, ``run_checks``, ``depends_on`` and ``grade`` (the child process);
- ``grading_report``: ``CheckResult`` and the report's lines.
"""
from __future__ import annotations

import numpy as np

from implicit_icl.grading_calls import IN_PLACE_HINT, call, call_returning
from implicit_icl.grading_course import (ANSWER_FILES, COURSE_FILES, ENV_TARGET, GRADER_GLOB, HINTS_FILE,
                                         STUDENT_FILE, TARGET_FILES, answer_file, copy_course, exercises_root,
                                         find_exercises, grader_path, hints_of, installed_course, is_answer,
                                         is_installed_copy, load_grader, load_implementation, resolve_target,
                                         reveal_hint)
from implicit_icl.grading_diagnose import Mistake, constant_multiple, diagnose, worst_entry
from implicit_icl.grading_messages import FEW, NOTES, CallFailure, GradingFailure, fmt, is_tensor, note
from implicit_icl.grading_plots import ENV_PLOTS, save_plot
from implicit_icl.grading_report import THEORY_CITE, CheckResult, report, result_lines, summary_lines
from implicit_icl.grading_runner import (DEFAULT_TIMEOUT, LOAD_TIMEOUT, GradingInterrupted, checks_of, depends_on,
                                         describe, grade, iter_checks, run_checks)

__all__ = [
    "ANSWER_FILES", "ATOL", "COURSE_FILES", "DEFAULT_TIMEOUT", "ENV_PLOTS", "ENV_TARGET", "FEW", "GRADER_GLOB",
    "HINTS_FILE", "IN_PLACE_HINT", "LOAD_TIMEOUT", "NOTES", "RTOL", "STUDENT_FILE", "TARGET_FILES", "THEORY_CITE",
    "CallFailure", "CheckResult", "GradingFailure", "GradingInterrupted", "Mistake",
    "answer_file", "as_numpy", "call", "call_returning", "check_close", "check_finite", "check_shape", "check_true",
    "checks_of", "constant_multiple", "copy_course", "depends_on", "describe", "diagnose", "exercises_root",
    "find_exercises", "fmt", "grade", "grader_path", "hints_of", "installed_course", "is_answer",
    "is_installed_copy", "is_tensor", "iter_checks", "load_grader", "load_implementation", "note", "report",
    "resolve_target", "result_lines", "reveal_hint", "run_checks", "save_plot", "summary_lines", "worst_entry",
]

# Default tolerances for value checks. Every solution computes in float64 with a handful of operations, so a
# correct answer differs from the reference by ~1e-15 relative; any conceptual mistake changes values by O(1e-2)
# or more. rtol = 1e-7 leaves room for a different (correct) order of operations and still catches every mistake.
RTOL = 1e-7
ATOL = 1e-10


def as_numpy(x, what: str) -> np.ndarray:
    """The student's result as a float64 array, or a clear failure if it is not array-like."""
    if x is None:
        raise GradingFailure(f"{what} returns a value", got="None",
                             hint="the function ends without `return` (or returns None): return the result")
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise GradingFailure(f"{what} is an array of numbers", got=f"{type(x).__name__}: {x!r}"[:300],
                             hint="return a NumPy array (np.ndarray)") from None
    return arr


def check_shape(what: str, got, expected_shape: tuple, hint: str | None = None) -> np.ndarray:
    """Shape check (done before any value check); returns the result as a float64 array."""
    arr = as_numpy(got, what)
    if arr.shape != tuple(expected_shape):
        raise GradingFailure(f"shape of {what}", expected=str(tuple(expected_shape)), got=str(arr.shape),
                             hint=hint or "the docstring of the stub gives every shape")
    return arr


def check_finite(what: str, got, hint: str | None = None) -> np.ndarray:
    """Finiteness check (no nan or inf, before any value check); returns the result as a float64 array."""
    arr = as_numpy(got, what)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        first = tuple(int(i) for i in bad[0])
        raise GradingFailure(f"{what} is finite (no nan or inf)", expected="finite values", got=arr,
                             detail=f"{len(bad)} non-finite entries, first at index {first}", hint=hint)
    return arr



def check_close(what: str, got, expected, *, rtol: float = RTOL, atol: float = ATOL, hint: str | None = None,
                 mistakes=()):
    """Value check against the reference: ``|got − expected| ≤ atol + rtol·|expected|`` entrywise.

    A failure shows shapes, a few values and the worst entry; when the answer is one of ``mistakes`` (see
    ``Mistake``) or a constant multiple of the expected one, it says so, and that mistake's hint replaces ``hint``.
    """
    expected = np.asarray(expected, dtype=np.float64)
    arr = check_shape(what, got, expected.shape, hint=hint)
    arr = check_finite(what, arr, hint=hint)
    bound = atol + rtol * np.abs(expected)
    if np.all(np.abs(arr - expected) <= bound):
        return arr
    found, specific = diagnose(arr, expected, mistakes)
    detail = worst_entry(arr, expected, bound) + (f"\n{found}" if found else "")
    raise GradingFailure(what, expected=expected, got=arr, detail=detail, hint=specific or hint)


def check_true(condition: bool, what: str, *, expected=None, got=None, hint: str | None = None) -> None:
    """A check that is not a comparison of arrays: fails with ``what`` (and ``expected``/``got``/``hint``) unless
    ``condition``."""
    if not condition:
        raise GradingFailure(what, expected=expected, got=got, hint=hint)


# ------------------------------------------------------------------------------------------- choosing the target
