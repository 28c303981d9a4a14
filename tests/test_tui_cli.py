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
    assert code == 2 and "60x20" in err and "at least 100x34" in err


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
    assert code == 2 and f"--export {blocker / 'w.txt'}: cannot write it" in err


def test_model_needs_text_and_loader(capsys):
    code, _, err = call(capsys, "--model", "minilm")
    assert code == 2 and "needs the TEXT" in err
    if importlib.util.find_spec("implicit_icl.models") is None \
            or importlib.util.find_spec("implicit_icl.models.minilm") is None:
        code, _, err = call(capsys, "--model", "minilm", "the cat sat")
        assert code == 2 and "not available" in err


def test_export_txt_and_svg(capsys, tmp_path):
    txt, svg = tmp_path / "w.txt", tmp_path / "w.svg"
    code, out, _ = call(capsys, "--random", "--tokens", "12", "--step", "4", "--export", str(txt))
    assert code == 0 and "wrote" in out
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
    chips = text.split("prompt:")[1].split("query:")[0]
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
