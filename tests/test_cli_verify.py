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
    assert {c["kind"] for c in data["checks"]} == {"plain", "p1-skip", "residual", "pre-ln", "post-ln"}


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
