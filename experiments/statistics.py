"""The statistics the report and README print, one function each, NumPy only.

Every one is tested against a hand-computed case in ``tests/test_statistics.py``, together with the known-bad
variants (issue 19) those tests must catch. ``top_share`` (a model's marginals) lives in
``implicit_icl.models.analysis``, which ``explain`` uses; it is tested in the same file. The tolerances, the table
marks and the numerical rank the experiments share live here too.
"""
from __future__ import annotations

import warnings

import numpy as np

QUARTILES = (25, 50, 75)
# Tolerances for "agrees to round-off": outputs are O(1), so these are ~100 ulps of float32 and ~5000 of float64.
TOL_F32 = 1e-5
TOL_F64 = 1e-12


def marks(last: int, start: int) -> list[int]:
    """The indices a table shows: ``start``, 1, 5, 10, 25 where they exist, and ``last``."""
    return sorted({k for k in (start, 1, 5, 10, 25) if start <= k < last} | {last})


def at_marks(values, start: int) -> dict:
    """``values`` (indexed by i = 0..n) at the table's marks (``marks(n, start)``), keyed by i as a string (JSON)."""
    return {str(k): float(values[k]) for k in marks(len(values) - 1, start)}


def numerical_rank(M: np.ndarray) -> int:
    """Rank with NumPy's default tolerance ``σ_max · max(shape) · eps``."""
    return int(np.linalg.matrix_rank(M))


def bands(x: np.ndarray) -> dict:
    """Median and quartile band over axis 0, ignoring nan (lists, for JSON)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)           # all-nan columns stay nan
        q = np.nanpercentile(x, QUARTILES, axis=0)
    return {"q25": q[0].tolist(), "median": q[1].tolist(), "q75": q[2].tolist()}


def normalised_inner(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The alignment ``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)`` over the last two axes, signed, in [−1, 1]; nan where either is 0
    or not finite (a diverged SGD run has no direction).

    Each matrix is first divided by its largest entry, so tiny or huge scales neither underflow nor overflow.
    """
    def unit_scale(M):
        m = np.max(np.abs(M), axis=(-2, -1), keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((m > 0) & np.isfinite(m), M / m, 0.0)

    A, B = unit_scale(np.asarray(A, dtype=np.float64)), unit_scale(np.asarray(B, dtype=np.float64))
    num = np.sum(A * B, axis=(-2, -1))
    den = np.linalg.norm(A, axis=(-2, -1)) * np.linalg.norm(B, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def null_pairs(x: np.ndarray) -> np.ndarray:
    """``x`` with its first axis (the tasks) rotated by one: row r becomes task r−1's, so pairing row r of some
    other array with row r of this one pairs every task with another task's (the null of an alignment)."""
    if len(x) < 2:
        raise ValueError(f"a null pairing needs at least 2 tasks, got {len(x)}")
    return np.roll(x, 1, axis=0)


def mean_of_medians(align: np.ndarray) -> float:
    """E3's one-number alignment: the median over tasks (axis 0) at each i, then the mean over i (nan ignored;
    nan when every value is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)           # an all-nan column (a diverged run)
        return float(np.nanmean(np.nanmedian(align, axis=0)))


def loglog_slope(i: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of ``log y`` against ``log i`` over the points with ``i > 0`` and a finite ``y > 0``
    (−1 means ``y ∝ 1/i``). ``i`` is the step index itself: step i consumes token ``c_{i+1}`` (THEORY §4)."""
    i, y = np.asarray(i, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = (i > 0) & np.isfinite(y) & (y > 0)
    return float(np.polyfit(np.log(i[ok]), np.log(y[ok]), 1)[0])


def squared_loss(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(pred − target)²`` with ``pred`` ``(R, n+1)`` (task r's prediction after i examples) and ``target`` ``(R,)``."""
    return (np.asarray(pred) - np.asarray(target)[:, None]) ** 2


def loss_curve(pred: np.ndarray, target: np.ndarray) -> tuple[list, list]:
    """The mean test loss over tasks at each i and its standard error ``std / √R`` (lists, for JSON)."""
    loss = squared_loss(pred, target)
    return np.mean(loss, axis=0).tolist(), (np.std(loss, axis=0) / np.sqrt(len(loss))).tolist()


def levels_off_at(med: dict, factor: float):
    """The smallest K from which every larger K's median stays within ``factor`` of the largest K's (or ``None``
    when that median is not finite)."""
    Ks = sorted(med)
    best = med[Ks[-1]]
    if not np.isfinite(best):
        return None
    level = Ks[-1]
    for K in reversed(Ks):
        if not (np.isfinite(med[K]) and med[K] <= factor * best):
            break
        level = K
    return level
