"""Snapshot tests (pytest-textual-snapshot): the look of the walkthrough at three steps, fixed 140×45 terminal,
and the compact layout of a default 80×24 terminal.

The app has no text input, so there is no blinking cursor to make screenshots differ. Update the stored SVGs
after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at them.
The round-off the check panel shows (the last digits of a ~1e-16 difference) depends on the BLAS build and
thread count, so the fixture pins it: ``T_(W+ΔW_i)(x)`` is set to the float64 neighbour just above
``T_W(c_1..c_i, x)`` (exactly equal at i = 0, where the two computations are the same), so the difference shown is
exactly one ulp of the prediction on every machine. That the app shows the library's real difference is
``test_tui_app.test_displayed_difference_equals_library_at_every_step``'s job, not these pictures'.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from implicit_icl.tui.app import WalkthroughApp
from implicit_icl.tui.data import random_data

SIZE = (140, 45)


def pin_round_off(data):
    """``data`` with the check's round-off fixed to one ulp (machine-independent), everything else unchanged."""
    t = data.trajectory
    pred_update = np.nextafter(t.pred_context, np.inf)        # pred_context − pred_update = −1 ulp, exactly
    pred_update[0] = t.pred_context[0]                        # i = 0: no context, the same computation twice
    return dataclasses.replace(data, trajectory=dataclasses.replace(t, kept=dict(t.kept, pred_update=pred_update)))


@pytest.fixture(scope="module")
def data():
    return pin_round_off(random_data(n_tokens=20, seed=0))


def test_pinned_round_off_is_one_ulp_of_the_prediction(data):
    t = data.trajectory
    diff = t.pred_context[:, -1] - t.pred_update[:, -1]
    assert diff[0] == 0 and data.output_error(0) == 0
    np.testing.assert_array_equal(-diff[1:], np.spacing(np.abs(t.pred_context[1:, -1])))


def test_snapshot_start(snap_compare, data):
    """Step 0: nothing consumed, ΔW_0 = 0, the curves with the cursor at i = 0."""
    assert snap_compare(WalkthroughApp(data), terminal_size=SIZE)


def test_snapshot_middle_step_view(snap_compare, data):
    """Step 7 reached by keys, showing the step ΔW_7 − ΔW_6."""
    assert snap_compare(WalkthroughApp(data), press=["right"] * 7 + ["s"], terminal_size=SIZE)


def test_snapshot_end_no_baseline(snap_compare, data):
    """The last step (End), baseline hidden."""
    assert snap_compare(WalkthroughApp(data), press=["end", "b"], terminal_size=SIZE)


def test_snapshot_compact_80x24(snap_compare, data):
    """A default 80×24 terminal: the compact layout (heatmap and check, a hint for the rest) at step 5."""
    assert snap_compare(WalkthroughApp(data, start=5), terminal_size=(80, 24))
