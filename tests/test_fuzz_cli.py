"""Fuzz the command line (issue 17): each command's arguments with one generated bad value give exit status 2 and
one error line naming the problem, no traceback, no hang, and no file written or changed.

Every case runs ``implicit-icl <command>`` in-process with every other argument valid and cheap, so a case that is
not refused would start real work (and fail the test on its exit status or its time limit). The number of examples
per strategy is IMPLICIT_ICL_FUZZ_EXAMPLES (default 15, a few seconds in all); raise it to search harder, e.g.
``IMPLICIT_ICL_FUZZ_EXAMPLES=500 HYPOTHESIS_PROFILE=explore pytest tests/test_fuzz_cli.py``.
Strings are drawn without control characters (a newline in a value would make any echoing message two lines).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from implicit_icl.checkpoint import DATA_DIR
from implicit_icl.cli import main

EXAMPLES = int(os.environ.get("IMPLICIT_ICL_FUZZ_EXAMPLES", "15"))
CASE_SECONDS = 60          # per case: a refused argument takes well under a second (the first import of torch more)
fuzz = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

pytest.importorskip("torch", reason="train, bench and reproduce need the torch extra")


# ---- values
def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


odd_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
not_an_int = odd_text.filter(lambda s: not _is_int(s)) | st.sampled_from(["", " ", "1.5", "1e3", "nan", "inf", "0x10"])
not_a_float = odd_text.filter(lambda s: not _is_float(s)) | st.sampled_from(["", " ", "1,5", "one"])
not_positive = st.integers(max_value=0).map(str)
huge = st.integers(min_value=40, max_value=400).map(lambda k: str(2 ** k))
bad_float = st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e39", "1e400", "-0.0"]) | st.floats(max_value=0).map(str)


def bad_count(also_huge: bool = False):
    """Not a count: not an int, or <= 0 (and, where the option has an upper bound, far above it)."""
    return not_an_int | not_positive | (huge if also_huge else st.nothing())


# ---- outputs a command must refuse: (name, make(tmp) -> path string)
def _foreign_file(tmp: Path, suffix: str) -> str:
    path = tmp / f"mine{suffix}"
    path.write_text("MINE\n")
    return str(path)


def _under_a_file(tmp: Path, suffix: str) -> str:
    (tmp / "a_file").write_text("MINE\n")
    return str(tmp / "a_file" / f"out{suffix}")


def _inside_package(tmp: Path, suffix: str) -> str:
    return str(DATA_DIR / f"fuzz-output{suffix}")


def _a_folder(tmp: Path, suffix: str) -> str:
    (tmp / "folder").mkdir(exist_ok=True)
    return str(tmp / "folder")


bad_output = st.sampled_from([lambda t, s: "", _foreign_file, _under_a_file, _inside_package, _a_folder])
bad_out_dir = st.sampled_from([lambda t, s: "", _under_a_file, _inside_package,
                               lambda t, s: _foreign_file(t, s)])          # a file, not a folder


# ---- running one case
def _snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@contextlib.contextmanager
def _time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def hang(signum, frame):
        raise TimeoutError(f"the case ran for more than {seconds} s: an argument was not refused at once")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(tmp: Path, argv: list[str]) -> str:
    """Run ``implicit-icl *argv`` in ``tmp``; assert exit 2, one error line (after argparse's usage, if any), no
    traceback, and no file written or changed in ``tmp`` or the package's data; return the error line."""
    command = argv[0]
    before = _snapshot(tmp, DATA_DIR)
    err, out = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with _time_limit(CASE_SECONDS), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:               # argparse's own errors
                code = exc.code
    finally:
        os.chdir(cwd)
    text = err.getvalue()
    lines = text.splitlines()
    assert code == 2, f"{argv!r}: exit {code}, stderr {text!r}"
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith((f"implicit-icl {command}: ", f"implicit-icl {command} "))
              and ": " in line]                     # a subcommand's own parser: "implicit-icl exercises check: …"
    assert len(errors) == 1 and lines[-1] == errors[0], f"{argv!r}: stderr {text!r}"
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), f"{argv!r}: stderr {text!r}"
    assert _snapshot(tmp, DATA_DIR) == before, f"{argv!r} wrote or changed a file"
    return errors[0]


