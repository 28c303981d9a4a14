"""``torch.compile`` for the torch backend's hot paths: where it can run, one cache of compiled functions, and the
fall-back to eager code when compiling fails (ours; DESIGN "Performance stance").

Every compiled function here is the eager function itself under ``torch.compile``: the same operations, fused by
Inductor (C++ on the CPU, Triton on a GPU), so its numbers are the eager numbers up to the fused kernels' order of
summation. A compiled function is made once per key (a block config and the call's static settings) and cached for
the process; Dynamo guards on dtype, device and shapes inside it. Where it cannot run (:func:`compile_unavailable`)
the callers run eagerly; where it fails, :func:`run` warns once per device type, remembers the key in ``FAILED`` and
runs the eager function, so a user's call never fails because of the compiler. ``CALLS`` counts which path each
call took: what the bench and the tests read to know which path really ran.
"""
from __future__ import annotations

import collections
import functools
import importlib.util
import shutil
import sys
import warnings

import torch

FAILED: dict = {}            # key → why compiling it failed (its calls then run eagerly)
_WARNED: set = set()         # the device types a compile failure was reported on
_COMPILED: dict = {}
CALLS: collections.Counter = collections.Counter()
"""Calls since import, by ``(what, path)``: ``path`` ``"compiled"`` or ``"eager"`` (compile off, unavailable or
failed); ``what`` the key's first entry (``"block"``, ``"position_updates"``)."""

RECOMPILE_LIMIT = 256    # compiled variants of one function (block config × settings × dtype × device × shapes)
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
_LIMIT_HIT = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())   # what fullgraph raises at the limit


def compile_unavailable(device) -> str | None:
    """Why compiled code cannot run on ``device`` (``None`` if it can): Inductor needs a C++ compiler on the CPU
    and Triton on CUDA; other devices run eagerly. Looked up once per device type (a search of PATH costs more than
    a small compiled call)."""
    return _unavailable(torch.device(device).type)


@functools.lru_cache(maxsize=None)
def _unavailable(kind: str) -> str | None:
    if kind == "cpu":
        if sys.platform != "win32" and any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return None
        return "torch.compile cannot run on the CPU here: no C++ compiler (g++, c++ or clang++) on PATH"
    if kind == "cuda":
        return None if importlib.util.find_spec("triton") is not None else \
            "torch.compile cannot run on CUDA here: Triton is not installed"
    return f"torch.compile is not used on {kind}: the backend runs eagerly there"


def compile_available(device) -> bool:
    """Whether compiled code can run on ``device`` (:func:`compile_unavailable`)."""
    return compile_unavailable(device) is None


def usable(key, device) -> bool:
    """Whether a call keyed ``key`` on ``device`` should take the compiled path: compiling can run there and has
    not failed for this key."""
    return compile_available(device) and key not in FAILED


def compile_failed(key, device, exc: Exception, what: str) -> None:
    """Remember that compiling ``key`` failed and say so once per device type; ``what`` (e.g. "this block's
    trajectory") then runs eagerly."""
    kind = torch.device(device).type
    why = FAILED[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(f"torch.compile failed on {kind} ({why}); {what} runs eagerly (the same numbers, slower)",
                      RuntimeWarning, stacklevel=4)


def compiled(key, fn, **options):
    """``torch.compile(fn, fullgraph=True, **options)``, made once per ``key`` and cached for the process. Every
    variant of one function shares its code object, whose default limit of 8 compiled variants a test suite or a
    sweep over blocks passes: a call that meets the limit is retried with it raised to ``RECOMPILE_LIMIT`` (past
    that, Dynamo refuses and the call fails over to eager code through :func:`run`, with a warning)."""
    if key not in _COMPILED:
        step = torch.compile(fn, fullgraph=True, **options)

        def call(*args):
            try:
                return step(*args)              # no config patch on every call: it costs as much as a small kernel
            except _LIMIT_HIT:
                limit = max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, _LIMIT_NAME))
                with torch._dynamo.config.patch(**{_LIMIT_NAME: limit}):
                    return step(*args)
        _COMPILED[key] = call
    return _COMPILED[key]


def run(key, fn, device, *args, what: str):
    """``fn(*args)`` compiled (cached under ``key``: :func:`compiled`, shapes dynamic after the first recompile)
    where :func:`usable`, else eagerly; a compile failure (anything but running out of memory) marks ``key`` eager for
    the process (:func:`compile_failed`) and this call runs ``fn`` eagerly."""
    if usable(key, device):
        try:
            out = compiled(key, fn)(*args)
            CALLS[key[0], "compiled"] += 1
            return out
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:                                          # noqa: BLE001 (a real error recurs
            compile_failed(key, device, exc, what)                       # in the eager call below)
    CALLS[key[0], "eager"] += 1
    return fn(*args)
