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


# ----------------------------------------------------- hidden solutions, tiered hints, THEORY (issue 18, items 2, 5)


def test_the_student_help_does_not_advertise_the_solution(capsys):
    with pytest.raises(SystemExit):
        main(["exercises", "check", "--help"])
    text = capsys.readouterr().out
    assert "--solution" not in text and "--mistake" not in text and "--hint" in text and "--timeout" in text
    with pytest.raises(SystemExit):
        main(["exercises", "--help"])
    text = capsys.readouterr().out
    assert "--solution" not in text and "exercises solution N" in text and "implicit-icl theory" in text


def test_the_solution_is_shown_only_after_asking(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMPLICIT_ICL_EXERCISES", raising=False)
    assert main(["exercises", "init", "course"]) == 0
    assert not (tmp_path / "course" / "03_rank1_update" / "solution.py").exists()
    capsys.readouterr()
    solution = (FOLDERS[3] / "solution.py").read_text(encoding="utf-8")
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["exercises", "solution", "3", "--dir", "course"]) == 1
    captured = capsys.readouterr()
    assert "def rank1_update" not in captured.out and "not shown" in captured.err and "--hint" in captured.err

    def no_input(prompt):
        raise EOFError                                     # a script with no terminal: never shown by default

    monkeypatch.setattr("builtins.input", no_input)
    assert main(["exercises", "solution", "3", "--dir", "course"]) == 1
    assert "def rank1_update" not in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["exercises", "solution", "3", "--dir", "course"]) == 0
    assert solution in capsys.readouterr().out
    assert main(["exercises", "solution", "3", "--dir", "course", "--yes"]) == 0
    assert solution in capsys.readouterr().out


def test_hint_reveals_one_more_each_time_and_remembers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["exercises", "init", "course"]) == 0
    hints = grading.hints_of(FOLDERS[6])
    assert len(hints) >= 3
    for shown in range(1, len(hints) + 2):                 # one past the last: it stays at all of them
        capsys.readouterr()
        assert main(["exercises", "check", "6", "--dir", "course", "--hint"]) == 1
        out = capsys.readouterr().out
        k = min(shown, len(hints))
        assert f"hints ({k} of {len(hints)}" in out, out
        assert all(h.splitlines()[0] in out for h in hints[:k]) and all(h not in out for h in hints[k:]), out
    state = (tmp_path / "course" / grading.HINTS_FILE).read_text()
    assert '"06_convergence": 3' in state
    capsys.readouterr()
    assert main(["exercises", "check", "3", "--dir", "course", "--hint"]) == 1      # each exercise its own count
    out = capsys.readouterr().out
    assert "hints (1 of 3" in out and grading.hints_of(FOLDERS[3])[1] not in out
    assert main(["exercises", "check", "3", "--dir", "course"]) == 1                 # without --hint: none
    assert "hints (" not in capsys.readouterr().out


def test_every_exercise_has_tiered_hints():
    for n, folder in FOLDERS.items():
        hints = grading.hints_of(folder)
        assert len(hints) >= 3 and len(set(hints)) == len(hints), n


def test_the_report_names_the_command_for_the_cited_theory_section(capsys):
    assert main(["exercises", "check", "3", "--dir", str(ROOT / "exercises"), "--mistake"]) == 1
    out = capsys.readouterr().out
    assert "THEORY §10.6" in out and "`implicit-icl theory 10.6`" in out


def test_exercise_9_hint_uses_the_readmes_shape_convention():
    """The README writes A = [a_1 … a_K] as D × K; the hint used to say (K, D)."""
    readme = (FOLDERS[9] / "README.md").read_text(encoding="utf-8")
    assert "(D × K)" in readme
    grader = grading.grader_path(FOLDERS[9]).read_text(encoding="utf-8")
    assert "(K, D)" not in grader and "D × K" in grader


# ------------------------------------------------------------------------------------ plots (issue 18, item 3)


def test_the_grader_draws_the_three_figures_and_says_where(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for n, name in ((3, "rank1_update.png"), (6, "convergence.png"), (8, "alignment.png")):
        out_dir = tmp_path / str(n)
        results = grading.grade(FOLDERS[n], "solution", plots=out_dir)
        out = capsys.readouterr().out
        png = out_dir / name
        assert all(r.passed for r in results) and png.is_file(), (n, out)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"plot written to {png}" in out


def test_a_students_check_writes_its_plots_beside_the_exercise(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["exercises", "init", "course"]) == 0
    mine = tmp_path / "course" / "03_rank1_update"
    (mine / "exercise.py").write_text((FOLDERS[3] / "solution.py").read_text())
    assert main(["exercises", "check", "3", "--dir", "course"]) == 0
    assert (mine / "plots" / "rank1_update.png").is_file()
    assert f"plot written to {mine / 'plots' / 'rank1_update.png'}" in capsys.readouterr().out


def test_without_matplotlib_the_grader_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(grading.ENV_PLOTS, str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    del grading.NOTES[:]
    assert grading.save_plot("x.png", lambda fig: None) is None
    assert any("matplotlib is not installed" in n and "pip install matplotlib" in n for n in grading.NOTES)
    assert not list(tmp_path.iterdir())
    del grading.NOTES[:]
