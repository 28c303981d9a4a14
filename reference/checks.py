"""The primitive argument checks every layer shares: integers, flags and positive numbers.

Each raises a ``ValueError`` that names the argument and what was expected (the caller passes the name it knows
the value by: ``"BlockConfig.d_model"``, ``"seed"``, ``"n_points"``; a command passes its option, ``"--tokens"``).
``bool`` is refused where an ``int`` is expected (``True`` is an ``int`` to Python, never to a user). Arrays,
params and updates are checked in ``validation.py``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound may be ``None``), or a ``ValueError`` naming it."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            want = f"an int in [{low}, {high}]"
        elif low is not None:
            want = "a positive int" if low == 1 else f"an int >= {low}"
        else:
            want = "an int" if high is None else f"an int <= {high}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` as a real ``bool`` (a string such as ``"false"`` is truthy, so it is refused), or a ``ValueError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_positive_float(name: str, value) -> float:
    """``value`` as a finite ``float > 0``, or a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