@pytest.fixture
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _fresh(workdir: Path) -> Path:
    """An empty folder of its own for one example."""
    n = len(list(workdir.iterdir()))
    path = workdir / f"case{n}"
    path.mkdir()
    return path


# ---- train
TRAIN = ["train", "--no-progress", "--steps", "1", "--n-points", "4", "--batch-size", "2", "--val-prompts", "2"]
TRAIN_BAD = st.one_of(
    st.tuples(st.just("--steps"), bad_count()),
    st.tuples(st.sampled_from(["--eval-every", "--checkpoint-every"]), bad_count()),
    st.tuples(st.sampled_from(["--batch-size", "--val-prompts"]), bad_count(also_huge=True)),
    st.tuples(st.just("--n-points"), bad_count() | st.integers(min_value=10**7, max_value=10**30).map(str)),
    st.tuples(st.just("--threads"), bad_count(also_huge=True)),
    st.tuples(st.just("--seed"), not_an_int | st.integers(max_value=-1).map(str)
              | st.integers(min_value=2**64, max_value=2**80).map(str)),
    st.tuples(st.just("--lr"), bad_float | not_a_float),
    st.tuples(st.just("--preset"), odd_text.filter(lambda s: s not in ("p1", "p2", "fewshot"))),
)


@fuzz
@given(bad=TRAIN_BAD)
def test_train_refuses_bad_numbers(workdir, bad):
    option, value = bad
    tmp = _fresh(workdir)
    line = refused(tmp, [*TRAIN, "--out", "run", f"{option}={value}"])
    assert option in line or option.lstrip("-") in line


@fuzz
@given(make=bad_out_dir)
def test_train_refuses_bad_out_folders(workdir, make):
    tmp = _fresh(workdir)
    refused(tmp, [*TRAIN, "--out", make(tmp, ".txt")])


@fuzz
@given(names=st.lists(st.sampled_from(["model.npz", "metrics.jsonl", "notes.txt", "checkpoint.npz"]), min_size=1,
                      unique=True))
def test_train_refuses_a_folder_of_the_users(workdir, names):
    tmp = _fresh(workdir)
    (tmp / "w").mkdir()
    for name in names:
        (tmp / "w" / name).write_text("MINE\n")
    assert "is not empty" in refused(tmp, [*TRAIN, "--out", "w"])


# ---- bench
BENCH_BAD = st.one_of(
    st.tuples(st.sampled_from(["--positions", "--sizes"]), bad_count()),
    st.tuples(st.just("--threads"), bad_count(also_huge=True)),
    st.tuples(st.just("--budget"), bad_float.filter(lambda s: s != "1e39") | not_a_float),
    st.tuples(st.just("--kind"), odd_text.filter(lambda s: s not in ("plain", "p1-skip", "residual", "pre-ln",
                                                                       "post-ln", "gated", "parallel"))),
)


@fuzz
@given(bad=BENCH_BAD)
def test_bench_refuses_bad_values(workdir, bad):
    option, value = bad
    refused(_fresh(workdir), ["bench", "--quick", f"{option}={value}"])


@fuzz
@given(make=st.sampled_from([lambda t, s: "", _under_a_file, _inside_package, _a_folder]))
def test_bench_refuses_bad_json_paths(workdir, make):
    """bench --json may replace any file the user names (its results are re-measured, not a report to keep)."""
    tmp = _fresh(workdir)
    assert "--json" in refused(tmp, ["bench", "--quick", "--json", make(tmp, ".json")])


# ---- verify
@fuzz
@given(bad=st.one_of(st.tuples(st.just("--seeds"), bad_count()),
                     st.tuples(st.just("--kind"), odd_text.filter(lambda s: s not in ("plain", "p1-skip", "residual",
                                                                                        "pre-ln", "post-ln", "gated",
                                                                                        "parallel")))))
def test_verify_refuses_bad_values(workdir, bad):
    option, value = bad
    refused(_fresh(workdir), ["verify", f"{option}={value}"])


@fuzz
@given(make=bad_output)
def test_verify_refuses_bad_json_paths(workdir, make):
    tmp = _fresh(workdir)
    assert "--json" in refused(tmp, ["verify", "--kind", "plain", "--seeds", "1", "--json", make(tmp, ".json")])


