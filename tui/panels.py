"""The walkthrough's drawn panels: the prompt chips, the ΔW_i heatmap and the curves over all steps.

Each widget reads the app's state (``app.data``, ``app.i``, …) and draws numbers that ``tui/data.py`` prepared;
``tui/view.py`` turns them into text.
"""
from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.text import Text
from textual.events import Click
from textual.widget import Widget

from . import view

MODEL_COLOUR = "#ffd75f"
BASELINE_COLOUR = "#8aa0c8"
LSQ_COLOUR = "#87d787"
TRUTH_COLOUR = "#d0d0d0"


class PromptTokens(Widget):
    """The context tokens as chips ``✓ k label`` in rows; clicking chip ``k`` jumps to step ``k``.

    One widget draws every chip (cheap to mount and restyle for long prompts). When the rows do not fit, a
    window of rows that contains the current token is shown.
    """

    MAX_CHIP = 12       # cells per chip at most: "✓ 12 " and the label, cut to fit
    GAP = 1
    MAX_ROWS = 5

    @property
    def CHIP(self) -> int:
        """Cells per chip: as narrow as the longest label allows (so that more tokens fit), at most ``MAX_CHIP``."""
        widest = max((len(label) for label in self.app.data.token_labels), default=1)
        return min(len(f"✓{self.app.data.n:>3} ") + widest, self.MAX_CHIP)

    def columns(self) -> int:
        return max((self.content_size.width + self.GAP) // (self.CHIP + self.GAP), 1)

    def update(self) -> None:
        """Redraw, and title the prompt panel: what the labels are, and which rows show when not all fit."""
        d = self.app.data
        self.parent.border_title = " · ".join(part for part in (
            f"prompt c_1..c_{d.n} (click a token), fixed query x", d.token_meaning, self.hidden()) if part)
        self.refresh()

    def on_resize(self) -> None:
        self.update()

    def hidden(self) -> str:
        """``""`` when every token is shown, else which chip rows are (the window follows the current token)."""
        if not self.content_size.width:
            return ""                                                 # not laid out yet
        cols, first, shown = self.window()
        total = -(-self.app.data.n // cols)
        if shown >= total:
            return ""
        return f"rows {first + 1}–{first + shown} of {total} shown (scrolls)"

    def window(self) -> tuple[int, int, int]:
        """``(columns, first_row, rows_shown)`` for the current width and step."""
        app = self.app
        cols = self.columns()
        total = -(-app.data.n // cols)
        shown = min(total, self.MAX_ROWS, max(self.content_size.height, 1))   # fewer when CSS caps the height
        current_row = max(app.i - 1, 0) // cols
        first = min(max(current_row - shown // 2, 0), total - shown)
        return cols, first, shown

    def get_content_height(self, container, viewport, width: int) -> int:
        n = self.app.data.n
        cols = max((width + self.GAP) // (self.CHIP + self.GAP), 1)
        return min(-(-n // cols), self.MAX_ROWS)

    def chip_offset(self, k: int) -> tuple[int, int] | None:
        """Where chip ``k`` is drawn, relative to this widget (``None`` when scrolled out of view)."""
        cols, first, shown = self.window()
        row, col = divmod(k - 1, cols)
        if not first <= row < first + shown:
            return None
        return col * (self.CHIP + self.GAP) + 2, row - first

    def token_at(self, x: int, y: int) -> int | None:
        cols, first, _ = self.window()
        col, within = divmod(x, self.CHIP + self.GAP)
        k = (first + y) * cols + col + 1
        if within >= self.CHIP or col >= cols or not 1 <= k <= self.app.data.n:
            return None
        return k

    def on_click(self, event: Click) -> None:
        k = self.token_at(event.x, event.y)
        if k is not None:
            event.stop()
            self.app.jump(k)

    def render(self):
        app = self.app
        labels, i = app.data.token_labels, app.i
        cols, first, shown = self.window()
        lines = []
        for row in range(first, first + shown):
            line = Text()
            for k in range(row * cols + 1, min((row + 1) * cols, len(labels)) + 1):
                if k < i:
                    mark, style = "✓", "#b8e0b0"
                elif k == i:
                    mark, style = "▶", "bold #101010 on #d7af00"
                else:
                    mark, style = " ", "#9a9aa8"
                chip = f"{mark}{k:>3} {labels[k - 1]}"[: self.CHIP].ljust(self.CHIP)
                line.append(chip, style=style)
                line.append(" " * self.GAP)
            lines.append(line)
        return Group(*lines)


class HeatmapPanel(Widget):
    """``ΔW_i`` (or the step) as a diverging heatmap, transposed so hidden units run across, with ``u`` and ``a``."""

    GUTTER = 16

    def geometry(self) -> tuple[int, int]:
        """``(width, height)`` in cells available to the matrix itself."""
        width, height = self.content_size
        return max(width - self.GUTTER, 4), max(height - 6, 1)

    def on_resize(self) -> None:
        M, D = self.app.data.shape
        heat_w, heat_h = self.geometry()
        averaged = ", block-averaged" if M > heat_w or D > 2 * heat_h else ""
        self.border_subtitle = f"shown as ΔWᵀ: {D} inputs j (rows) × {M} hidden units k{averaged}"

    def render(self):
        app = self.app
        key = (id(app.data), app.i, app.step_view, self.content_size)
        if getattr(self, "_cache", (None,))[0] != key:
            self._cache = (key, self._draw())
        return self._cache[1]

    def _draw(self):
        app = self.app
        data, i, step_view = app.data, app.i, app.step_view
        width, height = self.content_size
        M, D = data.shape
        t = data.trajectory
        if step_view and i == 0:
            return Text("No step at i = 0: ΔW_0 = 0 (no context consumed).\n"
                        "Press → to consume c_1, or s to show ΔW_i.", style="dim")
        if step_view:
            matrix, lefts = data.step(i), -t.grad_u                   # ΔW_i − ΔW_(i−1) = h (u_i − u_(i−1)) aᵀ
            left, left_name = lefts[i - 1], "u_i − u_(i−1)"
        else:
            matrix, lefts = data.delta_W(i), t.u                      # ΔW_i = h u_i aᵀ
            left, left_name = t.u[i], "u_i"
        a = t.a
        heat_w, heat_h = self.geometry()                              # cells for the matrix
        rows_px, cols = view.heatmap_shape((D, M), heat_w, heat_h)
        scale = view.outer_display_scale(lefts, t.a, t.h, rows_px, cols)   # max |cell| shown over all i
        lines, img = view.heatmap(matrix.T, scale, heat_w, heat_h)    # (D, M) image: rows = inputs j
        left_scale = float(np.max(np.abs(view.resample(lefts, cols, axis=1)))) if cols else 0.0
        a_scale = float(np.max(np.abs(view.resample(a, rows_px)))) if rows_px else 0.0
        a_px = view.resample(a, rows_px) if rows_px else np.zeros(0)
        lines_per_row = rows_px // (2 * D)                            # whole lines per input j (0: averaged)
        out = []
        for li, line in enumerate(lines):
            top = 2 * li
            val = float(np.mean(a_px[top:top + 2]))
            first = lines_per_row == 0 or li % lines_per_row == 0
            label = f"{val:+.2f} " if first else " " * 6
            gutter = Text(label, style="bold" if first else "") + view.hbar(val, a_scale, 8) + Text(" ")
            out.append(gutter + line)
        pad = Text(" " * self.GUTTER)
        bars = view.signed_bars(left, left_scale, cols, 3)
        for extra in bars[:-1]:
            out.append(pad + extra)
        out.append(Text(f"{left_name:<{self.GUTTER}}"[: self.GUTTER], style="bold") + bars[-1])
        room = cols - 2 - len(str(M))
        name = next((t for t in ("hidden unit k (rows of W)", "hidden unit k", "k") if len(t) + 2 <= room), "")
        axis = f"1{name:^{max(room, 0)}}{M}"
        out.append(Text("a (inputs j)".ljust(self.GUTTER), style="bold") + Text(axis[:cols], style="dim"))
        legend = "colour scale".ljust(self.GUTTER) if width >= self.GUTTER + 20 + 8 else ""
        bar_room = width - len(legend) - 20                            # two ±scale labels of 10 cells
        note = " max |cell|, all i" if bar_room >= 21 + 18 else ""
        out.append(Text(legend, style="bold") + view.colour_bar(scale, max(min(21, bar_room - len(note)), 3), note))
        return Group(*out)


class CurvePanel(Widget):
    """One quantity over all steps i = 0..n (``WalkthroughData.curves``), model vs untrained baseline, the current i
    marked; its title gives the values at i with the step index written out."""

    COLOURS = {"model": MODEL_COLOUR, "baseline": BASELINE_COLOUR, "least squares": LSQ_COLOUR,
               "truth": TRUTH_COLOUR}

    def __init__(self, which: str, **kwargs):
        super().__init__(**kwargs)
        self.which = which

    def shown(self) -> dict[str, np.ndarray]:
        """The curves drawn now: ``data.curves(which)`` less the baseline when it is switched off."""
        app = self.app
        curves = app.data.curves(self.which)
        if not app.show_baseline:
            curves.pop("baseline", None)
        return curves

    def render(self):
        app = self.app
        key = (id(app.data), app.i, app.show_baseline, self.content_size)
        if getattr(self, "_cache", (None,))[0] != key:
            self._cache = (key, self._draw())
        return self._cache[1]

    def _draw(self):
        app = self.app
        data, i = app.data, app.i
        width, height = self.content_size
        series = [(values, self.COLOURS[name]) for name, values in self.shown().items()]
        log = self.which in ("step", "rel")
        plot_w, plot_h = max(width - 8, 4), max(height - 1, 1)
        lines, (lo, hi) = view.braille_plot(series, plot_w, plot_h, n_points=data.n + 1, marker=i, log=log)
        out = []
        for k, line in enumerate(lines):
            label = view.fmt_axis(hi) if k == 0 else (view.fmt_axis(lo) if k == len(lines) - 1 else "")
            out.append(Text(f"{label:>7} ", style="dim") + line)
        x_axis = f"i = 0{'(log y)' if log else '':^{max(plot_w - 5 - len(str(data.n)), 0)}}{data.n}"
        out.append(Text(" " * 8 + x_axis[:plot_w], style="dim"))
        return Group(*out)

    def update_titles(self) -> None:
        """Border title: the model's value at the current step ``i`` (indices written out, its colour the legend);
        subtitle: the other curves' values at ``i``, each in its colour."""
        app = self.app
        d, i, curves = app.data, app.i, self.shown()
        truth = f" [{TRUTH_COLOUR}]━ truth {view.fmt_norm(curves['truth'][i])}[/]" if "truth" in curves else ""
        self.border_title = f"[{MODEL_COLOUR}]━[/] " + curve_title(self.which, i, curves) + truth
        legend = []
        if "least squares" in curves:
            legend.append(f"[{LSQ_COLOUR}]━ least sq. {view.fmt_norm(curves['least squares'][i])}[/]")
        if "baseline" in curves:
            legend.append(f"[{BASELINE_COLOUR}]━ {d.baseline_short} {view.fmt_norm(curves['baseline'][i])}[/]")
        else:
            legend.append("[dim]no baseline for this model[/]" if d.baseline is None else "[dim]baseline off (b)[/]")
        self.border_subtitle = " ".join(legend)
        self.refresh()


def curve_title(which: str, i: int, curves: dict[str, np.ndarray]) -> str:
    """A curve panel's title at step ``i``: what is plotted, with ``i`` written out, and the model's value."""
    value = view.fmt_norm(curves["model"][i]) if "model" in curves else "—"
    if which == "norm":
        return f"‖ΔW_{i}‖ = {value}"
    if which == "pred":
        return f"ŷ(c_1..c_{i}) = {value}" if i else f"ŷ(no context) = {value}"
    if i == 0:
        return "no step at i = 0"
    if which == "step":
        return f"‖ΔW_{i} − ΔW_{i - 1}‖ = {value}"
    return f"step {i}/‖ΔW_{i - 1}‖ = {value}"


class MovedPanel(Widget):
    """A real model's layer as ``implicit-icl explain`` reports it: ``‖ΔW‖/‖W‖`` for the whole context beside the
    random layer's, then the context tokens that move W most, ``‖ΔW({c_j})‖`` with a bar (``data.moved_tokens``)."""

    def update(self) -> None:
        d = self.app.data
        self.border_title = f"layer {d.layer} of 0..{d.n_layers - 1} ([ ]) · top tokens"
        self.border_subtitle = "‖ΔW({c_j})‖: c_j removed alone"
        self.refresh()

    def render(self):
        data = self.app.data
        width, rows = self.content_size
        text = Text()
        norms = data.relative_norms()
        if norms is not None:
            trained, random = norms
            text.append("‖ΔW‖/‖W‖ ", style="bold")
            text.append(f"{trained:.2%}", style=MODEL_COLOUR)
            if random is not None:
                text.append("  random layer ", style="dim")
                text.append(f"{random:.2%}", style=BASELINE_COLOUR)
            text.append("\n")
        for note in data.notes:                     # e.g. a parallel block: ΔW = 0 exactly, said rather than drawn
            text.append(note + "\n", style="bold")
        moved = data.moved_tokens()
        top = moved[0][1] if moved else 0.0
        bar_w = max(width - 12 - 8, 4)
        for token, value in moved[:max(rows - 1, 0)]:
            text.append(f"{token[:11]:<12}", style="bold")
            text.append_text(view.hbar(value, top, bar_w))
            text.append(f"{value:>7.3f}\n", style=MODEL_COLOUR)
        return text
