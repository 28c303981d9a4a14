"""Running a grader's checks: in this process (``iter_checks``, ``run_checks``: what pytest-free tests use) or in a
child process (``grade``: what ``implicit-icl exercises check`` uses), where each check has a time limit, a student's
``sys.exit`` or crash fails the check that was running, and Ctrl-C names it. ``implicit_icl.grading`` re-exports every
public name here."""
from __future__ import annotations

import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from implicit_icl.grading_course import grader_path, load_grader, load_implementation, resolve_target
from implicit_icl.grading_messages import NOTES, CallFailure, GradingFailure
from implicit_icl.grading_plots import ENV_PLOTS
from implicit_icl.grading_report import CheckResult, result_lines, summary_lines


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
_CHILD = "import sys; from implicit_icl.grading_runner import _child; _child(sys.argv[1], sys.argv[2])"


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


@dataclass
class _Progress:
    """What the parent has heard from the child so far."""

    out: object                                        # the stream the report is printed on
    plan: list = field(default_factory=list)           # (name, description) of every check, from the child
    results: list[CheckResult] = field(default_factory=list)
    running: tuple | None = None                       # (number, name, description) of the check that has started
    stop: str = ""                                     # why the child stopped before its verdict

    def show(self, result: CheckResult) -> None:
        self.results.append(result)
        print("\n".join(result_lines(result)), file=self.out, flush=True)


def grade(exercise_dir: str | os.PathLike, target: str | os.PathLike | None = None, *, title: str = "",
          timeout: float = DEFAULT_TIMEOUT, plots: str | os.PathLike | None = None, stream=None) -> list[CheckResult]:
    """Grade ``target`` in a child process, printing each check's result as it finishes; returns the results.

    Each check may run ``timeout`` seconds. A check that runs longer, or a child that ends before it has reported
    every check (``sys.exit``, ``os._exit``, a crash), fails that check by name, and the checks after it are
    reported as not run: a pass needs every check to report in. Ctrl-C raises ``GradingInterrupted`` naming the
    check that was running. ``plots``: the folder where graders may write figures (``save_plot``).
    """
    progress = _Progress(stream or sys.stdout)
    exercise_dir = Path(exercise_dir)
    path = resolve_target(exercise_dir, target)
    print("\n".join(filter(None, [title, f"grading {path}", f"each check may run {timeout:g} s (--timeout)", ""])),
          file=progress.out, flush=True)
    proc, lines = _start_child(exercise_dir, path, plots)
    try:
        _follow(progress, proc, lines, timeout)
    except KeyboardInterrupt:
        raise GradingInterrupted(_interrupted_at(progress)) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if progress.stop:
        _fail_the_rest(progress)
    print("\n".join(summary_lines(progress.results, expected=len(progress.plan))), file=progress.out, flush=True)
    return progress.results


def _start_child(exercise_dir: Path, path: Path, plots):
    """Start ``_child`` on ``path``; returns the process and a queue of its report lines (``None`` once it ends)."""
    import queue
    import subprocess
    import threading

    env = dict(os.environ)
    env.pop(ENV_PLOTS, None)
    if plots is not None:
        env[ENV_PLOTS] = str(Path(plots).resolve())       # the note names it wherever the student stands
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(exercise_dir), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: ([lines.put(ln) for ln in proc.stdout], lines.put(None)), daemon=True).start()
    return proc, lines


def _follow(progress: _Progress, proc, lines, timeout: float) -> None:
    """Read the child's report lines into ``progress`` until its verdict, or until it stops (``progress.stop``)."""
    import json
    import queue

    while True:
        wait = timeout if progress.running else LOAD_TIMEOUT
        try:
            line = lines.get(timeout=wait)
        except queue.Empty:
            progress.stop = (f"it did not finish within {wait:g} s (an endless loop? `--timeout S` gives it longer)"
                             if progress.running else f"the grader did not start within {wait:g} s")
            return
        if line is None:
            code = proc.wait()
            progress.stop = (f"the grading process ended (exit status {code}) before this check reported: your code "
                             "exits (sys.exit, os._exit, exit()) or crashed the interpreter; return a value instead")
            return
        event = json.loads(line)
        kind = event.pop("event")
        if kind == "plan":
            progress.plan = [tuple(c) for c in event["checks"]]
        elif kind == "start":
            progress.running = (event["number"], event["name"], event["description"])
        elif kind == "result":
            progress.show(CheckResult(**event))
            progress.running = None
        elif kind == "error":
            progress.stop = "the grader stopped with an error:\n" + event["message"]
            return
        elif kind == "end":
            return


def _interrupted_at(progress: _Progress) -> str:
    """``GradingInterrupted``'s message: the check that was running when Ctrl-C came, or the last one finished."""
    running, results = progress.running, progress.results
    if running:
        what = f"check {running[0]}: {running[2]} [{running[1]}]" if running[0] else running[2]
    else:
        what = f"after check {results[-1].number}" if results else "before the first check"
    return f"interrupted {'during ' if running else ''}{what}"


def _fail_the_rest(progress: _Progress) -> None:
    """The child stopped early: fail the check that was running (saying why), and mark the ones after it not run."""
    stop = progress.stop.splitlines()
    number, name, description = progress.running or (len(progress.results) + 1, "loading",
                                                      "your file and the grader load")
    progress.show(CheckResult(name, description, False,
                              str(GradingFailure(f"{description}", got=stop[0], detail="\n".join(stop[1:]) or None,
                                                 hint="a check passes only when it reports back")), [], number))
    at = f"check {number}" if number else "the import of your file"
    for later, (name, description) in enumerate(progress.plan, 1):
        if later > number:
            progress.show(CheckResult(name, description, False, f"not run: grading stopped at {at}", [], later))
