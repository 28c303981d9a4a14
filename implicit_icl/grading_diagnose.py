"""Naming the mistake in a wrong answer: a known ``Mistake`` the grader lists, a constant multiple of the expected
answer (a missing square, a flipped sign), and where the largest difference is. Used by ``grading.check_close``;
``implicit_icl.grading`` re-exports every public name here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer, for ``check_close`` to recognise and name.

    Either ``value`` (what the mistake returns) or ``factor`` (the mistake returns ``factor`` × the expected
    answer, with ``name`` saying what that number is, e.g. ``"‖A(x)‖"``). ``hint`` says what went wrong.
    """

    hint: str
    value: object = None
    factor: float | None = None
    name: str = ""


def constant_multiple(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> float | None:
    """``c`` when ``got`` = c · ``expected`` entry for entry (to ``rtol``) with c ≠ 1, else ``None``."""
    e2 = float(np.sum(expected * expected))
    if got.shape != expected.shape or got.size < 2 or e2 == 0.0:
        return None
    c = float(np.sum(got * expected)) / e2
    if abs(c - 1.0) <= rtol or np.linalg.norm(got - c * expected) > rtol * np.linalg.norm(got):
        return None
    return c


def diagnose(got: np.ndarray, expected: np.ndarray, mistakes=(), *, rtol: float = 1e-6) -> tuple[str, str | None]:
    """``(detail, hint)`` for a wrong answer: which known ``Mistake`` it is, or that it is a constant multiple of
    the expected one (and which constant); ``("", None)`` when neither."""
    c = constant_multiple(got, expected, rtol)
    for m in mistakes:
        if m.value is not None:
            value = np.asarray(m.value, dtype=np.float64)
            if value.shape == got.shape and np.allclose(got, value, rtol=rtol, atol=1e-12):
                return "", m.hint
        elif c is not None and m.factor is not None and abs(c - m.factor) <= rtol * abs(m.factor):
            return f"your answer is {c:.4g} × the expected one, entry for entry; {c:.4g} = {m.name}", m.hint
    if c is None:
        return "", None
    if abs(c + 1.0) <= rtol:
        return "your answer is −1 × the expected one: the sign is flipped", None
    return (f"your answer is {c:.4g} × the expected one, entry for entry: a scalar factor is missing or extra "
            "(a norm instead of its square, a sum instead of a mean, a missing 1/√d?)"), None


def worst_entry(got: np.ndarray, expected: np.ndarray, bound) -> str:
    """Where ``got`` is furthest outside ``bound`` of ``expected``: the index and both values."""
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    b = bound[worst] if np.ndim(bound) else bound
    return (f"largest difference {err[worst]:.3g} at index {tuple(int(i) for i in worst)}: "
            f"expected {expected[worst]:.6g}, got {got[worst]:.6g} (tolerance {b:.2g})")

