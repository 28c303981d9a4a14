"""The walkthrough's prepared data and drawing helpers (no Textual app needed).

Tolerances: values the data object forms from the library's factors are compared with the library's own
matrices at 1e-12 relative (float64 round-off of a few operations on entries of order 1).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text

from implicit_icl import checkpoint
from implicit_icl.reference import BlockConfig, init_block, trajectory
from implicit_icl.reference.tasks import regression_prompts
from implicit_icl.tui import data as wdata
from implicit_icl.tui import view


@pytest.fixture(scope="module")
def small():
    return wdata.random_data(n_tokens=9, seed=3)


def test_trajectory_is_the_librarys(small):
    """The walkthrough's trajectory (one masked pass, ``prefix_trajectory``) equals the reference ``trajectory``,
    which re-runs the block on every prefix, to float64 round-off; the baseline likewise."""
    prompt = regression_prompts(1, 9, 2, 3)
    ref = trajectory(init_block(wdata.RANDOM_CONFIG, 3), wdata.RANDOM_CONFIG, prompt.context[0], prompt.query[0])
    assert_same_trajectory(small.trajectory, ref)
    assert small.target == pytest.approx(float(prompt.target[0]), abs=0)
    base = trajectory(init_block(wdata.RANDOM_CONFIG, 4), wdata.RANDOM_CONFIG, prompt.context[0], prompt.query[0])
    assert_same_trajectory(small.baseline, base)


FIELDS = ("a", "delta", "u", "delta_b", "delta_W_norm", "step_norm", "grad_u", "loss", "grad_norm", "pred_context",
          "pred_update")


def assert_same_trajectory(got, want, rel=1e-12):
    """Every array field within ``rel × (1 + max |want|)``: float64 round-off of sums of a few dozen terms."""
    assert got.n == want.n and got.h == pytest.approx(want.h, rel=rel)
    for name in FIELDS:
        w = getattr(want, name)
        np.testing.assert_allclose(getattr(got, name), w, rtol=0, atol=rel * (1 + np.abs(w).max()), err_msg=name)
    np.testing.assert_allclose(got.relative_change[1:], want.relative_change[1:], rtol=1e-10)


@pytest.mark.parametrize("kind", ["plain", "p1-skip", "residual", "pre-ln", "post-ln"])
@pytest.mark.parametrize("causal", [True, False])
def test_fast_prefix_trajectory_equals_the_per_prefix_reruns(kind, causal):
    """The data prep no longer re-runs the block on each prefix (O(n³), which made --tokens 2000 hang): the fast
    path gives the old numbers, for every block kind, to ~1e-12."""
    cfg = BlockConfig(d_model=4, d_mlp=12, n_heads=2, kind=kind, activation="gelu", causal=causal, attn_bias=True)
    params = init_block(cfg, 5)
    d = wdata.regression_data(params, cfg, n_tokens=11, seed=2, title="t", source="s", model_label="m")
    prompt = regression_prompts(1, 11, 3, 2)
    assert_same_trajectory(d.trajectory, trajectory(params, cfg, prompt.context[0], prompt.query[0]))
    assert_same_trajectory(d.baseline, trajectory(init_block(cfg, 3), cfg, prompt.context[0], prompt.query[0]))


def test_data_prep_does_not_rerun_the_block_per_prefix(monkeypatch):
    """``reference.trajectory`` (n+1 block runs) is the ground truth above, not what the walkthrough calls."""
    import implicit_icl.reference.dynamics as dynamics

    def per_prefix(*args, **kwargs):
        raise AssertionError("the walkthrough re-ran the block on every prefix (reference.trajectory)")
    monkeypatch.setattr(dynamics, "trajectory", per_prefix)
    monkeypatch.setattr(wdata, "trajectory", per_prefix, raising=False)
    assert wdata.random_data(n_tokens=40, seed=1).n == 40


def test_max_tokens_is_quick():
    """The documented maximum, which took minutes before (500 tokens: 31 s; 1000: 98 s): now about a second."""
    import time

    start = time.perf_counter()
    d = wdata.default_data(n_tokens=wdata.MAX_TOKENS)
    assert d.n == wdata.MAX_TOKENS and d.baseline.n == wdata.MAX_TOKENS
    assert time.perf_counter() - start < 20                     # generous: ~1 s measured on a 2-core CPU
    assert np.max(d.trajectory.prediction_error) < 1e-12 * (1 + np.abs(d.trajectory.pred_context).max())


def test_step_is_difference_of_updates(small):
    for i in range(1, small.n + 1):
        want = small.delta_W(i) - small.delta_W(i - 1)
        np.testing.assert_allclose(small.step(i), want, rtol=0, atol=1e-12 * (1 + np.abs(want).max()))
    with pytest.raises(IndexError):
        small.step(0)


@pytest.mark.parametrize("rows, cols", [(18, 40), (3, 128), (6, 256), (2, 7)])
def test_display_scale_is_max_cell_over_steps(small, rows, cols):
    """The heatmap's colour scale is the largest |cell| of the resampled ΔW_i over all i (computed from factors)."""
    t = small.trajectory
    scale = view.outer_display_scale(t.u, t.a, t.h, rows, cols)
    cells = [np.abs(view.resample_matrix(small.delta_W(i).T, rows, cols)).max() for i in range(small.n + 1)]
    assert scale == pytest.approx(max(cells), rel=1e-12)
    step_scale = view.outer_display_scale(-t.grad_u, t.a, t.h, rows, cols)
    cells = [np.abs(view.resample_matrix(small.step(i).T, rows, cols)).max() for i in range(1, small.n + 1)]
    assert step_scale == pytest.approx(max(cells), rel=1e-12)


