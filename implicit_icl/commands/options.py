"""Checks of option values that several commands share: each returns a message naming the option, or None."""
from __future__ import annotations

import os

THREADS_PER_CPU = 4         # more threads than this only oversubscribe; torch crashed (exit 139) at 100000


def threads_limit() -> int:
    """The most torch threads a command accepts: ``THREADS_PER_CPU`` × this machine's CPU count."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def threads_problem(threads: int | None, what: str = "--threads") -> str | None:
    """Why ``threads`` cannot be a torch thread count, or None (``None`` means the command's default)."""
    if threads is None or 1 <= threads <= threads_limit():
        return None
    return (f"{what} must be from 1 to {threads_limit()} ({THREADS_PER_CPU} x this machine's {os.cpu_count() or 1} "
            f"CPUs), got {threads}")
