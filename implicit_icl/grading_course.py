"""The course's files: where the course is (a checkout, the installed package data, a student's copy made by
``exercises init``), which file is graded, the grader of an exercise and its tiered hints, and loading both as fresh
modules. ``implicit_icl.grading`` re-exports every public name here."""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
from pathlib import Path

from implicit_icl.grading_messages import GradingFailure

ENV_TARGET = "IMPLICIT_ICL_EXERCISE"
STUDENT_FILE = "exercise.py"
TARGET_FILES = {"exercise": "exercise.py", "stub": "exercise.py", "solution": "solution.py", "mistake": "mistake.py"}
GRADER_GLOB = "test_grade_*.py"

_counter = itertools.count()


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