def test_prediction_difference_is_round_off(small):
    for i in range(small.n + 1):
        d = small.prediction_difference(i)
        assert d == small.prediction_context(i) - small.prediction_update(i)
        assert abs(d) < 1e-12                                    # the theorem, at float64 round-off
        assert small.output_error(i) == small.trajectory.prediction_error[i]


def test_default_is_random_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: tmp_path / "absent.npz")
    d = wdata.default_data(n_tokens=5)
    assert "UNTRAINED" in d.source and "no bundled checkpoint" in d.source
    assert d.n == 5


def test_default_opens_bundled_checkpoint(tmp_path, monkeypatch):
    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=1)
    path = checkpoint.save_checkpoint(tmp_path / "p1.npz", init_block(cfg, 7), cfg, n_points=6)
    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: path)
    d = wdata.default_data()
    assert d.n == 6                                              # from the checkpoint's metadata
    assert "bundled checkpoint" in d.source and d.shape == (8, 3)
    assert "UNTRAINED" in wdata.default_data(random=True).source


def test_stack_checkpoint_is_refused(tmp_path):
    cfg = BlockConfig(d_model=3, d_mlp=4)
    params = {f"blocks.{l}.{k}": v for l in range(2) for k, v in init_block(cfg, l).items()}
    path = checkpoint.save_checkpoint(tmp_path / "stack.npz", params, cfg)
    with pytest.raises(checkpoint.CheckpointError, match="stack of 2 blocks"):
        wdata.checkpoint_data(path)


@pytest.mark.parametrize("bad", [0, -1, wdata.MAX_TOKENS + 1, 2.5, True])
def test_tokens_must_be_positive_int(bad):
    with pytest.raises(wdata.WalkthroughError, match="n_tokens must be an integer"):   # the command says --tokens
        wdata.check_tokens(bad)


def test_text_hook_reports_missing_loader():
    try:
        import implicit_icl.models.minilm  # noqa: F401
    except ImportError:
        with pytest.raises(wdata.WalkthroughError, match="not available"):
            wdata.text_data("minilm", "a b c")
    with pytest.raises(wdata.WalkthroughError, match="--model gpt9: gpt9 is not a folder"):     # a name or a path
        wdata.text_data("gpt9", "a b c")


