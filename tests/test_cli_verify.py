"""`implicit-icl verify` as a user runs it: table, JSON, exit status."""
import json
import subprocess
import sys

import pytest

import implicit_icl.identities as identities
from implicit_icl.cli import main


def test_verify_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["verify", "--seeds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all passed" in text and "thm2.2 remove subset Y" in text and "post-ln" in text
    data = json.loads(out.read_text())
    assert data["ok"] is True and len(data["checks"]) > 100
    assert set(data["checks"][0]) >= {"name", "kind", "max_abs_err", "tol", "ok"}
    assert {c["kind"] for c in data["checks"]} == {"plain", "p1-skip", "residual", "pre-ln", "post-ln", "gated",
                                                   "parallel"}
    modern = {c["scenario"].split()[0] for c in data["checks"] if c["kind"] in ("gated", "parallel")}
    assert set(identities.MODERN_CONFIGS) <= modern       # rotary, grouped-query, q/k norm, window, partial rotary


def test_verify_says_it_checks_the_algebra_and_names_the_forward_checks(capsys):
    """The identities hold for any block, so verify says so and names where the forward pass is checked; every
    test file it names exists and compares with the model it names."""
    import re
    from pathlib import Path

    assert main(["verify", "--seeds", "1", "--kind", "plain"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "test the update's algebra" in text and "hold for any block" in text
    assert "BertModel" in text and "GPT2Model" in text and "scaled_dot_product_attention" in text
    root = Path(__file__).resolve().parents[1]
    named = re.findall(r"`(tests/[^`]+)`", identities.FORWARD_CHECKED)
    assert len(named) == 5 and all((root / p).exists() for p in named)
    assert "BertModel" in (root / "tests/test_minilm_real.py").read_text()
    assert "GPT2Model" in (root / "tests/test_gpt2_converter.py").read_text()


def test_verify_exits_nonzero_when_a_check_fails(monkeypatch, capsys):
    from implicit_icl.reference import Update, implicit_update

    def wrong(params, cfg, context, query, remove=None):
        good = implicit_update(params, cfg, context, query, remove=remove)
        return Update(u=2 * good.u, a=good.a, delta_b=good.delta_b)

    monkeypatch.setattr(identities, "implicit_update", wrong)
    assert main(["verify", "--seeds", "1", "--kind", "plain"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_bad_kind(capsys):
    assert main(["verify", "--kind", "gpt"]) == 2
    assert "--kind must be one of" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "implicit_icl", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "verify" in r.stdout
    r = subprocess.run([sys.executable, "-m", "implicit_icl", "verify", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "P1 Thm 2.2" in r.stdout


@pytest.mark.parametrize("argv, module, extra", [
    (["reproduce", "--quick", "--out", "OUT"], "torch", "torch"),
    (["train", "--preset", "p1", "--out", "OUT"], "torch", "torch"),
    (["bench", "--quick"], "torch", "torch"),
    (["walkthrough", "--export", "OUT/w.txt"], "textual", "tui"),
])
def test_missing_extra_names_the_extra(tmp_path, argv, module, extra):
    """A command whose extra is missing says which extra to install, instead of a traceback. In a fresh process
    (an earlier test may already have imported the module, and then nothing imports it again)."""
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    code = (f"import sys; sys.modules[{module!r}] = None\n"   # `import torch` now raises ModuleNotFoundError
            f"from implicit_icl.cli import main; sys.exit(main({argv!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr                       # a missing extra: the CLI's one message, exit 1
    assert f"pip install 'implicit-icl[{extra}]'" in r.stderr and module in r.stderr and "Traceback" not in r.stderr


def test_unrelated_missing_module_is_not_hidden(monkeypatch):
    def broken(args):
        import a_module_that_does_not_exist  # noqa: F401

    from implicit_icl import cli
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["verify"].set_defaults(_run=broken)
    with pytest.raises(ModuleNotFoundError):
        main(["verify"])


def test_verify_json_to_stdout_is_json_alone(capsys):
    """`--json -`: stdout holds only the JSON document (the table goes to stderr), so it can be piped."""
    assert main(["verify", "--seeds", "1", "--kind", "plain", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    assert "all passed" in captured.err


@pytest.mark.parametrize("target, message", [("DIR", "is a folder"), ("FILE/v.json", "is a file, not a folder")])
def test_verify_refuses_an_unwritable_json_path_before_running(tmp_path, capsys, monkeypatch, target, message):
    (tmp_path / "FILE").write_text("mine")
    (tmp_path / "DIR").mkdir()
    monkeypatch.setattr(identities, "run_check", lambda *a: pytest.fail("ran the checks before checking --json"))
    assert main(["verify", "--json", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and message in err
    assert (tmp_path / "FILE").read_text() == "mine"


def test_a_check_that_raises_is_a_failed_row_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def boom(s):
        raise RuntimeError("broken on purpose")

    monkeypatch.setitem(identities.CHECKS, "rank(ΔW)=1", boom)
    out = tmp_path / "v.json"
    assert main(["verify", "--seeds", "1", "--kind", "plain", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "raised RuntimeError: broken on purpose" in text and "FAILED" in text
    data = json.loads(out.read_text())                       # strict JSON: no NaN
    failed = [c for c in data["checks"] if not c["ok"]]
    assert failed and all(c["name"] == "rank(ΔW)=1" and c["max_abs_err"] is None for c in failed)
    assert any(c["ok"] for c in data["checks"])


def test_verify_json_that_fails_to_write_is_exit_2(tmp_path, capsys, monkeypatch):
    from implicit_icl import checkpoint

    def refuse(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", refuse)
    assert main(["verify", "--seeds", "1", "--kind", "plain", "--json", str(tmp_path / "v.json")]) == 2
    assert "--json: cannot write" in capsys.readouterr().err
