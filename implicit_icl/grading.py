"""Grading machinery for the course exercises in ``exercises/`` (graded by pytest or by ``implicit-icl exercises``).

An exercise is a folder ``exercises/NN_name/`` holding

- ``exercise.py``: the student's file (a stub of functions that ``raise NotImplementedError`` until solved),
- ``solution.py``: a reference solution, ``mistake.py``: a solution with one deliberate, common mistake,
- ``test_grade_NN.py``: the grader, plain functions ``test_*(student)`` that compare the student's functions
  with the NumPy reference ``implicit_icl.reference`` (the oracle), shape checks first and values after.

Which file is graded: ``exercise.py`` by default; ``solution`` or ``mistake`` or any path through the pytest options
``--solution`` / ``--mistake`` / ``--file PATH``, the environment variable ``IMPLICIT_ICL_EXERCISE`` (``solution``,
``mistake`` or a path), or the CLI's ``implicit-icl exercises check N [--solution] [--file PATH]``.

The graders need neither pytest nor torch: ``run_checks`` is a tiny runner that calls every ``test_*`` function
of a grader with the student's module, so a student with only ``pip install -e .`` can be graded. Under pytest
the same functions run through ``exercises/conftest.py``.

Failures raise ``GradingFailure`` (an ``AssertionError``) whose message teaches: which check, expected vs got,
where the largest difference is, and a hint.
"""
from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENV_TARGET = "IMPLICIT_ICL_EXERCISE"
STUDENT_FILE = "exercise.py"
TARGET_FILES = {"exercise": "exercise.py", "stub": "exercise.py", "solution": "solution.py", "mistake": "mistake.py"}
GRADER_GLOB = "test_grade_*.py"

# Default tolerances for value checks. Every solution computes in float64 with a handful of operations, so a
# correct answer differs from the reference by ~1e-15 relative; any conceptual mistake changes values by O(1e-2)
# or more. rtol = 1e-7 leaves room for a different (correct) order of operations and still catches every mistake.
RTOL = 1e-7
ATOL = 1e-10

NOTES: list[str] = []
_counter = itertools.count()


class GradingFailure(AssertionError):
    """A failed check, with a message written for the student.

    ``check`` names what was checked; ``expected``/``got`` are shown side by side; ``hint`` says what to look at.
    """

    def __init__(self, check: str, *, expected=None, got=None, hint: str | None = None, detail: str | None = None):
        self.check, self.expected, self.got, self.hint, self.detail = check, expected, got, hint, detail
        lines = [f"check:    {check}"]
        if expected is not None:
            lines.append(f"expected: {_indent(expected)}")
        if got is not None:
            lines.append(f"got:      {_indent(got)}")
        if detail:
            lines.append(f"detail:   {_indent(detail)}")
        if hint:
            lines.append(f"hint:     {_indent(hint)}")
        super().__init__("\n".join(lines))


def _indent(value) -> str:
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("\n", "\n          ")


def fmt(x) -> str:
    """A short readable rendering of a number or an array (large arrays are summarised)."""
    if isinstance(x, str):
        return x
    arr = np.asarray(x) if not _is_tensor(x) else np.asarray(x.detach().cpu())
    if arr.dtype == object:
        return repr(x)
    if arr.ndim == 0:
        return np.array2string(arr, precision=6)
    body = np.array2string(arr, precision=4, threshold=12, edgeitems=2, suppress_small=False, max_line_width=100)
    return f"array of shape {arr.shape}: {body}"


def note(message: str) -> None:
    """Record a message to show the student even when every check passes (printed by both runners)."""
    NOTES.append(message)


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


# ----------------------------------------------------------------------------------------------- calling the student


