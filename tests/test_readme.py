"""README stays true: its Python examples run, and its two leading commands are the ones CI relies on."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_python_examples_run():
    pytest.importorskip("torch", reason="the backend example needs the torch extra")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for code in blocks:   # later blocks use names defined by earlier ones, as a reader would
        exec(compile(code, "README.md", "exec"), namespace)
    assert float(abs(namespace["with_context"] - namespace["query_alone"]).max()) < 1e-12


def test_readme_leads_with_the_two_commands_ci_runs():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "implicit-icl walkthrough" in first_block[0]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    install, test = first_block[1].split(" && ")
    assert install in ci and test in ci, "README's test command must be what .ci/run runs"


def test_readme_says_how_long_the_suite_takes_and_that_skips_are_normal():
    """Issue 17: a new user saw ~1,700 skipped cases and an 8-minute run with no word about either."""
    after = README.split("python -m pytest -q", 1)[1].split("## ", 1)[0]        # the paragraph after the commands
    assert "about 7 minutes on 2 CPU cores" in after
    assert "roughly 2,400 cases skipped, which is" in after and "normal" in after and "GPU" in after and "MPS" in after
