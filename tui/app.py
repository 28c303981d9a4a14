"""The Textual walkthrough: step through a prompt token by token and watch each weight delta.

The app is handed a prepared ``WalkthroughData`` (``tui/data.py``); every number it shows is read from the
library's ``Trajectory`` (P1 §3) — the app only draws. State: the current step ``i`` (``i`` context tokens
consumed, fixed query), whether the untrained baseline is drawn, and whether the heatmap shows ``ΔW_i`` or the
step ``ΔW_i − ΔW_{i−1}``.
"""
from __future__ import annotations

import io

import numpy as np
from rich.console import Console, Group
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Click, Resize
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from . import view
from .data import WalkthroughData

MIN_SIZE = (100, 34)           # columns, lines: the full layout (every panel) from this size up
COMPACT_MIN = (80, 24)         # below MIN_SIZE but at least this: the compact layout (heatmap and check only);
                               # below this the panels cannot show their numbers
COMPACT_HINT = ("A terminal of at least {0}×{1} also shows the GD view and the curves ‖ΔW_i‖, "
                "‖ΔW_(i+1) − ΔW_i‖ and their ratio next to the untrained baseline.\n? help · q quit").format(*MIN_SIZE)
PLAY_INTERVAL = 0.3            # seconds per step while playing
MODEL_COLOUR = "#ffd75f"
BASELINE_COLOUR = "#8aa0c8"

HELP_TEXT = """\
[b]What you see[/b]
A contextual block T_W (attention, then an MLP whose first matrix is W) reads a prompt c_1..c_n and a fixed
query x. At step i it has consumed c_1..c_i. The theorem (Dherin et al. 2025, Thm 2.2) says the block's output
with that context equals the output of the query [i]alone[/i] with W replaced by W + ΔW_i, where

    ΔW_i = u_i aᵀ / ‖a‖²,   u_i = W (a_i − a),   a = the MLP input for the query alone   (rank 1)

In a block with a residual around the MLP (every kind but plain; a real model's layers) the residual r changes
with the context too, so the MLP's output bias takes it: b_out + Δb_i, Δb_i = r_i − r (Innocenti & Achour 2025).
There the check compares with T_(W+ΔW_i, b+Δb_i)(x) and shows ‖Δb_i‖; W + ΔW_i alone would not reproduce it.

[b]Panels[/b]
  prompt    the context tokens (✓ consumed, ▶ highlighted: the current one c_i) and the fixed query
  heatmap   ΔW_i (or, with s, the step ΔW_i − ΔW_(i−1)), block-averaged to fit; its factors u_i and a
  check     the output with i tokens of context vs the query alone with the update: equal up to round-off
  GD view   W_(i+1) = W_i − h ∇L_i(W_i), h = 1/‖a‖², L_i(W) = tr(Δ_iᵀ W)  (P1 Prop. 3.1)
  curves    ‖ΔW_i‖, ‖ΔW_(i+1) − ΔW_i‖ and their ratio over all i, with an untrained block of the same shape

[b]Read it honestly[/b] (THEORY §8)
  • The identity is algebra: it holds for any block, trained or random, so the check shows only the round-off
    of the dtype (float64: ~1e-16 relative to the output; float32, e.g. --backend torch: ~1e-7).
  • L_i is linear in W and built from the update itself: the "gradient descent" is an exact rewriting.
  • Steps shrink like 1/i for softmax attention even untrained: compare with the baseline (b).
  • ΔW depends on the query; another query needs another ΔW.

[b]Keys[/b]
  → / l  next token        ← / h  previous token      Home / End  first / last step
  space  play / pause      b  baseline on/off          s  ΔW_i  ↔  step ΔW_i − ΔW_(i−1)
  ?      this help         q  quit                      click a token to jump to it

[dim]Press ? or Escape to close.[/dim]"""