def call(student, name: str, *args, **kwargs):
    """Call ``student.name(*args, **kwargs)``, turning a missing function, an unsolved stub or a crash into feedback.

    The grader's arrays are passed read-only and its dict/list arguments are checked afterwards: a student's
    in-place change (``W += ΔW``, ``params["mlp.W"] = …``) is reported as such and never corrupts the fixtures that
    later checks use.
    """
    func = getattr(student, name, None)
    where = getattr(student, "__file__", "your file")
    if func is None or not callable(func):
        raise GradingFailure(f"your file defines a function `{name}`", expected=f"def {name}(...)",
                             got="no such function", hint=f"keep the function names of the stub ({where})")
    frozen, containers = _protect([*args, *kwargs.values()])
    try:
        result = func(*args, **kwargs)
    except NotImplementedError:
        raise GradingFailure(
            f"`{name}` is implemented", got="it still raises NotImplementedError",
            hint=f"open {where}, read the docstring of `{name}` and replace the `raise NotImplementedError` "
                 "with your code",
        ) from None
    except GradingFailure:
        raise
    except Exception as exc:  # a crash in the student's code: show where
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == where]
        at = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
        in_place = isinstance(exc, ValueError) and "read-only" in str(exc)
        raise GradingFailure(
            f"`{name}` leaves its inputs unchanged" if in_place else f"`{name}` runs without error",
            got=f"{type(exc).__name__}: {exc}{at}",
            hint=IN_PLACE_HINT if in_place else
            "check the shapes in the docstring; print them while you debug (`print(x.shape)`)",
        ) from exc
    finally:
        changed = _restore(frozen, containers)
    if changed:
        raise GradingFailure(f"`{name}` leaves its inputs unchanged", got=f"it changed {changed} in place",
                             hint=IN_PLACE_HINT)
    return result


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


def as_numpy(x, what: str) -> np.ndarray:
    """The student's result as a float64 array, or a clear failure if it is not array-like."""
    if x is None:
        raise GradingFailure(f"{what} returns a value", got="None",
                             hint="the function ends without `return` (or returns None): return the result")
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise GradingFailure(f"{what} is an array of numbers", got=f"{type(x).__name__}: {x!r}"[:300],
                             hint="return a NumPy array (np.ndarray)") from None
    return arr


def check_shape(what: str, got, expected_shape: tuple, hint: str | None = None) -> np.ndarray:
    """Shape check (done before any value check); returns the result as a float64 array."""
    arr = as_numpy(got, what)
    if arr.shape != tuple(expected_shape):
        raise GradingFailure(f"shape of {what}", expected=str(tuple(expected_shape)), got=str(arr.shape),
                             hint=hint or "the docstring of the stub gives every shape")
    return arr


def check_finite(what: str, got, hint: str | None = None) -> np.ndarray:
    arr = as_numpy(got, what)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        first = tuple(int(i) for i in bad[0])
        raise GradingFailure(f"{what} is finite (no nan or inf)", expected="finite values", got=arr,
                             detail=f"{len(bad)} non-finite entries, first at index {first}", hint=hint)
    return arr


def check_close(what: str, got, expected, *, rtol: float = RTOL, atol: float = ATOL, hint: str | None = None):
    """Value check against the reference: ``|got − expected| ≤ atol + rtol·|expected|`` entrywise."""
    expected = np.asarray(expected, dtype=np.float64)
    arr = check_shape(what, got, expected.shape, hint=hint)
    arr = check_finite(what, arr, hint=hint)
    err = np.abs(arr - expected)
    bound = atol + rtol * np.abs(expected)
    if np.all(err <= bound):
        return arr
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    detail = (f"largest difference {err[worst]:.3g} at index {tuple(int(i) for i in worst)}: "
              f"expected {expected[worst]:.6g}, got {arr[worst]:.6g} (tolerance {bound[worst]:.2g})")
    raise GradingFailure(what, expected=expected, got=arr, detail=detail, hint=hint)


def check_true(condition: bool, what: str, *, expected=None, got=None, hint: str | None = None) -> None:
    if not condition:
        raise GradingFailure(what, expected=expected, got=got, hint=hint)


# ------------------------------------------------------------------------------------------- choosing the target


