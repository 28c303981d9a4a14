"""``implicit-icl walkthrough`` from the command line: bad arguments give one clear line and a non-zero code,
never a traceback; ``--export`` writes a screenshot of the chosen step."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest

from implicit_icl.cli import main


@pytest.fixture(autouse=True)
def pretend_terminal(request, monkeypatch):
    """Tests run without a terminal; the argument checks below are about what comes after the terminal check
    (tests named ``test_no_terminal*`` keep the real check). No test here reaches ``app.run()`` without
    ``--export``: each fails on an argument first."""
    if not request.node.name.startswith("test_no_terminal"):
        from implicit_icl.commands import walkthrough as command
        monkeypatch.setattr(command, "interactive_terminal", lambda: True, raising=False)


def call(capsys, *argv):
    code = main(["walkthrough", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = call(capsys, "--checkpoint", str(tmp_path / "nope.npz"))
    assert code == 2 and "nope.npz" in err and "no such file" in err


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive at all")
    code, _, err = call(capsys, "--checkpoint", str(bad))
    assert code == 2 and "bad.npz" in err and "not an .npz archive" in err


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_tokens_must_be_positive(capsys, tokens):
    code, _, err = call(capsys, "--random", "--tokens", tokens)
    assert code == 2 and "--tokens must be an integer from 1" in err


def test_unknown_backend(capsys):
    code, _, err = call(capsys, "--random", "--backend", "jax")
    assert code == 2 and "--backend" in err and "jax" in err


def test_terminal_too_small(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("LINES", "20")
    code, _, err = call(capsys, "--random", "--tokens", "5")
    assert code == 2 and "60x20" in err and "at least 80x24" in err and "100x34 for every panel" in err


def test_export_compact_size(capsys, tmp_path):
    """--size down to 80x24 renders the compact layout (heatmap and check); below that it is refused."""
    out = tmp_path / "w80.txt"
    code, _, _ = call(capsys, "--random", "--tokens", "12", "--step", "4", "--export", str(out), "--size", "80x24")
    assert code == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    text = "\n".join(lines)
    assert len(lines) == 24 and max(len(line) for line in lines) <= 80
    assert "step i = 4 / 12" in text and "ΔW_4 = u_4 aᵀ/‖a‖²" in text and "T_(W+ΔW_4)(x)" in text
    assert "A terminal of at least 100×34 also shows" in text and "GD view (P1" not in text
    code, _, err = call(capsys, "--random", "--export", str(tmp_path / "x.txt"), "--size", "80x23")
    assert code == 2 and "at least 80x24" in err and not (tmp_path / "x.txt").exists()


def test_negative_seed_and_model_only_options(capsys, tmp_path):
    code, _, err = call(capsys, "--random", "--seed", "-1", "--export", str(tmp_path / "s.txt"))
    assert code == 2 and "--seed must be >= 0, got -1" in err
    for option in ("--layer", "--position"):          # silently ignored before: they only mean something with --model
        code, _, err = call(capsys, "--random", option, "2", "--export", str(tmp_path / "s.txt"))
        assert code == 2 and f"{option} only applies with --model" in err
    assert not (tmp_path / "s.txt").exists()


def test_bad_step_and_export_name(capsys, tmp_path):
    code, _, err = call(capsys, "--random", "--tokens", "5", "--step", "9")
    assert code == 2 and "--step must be from 0 to 5" in err
    code, _, err = call(capsys, "--random", "--export", str(tmp_path / "x.png"))
    assert code == 2 and ".svg or .txt" in err
    code, _, err = call(capsys, "--random", "--export", str(tmp_path / "x.svg"), "--size", "60x20")
    assert code == 2 and "too small" in err


def test_export_to_an_unwritable_place(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = call(capsys, "--random", "--tokens", "3", "--export", str(blocker / "w.txt"))
    assert code == 2 and f"--export: cannot write {blocker / 'w.txt'}: {blocker} is a file, not a folder" in err
    (tmp_path / "d.svg").mkdir()
    code, _, err = call(capsys, "--random", "--tokens", "3", "--export", str(tmp_path / "d.svg"))   # a folder
    assert code == 2 and "--export" in err and "is a folder" in err


def test_model_needs_text_and_loader(capsys):
    code, _, err = call(capsys, "--model", "minilm")
    assert code == 2 and "needs the TEXT" in err
    if importlib.util.find_spec("implicit_icl.models") is None \
            or importlib.util.find_spec("implicit_icl.models.minilm") is None:
        code, _, err = call(capsys, "--model", "minilm", "the cat sat")
        assert code == 2 and "not available" in err


def test_export_txt_and_svg(capsys, tmp_path):
    txt, svg = tmp_path / "w.txt", tmp_path / "w.svg"
    code, out, err = call(capsys, "--random", "--tokens", "12", "--step", "4", "--export", str(txt))
    assert code == 0 and f"wrote {txt}" in err and out == ""          # status on stderr, as every command
    text = txt.read_text()
    assert "step i = 4 / 12" in text and "current c_4:" in text and "UNTRAINED random block" in text
    code, _, _ = call(capsys, "--random", "--tokens", "12", "--step", "4", "--export", str(svg), "--size", "120x40")
    assert code == 0
    head = svg.read_text()[:400]
    assert head.lstrip().startswith("<svg") and "step" in svg.read_text()


def test_torch_backend(capsys, tmp_path):
    """With the torch backend available, the export works and shows the same check; otherwise a clear message."""
    has_backend = importlib.util.find_spec("torch") is not None
    try:
        from implicit_icl.backends import get_backend  # noqa: F401
    except ImportError:
        has_backend = False
    out = tmp_path / "t.txt"
    code, _, err = call(capsys, "--random", "--tokens", "6", "--step", "6", "--backend", "torch", "--export", str(out))
    if not has_backend:
        assert code == 2 and "--backend 'torch' is not available" in err
        return
    assert code == 0, err
    from implicit_icl.tui.data import random_data
    ref = random_data(n_tokens=6, seed=0)
    text = out.read_text()
    assert "torch backend (cpu" in text
    shown = re.search(r"T_W\(c_1\.\.c_6, x\)\s+(\S+)", text).group(1)
    # torch's default dtype may be float32: eps 1.2e-7 times a few dozen operations on values of order 1
    assert float(shown) == pytest.approx(ref.prediction_context(6), abs=1e-5)


def test_console_script_help_is_lazy():
    """``implicit-icl walkthrough --help`` works without importing textual (command modules import it lazily)."""
    code = ("import sys; from implicit_icl.cli import main\n"
            "try:\n    main(['walkthrough', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('textual' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--export" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_prompt_values_are_the_prompt(capsys, tmp_path):
    """The chips show the prompt's y values (two decimals), in order."""
    from implicit_icl.reference.tasks import regression_prompts
    out = tmp_path / "p.txt"
    call(capsys, "--random", "--tokens", "8", "--seed", "5", "--export", str(out))
    y = regression_prompts(1, 8, 2, 5).y[0]
    text = out.read_text()
    chips = text.split("prompt c_1")[1].split("query:")[0]
    found = [float(v) for v in re.findall(r"\s\d+ ([+-]\d+\.\d\d)", chips)]
    np.testing.assert_allclose(found, np.round(y, 2), atol=0.0051)


