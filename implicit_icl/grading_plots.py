"""The figures a grader draws (``save_plot``): written into the folder ``exercises check`` names
(``$IMPLICIT_ICL_PLOTS``, the ``plots/`` folder beside the student's file), never under pytest or the tests.
``implicit_icl.grading`` re-exports every public name here."""
from __future__ import annotations

import os
from pathlib import Path

from implicit_icl.grading_messages import note

ENV_PLOTS = "IMPLICIT_ICL_PLOTS"          # where graders write their figures (set by `exercises check`)


def save_plot(filename: str, draw) -> Path | None:
    """Draw a figure with ``draw(fig)`` and write it as ``filename`` (a PNG) into the plots folder that
    ``grade(plots=...)`` set (``$IMPLICIT_ICL_PLOTS``); a note says where it went, or that matplotlib is missing.
    Without a plots folder (pytest, the tests) nothing is drawn. Returns the path written, or None."""
    folder = os.environ.get(ENV_PLOTS)
    if not folder:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note(f"no plot {filename}: matplotlib is not installed (pip install matplotlib, then grade again)")
        return None
    path = Path(folder) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(9, 4.5))
    try:
        draw(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    note(f"plot written to {path}")
    return path
