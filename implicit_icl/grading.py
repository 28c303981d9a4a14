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
ENV_PLOTS = "IMPLICIT_ICL_PLOTS"          # where graders write their figures (set by `exercises check`)
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


class CallFailure(GradingFailure):
    """A failure of the student's function itself (missing, unsolved, crashing, exiting, changing its inputs): shown
    as it is even when a check it depends on failed, since it names what to fix."""


def _indent(value) -> str:
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("\n", "\n          ")


FEW = 5          # values shown of an array in a message: its shape, a few values and the worst entry, never a dump


def fmt(x) -> str:
    """A short readable rendering of a number or an array: its shape and its first ``FEW`` values, on one line."""
    if isinstance(x, str):
        return x
    arr = np.asarray(x) if not _is_tensor(x) else np.asarray(x.detach().cpu())
    if arr.dtype == object:
        return repr(x)
    if arr.ndim == 0:
        return np.array2string(arr, precision=6)
    if arr.ndim == 1 and arr.size <= FEW:
        return f"array of shape {arr.shape}: {np.array2string(arr, precision=4, max_line_width=200)}"
    first = np.array2string(arr.ravel()[:FEW], precision=4, max_line_width=200)[:-1]
    return f"array of shape {arr.shape}: {first} …] (first {min(FEW, arr.size)} of {arr.size} values, row-major)"


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


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer, for ``check_close`` to recognise and name.

    Either ``value`` (what the mistake returns) or ``factor`` (the mistake returns ``factor`` × the expected
    answer, with ``name`` saying what that number is, e.g. ``"‖A(x)‖"``). ``hint`` says what went wrong.
    """

    hint: str
    value: object = None
    factor: float | None = None
    name: str = ""


def constant_multiple(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> float | None:
    """``c`` when ``got`` = c · ``expected`` entry for entry (to ``rtol``) with c ≠ 1, else ``None``."""
    e2 = float(np.sum(expected * expected))
    if got.shape != expected.shape or got.size < 2 or e2 == 0.0:
        return None
    c = float(np.sum(got * expected)) / e2
    if abs(c - 1.0) <= rtol or np.linalg.norm(got - c * expected) > rtol * np.linalg.norm(got):
        return None
    return c


def diagnose(got: np.ndarray, expected: np.ndarray, mistakes=(), *, rtol: float = 1e-6) -> tuple[str, str | None]:
    """``(detail, hint)`` for a wrong answer: which known ``Mistake`` it is, or that it is a constant multiple of
    the expected one (and which constant); ``("", None)`` when neither."""
    c = constant_multiple(got, expected, rtol)
    for m in mistakes:
        if m.value is not None:
            value = np.asarray(m.value, dtype=np.float64)
            if value.shape == got.shape and np.allclose(got, value, rtol=rtol, atol=1e-12):
                return "", m.hint
        elif c is not None and m.factor is not None and abs(c - m.factor) <= rtol * abs(m.factor):
            return f"your answer is {c:.4g} × the expected one, entry for entry; {c:.4g} = {m.name}", m.hint
    if c is None:
        return "", None
    if abs(c + 1.0) <= rtol:
        return "your answer is −1 × the expected one: the sign is flipped", None
    return (f"your answer is {c:.4g} × the expected one, entry for entry: a scalar factor is missing or extra "
            "(a norm instead of its square, a sum instead of a mean, a missing 1/√d?)"), None


def worst_entry(got: np.ndarray, expected: np.ndarray, bound) -> str:
    """Where ``got`` is furthest outside ``bound`` of ``expected``: the index and both values."""
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    b = bound[worst] if np.ndim(bound) else bound
    return (f"largest difference {err[worst]:.3g} at index {tuple(int(i) for i in worst)}: "
            f"expected {expected[worst]:.6g}, got {got[worst]:.6g} (tolerance {b:.2g})")


def check_close(what: str, got, expected, *, rtol: float = RTOL, atol: float = ATOL, hint: str | None = None,
                 mistakes=()):
    """Value check against the reference: ``|got − expected| ≤ atol + rtol·|expected|`` entrywise.

    A failure shows shapes, a few values and the worst entry; when the answer is one of ``mistakes`` (see
    ``Mistake``) or a constant multiple of the expected one, it says so, and that mistake's hint replaces ``hint``.
    """
    expected = np.asarray(expected, dtype=np.float64)
    arr = check_shape(what, got, expected.shape, hint=hint)
    arr = check_finite(what, arr, hint=hint)
    bound = atol + rtol * np.abs(expected)
    if np.all(np.abs(arr - expected) <= bound):
        return arr
    found, specific = diagnose(arr, expected, mistakes)
    detail = worst_entry(arr, expected, bound) + (f"\n{found}" if found else "")
    raise GradingFailure(what, expected=expected, got=arr, detail=detail, hint=specific or hint)


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
ANSWER_FILES = ("solution.py", "mistake.py", "mistake_*.py")     # stay in the package: `exercises solution N`


def is_answer(path: str | os.PathLike) -> bool:
    """Whether a course file is a reference solution or a deliberate mistake (never copied for a student)."""
    import fnmatch

    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in ANSWER_FILES)


def answer_file(exercise_dir: str | os.PathLike, name: str = "solution.py") -> Path:
    """An answer file (``solution.py``, ``mistake*.py``) of an exercise: in its folder if it is there (the
    checkout, a teacher's copy), else in the course installed with the package (a student's copy has none)."""
    here = Path(exercise_dir) / name
    return here if here.is_file() else installed_course() / Path(exercise_dir).name / name


def copy_course(dest: str | os.PathLike, source: str | os.PathLike | None = None, *,
                answers: bool = False) -> tuple[list[Path], list[Path]]:
    """Copy the course into ``dest`` for a student to edit; returns ``(copied, kept)``.

    Exercises, graders and READMEs only: the solutions and mistakes (``ANSWER_FILES``) stay in the package unless
    ``answers``. A file that already exists in ``dest`` is kept as it is (never overwritten: it may hold the
    student's work).
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
            if is_answer(src) and not answers:
                continue
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
    if choice in TARGET_FILES or re.fullmatch(r"mistake_\w+", choice):
        name = TARGET_FILES.get(choice, f"{choice}.py")
        path = Path(exercise_dir) / name if name == STUDENT_FILE else answer_file(exercise_dir, name)
    else:
        path = Path(choice)
    if path.is_dir():
        raise FileNotFoundError(f"{source}: the file to grade, {path}, is a folder (give a .py file)")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: the file to grade, {path}, does not exist "
                                f"(choose 'exercise', 'solution', 'mistake' or an existing path)")
    if path.suffix != ".py":
        raise FileNotFoundError(f"{source}: the file to grade, {path}, is not a .py file")
    return path


