"""``implicit-icl exercises``: list the course exercises and grade one (no pytest or torch needed)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from implicit_icl.commands import fail

HELP = "course exercises: list them, or grade one (`implicit-icl exercises check N`)"
DESCRIPTION = """\
Course exercises, from softmax attention to the implicit weight update (exercises/README.md).

  implicit-icl exercises init [DIR]           copy the course into DIR (default ./exercises) to work in
  implicit-icl exercises list                 the exercises, in order
  implicit-icl exercises check N              grade exercises/NN_*/exercise.py (your file)
  implicit-icl exercises check N --hint       grade it and show one hint more than last time
  implicit-icl exercises check N --file PATH  grade another file
  implicit-icl exercises solution N           show the reference solution (asks first)
  implicit-icl theory 8.5                     print the THEORY section a hint cites (here §8.5)

The exercises are found in --dir (before or after the action), else $IMPLICIT_ICL_EXERCISES, else ./exercises,
else the course folder you stand in (or the one above the exercise you stand in), else the copy installed with the
package (read it, but edit your own: `init` copies it and never overwrites a file you already have).

Each check compares your functions with the NumPy reference (implicit_icl.reference): shapes first, values
after, with the expected and the obtained value and a hint when a check fails. Your code runs in a separate
process, each check for at most --timeout seconds; results are printed as each check finishes. Exercises 3, 6
and 8 draw figures (PNG, with matplotlib) into NN_*/plots/ of your course. The exit status is 0 when every check
passes. The same graders run under pytest: `pytest exercises/01_*`.
"""


DIR_HELP = ("the exercises folder (default: $IMPLICIT_ICL_EXERCISES, else ./exercises, else the course you stand in, "
            "else the installed one); before or after the action")


def add_arguments(parser) -> None:
    parser.add_argument("--dir", metavar="DIR", default=None, help=DIR_HELP)
    sub = parser.add_subparsers(dest="exercises_action", metavar="ACTION")
    init = sub.add_parser("init", help="copy the course into a folder of yours (existing files are kept)")
    init.add_argument("dest", nargs="?", default=None, metavar="DIR",
                      help="where to put the course (default: --dir if given, else ./exercises)")
    listing = sub.add_parser("list", help="list the exercises")
    check = sub.add_parser("check", help="grade one exercise")
    solution = sub.add_parser("solution", help="show the reference solution of one exercise (asks first)")
    for action in (init, listing, check, solution):   # `check 1 --dir course` as well as `--dir course check 1`
        action.add_argument("--dir", metavar="DIR", default=argparse.SUPPRESS, help=DIR_HELP)
    for action in (check, solution):
        action.add_argument("number", type=int, metavar="N", help="the exercise number, 1..10")
    solution.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    check.add_argument("--hint", action="store_true",
                       help="after grading, show one hint more than the last time (a small file in your course "
                            "folder remembers how many)")
    check.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                       help="seconds each check may run before it fails (the output states the default)")
    check.add_argument("--plots", metavar="DIR", default=None,
                       help="where to write the figures (default: NN_*/plots/ of your course)")
    which = check.add_mutually_exclusive_group()
    # --solution / --mistake grade the answer files that ship in the package: for teachers and the test suite,
    # not advertised to students (`exercises solution N` shows a solution, after asking).
    which.add_argument("--solution", action="store_const", const="solution", dest="target", help=argparse.SUPPRESS)
    which.add_argument("--mistake", action="store_const", const="mistake", dest="target", help=argparse.SUPPRESS)
    which.add_argument("--file", metavar="PATH", dest="target", help="grade this file instead of exercise.py")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 86400 seconds, got {text}")
    return value


def _title(folder: Path) -> str:
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return folder.name


def _init(dest: str) -> int:
    from implicit_icl import grading

    try:
        copied, kept = grading.copy_course(dest)
    except (FileNotFoundError, FileExistsError, OSError) as exc:
        return fail("exercises", str(exc))
    print(f"copied {len(copied)} files into {dest}/" + (f"; kept {len(kept)} files you already had there "
                                                        f"(not overwritten)" if kept else ""))
    if Path(dest).name == "exercises":
        how = f"from the folder that holds {dest}/ (or from inside it)"
    else:
        how = f"with --dir {dest} (or from inside {dest}/)"
    print(f"next: edit {dest}/01_softmax_attention/exercise.py, then run `implicit-icl exercises check 1` {how}")
    return 0


def _solution(folder: Path, yes: bool) -> int:
    from implicit_icl import grading

    path = grading.answer_file(folder, "solution.py")
    if not path.is_file():
        return fail("exercises", f"no solution for {folder.name} in the installed course ({path})")
    if not yes:
        print(f"This shows the reference solution of {_title(folder)}. Stuck? `implicit-icl exercises check "
              f"{int(folder.name[:2])} --hint` gives one hint more each time.", file=sys.stderr)
        try:
            answer = input("Show the solution? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not shown (answer y, or pass --yes)", file=sys.stderr)
            return 1
    print(f"# {path}\n")
    print(path.read_text(encoding="utf-8"), end="")
    return 0


def _hints(folder: Path) -> None:
    from implicit_icl import grading

    try:
        shown, total = grading.reveal_hint(folder)
    except OSError as exc:
        fail("exercises", f"cannot record the hints shown ({exc})")
        return
    if not total:
        print("\nthis exercise has no tiered hints: the failures above carry theirs")
        return
    print(f"\nhints ({len(shown)} of {total}; `--hint` again for the next):")
    for i, hint in enumerate(shown, 1):
        print(f"  {i}. " + hint.replace("\n", "\n     "))


def run(args) -> int:
    from implicit_icl import grading

    if getattr(args, "exercises_action", None) == "init":
        return _init(args.dest or args.dir or "exercises")
    try:
        exercises = grading.find_exercises(args.dir)
    except FileNotFoundError as exc:
        return fail("exercises", str(exc))
    action = getattr(args, "exercises_action", None)
    if not exercises:
        return fail("exercises", f"no exercises (NN_name/ folders with a grader) in {args.dir or 'the course'}; "
              "`implicit-icl exercises init DIR` copies the course")
    if action in (None, "list"):
        for n, folder in exercises.items():
            print(f"{n:2d}  {_title(folder)}    ({folder})")
        if action is None:
            print("\ngrade one with: implicit-icl exercises check N", file=sys.stderr)
        if exercises and grading.is_installed_copy(next(iter(exercises.values())).parent):
            print("these are the installed originals: run `implicit-icl exercises init` for a copy of your own to edit",
                  file=sys.stderr)
        return 0
    if args.number not in exercises:
        return fail("exercises", f"N must be one of {sorted(exercises)}, got {args.number}")
    folder = exercises[args.number]
    if action == "solution":
        return _solution(folder, args.yes)
    fallback = folder.parent.resolve() == grading.installed_course().resolve()      # no course of the student's here
    if args.dir is None and args.target is None and not os.environ.get("IMPLICIT_ICL_EXERCISES") and fallback \
            and not grading.is_installed_copy(folder.parent) and not folder.parent.resolve().is_relative_to(Path.cwd().resolve()):
        print(f"note: no course here ({Path.cwd()}): grading the copy at {folder.parent}; pass --dir DIR to grade "
              "yours", file=sys.stderr)
    if args.target is None and grading.is_installed_copy(folder.parent):
        return fail("exercises", "these are the course's installed originals, not your copy: run `implicit-icl exercises init` "
              "once, edit exercises/NN_*/exercise.py there, and grade it from the folder that holds exercises/")
    try:
        path = grading.resolve_target(folder, args.target)
    except FileNotFoundError as exc:
        return fail("exercises", str(exc))
    plots = getattr(args, "plots", None)
    if plots is None and args.target is None and not os.environ.get(grading.ENV_TARGET):
        plots = folder / "plots"                                   # the student's own file: figures beside it
    try:
        results = grading.grade(folder, path, title=_title(folder), plots=plots,
                                timeout=getattr(args, "timeout", None) or grading.DEFAULT_TIMEOUT)
    except grading.GradingInterrupted as exc:
        return fail("exercises", str(exc), code=130)
    if getattr(args, "hint", False):
        _hints(folder)
    return 0 if results and all(r.passed for r in results) else 1
