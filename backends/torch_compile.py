"""``torch.compile`` for the torch backend's hot paths: where it can run, one cache of compiled functions, and the
fall-back to eager code when compiling fails (ours; DESIGN "Performance stance").

Every compiled function here is the eager function itself under ``torch.compile``: the same operations, fused by
Inductor (C++ on the CPU, Triton on a GPU), so its numbers are the eager numbers up to the fused kernels' order of
summation. A compiled function is made once per key (a block config and the call's static settings), from a copy of
the function with a code object of its own (:func:`own_copy`), and cached for the process; Dynamo guards on dtype,
device and shapes inside it. Where it cannot run (:func:`compile_unavailable`)
the callers run eagerly; where it fails, :func:`run` warns once per device type, remembers the key and the device
type in ``FAILED`` and
runs the eager function, so a user's call never fails because of the compiler. ``CALLS`` counts which path each
call took: what the bench and the tests read to know which path really ran.
"""
from __future__ import annotations

import collections
import functools
import importlib.util
import shutil
import sys
import types
import warnings

import torch

FAILED: dict = {}            # (key, device type) → why compiling it failed (its calls then run eagerly there)
_WARNED: set = set()         # the device types a compile failure was reported on
_COMPILED: dict = {}
CALLS: collections.Counter = collections.Counter()
"""Calls since import, by ``(what, path)``: ``path`` ``"compiled"`` or ``"eager"`` (compile off, unavailable or
failed); ``what`` the key's first entry (``"block"``, ``"position_updates"``)."""

RECOMPILE_LIMIT = 64     # compiled variants of one key's function (dtype × device × shapes)
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
_LIMIT_HIT = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())   # what fullgraph raises at the limit


def compile_unavailable(device) -> str | None:
    """Why compiled code cannot run on ``device`` (``None`` if it can): Inductor needs a C++ compiler on the CPU
    and Triton on CUDA; other devices run eagerly; nowhere where Dynamo is disabled (``TORCH_COMPILE_DISABLE=1``:
    ``torch.compile`` then returns the eager function, which must not be counted as compiled). Looked up once per
    device type (a search of PATH costs more than a small compiled call)."""
    if torch._dynamo.config.disable:
        return "torch.compile is disabled here (TORCH_COMPILE_DISABLE=1 or torch._dynamo.config.disable)"
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
    not failed for this key on this device type."""
    return compile_available(device) and (key, torch.device(device).type) not in FAILED


def compile_failed(key, device, exc: Exception, what: str) -> None:
    """Remember that compiling ``key`` failed on ``device``'s type and say so once per device type; ``what`` (e.g.
    "this block's trajectory") then runs eagerly there."""
    kind = torch.device(device).type
    why = FAILED[key, kind] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(f"torch.compile failed on {kind} ({why}); {what} runs eagerly (the same numbers, slower)",
                      RuntimeWarning, stacklevel=4)


def own_copy(fn, static: dict):
    """``fn`` with the keyword-only arguments ``static`` (a block config, a query convention) bound as its defaults,
    as a function of its own with a code object of its own: Dynamo keeps its compiled variants, its recompile count
    and its dynamic-shape state per code object (and name), so each key compiles static graphs for its own shapes and
    never meets the other keys' variants. (``functools.partial`` would share one wrapper's code object between
    every key: the second block config would compile with symbolic sizes.)"""
    code = fn.__code__
    keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    if not set(static) <= set(keyword_only):             # a default for anything else would be ignored
        raise ValueError(f"static must name keyword-only arguments of {fn.__name__} {keyword_only}, got "
                         f"{sorted(static)}")
    name = f"{fn.__name__}__{len(_COMPILED)}"
    code = code.replace(co_name=name, **({"co_qualname": name} if sys.version_info >= (3, 11) else {}))
    copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = dict(fn.__kwdefaults__ or {}, **static)
    return copy


def _limit_hit(exc: Exception) -> bool:
    """Whether ``exc`` is Dynamo refusing to compile another variant (its recompile limit, once named
    ``cache_size_limit``), not a real failure."""
    if _LIMIT_HIT and isinstance(exc, _LIMIT_HIT):
        return True
    return isinstance(exc, torch._dynamo.exc.Unsupported) and "limit" in str(exc).lower()


def compiled(key, fn, static: dict, **options):
    """``torch.compile(fullgraph=True, **options)`` of ``fn`` with ``static`` bound (:func:`own_copy`), made once
    per ``key`` and cached for the process. A call that meets Dynamo's limit of compiled variants (8 per code
    object: dtypes × devices × shapes of one key) is retried with it raised to ``RECOMPILE_LIMIT`` (past that, the
    call fails over to eager code through :func:`run`, with a warning); the limit is not patched on every call (that
    costs as much as a small kernel)."""
    if key not in _COMPILED:
        copy = own_copy(fn, static)
        step = torch.compile(copy, fullgraph=True, **options)

        def call(*args):
            try:
                return step(*args)
            except Exception as exc:                                    # noqa: BLE001 (re-raised unless the limit)
                if not _limit_hit(exc):
                    raise
                limit = max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, _LIMIT_NAME))
                with torch._dynamo.config.patch(**{_LIMIT_NAME: limit}):
                    return step(*args)
        call.code = copy.__code__                                       # what Dynamo caches the variants on
        _COMPILED[key] = call
    return _COMPILED[key]


def try_compiled(key, fn, static: dict, device, *args, what: str, **options):
    """``fn(*args, **static)`` compiled (cached under ``key``: :func:`compiled`, with ``options``), or ``None``
    where it cannot run (:func:`usable`) or failed: a compile failure (anything but running out of memory) marks
    ``key`` eager on this device type for the process (:func:`compile_failed`; a real error in ``fn`` then recurs in
    the caller's eager call). The one fall-back of every compiled path."""
    if not usable(key, device):
        return None
    try:
        return compiled(key, fn, static, **options)(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:                                              # noqa: BLE001 (see above)
        compile_failed(key, device, exc, what)
        return None


def run(key, fn, static: dict, device, *args, what: str):
    """``fn(*args, **static)``: compiled where it can be (:func:`try_compiled`; a key's shapes turn dynamic after
    its first recompile), else eagerly, the path counted in ``CALLS``."""
    out = try_compiled(key, fn, static, device, *args, what=what)
    CALLS[key[0], "eager" if out is None else "compiled"] += 1
    return fn(*args, **static) if out is None else out
