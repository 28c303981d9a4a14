"""Numbers and tables as ``implicit-icl bench`` prints them: a unit a person reads at a glance, ``—`` for what was
not measured (never ``None`` or ``nan``), columns padded to their widest cell."""
from __future__ import annotations

import math


def _missing(x) -> bool:
    return not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x)


def seconds_text(t) -> str:
    """``0.0236`` → ``23.6 ms``; ``2.04`` → ``2.04 s``; ``1957`` → ``33 min``; hours and days past 10 of them."""
    if _missing(t):
        return "—"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if t >= 10 * size:
            return f"{t / size:,.0f} {unit}"
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def bytes_text(b) -> str:
    """Decimal units: ``841601024`` → ``842 MB``, ``1.4e9`` → ``1.40 GB``."""
    if _missing(b):
        return "—"
    if b >= 1e9:
        return f"{b / 1e9:.2f} GB"
    if b >= 1e6:
        return f"{b / 1e6:.3g} MB"
    return f"{b / 1e3:.3g} kB"


def ratio_text(r) -> str:
    """``18.93`` → ``18.9×``, ``1183.6`` → ``1,184×``, ``0.93`` → ``0.93×``."""
    if _missing(r):
        return "—"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.3g}×"


def value_text(v, unit: str) -> str:
    """A value in its unit: ``"s"`` seconds, ``"bytes"``, ``"×"`` a ratio, ``"MB"`` / ``"ms"`` as given, ``""`` a
    plain number (a relative error, shown with two significant digits)."""
    if _missing(v):
        return "—"
    if unit == "s":
        return seconds_text(v)
    if unit == "bytes":
        return bytes_text(v)
    if unit == "×":
        return ratio_text(v)
    if unit in ("MB", "ms"):
        return f"{v:,.3g} {unit}"
    return f"{v:.2g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}".replace("e-0", "e-")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: a header, a rule, and the rows, each column as wide as its widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