class HelpScreen(ModalScreen):
    """The key list and how to read the panels."""

    BINDINGS = [Binding("escape,question_mark", "close", "close help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > #help { width: auto; max-width: 118; height: auto; border: round $accent; padding: 0 2;
                         background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help")

    def action_close(self) -> None:
        self.dismiss()


class PromptTokens(Widget):
    """The context tokens as chips ``✓ k label`` in rows; clicking chip ``k`` jumps to step ``k``.

    One widget draws every chip (cheap to mount and restyle for long prompts). When the rows do not fit, a
    window of rows that contains the current token is shown.
    """

    CHIP = 12           # cells per chip
    GAP = 1
    MAX_ROWS = 5

    def columns(self) -> int:
        return max((self.content_size.width + self.GAP) // (self.CHIP + self.GAP), 1)

    def window(self) -> tuple[int, int, int]:
        """``(columns, first_row, rows_shown)`` for the current width and step."""
        app: WalkthroughApp = self.app  # type: ignore[assignment]
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
        app: WalkthroughApp = self.app  # type: ignore[assignment]
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
        app: WalkthroughApp = self.app  # type: ignore[assignment]
        key = (app.i, app.step_view, self.content_size)
        if getattr(self, "_cache", (None,))[0] != key:
            self._cache = (key, self._draw())
        return self._cache[1]

    def _draw(self):
        app: WalkthroughApp = self.app  # type: ignore[assignment]
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
    """One curve over all steps i = 0..n, model vs untrained baseline, the current i marked."""

    def __init__(self, which: str, **kwargs):
        super().__init__(**kwargs)
        self.which = which

    def series(self, t) -> np.ndarray:
        """The curve over x = 0..n from a trajectory (padded with nan where undefined)."""
        if self.which == "norm":
            return t.delta_W_norm
        values = t.step_norm if self.which == "step" else t.relative_change
        return np.append(values, np.nan)                              # no step after i = n

    def render(self):
        app: WalkthroughApp = self.app  # type: ignore[assignment]
        key = (app.i, app.show_baseline, self.content_size)
        if getattr(self, "_cache", (None,))[0] != key:
            self._cache = (key, self._draw())
        return self._cache[1]

    def _draw(self):
        app: WalkthroughApp = self.app  # type: ignore[assignment]
        data, i = app.data, app.i
        width, height = self.content_size
        series = [(self.series(data.trajectory), MODEL_COLOUR)]
        if app.show_baseline and data.baseline is not None:
            series.append((self.series(data.baseline), BASELINE_COLOUR))
        log = self.which != "norm"
        plot_w, plot_h = max(width - 8, 4), max(height - 1, 1)
        lines, (lo, hi) = view.braille_plot(series, plot_w, plot_h, n_points=data.n + 1, marker=i, log=log)
        out = []
        for k, line in enumerate(lines):
            label = view.fmt_axis(hi) if k == 0 else (view.fmt_axis(lo) if k == len(lines) - 1 else "")
            out.append(Text(f"{label:>7} ", style="dim") + line)
        x_axis = f"i = 0{'(log y)' if log else '':^{max(plot_w - 5 - len(str(data.n)), 0)}}{data.n}"
        out.append(Text(" " * 8 + x_axis[:plot_w], style="dim"))
        return Group(*out)


class WalkthroughApp(App):
    """``implicit-icl walkthrough``: the current step ``i`` and everything the library computed about it."""

    TITLE = "implicit-icl walkthrough"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { background: #16161c; }
    #title { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    #main { height: 1fr; }
    #prompt { height: auto; max-height: 9; border: round #5f6f8f; padding: 0 1; }
    #chips { height: auto; }
    #token-info { height: 1; color: $text-muted; }
    #middle { height: 2fr; min-height: 17; }
    #heat { width: 1fr; border: round #5f6f8f; padding: 0 1; }
    #side { width: 54; }
    #check { height: auto; border: round #5f8f6f; padding: 0 1; }
    #gd { height: 1fr; border: round #8f7f5f; padding: 0 1; overflow-y: auto; }
    #curves { height: 1fr; min-height: 6; max-height: 11; }
    CurvePanel { width: 1fr; border: round #5f6f8f; }
    #hint { display: none; height: auto; padding: 1 1 0 1; color: $text-muted; text-style: italic; }
    #too-small { display: none; width: 100%; height: 100%; content-align: center middle; text-align: center; }
    Screen.compact #chips { max-height: 1; }
    Screen.compact #token-info { height: auto; max-height: 2; }
    Screen.compact #middle { height: 1fr; min-height: 0; }
    Screen.compact #side { width: 42; }
    Screen.compact #gd { display: none; }
    Screen.compact #hint { display: block; }
    Screen.compact #curves { display: none; }
    Screen.too-small #main { display: none; }
    Screen.too-small #too-small { display: block; }
    """
    BINDINGS = [
        Binding("right,l", "next", "next", key_display="→/l"),
        Binding("left,h", "previous", "previous", key_display="←/h"),
        Binding("home", "first", "first"),
        Binding("end", "last", "last"),
        # the compact layout's twins of home/end, left out of its footer so that "? help q quit" fit in 80 columns
        # (check_action turns on one of each pair; the help screen lists both keys)
        Binding("home", "first_unlisted", "first", show=False),
        Binding("end", "last_unlisted", "last", show=False),
        Binding("space", "play", "play/pause", key_display="space"),
        Binding("b", "toggle_baseline", "baseline"),
        Binding("s", "toggle_step", "ΔW / step"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
    ]

    i: reactive[int] = reactive(0, init=False)
    show_baseline: reactive[bool] = reactive(True, init=False)
    step_view: reactive[bool] = reactive(False, init=False)
    playing: reactive[bool] = reactive(False, init=False)

    def __init__(self, data: WalkthroughData, *, start: int = 0):
        super().__init__()
        self.data = data
        self.set_reactive(WalkthroughApp.i, min(max(int(start), 0), data.n))

    # --- layout -------------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        d = self.data
        with Vertical(id="main"):
            yield Static(id="title", markup=False)
            with Vertical(id="prompt") as prompt:
                prompt.border_title = f"prompt: context c_1..c_{d.n} (click a token), fixed query x"
                prompt.border_subtitle = d.source
                yield PromptTokens(id="chips")
                yield Static(id="token-info", markup=False)
            with Horizontal(id="middle"):
                yield HeatmapPanel(id="heat")
                with Vertical(id="side"):
                    yield Static(id="check")
                    yield Static(id="gd")
                    yield Static(COMPACT_HINT, id="hint", markup=False)
            with Horizontal(id="curves"):
                yield CurvePanel("norm", id="curve-norm")
                yield CurvePanel("step", id="curve-step")
                yield CurvePanel("rel", id="curve-rel")
        yield Static(id="too-small", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#gd").border_title = "GD view (P1 Prop. 3.1)"
        self._timer = self.set_interval(PLAY_INTERVAL, self._tick, pause=True)
        self._check_size(self.size.width, self.size.height)
        self.refresh_all()

    def on_resize(self, event: Resize) -> None:
        self._check_size(event.size.width, event.size.height)

    @property
    def compact(self) -> bool:
        """Whether the compact layout is on (the terminal is below ``MIN_SIZE`` but at least ``COMPACT_MIN``)."""
        return self.screen_stack[0].has_class("compact")

    def _check_size(self, width: int, height: int) -> None:
        """Pick the layout for the terminal size: full, compact (CSS class ``compact``) or too small."""
        main = self.screen_stack[0]                  # the walkthrough's screen, also while the help is open
        small = width < COMPACT_MIN[0] or height < COMPACT_MIN[1]
        compact = not small and (width < MIN_SIZE[0] or height < MIN_SIZE[1])
        was_compact = self.compact
        main.set_class(small, "too-small")
        main.set_class(compact, "compact")
        main.query_one("#too-small", Static).update(
            f"The terminal is {width}×{height}; the walkthrough needs at least {COMPACT_MIN[0]}×{COMPACT_MIN[1]}\n"
            f"({MIN_SIZE[0]}×{MIN_SIZE[1]} for every panel).\n"
            "Enlarge the window (or use a smaller font), or press q to quit.")
        if compact:
            check_title = ("check: context vs (W_i, b_i) on x" if self.data.residual
                           else "check: context vs W+ΔW_i on x")
        else:
            check_title = ("check: context vs (W+ΔW_i, b+Δb_i) on x alone" if self.data.residual
                           else "check: context vs W + ΔW_i on the query alone")
        main.query_one("#check").border_title = check_title
        main.query_one(Footer).compact = compact     # less space between the keys, so that they all fit
        if compact != was_compact:
            self.refresh_all()                       # the title and the check are worded for the width
            self.refresh_bindings()                  # home/end: listed or not (check_action)

    # --- state changes ------------------------------------------------------------------------------------------

    def watch_i(self) -> None:
        self.refresh_all()

    def watch_show_baseline(self) -> None:
        self.refresh_all()

    def watch_step_view(self) -> None:
        self.refresh_all()

    def watch_playing(self, playing: bool) -> None:
        if playing:
            self._timer.resume()
        else:
            self._timer.pause()
        self.refresh_all()

    def jump(self, k: int) -> None:
        """Go to step ``k`` (clamped to 0..n)."""
        self.i = min(max(int(k), 0), self.data.n)

    def _tick(self) -> None:
        if self.i < self.data.n:
            self.i += 1
        if self.i >= self.data.n:
            self.playing = False

    def action_next(self) -> None:
        self.jump(self.i + 1)

    def action_previous(self) -> None:
        self.jump(self.i - 1)

    def action_first(self) -> None:
        self.jump(0)

    def action_last(self) -> None:
        self.jump(self.data.n)

    action_first_unlisted = action_first
    action_last_unlisted = action_last

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """home/end: the listed binding in the full layout, its unlisted twin in the compact one."""
        if action in ("first", "last"):
            return not self.compact
        if action in ("first_unlisted", "last_unlisted"):
            return self.compact
        return True

    def action_play(self) -> None:
        if not self.playing and self.i >= self.data.n:
            self.i = 0                                                # replay from the start
        self.playing = not self.playing

    def action_toggle_baseline(self) -> None:
        self.show_baseline = not self.show_baseline

    def action_toggle_step(self) -> None:
        self.step_view = not self.step_view

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # --- drawing ------------------------------------------------------------------------------------------------

    def refresh_all(self) -> None:
        d, i = self.data, self.i
        state = "▶ playing" if self.playing else "paused"
        baseline = 'n/a' if d.baseline is None else 'on' if self.show_baseline else 'off'
        if self.compact:                             # the step first: the title is what gets cut off
            title = (f"step i = {i} / {d.n} │ {state} │ baseline {baseline} │ "
                     f"view {'step' if self.step_view else 'ΔW_i'} │ {d.title}")
        else:
            title = (f"{d.title}   │   step i = {i} / {d.n}   │   {state}   │   baseline {baseline}   │   "
                     f"view {'step' if self.step_view else 'ΔW_i'}")
        self.query_one("#title", Static).update(title)
        self.query_one("#chips", PromptTokens).refresh()
        current = f"current c_{i}: {d.token_values[i - 1]}" if i else "no context consumed yet (i = 0)"
        self.query_one("#token-info", Static).update(f"{current}   │   query: {d.query_value}")
        heat = self.query_one("#heat", HeatmapPanel)
        M, D = d.shape
        heat.border_title = (f"step ΔW_{i} − ΔW_{i - 1} = −h ∇L_{i - 1}  (rank 1)" if self.step_view
                             else f"ΔW_{i} = u_{i} aᵀ/‖a‖²  (rank 1)")
        heat.refresh()
        self.query_one("#check", Static).update(self._check_text())
        self.query_one("#gd", Static).update(self._gd_text())
        t, b = d.trajectory, d.baseline if self.show_baseline else None
        for panel, name, values in (
            ("#curve-norm", "‖ΔW_i‖", lambda tr: tr.delta_W_norm[i]),
            ("#curve-step", "‖ΔW_(i+1) − ΔW_i‖", lambda tr: tr.step_norm[i] if i < d.n else np.nan),
            ("#curve-rel", "‖ΔW_(i+1) − ΔW_i‖/‖ΔW_i‖", lambda tr: tr.relative_change[i] if i < d.n else np.nan),
        ):
            widget = self.query_one(panel, CurvePanel)
            widget.border_title = f"{name} = {view.fmt_norm(values(t))}"
            if b is not None:
                widget.border_subtitle = (f"[{MODEL_COLOUR}]━ {d.model_label}[/]  "
                                          f"[{BASELINE_COLOUR}]━ {d.baseline_short} {view.fmt_norm(values(b))}[/]")
            else:
                why = "no baseline for this model" if d.baseline is None else "baseline off (b)"
                widget.border_subtitle = f"[{MODEL_COLOUR}]━ {d.model_label}[/]  [dim]{why}[/]"
            widget.refresh()

    def _check_text(self) -> Text:
        """The identity with its numbers; in the compact layout without the words after each number."""
        d, i = self.data, self.i
        compact = self.compact
        ctx = f"T_W(c_1..c_{i}, x)" if i else "T_W(x)"
        # A residual block needs the bias update too (P2): saying W + ΔW_i alone would misname the number shown.
        upd = f"T_(W_{i}, b_{i})(x)" if d.residual else f"T_(W+ΔW_{i})(x)"
        if d.readout is not None:
            label = "prediction ŷ (last output)" if compact else "prediction ŷ (last output coordinate)"
            rows = [(ctx, "context" if i else "no context", view.fmt_value(d.prediction_context(i))),
                    (upd, "query alone", view.fmt_value(d.prediction_update(i)))]
        else:
            label = "output vector (no readout): its norm" if compact else "output vector (no scalar readout): its norm"
            norms = d.output_norms(i)
            rows = [(f"‖{ctx}‖", "context" if i else "no context", view.fmt_value(norms[0])),
                    (f"‖{upd}‖", "query alone", view.fmt_value(norms[1]))]
        text = Text()
        text.append(f"{label}\n", style="dim")
        for sym, what, val in rows:
            text.append(f"{sym:<20}", style="bold")
            text.append(f"{val:>16}" if compact else f"{val:>16}  ", style=MODEL_COLOUR)
            text.append("\n" if compact else f"{what}\n", style="dim")
        if d.residual:
            text.append(f"W_{i} = W+ΔW_{i}, b_{i} = b_out+Δb_{i}\n" if compact
                        else f"  W_{i} = W + ΔW_{i},  b_{i} = b_out + Δb_{i}\n", style="dim")
            text.append(f"{f'‖Δb_{i}‖':<20}", style="bold")
            text.append(f"{view.fmt_norm(d.delta_b_norm(i)):>16}" + ("" if compact else "  "), style=MODEL_COLOUR)
            text.append("\n" if compact else "bias update\n", style="dim")
        if d.readout is not None:
            text.append(f"{'difference':<20}", style="bold")
            text.append(f"{view.fmt_small(d.prediction_difference(i)):>16}", style="bold green")
            text.append("\n" if compact else "  round-off\n", style="dim")
        text.append(f"{'max |Δ output|':<20}", style="bold")
        text.append(f"{view.fmt_abs(d.output_error(i)):>16}", style="green")
        text.append("\n" if compact else "  all outputs\n", style="dim")
        if d.target is not None:
            text.append(f"{'true ' + d.target_label:<20}", style="bold")
            text.append(f"{view.fmt_value(d.target):>16}", style="cyan")
        return text

    def _gd_text(self) -> Text:
        d, i = self.data, self.i
        t = d.trajectory
        text = Text()
        text.append(f"{'h = 1/‖a‖²':<28}", style="bold")
        text.append(f"{view.fmt_norm(t.h)}\n", style=MODEL_COLOUR)
        text.append(f"{f'‖ΔW_{i}‖':<28}", style="bold")
        text.append(f"{view.fmt_norm(t.delta_W_norm[i])}\n", style=MODEL_COLOUR)
        if i < d.n:
            text.append(f"step {i} consumes c_{i + 1}: W_{i + 1} = W_{i} − h ∇L_{i}(W_{i})\n", style="dim")
            for name, value in ((f"L_{i}(W_{i}) = tr(Δ_{i}ᵀW_{i})", t.loss[i]), (f"‖Δ_{i}‖ = ‖∇L_{i}‖", t.grad_norm[i]),
                                (f"‖ΔW_{i + 1} − ΔW_{i}‖", t.step_norm[i])):
                text.append(f"{name:<28}", style="bold")
                text.append(f"{view.fmt_norm(value)}\n", style=MODEL_COLOUR)
        else:
            text.append(f"all {d.n} tokens consumed: no further step\n\n\n\n", style="dim")
        text.append("L_i is linear in W and its gradient ignores W:\n"
                    "an exact rewriting of the telescoping sum ΔW_i,\n"
                    "not a fitted optimiser (THEORY §8.4).", style="italic #9a9a9a")
        return text


def screen_text(app: App) -> str:
    """The current screen as plain text (what a person sees, without colours)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)
