"""The one progress display of the project: a tqdm bar on a terminal, plain lines in a log file."""
from __future__ import annotations

import sys


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):          # a closed or replaced stream
        return False


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + the bar) into a line of its own: for a log file."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar on stderr: redrawn in place on a terminal; anywhere else (a file, a pipe) a plain line at the start,
    every 10 s and at the end, never a carriage return. Every progress display of the project is this one."""
    from tqdm import tqdm

    terminal = _stderr_is_terminal()
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                file=sys.stderr if terminal else _Lines(sys.stderr), dynamic_ncols=terminal,
                ncols=None if terminal else 100, mininterval=0.1 if terminal else 10.0)
