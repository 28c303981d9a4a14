"""Drive the walkthrough headless with Textual's Pilot: every key and click changes the state and the screen.

The screen text is read back as a person would see it (``screen_text``), so these tests check what is drawn,
not only the app's attributes.
"""
from __future__ import annotations

import asyncio
import re

import pytest

from implicit_icl.tui.app import HelpScreen, WalkthroughApp, screen_text
from implicit_icl.tui.data import random_data

SIZE = (140, 45)


@pytest.fixture(scope="module")
def data():
    return random_data(n_tokens=30, seed=1)


def run(app, body, size=SIZE):
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(pilot)
    asyncio.run(main())


async def wait_for(pilot, condition, timeout: float = 10.0) -> bool:
    """Let the app run until ``condition()`` holds (the play timer is wall-clock; CI machines are loaded)."""
    waited = 0.0
    while not condition() and waited < timeout:
        await pilot.pause(0.05)
        waited += 0.05
    return condition()


def step_of(text: str) -> int:
    return int(re.search(r"step i = (\d+) / \d+", text).group(1))


def shown_difference(text: str) -> str:
    return re.search(r"difference\s+(\S+)", text).group(1)


def test_keys_step_and_jump(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        assert app.i == 0 and step_of(screen_text(app)) == 0
        assert "no context consumed yet" in screen_text(app)
        await pilot.press("right", "right", "l")
        assert app.i == 3 and step_of(screen_text(app)) == 3
        assert "current c_3:" in screen_text(app) and "ΔW_3 = u_3 aᵀ/‖a‖²" in screen_text(app)
        await pilot.press("left", "h")
        assert app.i == 1
        await pilot.press("end")
        assert app.i == data.n and f"step {data.n} consumed c_{data.n}" in screen_text(app)
        await pilot.press("right")                     # clamped at n
        assert app.i == data.n
        await pilot.press("home", "left")              # clamped at 0
        assert app.i == 0
    run(app, body)


def test_click_token_jumps(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        chips = app.query_one("#chips")
        await pilot.click("#chips", offset=chips.chip_offset(12))
        await pilot.pause()
        assert app.i == 12
        text = screen_text(app)
        assert step_of(text) == 12 and "current c_12:" in text
        assert "✓ 11 " in text and "▶ 12 " in text and "✓ 12" not in text and "✓ 13" not in text
        await pilot.click("#chips", offset=chips.chip_offset(3))
        assert app.i == 3
    run(app, body)


def test_play_and_pause(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("space")
        assert app.playing and "▶ playing" in screen_text(app)
        assert await wait_for(pilot, lambda: app.i >= 2)  # the timer steps on by itself
        await pilot.press("space")
        stopped_at = app.i
        assert not app.playing and "paused" in screen_text(app)
        assert 1 <= stopped_at < data.n
        await pilot.pause(0.7)
        assert app.i == stopped_at                      # paused: no more steps
    run(app, body)


def test_play_stops_at_end_and_replays(data):
    app = WalkthroughApp(data, start=data.n - 1)

    async def body(pilot):
        await pilot.press("space")
        assert await wait_for(pilot, lambda: not app.playing)     # stops by itself at the end
        assert app.i == data.n
        await pilot.press("space")                      # at the end: replay from 0
        assert app.playing and app.i < data.n // 2
        await pilot.press("space")
    run(app, body)


def test_toggles(data):
    app = WalkthroughApp(data, start=5)

    async def body(pilot):
        text = screen_text(app)
        assert "baseline on" in text and f"━ {data.baseline_short} " in text
        await pilot.press("b")
        text = screen_text(app)
        assert not app.show_baseline and "baseline off" in text and f"━ {data.baseline_short}" not in text
        await pilot.press("s")
        text = screen_text(app)
        assert app.step_view and "ΔW_5 − ΔW_4 = −h ∇L_4" in text and "u_i − u_(i−1)" in text
        await pilot.press("home")
        assert "No step at i = 0" in screen_text(app)
        await pilot.press("s", "b")
        text = screen_text(app)
        assert not app.step_view and app.show_baseline and "ΔW_0 = u_0 aᵀ/‖a‖²" in text
    run(app, body)


def test_help_and_quit(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Read it honestly" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark")
        await pilot.press("question_mark")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    run(app, body)


def test_footer_lists_keys(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        footer = screen_text(app).splitlines()[-1]
        for key in ("→/l", "←/h", "space", "baseline", "help", "quit"):
            assert key in footer
    run(app, body)


def test_displayed_difference_equals_library_at_every_step(data):
    """The check panel's difference is the library's ``pred_context − pred_update`` at the readout, every i."""
    app = WalkthroughApp(data)

    async def body(pilot):
        t = data.trajectory
        for i in range(data.n + 1):
            app.jump(i)
            await pilot.pause()
            text = screen_text(app)
            assert step_of(text) == i
            library = t.pred_context[i][data.readout] - t.pred_update[i][data.readout]
            shown = shown_difference(text)
            assert shown == f"{library:+.2e}"
            assert abs(float(shown) - library) <= 5e-3 * abs(library) + 1e-300   # 3 significant digits
            # and the two predictions themselves, to 11 decimals
            assert f"{t.pred_context[i][data.readout]:+.11f}" in text
            assert f"{t.pred_update[i][data.readout]:+.11f}" in text
    run(app, body)


def test_too_small_terminal_says_so(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        text = " ".join(screen_text(app).split())
        assert "needs at least 80×24" in text and "100×34 for every panel" in text and "79×30" in text
        assert "step i =" not in text
    run(app, body, size=(79, 30))


def test_resize_switches_between_full_compact_and_too_small(data):
    """120×40: every panel; 80×24: the compact layout (heatmap, check with its numbers, a hint, no GD view or
    curves); below 80×24: the too-small message; and back again."""
    app = WalkthroughApp(data, start=3)
    t = data.trajectory

    def full(text):
        assert not app.screen.has_class("compact") and not app.screen.has_class("too-small")
        assert app.query_one("#gd").display and app.query_one("#curves").display
        assert "GD view" in text and re.search(r"‖ΔW_\d+‖ =", text) and "A terminal of at least" not in text

    async def body(pilot):
        full(screen_text(app))
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        text = screen_text(app)
        assert app.screen.has_class("compact") and not app.screen.has_class("too-small")
        assert not app.query_one("#gd").display and not app.query_one("#curves").display
        assert "GD view (P1" not in text and not re.search(r"‖ΔW_\d+‖ =", text)
        assert "A terminal of at least 100×34 also shows" in text and "q quit" in text
        assert "step i = 3 / 30" in text and "ΔW_3 = u_3 aᵀ/‖a‖²" in text
        assert f"{t.pred_context[3][data.readout]:+.11f}" in text          # the check keeps its numbers
        assert f"{t.pred_update[3][data.readout]:+.11f}" in text
        assert "max |Δ output|" in text and "✓  1" in text and "▶  3" in text
        await pilot.press("right")                                           # the keys still work
        await pilot.pause()
        assert "step i = 4 / 30" in screen_text(app) and "▶  4" in screen_text(app)
        await pilot.resize_terminal(79, 24)
        await pilot.pause()
        text = screen_text(app)
        assert app.screen.has_class("too-small") and not app.screen.has_class("compact")
        assert "needs at least 80×24" in text and "step i =" not in text
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        text = screen_text(app)
        full(text)
        assert "check: context vs W + ΔW_i on the query alone" in text and "query alone" in text
    run(app, body, size=(120, 40))


def test_the_footer_fits_80_columns_and_home_end_work_in_both_layouts(data):
    """At 80 columns the footer used to stop at "s ΔW / ste": "? help" and "q quit" were cut off. The compact
    layout leaves home/end out of the footer (their unlisted twins keep the keys working); the full one lists
    them."""
    app = WalkthroughApp(data, start=3)

    async def body(pilot):
        footer = screen_text(app).rstrip().splitlines()[-1]
        assert app.screen.has_class("compact")
        assert "? help" in footer and "q quit" in footer and "home first" not in footer, footer
        await pilot.press("end")
        assert app.i == data.n
        await pilot.press("home")
        assert app.i == 0
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        footer = screen_text(app).rstrip().splitlines()[-1]
        assert "home first" in footer and "end last" in footer and "q quit" in footer, footer
        await pilot.press("end")
        assert app.i == data.n
        await pilot.press("home")
        assert app.i == 0
    run(app, body, size=(80, 24))


def test_long_prompt_scrolls_to_current_token():
    """With more chip rows than fit (50 tokens at width 100: 8 rows, 5 shown), the current token stays visible,
    and clicking maps to the token drawn under the mouse."""
    data = random_data(n_tokens=50, seed=2)
    app = WalkthroughApp(data)

    async def body(pilot):
        chips = app.query_one("#chips")
        assert chips.chip_offset(1) is not None and chips.chip_offset(50) is None
        await pilot.press("end")
        text = screen_text(app)
        assert "▶ 50 " in text and chips.chip_offset(1) is None
        assert f"✓{1:>3} " not in text and f"✓{49:>3} " in text     # row of c_1 scrolled out of view
        await pilot.click("#chips", offset=chips.chip_offset(45))
        assert app.i == 45 and "▶ 45 " in screen_text(app)
        for k in range(1, 51):                                      # every visible chip maps back to itself
            offset = chips.chip_offset(k)
            if offset is not None:
                assert chips.token_at(*offset) == k
    run(app, body, size=(100, 40))


# --- the check names what it compares (reviewer's findings 1 and 9) -------------------------------------------------

def test_check_panel_names_the_bias_update_of_a_residual_block():
    """A pre-LN block's query alone matches the output with context only with b_out + Δb_i too: the check says
    T_(W_i, b_i)(x) with W_i = W + ΔW_i, b_i = b_out + Δb_i, and shows ‖Δb_i‖ (the library's value)."""
    from implicit_icl.reference import BlockConfig, init_block
    from implicit_icl.tui import view
    from implicit_icl.tui.data import regression_data

    cfg = BlockConfig(d_model=3, d_mlp=16, n_heads=1, kind="pre-ln")
    res = regression_data(init_block(cfg, 2), cfg, n_tokens=8, title="pre-ln block", source="test",
                          model_label="m")
    app = WalkthroughApp(res, start=3)

    async def body(pilot):
        text = screen_text(app)
        assert "check: context vs (W+ΔW_i, b+Δb_i) on x alone" in text
        assert "T_(W_3, b_3)(x)" in text and "W_3 = W + ΔW_3,  b_3 = b_out + Δb_3" in text
        assert re.search(r"‖Δb_3‖\s+" + re.escape(view.fmt_norm(res.delta_b_norm(3))) + r"\s+bias update", text)
        assert "T_(W+ΔW_3)(x)" not in text
        assert f"{res.trajectory.pred_update[3][res.readout]:+.11f}" in text
    run(app, body)


def test_check_panel_of_a_plain_block_keeps_w_plus_delta_w(data):
    """A plain block has no residual around the MLP (Δb_i = 0): W + ΔW_i alone is the whole update."""
    app = WalkthroughApp(data, start=3)

    async def body(pilot):
        text = screen_text(app)
        assert "T_(W+ΔW_3)(x)" in text and "Δb" not in text
        assert "check: context vs W + ΔW_i on the query alone" in text
    run(app, body)


def test_help_is_honest_about_round_off_and_the_bias():
    from implicit_icl.tui.app import HELP_TEXT

    flat = " ".join(HELP_TEXT.split())
    assert "always ~1e-16" not in flat
    assert "float64: ~1e-16 relative to the output; float32, e.g. --backend torch: ~1e-7" in flat
    assert "b_out + Δb_i, Δb_i = r_i − r" in flat and "T_(W+ΔW_i, b+Δb_i)(x)" in flat


# --- one step index on screen at a time (issue 18, item 6) ---------------------------------------------------------

STEP_PATTERNS = {                         # what each panel writes about the step, and the index it must carry
    r"ΔW_(\d+) − ΔW_(\d+)": lambda i: (i, i - 1),        # heatmap title, GD view, curve titles
    r"∇L_(\d+)": lambda i: i - 1,                        # heatmap title, GD view: step i is −h ∇L_(i−1)
    r"step (\d+)": lambda i: i,                          # heatmap title, GD view, the relative-step curve
    r"consumed c_(\d+)": lambda i: i,                    # heatmap title, GD view
    r"current c_(\d+)": lambda i: i,                     # prompt panel
    r"step i = (\d+)": lambda i: i,                      # app title
    r"ŷ\(c_1\.\.c_(\d+)\)": lambda i: i,                 # prediction curve
}


def step_indices(app) -> dict[str, set]:
    """Every step index written on screen (and in the curve titles, which a narrow panel may cut), by pattern."""
    texts = [screen_text(app), app.query_one("#heat").border_title]
    texts += [str(c.border_title) for c in app.query("CurvePanel")]
    found = {}
    for pattern in STEP_PATTERNS:
        for text in texts:
            for m in re.finditer(pattern, text):
                found.setdefault(pattern, set()).add(tuple(map(int, m.groups())) if len(m.groups()) > 1
                                                     else int(m.group(1)))
    return found


def test_every_panel_shows_the_same_step_at_every_i(data):
    """Step view on: at each i the heatmap, the GD view, the curves and the prompt all describe step i = ΔW_i −
    ΔW_(i−1) (the step that consumed c_i); at i = 0 there is no step and no index −1 anywhere."""
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("s")
        for i in range(data.n + 1):
            if i:
                await pilot.press("right")
            assert app.i == i
            found = step_indices(app)
            for pattern, expected in STEP_PATTERNS.items():
                if i == 0:
                    assert pattern not in found or pattern == r"step i = (\d+)", (i, pattern, found)
                    continue
                assert found.get(pattern) == {expected(i)}, (i, pattern, found.get(pattern))
            text = screen_text(app) + str(app.query_one("#heat").border_title)
            assert "_-1" not in text and "_(-" not in text and "−1‖" not in text
    run(app, body)


def test_at_step_zero_every_panel_says_there_is_no_step(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("s")
        assert "no step at i = 0" in str(app.query_one("#heat").border_title)
        for panel in ("#curve-step", "#curve-rel"):
            assert "no step at i = 0" in str(app.query_one(panel).border_title)
        assert "no step yet at i = 0" in screen_text(app)
    run(app, body)


def test_prediction_curve_panel_draws_the_librarys_values(data):
    """The ŷ panel (issue 18, item 7) plots ``data.curves("pred")`` and titles ŷ, the truth, the least-squares
    prediction and the untrained block's at the current i with the library's numbers."""
    from implicit_icl.reference.tasks import least_squares_predictions, regression_prompts
    from implicit_icl.tui import view

    prompt = regression_prompts(1, data.n, 2, 1)
    lsq = least_squares_predictions(prompt.x, prompt.y, prompt.x_query)[0]
    app = WalkthroughApp(data)

    async def body(pilot):
        panel = app.query_one("#curve-pred")
        assert panel.display
        for i in (0, 1, 7, data.n):
            app.jump(i)
            await pilot.pause()
            title, sub = str(panel.border_title), str(panel.border_subtitle)
            assert view.fmt_norm(data.trajectory.pred_context[i][data.readout]) in title
            assert f"truth {view.fmt_norm(prompt.target[0])}" in title
            assert f"least sq. {view.fmt_norm(lsq[i])}" in sub
            assert f"{data.baseline_short} {view.fmt_norm(data.baseline.pred_context[i][data.readout])}" in sub
            for name, values in panel.shown().items():
                assert values is data.curves("pred")[name] or (values == data.curves("pred")[name]).all()
        assert "ŷ(c_1..c_" in screen_text(app)
    run(app, body)


# --- labels (issue 18, item 8) ---------------------------------------------------------------------------------------

def test_prompt_shows_all_50_tokens_at_120x40_and_says_the_numbers_are_y():
    data = random_data(n_tokens=50, seed=2)
    app = WalkthroughApp(data, start=50)

    async def body(pilot):
        text = screen_text(app)
        chips = app.query_one("#chips")
        for k in range(1, 51):
            assert chips.chip_offset(k) is not None, k
            assert re.search(rf"[✓▶ ]{k:>3} {re.escape(data.token_labels[k - 1])}", text), k
        title = str(app.query_one("#prompt").border_title)
        assert "numbers: y values, y_k = ⟨w, x_k⟩" in title and "scrolls" not in title
    run(app, body, size=(120, 40))


def test_prompt_says_when_it_scrolls():
    app = WalkthroughApp(random_data(n_tokens=200, seed=2), start=100)

    async def body(pilot):
        assert re.search(r"rows \d+–\d+ of \d+ shown \(scrolls\)", str(app.query_one("#prompt").border_title))
    run(app, body, size=(120, 40))


def test_h_and_l_are_explained_where_they_appear_and_in_the_help(data):
    from implicit_icl.tui.help import HELP_TEXT

    app = WalkthroughApp(data, start=4)

    async def body(pilot):
        text = screen_text(app)
        assert "h: the step size, set by the query alone" in text
        assert "L_i = tr(Δ_iᵀW): the loss whose step adds c_(i+1)" in text
    run(app, body)
    flat = " ".join(HELP_TEXT.split())
    assert "h = 1/‖a‖²: the step size, the same for every step, set by the query alone" in flat
    assert "L_i(W) = tr(Δ_iᵀ W): a loss linear in W" in flat
    assert "the number on token k is its y value, y_k = ⟨w, x_k⟩" in flat
    assert "step i is the step that consumed c_i, ΔW_i − ΔW_(i−1)" in flat


def test_ctrl_c_quits(data):
    """Issue 17: Ctrl-C quits the walkthrough as a terminal user expects (Textual's default only says "ctrl+q")."""
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running
    run(app, body)


def test_ctrl_c_quits_from_the_help_too(data):
    app = WalkthroughApp(data)

    async def body(pilot):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running
    run(app, body)
