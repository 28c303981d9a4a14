"""`implicit-icl theory`: THEORY.md in the terminal, and every "THEORY §…" citation in the project resolves."""
import re
from pathlib import Path

import pytest

from implicit_icl.cli import main
from implicit_icl.commands.theory import headings, section, theory_path

ROOT = Path(__file__).resolve().parents[1]
TEXT = theory_path().read_text(encoding="utf-8")
CITATION = re.compile(r"THEORY(?:\.md)? ?§ ?(\d+[a-z]?(?:\.\d+)?)")
SOURCES = [p for d in ("implicit_icl", "reference", "backends", "tui", "experiments", "models", "exercises")
           for p in sorted((ROOT / d).rglob("*")) if p.suffix in (".py", ".md")] + [ROOT / "README.md"]


def test_theory_is_the_shipped_file():
    assert theory_path().read_text(encoding="utf-8") == (ROOT / "docs" / "THEORY.md").read_text(encoding="utf-8")
    assert 'implicit_icl.docs" = ["*.md"]' in (ROOT / "pyproject.toml").read_text()   # installed with the package


def test_every_citation_in_the_project_resolves_to_a_section():
    """A command that says "THEORY §8.2" must be able to show §8.2: a renumbered THEORY.md fails here."""
    cited = {key: path for path in SOURCES for key in CITATION.findall(path.read_text(encoding="utf-8"))}
    assert len(cited) >= 20, sorted(cited)
    missing = {key: str(path.relative_to(ROOT)) for key, path in cited.items() if section(TEXT, key) is None}
    assert not missing, missing


def test_sections_items_and_subsections(capsys):
    assert main(["theory", "8.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## 8.") and "2. **Query and token dependence.**" in out and "3. **" not in out
    assert main(["theory", "3"]) == 0
    out = capsys.readouterr().out
    assert "### 3a." in out and "### 3c." in out and "## 4." not in out     # a section holds its subsections
    assert main(["theory", "3b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### 3b.") and "### 3c." not in out
    for spelled in ("§10.7", "§ 10.7", "10.7."):
        assert main(["theory", spelled]) == 0
        assert "A([x]) = W_O W_V x" in capsys.readouterr().out
    assert main(["theory", "10.1"]) == 0                                 # item 1, not item 10
    out = capsys.readouterr().out
    assert "\n1. `[P1 §2, Thm 2.2]`" in out and "\n10. " not in out


def test_contents_and_whole_file(capsys):
    assert main(["theory"]) == 0
    out = capsys.readouterr().out
    assert str(theory_path()) in out and all(f"  {k:4} " in out for _, k, _ in headings(TEXT))
    assert main(["theory", "all"]) == 0
    assert capsys.readouterr().out == TEXT


@pytest.mark.parametrize("bad", ["99", "8.99", "x", "3z"])
def test_an_unknown_section_is_named(capsys, bad):
    assert main(["theory", bad]) == 2
    err = capsys.readouterr().err
    assert f"got {bad!r}" in err and "SECTION must be one of 1, 2, 3, 3a" in err