HINTS_FILE = ".implicit-icl-hints.json"     # in the student's course folder: how many hints each exercise showed


def hints_of(exercise_dir: str | os.PathLike) -> list[str]:
    """The grader's ``HINTS``, from the gentlest to the most telling (read from its source, not imported)."""
    import ast

    tree = ast.parse(grader_path(Path(exercise_dir)).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HINTS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def reveal_hint(exercise_dir: str | os.PathLike) -> tuple[list[str], int]:
    """One hint more for ``exercise_dir``: returns ``(the hints shown so far, how many there are)`` and records the
    count in ``HINTS_FILE`` beside the exercise folders."""
    import json

    from implicit_icl.checkpoint import atomic_write_bytes

    exercise_dir = Path(exercise_dir)
    hints = hints_of(exercise_dir)
    state_path = exercise_dir.parent / HINTS_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        state = state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        state = {}
    shown = min(int(state.get(exercise_dir.name, 0) or 0) + 1, len(hints))
    state[exercise_dir.name] = shown
    data = (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(state_path, lambda f: f.write(data))
    return hints[:shown], len(hints)


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
    number: int = 0               # its place in the grader, 1-based (the report's "check N")


def checks_of(grader) -> list[tuple[str, object]]:
    """The ``test_*`` functions of a grader module, in the order they are defined (shape checks come first)."""
    return [(n, f) for n, f in vars(grader).items() if n.startswith("test_") and inspect.isfunction(f)]


def describe(func) -> str:
    doc = inspect.getdoc(func)
    return doc.splitlines()[0] if doc else func.__name__


def depends_on(*checks: str):
    """Mark a grader check as using the functions that ``checks`` test: when one of them failed and this one fails
    too, the runner says "fix check N first" instead of repeating that failure."""
    def mark(func):
        func.depends_on = checks
        return func
    return mark


def iter_checks(exercise_dir: str | os.PathLike, target: str | os.PathLike | None = None):
    """Run the checks of ``exercise_dir``'s grader on ``target`` (see ``resolve_target``) one by one, without
    pytest: yields the list of ``(name, description)`` first, then ``(number, name, description)`` as each check
    starts and its ``CheckResult`` when it ends."""
    exercise_dir = Path(exercise_dir)
    grader = load_grader(grader_path(exercise_dir))
    path = resolve_target(exercise_dir, target)
    checks = checks_of(grader)
    yield [(name, describe(func)) for name, func in checks]
    yield 0, "import", "your file can be imported"
    try:
        student = load_implementation(path)
        import_error = None
    except GradingFailure as exc:
        student, import_error = None, exc
    done: dict[str, CheckResult] = {}
    for number, (name, func) in enumerate(checks, 1):
        yield number, name, describe(func)
        del NOTES[:]
        params = list(inspect.signature(func).parameters)
        if params not in ([], ["student"]):
            raise TypeError(f"grader check {name} must take no argument or `student`, takes {params}")
        try:
            if import_error is not None:
                raise import_error
            func(*([student] if params else []))
        except AssertionError as exc:
            failed = [done[d] for d in getattr(func, "depends_on", ()) if d in done and not done[d].passed]
            own = import_error is not None or isinstance(exc, CallFailure)
            message = str(exc) if not failed or own else str(GradingFailure(
                describe(func), hint=f"fix check {failed[0].number} first ({failed[0].description}): this check "
                                     "uses what it tests"))
            result = CheckResult(name, describe(func), False, message, list(NOTES), number)
        except Exception as exc:  # a grader bug or an unexpected error: report it, never hide it
            result = CheckResult(name, describe(func), False,
                                 "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                                 list(NOTES), number)
        else:
            result = CheckResult(name, describe(func), True, "", list(NOTES), number)
        done[name] = result
        yield result
    del NOTES[:]


def run_checks(exercise_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> list[CheckResult]:
    """Run every check of ``exercise_dir``'s grader on ``target`` in this process; returns their results."""
    return [event for event in iter_checks(exercise_dir, target) if isinstance(event, CheckResult)]


# ------------------------------------------------------------------------- grading in a child process, streamed

DEFAULT_TIMEOUT = 60.0        # seconds each check may take in `implicit-icl exercises check` (--timeout)
LOAD_TIMEOUT = 300.0          # seconds to start the child and load the grader (exercise 8 may load a real model)
_CHILD = "import sys; from implicit_icl.grading import _child; _child(sys.argv[1], sys.argv[2])"


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``grade``; its message names the check that was running."""


def _child(exercise_dir: str, path: str) -> None:
    """The child process of ``grade``: runs the checks and reports each as one JSON line on its original stdout.

    The student's own prints go to stderr (fd 1 is pointed there), so they cannot forge a report line. The child
    ignores Ctrl-C (the parent stops it) and exits when the parent goes away (its stdin closes).
    """
    import json
    import signal
    import threading

    report_to = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(3)), daemon=True).start()

    def send(**event):
        report_to.write(json.dumps(event) + "\n")

    try:
        for event in iter_checks(exercise_dir, path):
            if isinstance(event, list):
                send(event="plan", checks=event)
            elif isinstance(event, tuple):
                send(event="start", number=event[0], name=event[1], description=event[2])
            else:
                send(event="result", **vars(event))
        send(event="end")
    except BaseException as exc:      # a grader bug, or the student's code stopping the runner: the parent says so
        send(event="error", message="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    report_to.flush()


def grade(exercise_dir: str | os.PathLike, target: str | os.PathLike | None = None, *, title: str = "",
          timeout: float = DEFAULT_TIMEOUT, plots: str | os.PathLike | None = None, stream=None) -> list[CheckResult]:
    """Grade ``target`` in a child process, printing each check's result as it finishes; returns the results.

    Each check may run ``timeout`` seconds. A check that runs longer, or a child that ends before it has reported
    every check (``sys.exit``, ``os._exit``, a crash), fails that check by name, and the checks after it are
    reported as not run: a pass needs every check to report in. Ctrl-C raises ``GradingInterrupted`` naming the
    check that was running. ``plots``: the folder where graders may write figures (``save_plot``).
    """
    import json
    import queue
    import subprocess
    import threading

    out = stream or sys.stdout
    exercise_dir = Path(exercise_dir)
    path = resolve_target(exercise_dir, target)
    print("\n".join(filter(None, [title, f"grading {path}", f"each check may run {timeout:g} s (--timeout)", ""])),
          file=out, flush=True)
    env = dict(os.environ)
    env.pop(ENV_PLOTS, None)
    if plots is not None:
        env[ENV_PLOTS] = str(Path(plots).resolve())       # the note names it wherever the student stands
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(exercise_dir), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: ([lines.put(ln) for ln in proc.stdout], lines.put(None)), daemon=True).start()
    plan: list = []
    results: list[CheckResult] = []
    running = None                        # (number, name, description) of the check that has started
    stop = ""                             # why the child stopped before its verdict
    try:
        while True:
            wait = timeout if running else LOAD_TIMEOUT
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                stop = (f"it did not finish within {wait:g} s (an endless loop? `--timeout S` gives it longer)"
                        if running else f"the grader did not start within {wait:g} s")
                break
            if line is None:
                code = proc.wait()
                stop = (f"the grading process ended (exit status {code}) before this check reported: your code "
                        "exits (sys.exit, os._exit, exit()) or crashed the interpreter; return a value instead")
                break
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "plan":
                plan = [tuple(c) for c in event["checks"]]
            elif kind == "start":
                running = (event["number"], event["name"], event["description"])
            elif kind == "result":
                results.append(CheckResult(**event))
                running = None
                print("\n".join(result_lines(results[-1])), file=out, flush=True)
            elif kind == "error":
                stop = "the grader stopped with an error:\n" + event["message"]
                break
            elif kind == "end":
                break
    except KeyboardInterrupt:
        if running:
            what = f"check {running[0]}: {running[2]} [{running[1]}]" if running[0] else running[2]
        else:
            what = f"after check {results[-1].number}" if results else "before the first check"
        raise GradingInterrupted(f"interrupted {'during ' if running else ''}{what}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if stop:
        number, name, description = running or (len(results) + 1, "loading", "your file and the grader load")
        failure = CheckResult(name, description, False,
                              str(GradingFailure(f"{description}", got=stop.splitlines()[0],
                                                 detail="\n".join(stop.splitlines()[1:]) or None,
                                                 hint="a check passes only when it reports back")), [], number)
        results.append(failure)
        print("\n".join(result_lines(failure)), file=out, flush=True)
        for number, (name, description) in enumerate(plan, 1):
            if number > failure.number:
                at = f"check {failure.number}" if failure.number else "the import of your file"
                results.append(CheckResult(name, description, False, f"not run: grading stopped at {at}", [], number))
                print("\n".join(result_lines(results[-1])), file=out, flush=True)
    print("\n".join(summary_lines(results, expected=len(plan))), file=out, flush=True)
    return results


# ----------------------------------------------------------------------------------------------- the report


def result_lines(r: CheckResult) -> list[str]:
    """One check's lines in a report: PASS/FAIL, its number and description, the message if it failed, its notes."""
    number = f"{r.number}. " if r.number else ""                      # 0: importing the file, before check 1
    lines = [f"  {'PASS' if r.passed else 'FAIL'}  {number}{r.description}  [{r.name}]"]
    if not r.passed:
        lines.extend("        " + ln for ln in r.message.splitlines())
    lines.extend("        note: " + n.replace("\n", "\n              ") for n in r.notes)
    return lines


THEORY_CITE = re.compile(r"THEORY §(\d+(?:\.\d+)*)")


def summary_lines(results: list[CheckResult], expected: int | None = None) -> list[str]:
    """The verdict: all passed (only when all ``expected`` checks reported), or where to start; and the command that
    prints each THEORY section the failures and notes cite."""
    n_pass = sum(r.passed for r in results)
    total = max(expected or 0, sum(r.number != 0 for r in results))
    lines = [""]
    if results and n_pass == total:
        lines.append(f"All {total} checks passed. Well done: now read 'What to observe' in the README.")
    else:
        first = next((r for r in results if not r.passed), None)
        which = f"check {first.number}, " if first and first.number else ""
        start = f" Start with the first failure: {which}{first.description}." if first else ""
        lines.append(f"{n_pass}/{total} checks passed.{start}")
    cited = dict.fromkeys(m for r in results for text in (r.description, r.message if not r.passed else "", *r.notes)
                          for m in THEORY_CITE.findall(text))
    if cited:
        lines.append("Read the THEORY sections cited above in the terminal: "
                     + ", ".join(f"`implicit-icl theory {s}`" for s in cited))
    return lines


def report(results: list[CheckResult], title: str, path: Path, stream=None) -> str:
    """A readable report of ``run_checks``'s results."""
    lines = [title, f"grading {path}", ""]
    for r in results:
        lines.extend(result_lines(r))
    text = "\n".join(lines + summary_lines(results))
    print(text, file=stream or sys.stdout)
    return text
