"""The report's number formatting, shared by every experiment's ``section`` (NumPy-free)."""
from __future__ import annotations

import math


def fmt(x, digits: int = 3) -> str:
    """The one number formatter: every number printed in report.md goes through it."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def span(pair) -> str:
    """A reported range ``[low, high]`` as ``low–high``."""
    return f"{fmt(pair[0])}–{fmt(pair[1])}"


def header(label: str, columns: list) -> list[str]:
    """A Markdown table's first two lines: ``label`` over the row labels, then ``columns``."""
    return ["| " + " | ".join([label, *columns]) + " |", "|---|" + "---|" * len(columns)]
