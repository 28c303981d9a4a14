"""The walkthrough's real-model view (issue 18, item 9): on ``--model minilm`` it shows what ``implicit-icl explain``
computes (the tokens that move W most, ‖ΔW‖/‖W‖ beside the random-layer baseline), switches layers with [ and ],
and opens on the README's layer 3. Skipped where the bundled MiniLM package is not installed."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from implicit_icl.tui.app import WalkthroughApp, screen_text
from implicit_icl.tui.data import DEFAULT_LAYER, WalkthroughError, random_data, text_data

TEXT = "France is to Paris as Japan is to"


@pytest.fixture(scope="module")
def data():
    try:
        return text_data("minilm", TEXT)
    except WalkthroughError as exc:
        pytest.skip(f"the minilm loader or its weights are not installed here: {exc}")


def run(app, body, size=(140, 45)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(pilot)
    asyncio.run(main())


def test_opens_on_the_readme_layer_and_uses_explains_figures(data):
    """The numbers are ``explain_layer``'s (the same call ``implicit-icl explain`` makes), not recomputed."""
    from implicit_icl.models.minilm import explain_layer, load_minilm

    assert DEFAULT_LAYER == 3 and data.layer == 3 and data.n_layers == 6
    ex = explain_layer(load_minilm(), TEXT, 3, dynamics=False, baseline_seed=0)
    moved = data.moved_tokens()
    expected = sorted(((ex.tokens[j], m) for j, m in zip(ex.context_index, ex.marginal_norm)), key=lambda p: -p[1])
    assert [t for t, _ in moved] == [t for t, _ in expected]
    np.testing.assert_array_equal([m for _, m in moved], [m for _, m in expected])
    assert moved[0][0] == "[CLS]"
    assert data.relative_norms() == (ex.relative_norm, ex.baseline.relative_norm)


def test_panel_shows_the_tokens_and_the_relative_norms(data):
    app = WalkthroughApp(data, start=4)

    async def body(pilot):
        text = screen_text(app)
        trained, random = data.relative_norms()
        assert f"‖ΔW‖/‖W‖ {trained:.2%}  random layer {random:.2%}" in text
        for token, value in data.moved_tokens()[:5]:
            assert f"{value:.3f}" in text and token in text
        assert "layer 3 of 0..5" in text and "[/] layer" in text
        assert not app.query_one("#curve-pred").display and app.query_one("#moved").display
    run(app, body)


def test_layer_switcher(data):
    """] and [ step through the layers (clamped to 0..5) at the same step i; each panel follows."""
    app = WalkthroughApp(data, start=4)

    async def body(pilot):
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert app.data.layer == 4 and app.i == 4
        text = screen_text(app)
        assert "minilm layer 4" in text and "layer 4 of 0..5" in text
        trained, random = app.data.relative_norms()
        assert f"‖ΔW‖/‖W‖ {trained:.2%}  random layer {random:.2%}" in text
        assert f"‖ΔW_4‖ = " in str(app.query_one("#curve-norm").border_title)
        for _ in range(3):
            await pilot.press("right_square_bracket")
        assert app.data.layer == 5
        for _ in range(7):
            await pilot.press("left_square_bracket")
        await pilot.pause()
        assert app.data.layer == 0 and "minilm layer 0" in screen_text(app)
    run(app, body)


def test_no_layer_key_without_a_real_model():
    app = WalkthroughApp(random_data(n_tokens=5, seed=0))

    async def body(pilot):
        data = app.data
        assert "[/] layer" not in screen_text(app)
        await pilot.press("left_square_bracket", "right_square_bracket")
        assert app.data is data and not app.query_one("#moved").display
    run(app, body)


def test_cli_opens_on_layer_3(capsys, tmp_path, data):
    from implicit_icl.cli import main

    out = tmp_path / "m.txt"
    assert main(["walkthrough", "--model", "minilm", TEXT, "--export", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "minilm layer 3" in text and "[CLS]" in text and "random layer" in text
