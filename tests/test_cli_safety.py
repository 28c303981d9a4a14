"""Nothing the user made is lost (issue 17): output files of other kinds, the installed package, empty paths."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from implicit_icl.checkpoint import PACKAGE_FOLDERS, default_checkpoint_path, package_dirs
from implicit_icl.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Each command that writes one output file: its argv up to the output option (cheap runs), and the option.
VERIFY = (["verify", "--kind", "plain", "--seeds", "1"], "--json")
EXPLAIN = (["explain", "France is to Paris", "--layer", "3", "--no-baseline", "--no-prefix"], "--json")
WALKTHROUGH = (["walkthrough", "--tokens", "5"], "--export")


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"implicit-icl {command}: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, option, name", [
    (*VERIFY, "notes.json"), (*EXPLAIN, "notes.json"), (*WALKTHROUGH, "notes.txt"), (*WALKTHROUGH, "notes.svg"),
])
def test_an_existing_file_of_another_kind_is_not_overwritten_without_force(tmp_path, capsys, argv, option, name):
    """Issue 17 item 2: verify --json, explain --json and walkthrough --export replaced any file."""
    if argv[0] == "walkthrough":
        pytest.importorskip("textual")
    mine = tmp_path / name
    mine.write_text('{"mine": true}\n' if name.endswith(".json") else "MINE\n")
    assert main([*argv, option, str(mine)]) == 2
    line = _one_error_line(capsys.readouterr().err, argv[0])
    assert f"{option}: {mine} exists and is not " in line and "--force" in line
    assert mine.read_text() in ('{"mine": true}\n', "MINE\n")


@pytest.mark.parametrize("argv, option, name", [(*VERIFY, "notes.json"), (*WALKTHROUGH, "notes.txt")])
def test_force_replaces_a_file_of_another_kind(tmp_path, capsys, argv, option, name):
    if argv[0] == "walkthrough":
        pytest.importorskip("textual")
    mine = tmp_path / name
    mine.write_text("MINE\n")
    assert main([*argv, option, str(mine), "--force"]) == 0
    assert mine.read_text() != "MINE\n"


@pytest.mark.parametrize("argv, option, name", [
    (*VERIFY, "report.json"), (*WALKTHROUGH, "screen.txt"), (*WALKTHROUGH, "screen.svg"),
])
def test_a_commands_own_output_is_replaced_without_force(tmp_path, capsys, argv, option, name):
    """Rerunning a command into its own earlier output needs no --force (so the kind test recognises it)."""
    if argv[0] == "walkthrough":
        pytest.importorskip("textual")
    out = tmp_path / name
    assert main([*argv, option, str(out)]) == 0
    first = out.stat().st_mtime_ns
    assert main([*argv, "--step", "1", option, str(out)] if argv[0] == "walkthrough"
                else [*argv, option, str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_mtime_ns >= first


def test_explain_recognises_its_own_report(tmp_path):
    import json

    from implicit_icl.commands.explain import REPORT_KIND

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "path": "x", "text": "t", "pair": None,    # run()'s keys
                                "tolerance": "t", "layer": {}, "ok": True}))
    assert REPORT_KIND[1](path)
    path.write_text(json.dumps({"checks": [], "ok": True}))              # verify's report is not explain's
    assert not REPORT_KIND[1](path)


@pytest.mark.parametrize("argv, option", [VERIFY, EXPLAIN, WALKTHROUGH])
def test_nothing_is_written_inside_the_installed_package_even_with_force(tmp_path, capsys, argv, option):
    """Issue 17 item 2: `verify --json implicit_icl/data/p1.npz` destroyed the bundled model."""
    bundled = default_checkpoint_path()
    before = bundled.read_bytes()
    target = bundled if argv[0] != "walkthrough" else bundled.with_name("p1.svg")
    assert main([*argv, option, str(target), "--force"]) == 2
    line = _one_error_line(capsys.readouterr().err, argv[0])
    assert "inside the installed implicit-icl package" in line
    assert bundled.read_bytes() == before and not bundled.with_name("p1.svg").exists()


def test_the_package_folders_are_pyprojects_package_dirs():
    """PACKAGE_FOLDERS repeats pyproject.toml's package-dir (less docs/, where a checkout's figures are made)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = {(folder, "." if name == "implicit_icl" else name.split(".", 1)[1])
                for name, folder in mapping.items() if folder != "docs"}
    assert set(PACKAGE_FOLDERS) == expected
    assert ROOT / "implicit_icl" in package_dirs() and ROOT / "docs" not in package_dirs()


@pytest.mark.parametrize("argv, option", [VERIFY, EXPLAIN])
def test_an_empty_json_path_is_an_error(tmp_path, capsys, monkeypatch, argv, option):
    """Issue 17 item 13: `verify --json ""` wrote nothing and exited 0."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, option, ""]) == 2
    assert _one_error_line(capsys.readouterr().err, argv[0]).endswith(f"{option} is empty: give a file name")
    assert list(tmp_path.iterdir()) == []
