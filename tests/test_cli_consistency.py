"""One command line: a bad argument is one line that starts with the command's name and names the option, exit 2;
never a traceback. Cases found by a review of every command side by side."""
from pathlib import Path

import pytest

from implicit_icl.cli import main

EXERCISES = Path(__file__).resolve().parents[1] / "exercises"


@pytest.fixture
def places(tmp_path):
    (tmp_path / "afile").write_text("not python")
    (tmp_path / "adir").mkdir()
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["exercises", "--dir", "EX", "check", "1", "--file", "P/afile"], "afile, is not a .py file"),
    (["exercises", "--dir", "EX", "check", "1", "--file", "P/adir"], "adir, is a folder (give a .py file)"),
    (["exercises", "--dir", "P/afile", "list"], "afile is a file, not a folder"),
    (["exercises", "--dir", "P/adir", "list"], "no exercises (NN_name/ folders with a grader) in"),
    (["exercises", "--dir", "EX", "check", "0"], "N must be one of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], got 0"),
    (["walkthrough", "--checkpoint", "P/adir", "--export", "P/w.txt"], "is a folder, not an .npz file"),
    (["train", "--out", "P/afile"], "--out: "),
    (["reproduce", "--quick", "--out", "P/o", "--checkpoint", "P/adir"], "--checkpoint: checkpoint"),
    (["bench", "--quick", "--json", "P/adir"], "--json: "),
    (["verify", "--json", "P/adir"], "--json: "),
    (["theory", "99"], "SECTION must be one of"),
    (["explain", "hi", "--layer", "1", "--pair", " "], "--pair is empty"),
    (["explain", "hi"], "give --layer L (0..5) and/or --all-layers"),
    (["verify", "--bogus"], "unrecognized arguments: --bogus"),
    (["theory", "8", "2"], "unrecognized arguments: 2"),
])
def test_a_bad_argument_is_one_line_naming_the_command_and_exit_2(places, capsys, argv, message):
    argv = [a.replace("EX", str(EXERCISES)).replace("P/", f"{places}/") for a in argv]
    with_exit = None
    try:
        code = main(argv)
    except SystemExit as exc:                      # argparse's own errors (unknown options) exit through SystemExit
        code = with_exit = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"implicit-icl {argv[0]}"), last
    assert with_exit is None or "usage: implicit-icl " + argv[0] in err       # the command's usage, not the top's
    assert not (places / "o").exists()


def test_a_student_file_that_exits_at_import_is_feedback(places, capsys):
    assert main(["exercises", "--dir", str(EXERCISES), "check", "1", "--file", str(places / "exits.py")]) == 1
    out = capsys.readouterr().out
    assert "can be imported" in out and "SystemExit: 3" in out


@pytest.mark.parametrize("exc, shown", [(ValueError("layer must be an int in [0, 6), got 9"), "--layer must be"),
                                        (ValueError("position must be an int, got 99"), "--position must be"),
                                        (ValueError("TEXT is empty"), "TEXT is empty")])
def test_loader_messages_name_the_option(exc, shown):
    from implicit_icl.commands import ANALYSIS_OPTIONS, as_option

    assert as_option(exc, ANALYSIS_OPTIONS).startswith(shown)
