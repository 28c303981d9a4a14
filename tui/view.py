"""Presentation helpers: fitting a matrix to a panel, diverging colours, bars, braille curves, number formats.

These only *draw* numbers the library computed (block averaging to fit a panel is the one transformation, and the
panel says so). Everything returns Rich ``Text`` so it can be tested without running an app.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from rich.style import Style
from rich.text import Text

# Diverging map centred at 0: dark neutral at 0, blue for negative, red/orange for positive (readable on a dark
# terminal: brightness grows with |value|).
NEUTRAL = (38, 38, 46)
NEGATIVE = ((38, 38, 46), (40, 96, 200), (150, 205, 255))
POSITIVE = ((38, 38, 46), (200, 56, 48), (255, 200, 130))
BACKGROUND = "#1c1c22"


def fit_size(size: int, avail: int) -> int:
    """How many cells ``size`` entries take in ``avail`` cells: all of them, or whole repeats when there is room."""
    if size <= 0 or avail <= 0:
        return 0
    return avail if size > avail else size * (avail // size)


def resample(v: np.ndarray, out: int, axis: int = 0) -> np.ndarray:
    """``v`` resized to ``out`` entries along ``axis``: block averages when shrinking, repeats when growing."""
    v = np.asarray(v, dtype=np.float64)
    size = v.shape[axis]
    if out == size:
        return v
    if out < size:
        edges = np.linspace(0, size, out + 1).round().astype(int)                 # out bins, none empty
        return np.stack([v.take(range(lo, hi), axis=axis).mean(axis=axis) for lo, hi in zip(edges[:-1], edges[1:])],
                        axis=axis)
    index = (np.arange(out) * size) // out                                       # nearest source entry
    return v.take(index, axis=axis)


def resample_matrix(m: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Block-average (or repeat) a matrix to ``(rows, cols)``."""
    return resample(resample(m, rows, axis=0), cols, axis=1)


def outer_display_scale(left: np.ndarray, right: np.ndarray, factor: float, rows: int, cols: int) -> float:
    """``max_i max |cell|`` of the resampled matrices ``factor · right ⊗ left_i`` shown as ``(rows, cols)`` images.

    ``left`` is ``(steps, M)`` (the ``u_i`` of every step), ``right`` is ``(D,)`` (``a``). Block averages of an
    outer product over rectangular blocks are the outer product of the block averages, so this needs only the
    resampled factors, never the ``steps × M × D`` matrices.
    """
    if left.size == 0 or rows == 0 or cols == 0:
        return 0.0
    return float(np.max(np.abs(resample(left, cols, axis=1))) * np.max(np.abs(resample(right, rows))) * abs(factor))


