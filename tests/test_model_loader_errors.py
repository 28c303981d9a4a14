"""The model loader names its own arguments (``name_or_path``, ``minilm_dir``); explain and walkthrough name them as
their options (issue 14: library errors name arguments, commands translate)."""
from __future__ import annotations

import pytest

from implicit_icl.cli import main
from implicit_icl.models.bundled import load_model


def test_the_loader_names_its_arguments():
    with pytest.raises(ValueError, match=r"^name_or_path must name a bundled model \(minilm, fewshot\)"):
        load_model("  ")
    with pytest.raises(ValueError, match=r"^minilm_dir is all-MiniLM-L6-v2's folder: it goes with `name_or_path`"):
        load_model("fewshot", "/tmp")


@pytest.mark.parametrize("argv", [["explain", "--model", "", "x"],
                                  ["walkthrough", "--model", "", "x", "--export", "never.txt", "--step", "1"]])
def test_the_commands_name_the_options(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--model must name a bundled model (minilm, fewshot) or a model folder, got ''" in err
    assert "name_or_path" not in err and not (tmp_path / "never.txt").exists()
