"""pytest plugin for the exercises: ``pytest exercises/01_*`` grades ``exercise.py`` of that folder.

Choose another file with ``--solution``, ``--mistake`` or ``--file PATH`` (or ``IMPLICIT_ICL_EXERCISE=solution``,
``mistake`` or a path). Failures print the grader's teaching message instead of a traceback. The machinery is
shared with ``implicit-icl exercises check N`` (``implicit_icl.grading``), which needs no pytest.
"""
from __future__ import annotations

import pytest

from implicit_icl import grading


def pytest_addoption(parser):
    group = parser.getgroup("exercises", "implicit-icl course exercises")
    group.addoption("--solution", action="store_const", const="solution", dest="exercise_target",
                     help="grade the reference solution (solution.py) instead of exercise.py")
    group.addoption("--mistake", action="store_const", const="mistake", dest="exercise_target",
                     help="grade the deliberately wrong solution (mistake.py)")
    group.addoption("--file", action="store", dest="exercise_target", metavar="PATH",
                     help="grade this file instead of exercise.py")


@pytest.fixture(scope="module")
def student(request):
    """The module under grading, loaded from the grader's folder (see ``implicit_icl.grading.resolve_target``)."""
    path = grading.resolve_target(request.path.parent, request.config.getoption("exercise_target"))
    return grading.load_implementation(path)


@pytest.fixture(autouse=True)
def _fresh_notes():
    del grading.NOTES[:]
    yield


_shown_notes: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.when == "call":
        _shown_notes.extend(f"{item.name}: {n}" for n in grading.NOTES)
    if call.excinfo is not None and call.excinfo.errisinstance(grading.GradingFailure):
        doc = grading.describe(getattr(item, "function", None)) if getattr(item, "function", None) else item.name
        rep.longrepr = f"{doc}\n{call.excinfo.value}"


def pytest_terminal_summary(terminalreporter):
    if _shown_notes:
        terminalreporter.section("notes from the grader")
        for n in _shown_notes:
            terminalreporter.write_line(n)