def test_model_minilm_export(capsys, tmp_path):
    """``--model minilm TEXT`` opens the real model's trajectory; the check shows round-off (float64)."""
    from implicit_icl.tui.data import WalkthroughError, text_data
    try:
        data = text_data("minilm", "France is to Paris as Japan is to", layer=1)
    except WalkthroughError as exc:
        pytest.skip(f"the minilm loader or its weights are not installed here: {exc}")
    out = tmp_path / "m.txt"
    code, _, err = call(capsys, "--model", "minilm", "France is to Paris as Japan is to", "--layer", "1",
                        "--step", str(data.n), "--export", str(out))
    assert code == 0, err
    text = out.read_text()
    assert "[CLS]" in text and "baseline on" in text and f"step i = {data.n} / {data.n}" in text
    assert "random layer" in text and data.baseline is not None and data.baseline.n == data.n
    shown = float(re.search(r"max \|Δ output\|\s+(\S+)", text).group(1))
    assert shown == float(f"{data.output_error(data.n):.2e}")
    assert shown < 1e-12 * (1 + data.output_norms(data.n)[0])        # the theorem at float64 round-off
    code, _, err = call(capsys, "--model", "minilm", "a b", "--layer", "99")
    assert code == 2 and "layer" in err


# --- the reviewer's findings (each test failed on the code before the fix) ------------------------------------------