# ---- reproduce
@fuzz
@given(bad=st.one_of(
    st.tuples(st.just("--seed"), not_an_int | st.integers(max_value=-1).map(str)
              | st.integers(min_value=2**64, max_value=2**80).map(str)),
    st.tuples(st.just("--preset"), odd_text.filter(lambda s: s not in ("p1", "p2"))),
    st.tuples(st.just("--checkpoint"), st.sampled_from(["", "missing.npz", "notes.txt", "."])),
))
def test_reproduce_refuses_bad_values(workdir, bad):
    option, value = bad
    tmp = _fresh(workdir)
    (tmp / "notes.txt").write_text("MINE\n")
    refused(tmp, ["reproduce", "--quick", "--no-progress", "--out", "run", f"{option}={value}"])


@fuzz
@given(make=bad_out_dir)
def test_reproduce_refuses_bad_out_folders(workdir, make):
    tmp = _fresh(workdir)
    refused(tmp, ["reproduce", "--quick", "--no-progress", "--out", make(tmp, ".txt")])


# ---- explain (all refused before the model is loaded)
EXPLAIN = ["explain", "France is to Paris", "--layer", "3"]


@fuzz
@given(bad=st.one_of(
    st.tuples(st.just("--baseline-seed"), not_an_int | st.integers(max_value=-1).map(str)),
    st.tuples(st.just("--layer"), not_an_int),
    st.tuples(st.just("--pair"), st.sampled_from(["", " ", "\t"])),
))
def test_explain_refuses_bad_values(workdir, bad):
    option, value = bad
    refused(_fresh(workdir), [*EXPLAIN, f"{option}={value}"])


@fuzz
@given(text=st.sampled_from(["", " ", "\t", "   "]))
def test_explain_refuses_an_empty_text(workdir, text):
    assert "TEXT is empty" in refused(_fresh(workdir), ["explain", text, "--layer", "3"])


@fuzz
@given(make=bad_output)
def test_explain_refuses_bad_json_paths(workdir, make):
    tmp = _fresh(workdir)
    assert "--json" in refused(tmp, [*EXPLAIN, "--json", make(tmp, ".json")])


# ---- walkthrough (--export: rendered and exit, never the app; all refused before any rendering)
WALK = ["walkthrough", "--random", "--export", "out.txt"]


@fuzz
@given(bad=st.one_of(
    st.tuples(st.sampled_from(["--tokens"]), bad_count(also_huge=True)),
    st.tuples(st.just("--seed"), not_an_int | st.integers(max_value=-1).map(str)),
    st.tuples(st.just("--step"), not_an_int | st.integers(max_value=-1).map(str)),
    st.tuples(st.just("--size"), odd_text.filter(lambda s: "x" not in s) | st.sampled_from(
        ["0x0", "3000x3000", "100000x100000", "-80x24", "80x", "x24", "80x24x3", "1e3x24"])),
    st.tuples(st.just("--backend"), odd_text.filter(lambda s: s not in ("numpy", "torch"))),
))
def test_walkthrough_refuses_bad_values(workdir, bad):
    option, value = bad
    refused(_fresh(workdir), [*WALK, f"{option}={value}"])


@fuzz
@given(make=st.sampled_from([_foreign_file, _under_a_file, _inside_package, _a_folder]))
def test_walkthrough_refuses_bad_export_paths(workdir, make):
    tmp = _fresh(workdir)
    assert "--export" in refused(tmp, ["walkthrough", "--random", "--export", make(tmp, ".txt")])


# ---- exercises and theory
@fuzz
@given(number=st.one_of(not_an_int, st.integers(max_value=0).map(str), st.integers(min_value=11).map(str)))
def test_exercises_refuse_bad_numbers(workdir, number):
    refused(_fresh(workdir), ["exercises", "check", number])


@fuzz
@given(section=odd_text.filter(lambda s: s.strip() and s.strip().lower() != "all" and not s.strip()[:1].isdigit()))
def test_theory_refuses_unknown_sections(workdir, section):
    line = refused(_fresh(workdir), ["theory", section])
    assert "SECTION" in line or (section.startswith("-") and "unrecognized arguments" in line)   # read as an option