def _ramp(stops, t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    k = min(int(t), len(stops) - 2)
    f = t - k
    return tuple(int(round(a + (b - a) * f)) for a, b in zip(stops[k], stops[k + 1]))


LEVELS = 256          # colour steps per sign: finer than the eye (and the terminal) can tell apart


def diverging(value: float, scale: float) -> str:
    """Hex colour of ``value`` on a diverging map centred at 0 that saturates at ``±scale``."""
    if not (scale > 0) or not math.isfinite(value):
        return _colour(0, 0)
    return _colour(1 if value > 0 else -1, int(round(min(abs(value) / scale, 1.0) * LEVELS)))


@functools.lru_cache(maxsize=2 * LEVELS + 2)
def _colour(sign: int, level: int) -> str:
    r, g, b = NEUTRAL if sign == 0 or level == 0 else _ramp(POSITIVE if sign > 0 else NEGATIVE, level / LEVELS)
    return f"#{r:02x}{g:02x}{b:02x}"


@functools.lru_cache(maxsize=4096)
def _half_block_style(fg: str, bg: str | None) -> Style:
    return Style(color=fg, bgcolor=bg)


def heatmap_shape(shape: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """``(pixel_rows, cols)`` of the image of a ``shape`` matrix in ``width × height`` cells (2 pixels a cell)."""
    if 0 < shape[0] <= height:
        rows = shape[0] * 2 * (height // shape[0])                            # whole lines per matrix row
    else:
        rows = fit_size(shape[0], 2 * height)
    return rows, fit_size(shape[1], width)


def heatmap(m: np.ndarray, scale: float, width: int, height: int) -> tuple[list[Text], np.ndarray]:
    """Render ``m`` into at most ``width × height`` cells, two matrix rows per cell (upper-half blocks).

    Returns the lines and the resampled image ``(pixel_rows, cols)`` (what the colours show).
    """
    rows, cols = heatmap_shape(m.shape, width, height)
    img = resample_matrix(m, rows, cols) if rows and cols else np.zeros((0, 0))
    lines = []
    for top in range(0, rows, 2):
        line = Text()
        for c in range(cols):
            fg = diverging(img[top, c], scale)
            bg = diverging(img[top + 1, c], scale) if top + 1 < rows else None
            line.append("▀", _half_block_style(fg, bg))
        lines.append(line)
    return lines, img


def colour_bar(scale: float, width: int, label: str = "") -> Text:
    """A legend ``-scale ▇▇▇ 0 ▇▇▇ +scale`` of ``width`` colour cells for ``diverging``."""
    left, right = f"{-scale:+.2e} ", f" {scale:+.2e}"
    n = max(width, 3)
    text = Text(left, style="bold")
    for k in range(n):
        v = -scale + 2 * scale * (k + 0.5) / n
        text.append("█", Style(color=diverging(v, scale)))
    text.append(right, style="bold")
    if label:
        text.append(label, style="dim")
    return text


BAR_CHARS = " ▁▂▃▄▅▆▇█"
HBAR_CHARS = " ▏▎▍▌▋▊▉█"


def signed_bars(v: np.ndarray, scale: float, width: int, height: int) -> list[Text]:
    """Vertical bars of ``|v_k|`` (block-averaged to ``width``), coloured by sign: red +, blue −."""
    cols = fit_size(len(v), width)
    vals = resample(v, cols) if cols else np.zeros(0)
    levels = 8 * height
    lines = [Text() for _ in range(height)]
    for x in vals:
        filled = 0 if not scale > 0 else int(round(min(abs(x) / scale, 1.0) * levels))
        colour = diverging(scale if x > 0 else -scale, scale)
        for row in range(height):                                     # row 0 is the top line
            below = (height - 1 - row) * 8
            part = min(max(filled - below, 0), 8)
            lines[row].append(BAR_CHARS[part], Style(color=colour))
    return lines


def hbar(value: float, scale: float, width: int) -> Text:
    """A horizontal bar of ``|value|`` (eighth-cell resolution), coloured by sign."""
    eighths = 0 if not scale > 0 else int(round(min(abs(value) / scale, 1.0) * 8 * width))
    full, part = divmod(eighths, 8)
    s = "█" * full + (HBAR_CHARS[part] if part else "")
    colour = diverging(scale if value > 0 else -scale, scale)
    return Text(s.ljust(width), style=Style(color=colour))


# --- braille curves -------------------------------------------------------------------------------------------

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))   # [row][col] bit of a 2×4 braille cell


def braille_plot(series, width: int, height: int, *, n_points: int, marker: int | None = None,
                 log: bool = False, y_range: tuple[float, float] | None = None):
    """Curves on a shared x axis ``0..n_points−1`` drawn with braille dots in ``width × height`` cells.

    ``series``: list of ``(values, colour)``; earlier series win a cell they share. Non-finite values (and values
    ≤ 0 on a log axis) leave gaps. ``marker``: an x index drawn as a highlighted column.
    Returns ``(lines, (y_lo, y_hi))`` with the y range actually used (in data units).
    """
    values = [np.asarray(v, float) for v, _ in series]
    lo, hi = _y_axis(values, log, y_range)

    def px_x(i):
        return 0 if n_points <= 1 else int(round(i * (2 * width - 1) / (n_points - 1)))

    def px_y(v):
        t = ((math.log10(v) if log else v) - lo) / (hi - lo)
        return int(round((1.0 - min(max(t, 0.0), 1.0)) * (4 * height - 1)))

    bits, owner = np.zeros((height, width), dtype=int), np.full((height, width), -1)
    for s, v in enumerate(values):
        for x, y in _curve_pixels(v, log, px_x, px_y):
            cy, cx = y // 4, x // 2
            bits[cy, cx] |= _DOTS[y % 4][x % 2]
            if owner[cy, cx] < 0:
                owner[cy, cx] = s
    mark_col = None if marker is None else px_x(marker) // 2
    lines = _braille_lines(bits, owner, [colour for _, colour in series], mark_col)
    return lines, ((10 ** lo, 10 ** hi) if log else (lo, hi))


def _drawable(v, log: bool):
    """Which values a curve draws: the finite ones (and > 0 on a log axis)."""
    return np.isfinite(v) & ((v > 0) if log else True)


def _y_axis(values: list, log: bool, y_range) -> tuple[float, float]:
    """``(lo, hi)`` in axis units (log10 on a log axis): ``y_range``, else the drawable values' range (from 0 at most
    on a linear axis), else a default; never empty."""
    pool = np.concatenate([v[_drawable(v, log)] for v in values]) if values else []
    if y_range is not None:
        lo, hi = y_range
    elif len(pool):
        lo, hi = float(np.min(pool)), float(np.max(pool))
        if not log:
            lo = min(lo, 0.0)
    else:
        lo, hi = (1.0, 10.0) if log else (0.0, 1.0)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    return (lo, lo + 1.0) if hi <= lo else (lo, hi)


def _curve_pixels(v: np.ndarray, log: bool, px_x, px_y):
    """The pixels ``(x, y)`` of one curve: each drawable value's, joined to the one before by a line segment (a value
    that is not drawn leaves a gap)."""
    prev = None
    for i, (x, ok) in enumerate(zip(v, _drawable(v, log))):
        if not ok:
            prev = None
            continue
        cur = (px_x(i), px_y(x))
        if prev is None:
            yield cur
        else:                                                        # a line segment from prev to cur
            steps = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
            for k in range(steps + 1):
                yield (int(round(prev[0] + (cur[0] - prev[0]) * k / steps)),
                       int(round(prev[1] + (cur[1] - prev[1]) * k / steps)))
        prev = cur


def _braille_lines(bits: np.ndarray, owner: np.ndarray, colours: list, mark_col: int | None) -> list:
    """One ``Text`` per cell row: each cell's braille dots in its owning series' colour; the marker column on a
    highlighted background (a bar where it has no dot)."""
    lines = []
    for cy in range(bits.shape[0]):
        line = Text()
        for cx in range(bits.shape[1]):
            b = bits[cy, cx]
            bg = "#3a3a1a" if cx == mark_col else None
            line.append(chr(0x2800 + b) if b else ("│" if cx == mark_col else " "),
                        Style(color=colours[owner[cy, cx]] if b else "#8a8a40", bgcolor=bg))
        lines.append(line)
    return lines


# --- number formats ---------------------------------------------------------------------------------------------

def fmt_value(x: float | None) -> str:
    """A prediction, with enough digits that equal values look equal: ``+0.41728312345``."""
    return "—" if x is None else f"{x:+.11f}"


def fmt_small(x: float | None) -> str:
    """A difference or norm in scientific notation: ``+2.22e-16``."""
    return "—" if x is None or not math.isfinite(x) else f"{x:+.2e}"


def fmt_abs(x: float | None) -> str:
    """A non-negative error: ``2.22e-16``."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.2e}"


def fmt_norm(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def fmt_axis(x: float) -> str:
    return f"{x:.2g}" if abs(x) >= 1e-2 or x == 0 else f"{x:.0e}"