def test_export_path_is_checked_before_any_work(capsys, tmp_path, monkeypatch):
    """A bad --export path is reported before the trajectory is computed (which can take a while)."""
    from implicit_icl.commands import walkthrough as command

    def no_work(args):
        raise AssertionError("prepare() ran before the --export path was checked")
    monkeypatch.setattr(command, "prepare", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = call(capsys, "--random", "--export", str(blocker / "sub" / "w.svg"))
    assert code == 2 and "--export: cannot write" in err and "is a file, not a folder" in err


def test_export_replaces_the_file_atomically(capsys, tmp_path):
    """--export writes a temporary file and renames it into place: the old file is never truncated and rewritten
    in place (a hard link to it keeps the old content), and missing folders are created."""
    out = tmp_path / "new" / "folder" / "w.txt"
    out.parent.mkdir(parents=True)
    out.write_text("old screenshot")
    link = tmp_path / "link.txt"
    link.hardlink_to(out)
    code, _, err = call(capsys, "--random", "--tokens", "3", "--export", str(out), "--force")   # not an export
    assert code == 0, err
    assert "step i = 0 / 3" in out.read_text() and link.read_text() == "old screenshot"
    assert [p.name for p in out.parent.iterdir()] == ["w.txt"]                 # no temporary file left behind
    deep = tmp_path / "a" / "b" / "c.txt"                                      # missing folders are created
    assert call(capsys, "--random", "--tokens", "3", "--export", str(deep))[0] == 0 and deep.is_file()


def test_no_terminal_is_refused_with_a_hint_not_escape_codes(tmp_path):
    """Without a terminal on stdin/stdout the interactive app used to write escape codes until killed; now it
    says to use --export and exits 2, having written nothing to stdout."""
    res = subprocess.run([sys.executable, "-m", "implicit_icl.cli", "walkthrough", "--random", "--tokens", "3"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert "needs a terminal" in res.stderr and "--export FILE" in res.stderr and "Traceback" not in res.stderr


def test_no_terminal_check_is_skipped_for_export(capsys, tmp_path):
    out = tmp_path / "w.txt"
    code, _, err = call(capsys, "--random", "--tokens", "3", "--export", str(out))
    assert code == 0 and out.is_file(), err


@pytest.mark.parametrize("option,value", [("--tokens", "5"), ("--seed", "4"), ("--backend", "torch"),
                                          ("--backend", "numpy")])
def test_model_rejects_options_that_do_not_apply(capsys, tmp_path, option, value):
    """--tokens, --seed and --backend mean nothing for --model (the text sets the tokens; the real model runs on
    the float64 NumPy reference): refused before any model is loaded, never silently ignored."""
    out = tmp_path / "x.txt"
    code, _, err = call(capsys, "--model", "minilm", "France is to Paris", option, value, "--export", str(out))
    assert code == 2 and f"{option} does not apply with --model" in err and not out.exists()


def test_backend_is_validated_whatever_the_source(capsys, tmp_path):
    for argv in (["--model", "minilm", "hi"], ["--random"], []):
        code, _, err = call(capsys, *argv, "--backend", "jax", "--export", str(tmp_path / "x.txt"))
        assert code == 2 and "--backend must be one of numpy, torch" in err and "got 'jax'" in err


def test_empty_text_is_named(capsys, tmp_path):
    code, _, err = call(capsys, "--model", "minilm", "", "--export", str(tmp_path / "x.txt"))
    assert code == 2 and "TEXT is empty" in err
    code, _, err = call(capsys, "--model", "minilm", "   ", "--export", str(tmp_path / "x.txt"))
    assert code == 2 and "TEXT is empty" in err


def test_minilm_dir_from_the_environment_is_named_not_a_traceback(capsys, tmp_path, monkeypatch):
    """IMPLICIT_ICL_MINILM_DIR naming a folder without the model files: one clean line naming the variable."""
    monkeypatch.setenv("IMPLICIT_ICL_MINILM_DIR", str(tmp_path))
    code, out, err = call(capsys, "--model", "minilm", "hi", "--export", str(tmp_path / "z.txt"))
    assert code == 2 and f"IMPLICIT_ICL_MINILM_DIR={tmp_path}" in err and "config.json" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "z.txt").exists()


def test_help_says_what_the_options_mean(capsys):
    with pytest.raises(SystemExit):
        main(["walkthrough", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[CLS] is 0" in out and "-1 is the final [SEP]" in out and "last real token before [SEP]" in out
    assert "IMPLICIT_ICL_MINILM_DIR" in out and "missing folders are created" in out
    assert "T_(W+ΔW_i, b+Δb_i)(x)" in out and "float32 ~1e-7" in out
    assert "not with --model" in out


def test_model_minilm_check_names_the_bias_update(capsys, tmp_path):
    """The reviewer's repro: MiniLM layer 0, step 3. The number shown for the query alone includes Δb_out
    (‖Δb_3‖ = 5.99 there), so the check must say so and show ‖Δb_3‖, not claim W + ΔW_3 alone."""
    from implicit_icl.reference import Update, apply_update
    from implicit_icl.reference.blocks import head
    from implicit_icl.tui.data import WalkthroughError, text_data
    try:
        data = text_data("minilm", "France is to Paris as Japan is to", layer=0)
    except WalkthroughError as exc:
        pytest.skip(f"the minilm loader or its weights are not installed here: {exc}")
    out = tmp_path / "m.txt"
    code, _, err = call(capsys, "--model", "minilm", "France is to Paris as Japan is to", "--export", str(out),
                        "--step", "3", "--layer", "0")
    assert code == 0, err
    text = out.read_text()
    assert "‖T_(W_3, b_3)(x)‖" in text and "W_3 = W + ΔW_3,  b_3 = b_out + Δb_3" in text
    assert "T_(W+ΔW_3)(x)" not in text and "check: context vs (W+ΔW_i, b+Δb_i) on x alone" in text
    shown = float(re.search(r"‖Δb_3‖\s+(\S+)", text).group(1))
    assert shown == pytest.approx(data.delta_b_norm(3), rel=1e-3) and shown > 1
    # why it matters: W + ΔW_3 without Δb_3 does not reproduce the output with context (post-LN: r = a = h_x)
    from implicit_icl.models import minilm
    model = minilm.load_minilm()
    t = data.trajectory
    without_b = head(apply_update(model.blocks[0], Update(t.u[3], t.a, np.zeros_like(t.a))), model.cfg, t.a, t.a)
    np.testing.assert_allclose(head(apply_update(model.blocks[0], t.update(3)), model.cfg, t.a, t.a),
                               t.pred_update[3], rtol=0, atol=1e-12)
    assert np.linalg.norm(without_b - t.pred_context[3]) > 0.1


def test_no_terminal_still_names_a_bad_option_first(capsys, monkeypatch):
    """Without a terminal, a wrong option is still reported as such (checked before the terminal and any work)."""
    from implicit_icl.commands import walkthrough as command
    monkeypatch.setattr(command, "interactive_terminal", lambda: False, raising=False)
    code, _, err = call(capsys, "--random", "--backend", "jax")
    assert code == 2 and "--backend must be one of" in err and "'jax'" in err
    code, _, err = call(capsys, "--random", "--tokens", "5")
    assert code == 2 and "needs a terminal" in err and "--export FILE" in err


@pytest.mark.parametrize("stdin_tty, stdout_tty, raises, expected", [
    (True, True, False, True), (False, True, False, False), (True, False, False, False), (True, True, True, False)])
def test_no_terminal_unless_both_streams_are_one(monkeypatch, stdin_tty, stdout_tty, raises, expected):
    from implicit_icl.commands import walkthrough as command

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            if raises:
                raise ValueError("I/O operation on closed file")
            return self.tty

    monkeypatch.setattr(command.sys, "stdin", Stream(stdin_tty))
    monkeypatch.setattr(command.sys, "stdout", Stream(stdout_tty))
    assert command.interactive_terminal() is expected


@pytest.mark.parametrize("size", ["3000x3000", "100000x100000", "401x45", "140x201"])
def test_size_has_a_maximum(capsys, tmp_path, size):
    """Issue 17 item 8: ``--size 3000x3000`` ran for minutes and took gigabytes; above 400x200 it is one line."""
    out = tmp_path / "x.txt"
    code, _, err = call(capsys, "--random", "--export", str(out), "--size", size)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--size" in err and "at most 400x200" in err and not out.exists()


def test_size_maximum_is_accepted(capsys, tmp_path):
    out = tmp_path / "big.txt"
    code, _, _ = call(capsys, "--random", "--tokens", "5", "--export", str(out), "--size", "400x200")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert code == 0 and len(lines) == 200 and max(len(line) for line in lines) == 400


WITHOUT_TUI = """
import sys
sys.modules["rich"] = sys.modules["textual"] = None      # a bare `pip install -e .`: neither is installed
from implicit_icl.cli import main
sys.exit(main(["walkthrough", "--random"]))
"""


def test_walkthrough_without_the_tui_extra_prints_the_install_hint():
    """The walkthrough imports rich before textual: without the tui extra it must print the one install hint
    (exit 1), not a ModuleNotFoundError traceback (cli.EXTRAS lacked rich)."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TUI], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "pip install 'implicit-icl[tui]'" in proc.stderr