# --- drawing helpers ---------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 300), out=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_resample_block_average(size, out, seed):
    """Shrinking averages contiguous blocks (so it keeps the range); growing repeats whole entries."""
    v = np.random.default_rng(seed).standard_normal(size)
    r = view.resample(v, out)
    assert r.shape == (out,)
    assert v.min() - 1e-12 <= r.min() and r.max() <= v.max() + 1e-12
    if out < size:                                               # near-equal blocks: the mean is kept within
        edges = np.linspace(0, size, out + 1).round().astype(int)
        want = np.array([v[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
        np.testing.assert_allclose(r, want, atol=1e-12)
    elif out % size == 0:
        np.testing.assert_array_equal(r, np.repeat(v, out // size))


def test_diverging_is_centred():
    assert view.diverging(0.0, 1.0) == "#%02x%02x%02x" % view.NEUTRAL
    red, blue = view.diverging(1.0, 1.0), view.diverging(-1.0, 1.0)
    assert int(red[1:3], 16) > int(red[5:7], 16)                 # positive: more red than blue
    assert int(blue[5:7], 16) > int(blue[1:3], 16)               # negative: more blue than red
    assert view.diverging(5.0, 1.0) == red                       # saturates at the scale
    assert view.diverging(1.0, 0.0) == view.diverging(0.0, 1.0)  # zero scale: all neutral, no division


def test_heatmap_fits_panel():
    m = np.arange(128 * 3, dtype=float).reshape(3, 128)
    lines, img = view.heatmap(m, 1.0, 40, 9)
    assert len(lines) == 9 and all(isinstance(t, Text) and len(t) == 40 for t in lines)
    assert img.shape == (18, 40)                                  # 3 rows × 6 pixels, 128 → 40 columns averaged
    np.testing.assert_allclose(img[0].mean(), m[0].mean(), rtol=0.05)


def test_braille_plot_marks_and_skips_nan():
    values = np.array([4.0, 2.0, 1.0, np.nan])
    lines, (lo, hi) = view.braille_plot([(values, "#ffffff")], 10, 3, n_points=4, marker=3, log=True)
    assert (lo, hi) == pytest.approx((1.0, 4.0))
    assert len(lines) == 3 and all(len(t) == 10 for t in lines)
    plain = "".join(t.plain for t in lines)
    assert "│" in plain                                           # the marker column at x = 3 (no value: nan)
    assert lines[0].plain[0] != " " and lines[-1].plain[-1] == "│"



def _cells(lines) -> list:
    return [[(t.plain[s.start:s.end], str(s.style)) for s in t.spans] for t in lines]


_R, _G, _FAINT, _M = "#ff0000", "#00ff00", "#8a8a40", " on #3a3a1a"       # the series' colours, the marker column


@pytest.mark.parametrize("options, y_range, cells", [
    (dict(marker=2), (-1.0, 3.0), [
        [("⢠", _R), ("⢣", _R), ("⡒", _R + _M), ("⠤", _G), ("⣠", _R), (" ", _FAINT)],
        [("⠋", _R), ("⠁", _G), ("⠁", _R + _M), (" ", _FAINT), ("⠈", _G), ("⢳", _R)]]),
    (dict(marker=3, log=True), (0.2, 3.0), [
        [("⣀", _G), ("⡱", _R), ("⡉", _R), ("⠒", _G + _M), ("⡔", _R), (" ", _FAINT)],
        [(" ", _FAINT), (" ", _FAINT), (" ", _FAINT), ("│", _FAINT + _M), ("⠑", _G), ("⢄", _G)]]),
    (dict(marker=5, y_range=(-2.0, 4.0)), (-2.0, 4.0), [
        [("⢀", _R), ("⢦", _R), ("⠤", _G), ("⠤", _G), ("⡠", _R), ("⡀", _R + _M)],
        [("⠋", _R), ("⠁", _G), ("⠁", _R), (" ", _FAINT), ("⠈", _G), ("⠫", _R + _M)]]),
])
def test_braille_plot_draws_exactly_these_cells(options, y_range, cells):
    """A small plot pinned cell by cell (character and style): two series sharing cells (the first wins), a gap,
    a log axis dropping values <= 0, a given y range, the marker column over dots and over an empty cell."""
    a = np.array([0.0, 3.0, 1.0, np.nan, 2.0, -1.0])
    b = np.array([1.0, 1.0, 2.5, 2.0, 0.5, 0.2])
    lines, used = view.braille_plot([(a, _R), (b, _G)], 6, 2, n_points=6, **options)
    assert used == pytest.approx(y_range, rel=1e-12) and _cells(lines) == cells


@pytest.mark.parametrize("series, log, y_range, last", [
    ([], False, (0.0, 1.0), (" ", _FAINT)), ([], True, (1.0, 10.0), (" ", _FAINT)),
    ([(np.array([np.nan, -1.0]), "#ffffff")], False, (-1.0, 0.0), ("⢀", "#ffffff")),
    ([(np.array([np.nan, -1.0]), "#ffffff")], True, (1.0, 10.0), (" ", _FAINT)),
])
def test_braille_plot_without_values_to_draw_keeps_a_default_range(series, log, y_range, last):
    lines, used = view.braille_plot(series, 3, 1, n_points=2, marker=0, log=log)
    assert used == y_range and _cells(lines) == [[("│", _FAINT + _M), (" ", _FAINT), last]]

# --- residual blocks: the check names the bias update (the reviewer's finding 1) -----------------------------------

def test_residual_blocks_carry_the_bias_update():
    """Every kind but plain has a residual around the MLP: the query alone reproduces the output only with
    ``b_out + Δb_i`` too, so the data says so (``residual``) and gives ‖Δb_i‖; a plain block has Δb_i = 0."""
    from implicit_icl.reference import Update, apply_update
    from implicit_icl.reference.blocks import head

    for kind in ("plain", "p1-skip", "residual", "pre-ln", "post-ln"):
        cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=1, kind=kind)
        d = wdata.regression_data(init_block(cfg, 1), cfg, n_tokens=6, title="t", source="s", model_label="m")
        t = d.trajectory
        assert d.residual is (kind != "plain"), kind
        assert d.delta_b_norm(4) == pytest.approx(float(np.linalg.norm(t.delta_b[4])), rel=0)
        if kind == "plain":
            assert d.delta_b_norm(4) == 0
            continue
        assert d.delta_b_norm(4) > 0
        # W + ΔW_4 alone (no Δb) misses the output with context by far more than round-off
        params = init_block(cfg, 1)
        prompt = regression_prompts(1, 6, 2, 0)
        from implicit_icl.reference.blocks import sequence, taps
        a_x, r_x = (v[-1] for v in taps(params, cfg, sequence(prompt.context[0][:0], prompt.query[0])))
        without_b = head(apply_update(params, Update(t.u[4], t.a, np.zeros_like(t.a))), cfg, a_x, r_x)
        assert np.abs(without_b - t.pred_context[4]).max() > 1e-3, kind
        assert np.abs(t.pred_update[4] - t.pred_context[4]).max() < 1e-12


def test_a_hidden_bias_update_is_refused():
    """residual=False with a non-zero Δb would make the check claim W + ΔW_i alone: refused."""
    import dataclasses

    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=1, kind="pre-ln")
    d = wdata.regression_data(init_block(cfg, 1), cfg, n_tokens=4, title="t", source="s", model_label="m")
    with pytest.raises(wdata.WalkthroughError, match="non-zero bias update"):
        dataclasses.replace(d, residual=False)


# --- checkpoint titles say only what the metadata says (finding 10) ------------------------------------------------

@pytest.mark.parametrize("meta,title,source", [
    ({}, "checkpoint c.npz (plain block)", ""),
    ({"step": True}, "checkpoint c.npz (plain block)", ""),
    ({"step": "12"}, "checkpoint c.npz (plain block)", ""),
    ({"step": 0}, "plain block at training step 0 (c.npz): untrained", ", training step 0 (untrained)"),
    ({"step": 1200, "val_loss": 0.25}, "trained plain block (c.npz)", ", trained 1200 steps, val loss 0.25"),
])
def test_checkpoint_title_follows_its_metadata(tmp_path, meta, title, source):
    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=1)
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", init_block(cfg, 7), cfg, **meta)
    d = wdata.checkpoint_data(path, n_tokens=3)
    assert d.title == f"{title} · regression prompt, seed 0"
    assert d.source.startswith(f"checkpoint {path}{source} · ")
    assert "True" not in d.title + d.source
    assert (d.model_label == "trained") == title.startswith("trained ")


# --- one step convention (issue 18, item 6) and the prediction curve (item 7) --------------------------------------

def test_step_curves_are_indexed_by_the_step_that_consumed_c_i(small):
    """``curves("step")[i] = ‖ΔW_i − ΔW_(i−1)‖`` from the library's matrices (none at i = 0), ``"rel"`` that over
    ``‖ΔW_(i−1)‖`` (none at i ≤ 1), and ``gd_step(i)`` the loss and gradient of ``L_(i−1)``."""
    t = small.trajectory
    step, rel = small.curves("step")["model"], small.curves("rel")["model"]
    assert step.shape == rel.shape == (small.n + 1,) and np.isnan(step[0]) and np.isnan(rel[:2]).all()
    for i in range(1, small.n + 1):
        expected = np.linalg.norm(t.delta_W(i) - t.delta_W(i - 1))
        np.testing.assert_allclose(step[i], expected, rtol=1e-12)
        np.testing.assert_allclose(small.step(i), t.delta_W(i) - t.delta_W(i - 1), rtol=1e-10, atol=1e-14)
        loss, grad, norm = small.gd_step(i)
        assert (loss, grad, norm) == (t.loss[i - 1], t.grad_norm[i - 1], step[i])
        if i > 1:
            np.testing.assert_allclose(rel[i], expected / np.linalg.norm(t.delta_W(i - 1)), rtol=1e-12)
    with pytest.raises(IndexError, match="1 <= i"):
        small.gd_step(0)


def test_prediction_curve_is_the_librarys():
    """ŷ with c_1..c_i for the model and the untrained baseline, the least-squares prediction from the same i examples
    (``reference.tasks.least_squares_predictions``) and the truth ⟨w, x_q⟩, for i = 0..n."""
    from implicit_icl.reference.tasks import least_squares_predictions

    data = wdata.random_data(n_tokens=12, seed=4)
    prompt = regression_prompts(1, 12, 2, 4)
    cfg = wdata.RANDOM_CONFIG
    model = trajectory(init_block(cfg, 4), cfg, prompt.context[0], prompt.query[0])
    base = trajectory(init_block(cfg, 5), cfg, prompt.context[0], prompt.query[0])
    curves = data.curves("pred")
    assert set(curves) == {"model", "baseline", "least squares", "truth"}
    np.testing.assert_allclose(curves["model"], model.pred_context[:, -1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(curves["baseline"], base.pred_context[:, -1], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(curves["least squares"],
                                  least_squares_predictions(prompt.x, prompt.y, prompt.x_query)[0])
    np.testing.assert_array_equal(curves["truth"], np.full(13, prompt.target[0]))
    assert curves["least squares"][0] == 0 and abs(curves["least squares"][-1] - prompt.target[0]) < 1e-10


def test_no_prediction_curve_without_a_readout(small):
    import dataclasses

    assert dataclasses.replace(small, readout=None).curves("pred") == {}
