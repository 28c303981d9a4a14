"""`implicit-icl exercises check` runs the student's code in a child process (issue 17, items 3 and 4): a file that
exits (sys.exit, os._exit) or loops forever fails the running check by name, fast, and never passes; results stream
as each check finishes; Ctrl-C names the running check. Also the student-facing side of issue 18: hidden solutions,
tiered hints, the THEORY pointer, plots.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from implicit_icl import grading
from implicit_icl.cli import main

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = grading.find_exercises(ROOT / "exercises")
SOFTMAX = "def softmax(x, axis=-1):\n"


def _softmax_doing(tmp_path, body: str, name: str = "student.py") -> Path:
    """Exercise 1's solution whose softmax runs ``body`` first (an exit, a loop)."""
    text = (FOLDERS[1] / "solution.py").read_text(encoding="utf-8")
    assert text.count(SOFTMAX) == 1
    start = text.index(SOFTMAX) + len(SOFTMAX)
    doc_end = text.index('"""', text.index('"""', start) + 3) + 3        # after the docstring
    path = tmp_path / name
    path.write_text(text[:doc_end] + "\n    import os, sys\n    " + body + text[doc_end:], encoding="utf-8")
    return path


@pytest.mark.parametrize("body, said", [
    ("sys.exit(0)", "sys.exit(0)"),
    ("os._exit(0)", "exit status 0"),
])
def test_a_softmax_that_exits_fails_the_check_by_name(tmp_path, capsys, body, said):
    path = _softmax_doing(tmp_path, body)
    started = time.monotonic()
    assert main(["exercises", "check", "1", "--file", str(path), "--timeout", "20"]) == 1
    out = capsys.readouterr().out
    assert time.monotonic() - started < 15
    check_1 = out[out.index("FAIL  1. softmax keeps the shape of its input  [test_softmax_shape]"):]
    assert said in check_1[:check_1.index("  2. ")], out
    assert "All 9 checks passed" not in out and "Start with the first failure: check 1" in out, out
    if body == "sys.exit(0)":           # caught in the child: each call is named, the grading goes on
        assert "in `softmax`: " in check_1 and "PASS  4. causal_mask" in out, out
    else:                               # the child is gone: the checks after it did not run
        assert out.count("not run: grading stopped at check 1") == 8 and "0/9 checks passed" in out, out


def test_os_exit_after_the_first_checks_reports_those_and_fails_the_rest(tmp_path, capsys):
    """os._exit in self_attention: checks 1-5 pass (streamed), check 6 fails by name, 7-9 are "not run"."""
    text = (FOLDERS[1] / "solution.py").read_text(encoding="utf-8")
    head = "def self_attention("
    i = text.index(head)
    j = text.index('"""', text.index('"""', i) + 3) + 3
    path = tmp_path / "late_exit.py"
    path.write_text(text[:j] + "\n    import os; os._exit(0)" + text[j:], encoding="utf-8")
    assert main(["exercises", "check", "1", "--file", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("PASS") == 5 and "FAIL  6. self_attention returns one vector per token" in out, out
    assert out.count("not run: grading stopped at check 6") == 3 and "5/9 checks passed" in out, out


def test_an_endless_softmax_fails_its_check_after_the_stated_timeout(tmp_path, capsys):
    path = _softmax_doing(tmp_path, "while True: pass")
    started = time.monotonic()
    assert main(["exercises", "check", "1", "--file", str(path), "--timeout", "1.5"]) == 1
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert elapsed < 15, elapsed
    assert "each check may run 1.5 s" in out                                   # the timeout is stated up front
    assert "FAIL  1. softmax keeps the shape of its input" in out and "did not finish within 1.5 s" in out, out
    assert "All 9 checks passed" not in out and "0/9 checks passed" in out


def test_an_endless_loop_at_import_is_named(tmp_path, capsys):
    path = tmp_path / "hangs.py"
    path.write_text("while True:\n    pass\n")
    assert main(["exercises", "check", "1", "--file", str(path), "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  your file can be imported  [import]" in out and "did not finish within 1 s" in out, out
    assert out.count("not run: grading stopped at the import of your file") == 9 and "0/9 checks passed" in out


def test_results_stream_as_each_check_finishes(tmp_path):
    """Check 1's verdict is printed while check 2 still runs (a slow softmax on the second check's input)."""
    path = _softmax_doing(tmp_path, "globals()['_calls'] = globals().get('_calls', 0) + 1; "
                                    "__import__('time').sleep(30 if _calls == 3 else 0)")   # check 2's first call
    proc = subprocess.Popen([sys.executable, "-m", "implicit_icl.cli", "exercises", "check", "1", "--file", str(path),
                             "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        seen = ""
        deadline = time.monotonic() + 15
        while "[test_softmax_shape]" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        assert "PASS  1. softmax keeps the shape of its input  [test_softmax_shape]" in seen, seen
        assert proc.poll() is None                       # still grading check 2 while check 1 is already shown
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)                  # Ctrl-C: the running check is named
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted during check 2: softmax matches the reference" in err and "[test_softmax_values]" in err, err


def test_sys_exit_is_a_failure_in_process_too():
    """The in-process runner (and pytest) report a student's sys.exit as a failure of the check that called it."""
    class Student:
        __file__ = "student.py"

        @staticmethod
        def f():
            sys.exit(0)

    with pytest.raises(grading.GradingFailure, match=r"(?s)returns a value \(without exiting\).*sys\.exit\(0\)"):
        grading.call(Student, "f")
