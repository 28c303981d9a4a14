"""What the experiments' figures share (matplotlib, Agg backend: no display needed): each experiment module draws
its own figure with these helpers from its numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
COLORS = {"trained": "tab:blue", "untrained": "tab:gray", "implicit": "tab:blue", "sgd": "tab:orange",
          "least_squares": "tab:green"}


def pyplot():
    """matplotlib's pyplot on the Agg backend, with the figures' common style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})
    return plt


def save(fig, path: Path) -> str:
    """Lay out, write and close ``fig``; its file name (for report.json's figure list)."""
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def floored(values, floor):
    """Zeros cannot sit on a log axis: show them at ``floor`` (the plot says so)."""
    return np.maximum(np.asarray(values, dtype=float), floor)


def median_band(ax, x, band, color, label):
    """Median line and quartile band; ``None`` (JSON's nan) is drawn as a gap."""
    x = np.asarray(x)
    q25, med, q75 = (np.asarray(band[k], dtype=float) for k in ("q25", "median", "q75"))
    ax.fill_between(x, q25, q75, color=color, alpha=0.25, lw=0)
    ax.plot(x, med, "-", color=color, label=label)
