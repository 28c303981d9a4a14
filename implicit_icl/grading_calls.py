"""Calling the student's functions: a missing function, an unsolved stub, a crash, an exit or a change to the
grader's inputs becomes a ``CallFailure`` that says what to fix, and several return values are counted before anyone
unpacks them. ``implicit_icl.grading`` re-exports every public name here."""
from __future__ import annotations

import traceback

import numpy as np

from implicit_icl.grading_messages import CallFailure, GradingFailure


def call(student, name: str, *args, **kwargs):
    """Call ``student.name(*args, **kwargs)``, turning a missing function, an unsolved stub or a crash into feedback.

    The grader's arrays are passed read-only and its dict/list arguments are checked afterwards: a student's
    in-place change (``W += ΔW``, ``params["mlp.W"] = …``) is reported as such and never corrupts the fixtures that
    later checks use.
    """
    func = getattr(student, name, None)
    where = getattr(student, "__file__", "your file")
    if func is None or not callable(func):
        raise CallFailure(f"your file defines a function `{name}`", expected=f"def {name}(...)",
                             got="no such function", hint=f"keep the function names of the stub ({where})")
    frozen, containers = _protect([*args, *kwargs.values()])
    try:
        result = func(*args, **kwargs)
    except NotImplementedError:
        raise CallFailure(
            f"`{name}` is implemented", got="it still raises NotImplementedError",
            hint=f"open {where}, read the docstring of `{name}` and replace the `raise NotImplementedError` "
                 "with your code",
        ) from None
    except GradingFailure:
        raise
    except SystemExit as exc:     # sys.exit() / exit() in the student's code must not end the grading as a pass
        raise CallFailure(f"`{name}` returns a value (without exiting)",
                             got=f"it called sys.exit({exc.code!r}){_where(exc, where)}",
                             hint="remove the sys.exit() / exit() / quit() call: return the result") from None
    except Exception as exc:  # a crash in the student's code: show where
        at = _where(exc, where)
        in_place = isinstance(exc, ValueError) and "read-only" in str(exc)
        raise CallFailure(
            f"`{name}` leaves its inputs unchanged" if in_place else f"`{name}` runs without error",
            got=f"{type(exc).__name__}: {exc}{at}",
            hint=IN_PLACE_HINT if in_place else
            "check the shapes in the docstring; print them while you debug (`print(x.shape)`)",
        ) from exc
    finally:
        changed = _restore(frozen, containers)
    if changed:
        raise CallFailure(f"`{name}` leaves its inputs unchanged", got=f"it changed {changed} in place",
                             hint=IN_PLACE_HINT)
    return result


def _where(exc: BaseException, filename: str) -> str:
    """`` (line N in `f`: code)`` for the last frame of ``exc``'s traceback in the student's file, or ``""``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return f" (line {frames[-1].lineno} in `{frames[-1].name}`: {frames[-1].line})" if frames else ""


def call_returning(student, name: str, names: tuple[str, ...], *args, **kwargs) -> tuple:
    """``call`` a function that returns several values, named ``names``; checks their number before anyone unpacks.

    A tuple or a list of ``len(names)`` values is accepted; anything else is a ``GradingFailure`` that says what came
    back (``tuple of 3 values``, ``ndarray of shape (12, 4)``, ``NoneType``) instead of an unpacking traceback.
    """
    got = call(student, name, *args, **kwargs)
    if isinstance(got, (tuple, list)) and len(got) == len(names):
        return tuple(got)
    if isinstance(got, (tuple, list)):
        what = f"{type(got).__name__} of {len(got)} value{'s' if len(got) != 1 else ''}"
    elif hasattr(got, "shape"):
        what = f"{type(got).__name__} of shape {tuple(got.shape)}"
    else:
        what = type(got).__name__
    wanted = "(" + ", ".join(names) + ")"
    raise GradingFailure(f"`{name}` returns {len(names)} values {wanted}", expected=f"return {', '.join(names)}",
                         got=what, hint=f"return the {len(names)} values as a tuple: `return {', '.join(names)}`")


IN_PLACE_HINT = ("your code changes one of its inputs in place (+=, -=, x[...] = ..., params[key] = ...); the "
                 "grader passes its arrays read-only. Build new ones instead: W = W + dW, x = x - mean, "
                 "new = dict(params)")


def _protect(args) -> tuple[list, list]:
    """Make the writable arrays among ``args`` (and inside dict/list arguments) read-only; snapshot the containers."""
    frozen, containers = [], []
    for arg in args:
        if isinstance(arg, (dict, list)):
            containers.append((arg, arg.copy()))
        for v in (arg.values() if isinstance(arg, dict) else arg if isinstance(arg, list) else (arg,)):
            if isinstance(v, np.ndarray) and v.flags.writeable:
                v.setflags(write=False)
                frozen.append(v)
    return frozen, containers


def _restore(frozen, containers) -> str:
    """Undo ``_protect``; put back any dict/list argument the student changed and say which ("" when none)."""
    for v in frozen:
        try:
            v.setflags(write=True)
        except ValueError:  # an array numpy will not make writable again: it stays read-only, as is safe
            pass
    changed = []
    for container, snapshot in containers:
        if isinstance(container, dict):
            kept = {k for k in snapshot if k in container and container[k] is snapshot[k]}
            keys = sorted({*container, *snapshot} - kept, key=str)
            if keys:
                changed.append(f"the entries {', '.join(map(repr, keys))} of its dict argument")
                container.clear()
                container.update(snapshot)
        elif len(container) != len(snapshot) or any(a is not b for a, b in zip(container, snapshot)):
            changed.append("a list argument")
            container[:] = snapshot
    return "; ".join(changed)

