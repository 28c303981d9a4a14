"""Snapshot tests (pytest-textual-snapshot): the look of the walkthrough at three steps, fixed 140×45 terminal.

The app has no text input, so there is no blinking cursor to make screenshots differ. Update the stored SVGs
after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at them.
The numbers shown include float64 round-off (~1e-16), which is reproducible on one NumPy build; a different
BLAS could change the last digit of a difference and fail these, which the other tests would not.
"""
from __future__ import annotations

import pytest

from implicit_icl.tui.app import WalkthroughApp
from implicit_icl.tui.data import random_data

SIZE = (140, 45)


@pytest.fixture(scope="module")
def data():
    return random_data(n_tokens=20, seed=0)


def test_snapshot_start(snap_compare, data):
    """Step 0: nothing consumed, ΔW_0 = 0, the curves with the cursor at i = 0."""
    assert snap_compare(WalkthroughApp(data), terminal_size=SIZE)


def test_snapshot_middle_step_view(snap_compare, data):
    """Step 7 reached by keys, showing the step ΔW_7 − ΔW_6."""
    assert snap_compare(WalkthroughApp(data), press=["right"] * 7 + ["s"], terminal_size=SIZE)


def test_snapshot_end_no_baseline(snap_compare, data):
    """The last step (End), baseline hidden."""
    assert snap_compare(WalkthroughApp(data), press=["end", "b"], terminal_size=SIZE)