def installed_course() -> Path:
    """The course as shipped with the package: the repository's ``exercises/`` in a checkout (an editable install),
    else the copy installed as package data (``implicit_icl/course``, a regular ``pip install``)."""
    from implicit_icl import shipped

    return shipped(__file__, "exercises", "course")


def is_installed_copy(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is the course installed as package data (read it, but work in a copy of your own)."""
    installed = Path(__file__).resolve().parent / "course"
    return Path(folder).resolve() == installed.resolve()


def _holds_course(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob(f"[0-9][0-9]_*/{GRADER_GLOB}"))


def exercises_root() -> Path:
    """The ``exercises/`` folder: ``$IMPLICIT_ICL_EXERCISES``, else ``./exercises``, else the current folder if it
    is a course (a student working inside the copy ``exercises init DIR`` made) or one of its exercises, else the
    installed course."""
    env = os.environ.get("IMPLICIT_ICL_EXERCISES")
    if env:
        return Path(env)
    cwd = Path.cwd()
    for candidate in (cwd / "exercises", cwd, cwd.parent):
        if _holds_course(candidate) and (candidate != cwd.parent or re.fullmatch(r"\d\d_\w+", cwd.name)):
            return candidate
    return installed_course()


COURSE_FILES = ("README.md", "conftest.py", "[0-9][0-9]_*/*.md", "[0-9][0-9]_*/*.py")


def copy_course(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """Copy the course into ``dest`` for a student to edit; returns ``(copied, kept)``.

    A file that already exists in ``dest`` is kept as it is (never overwritten: it may hold the student's work).
    Each file is written atomically (``checkpoint.atomic_write_bytes``): an interrupted copy leaves no half-written
    file.
    """
    from implicit_icl.checkpoint import atomic_write_bytes

    source = Path(source) if source is not None else installed_course()
    dest = Path(dest)
    if not source.is_dir():
        raise FileNotFoundError(f"the course is not installed at {source} (reinstall implicit-icl)")
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"DIR: {dest} exists and is not a folder")
    copied, kept = [], []
    for pattern in COURSE_FILES:
        for src in sorted(source.glob(pattern)):
            target = dest / src.relative_to(source)
            if target.exists():
                kept.append(target)
                continue
            data = src.read_bytes()
            atomic_write_bytes(target, lambda f: f.write(data))
            copied.append(target)
    return copied, kept


def find_exercises(root: str | os.PathLike | None = None) -> dict[int, Path]:
    """``{N: folder}`` for every ``NN_name`` folder of ``root`` that has a grader."""
    from_env = root is None and bool(os.environ.get("IMPLICIT_ICL_EXERCISES"))
    root = Path(root) if root is not None else exercises_root()
    where = f"IMPLICIT_ICL_EXERCISES={root}" if from_env else f"exercises folder {root}"
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"{where} is a file, not a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{where} does not exist (pass --dir, set IMPLICIT_ICL_EXERCISES, or "
                                "copy the course there with `implicit-icl exercises init`)")
    out = {}
    for d in sorted(root.iterdir()):
        m = re.fullmatch(r"(\d\d)_\w+", d.name)
        if m and d.is_dir() and any(d.glob(GRADER_GLOB)):
            out[int(m.group(1))] = d
    return out


def grader_path(exercise_dir: Path) -> Path:
    graders = sorted(Path(exercise_dir).glob(GRADER_GLOB))
    if len(graders) != 1:
        raise FileNotFoundError(f"{exercise_dir} must hold exactly one {GRADER_GLOB}, found {len(graders)}")
    return graders[0]


def resolve_target(exercise_dir: Path, choice: str | os.PathLike | None = None) -> Path:
    """The file to grade: ``choice`` is ``None``/``"exercise"`` (the student's file), ``"solution"``, ``"mistake"``
    or a path; ``None`` falls back to ``$IMPLICIT_ICL_EXERCISE``. A missing file's error names where it came from."""
    if choice is None and os.environ.get(ENV_TARGET):
        choice, source = os.environ[ENV_TARGET], f"${ENV_TARGET}"
    elif choice is None:
        choice, source = "exercise", "the student's file"
    else:
        source = f"--{choice}" if str(choice) in ("solution", "mistake") else "--file"
    choice = str(choice)
    path = Path(exercise_dir) / TARGET_FILES[choice] if choice in TARGET_FILES else Path(choice)
    if path.is_dir():
        raise FileNotFoundError(f"{source}: the file to grade, {path}, is a folder (give a .py file)")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: the file to grade, {path}, does not exist "
                                f"(choose 'exercise', 'solution', 'mistake' or an existing path)")
    if path.suffix != ".py":
        raise FileNotFoundError(f"{source}: the file to grade, {path}, is not a .py file")
    return path


def load_implementation(path: str | os.PathLike):
    """Import the file at ``path`` as a fresh module (never cached, so edits are seen); failures are feedback."""
    path = Path(path).resolve()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_implicit_icl_graded_{next(_counter)}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:        # sys.exit() at import is a broken file, not the grader's exit
        raise GradingFailure(f"your file {path} can be imported", got=f"{type(exc).__name__}: {exc}",
                             hint="run `python " + str(path) + "` to see the full error; code at the top level "
                                  "(outside the functions) runs on import") from exc
    return module


def load_grader(path: str | os.PathLike):
    path = Path(path).resolve()
    name = f"_implicit_icl_grader_{next(_counter)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------- the tiny runner


@dataclass
class CheckResult:
    name: str
    description: str
    passed: bool
    message: str = ""
    notes: list[str] = field(default_factory=list)


def checks_of(grader) -> list[tuple[str, object]]:
    """The ``test_*`` functions of a grader module, in the order they are defined (shape checks come first)."""
    return [(n, f) for n, f in vars(grader).items() if n.startswith("test_") and inspect.isfunction(f)]


def describe(func) -> str:
    doc = inspect.getdoc(func)
    return doc.splitlines()[0] if doc else func.__name__


def run_checks(exercise_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> list[CheckResult]:
    """Run every check of ``exercise_dir``'s grader on ``target`` (see ``resolve_target``) without pytest."""
    exercise_dir = Path(exercise_dir)
    grader = load_grader(grader_path(exercise_dir))
    path = resolve_target(exercise_dir, target)
    results = []
    try:
        student = load_implementation(path)
        import_error = None
    except GradingFailure as exc:
        student, import_error = None, exc
    for name, func in checks_of(grader):
        del NOTES[:]
        params = list(inspect.signature(func).parameters)
        if params not in ([], ["student"]):
            raise TypeError(f"grader check {name} must take no argument or `student`, takes {params}")
        try:
            if import_error is not None:
                raise import_error
            func(*([student] if params else []))
        except AssertionError as exc:
            results.append(CheckResult(name, describe(func), False, str(exc), list(NOTES)))
        except Exception as exc:  # a grader bug or an unexpected error: report it, never hide it
            results.append(CheckResult(name, describe(func), False,
                                       "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                                       list(NOTES)))
        else:
            results.append(CheckResult(name, describe(func), True, "", list(NOTES)))
    del NOTES[:]
    return results


def report(results: list[CheckResult], title: str, path: Path, stream=None) -> str:
    """A readable report of ``run_checks``'s results."""
    lines = [title, f"grading {path}", ""]
    for r in results:
        lines.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.description}  [{r.name}]")
        if not r.passed:
            lines.extend("        " + ln for ln in r.message.splitlines())
        lines.extend("        note: " + n.replace("\n", "\n              ") for n in r.notes)
    n_pass = sum(r.passed for r in results)
    lines.append("")
    if n_pass == len(results):
        lines.append(f"All {len(results)} checks passed. Well done: now read 'What to observe' in the README.")
    else:
        first = next(r for r in results if not r.passed)
        lines.append(f"{n_pass}/{len(results)} checks passed. Start with the first failure: {first.description}.")
    text = "\n".join(lines)
    print(text, file=stream or sys.stdout)
    return text
