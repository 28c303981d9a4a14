"""The Textual walkthrough: step through a prompt token by token and watch each weight delta.

The app is handed a prepared ``WalkthroughData`` (``tui/data.py``); every number it shows is read from the
library's ``Trajectory`` (P1 §3) — the app only draws. State: the current step ``i`` (``i`` context tokens
consumed, fixed query), whether the untrained baseline is drawn, and whether the heatmap shows ``ΔW_i`` or the
step ``ΔW_i − ΔW_{i−1}``.
"""
from __future__ import annotations

import io

import numpy as np
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.reactive import reactive
from textual.widgets import Footer, Static

from . import view
from .data import WalkthroughData
from .help import HELP_TEXT, HelpScreen
from .panels import BASELINE_COLOUR, MODEL_COLOUR, CurvePanel, HeatmapPanel, MovedPanel, PromptTokens

__all__ = ["HELP_TEXT", "HelpScreen", "WalkthroughApp", "screen_text"]

MIN_SIZE = (100, 34)           # columns, lines: the full layout (every panel) from this size up
COMPACT_MIN = (80, 24)         # below MIN_SIZE but at least this: the compact layout (heatmap and check only);
                               # below this the panels cannot show their numbers
COMPACT_HINT = ("A terminal of at least {0}×{1} also shows the GD view, the curves ‖ΔW_i‖, "
                "‖ΔW_i − ΔW_(i−1)‖, their ratio and the prediction ŷ, next to the untrained baseline."
                "\n? help · q quit").format(*MIN_SIZE)
PLAY_INTERVAL = 0.3            # seconds per step while playing


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
    #curve-pred { width: 1.4fr; }
    #moved { width: 1.4fr; border: round #8f7f5f; padding: 0 1; }
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
        Binding("left_square_bracket", "layer(-1)", "layer", key_display="[/]"),     # a real model only
        Binding("right_square_bracket", "layer(1)", "layer", show=False),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),     # as a terminal user expects (issue 17)
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
                yield CurvePanel("pred", id="curve-pred")
                yield MovedPanel(id="moved")
        yield Static(id="too-small", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#gd").border_title = "GD view (P1 Prop. 3.1)"
        self.query_one("#curve-pred").display = self.data.readout is not None     # ŷ needs a scalar readout
        self.query_one("#moved").display = self.data.explanation is not None      # a real model's layer
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
        if action == "layer":
            return self.data.switch_layer is not None
        return True

    def action_play(self) -> None:
        if not self.playing and self.i >= self.data.n:
            self.i = 0                                                # replay from the start
        self.playing = not self.playing

    def action_toggle_baseline(self) -> None:
        self.show_baseline = not self.show_baseline

    def action_toggle_step(self) -> None:
        self.step_view = not self.step_view

    def action_layer(self, step: int) -> None:
        """A real model: the same text at the previous / next layer (clamped), at the same step i."""
        d = self.data
        layer = min(max(d.layer + step, 0), d.n_layers - 1)
        if layer != d.layer:
            self.data = d.switch_layer(layer=layer)
            self.refresh_all()

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
        self.query_one("#chips", PromptTokens).update()
        current = f"current c_{i}: {d.token_values[i - 1]}" if i else "no context consumed yet (i = 0)"
        self.query_one("#token-info", Static).update(f"{current}   │   query: {d.query_value}")
        heat = self.query_one("#heat", HeatmapPanel)
        M, D = d.shape
        if not self.step_view:
            heat.border_title = f"ΔW_{i} = u_{i} aᵀ/‖a‖²  (rank 1)"
        else:
            heat.border_title = (f"step {i} (consumed c_{i}): ΔW_{i} − ΔW_{i - 1} = −h ∇L_{i - 1}  (rank 1)" if i
                                 else "step view: no step at i = 0 (ΔW_0 = 0)")
        heat.refresh()
        self.query_one("#prompt").border_subtitle = d.source
        self.query_one("#check", Static).update(self._check_text())
        if d.explanation is not None:
            self.query_one("#moved", MovedPanel).update()
        self.query_one("#gd", Static).update(self._gd_text())
        for curve in self.query(CurvePanel):
            curve.update_titles()

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
        """Step ``i``, the one that consumed ``c_i``, read as a gradient step (P1 Prop. 3.1): the same ``i`` as the
        heatmap's step view and the curves."""
        d, i = self.data, self.i
        t = d.trajectory
        text = Text()
        text.append(f"{'h = 1/‖a‖²':<28}", style="bold")
        text.append(f"{view.fmt_norm(t.h)}\n", style=MODEL_COLOUR)
        text.append("h: the step size, set by the query alone\n", style="dim")
        text.append(f"{f'‖ΔW_{i}‖':<28}", style="bold")
        text.append(f"{view.fmt_norm(t.delta_W_norm[i])}\n", style=MODEL_COLOUR)
        if i:
            loss, grad, step = d.gd_step(i)
            j = i - 1
            text.append(f"step {i} consumed c_{i}: W_{i} = W_{j} − h ∇L_{j}(W_{j})\n", style="dim")
            for name, value in ((f"L_{j}(W_{j}) = tr(Δ_{j}ᵀW_{j})", loss), (f"‖Δ_{j}‖ = ‖∇L_{j}‖", grad),
                                (f"‖ΔW_{i} − ΔW_{j}‖", step)):
                text.append(f"{name:<28}", style="bold")
                text.append(f"{view.fmt_norm(value)}\n", style=MODEL_COLOUR)
        else:
            text.append("no step yet at i = 0 (→ consumes the first token)\n\n\n\n", style="dim")
        text.append("L_i = tr(Δ_iᵀW): the loss whose step adds c_(i+1)\n", style="dim")
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
