"""The grading report: one ``CheckResult`` per check, its lines (PASS/FAIL, the teaching message, the notes) and the
verdict with the THEORY sections that the failures cite. ``implicit_icl.grading`` re-exports every public name here."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CheckResult:
    """One check's outcome: its name and description, whether it passed, its message and the grader's notes."""

    name: str
    description: str
    passed: bool
    message: str = ""
    notes: list[str] = field(default_factory=list)
    number: int = 0               # its place in the grader, 1-based (the report's "check N")


def result_lines(r: CheckResult) -> list[str]:
    """One check's lines in a report: PASS/FAIL, its number and description, the message if it failed, its notes."""
    number = f"{r.number}. " if r.number else ""                      # 0: importing the file, before check 1
    lines = [f"  {'PASS' if r.passed else 'FAIL'}  {number}{r.description}  [{r.name}]"]
    if not r.passed:
        lines.extend("        " + ln for ln in r.message.splitlines())
    lines.extend("        note: " + n.replace("\n", "\n              ") for n in r.notes)
    return lines


THEORY_CITE = re.compile(r"THEORY §(\d+(?:\.\d+)*)")


def summary_lines(results: list[CheckResult], expected: int | None = None) -> list[str]:
    """The verdict: all passed (only when all ``expected`` checks reported), or where to start; and the command that
    prints each THEORY section the failures and notes cite."""
    n_pass = sum(r.passed for r in results)
    total = max(expected or 0, sum(r.number != 0 for r in results))
    lines = [""]
    if results and n_pass == total:
        lines.append(f"All {total} checks passed. Well done: now read 'What to observe' in the README.")
    else:
        first = next((r for r in results if not r.passed), None)
        which = f"check {first.number}, " if first and first.number else ""
        start = f" Start with the first failure: {which}{first.description}." if first else ""
        lines.append(f"{n_pass}/{total} checks passed.{start}")
    cited = dict.fromkeys(m for r in results for text in (r.description, r.message if not r.passed else "", *r.notes)
                          for m in THEORY_CITE.findall(text))
    if cited:
        lines.append("Read the THEORY sections cited above in the terminal: "
                     + ", ".join(f"`implicit-icl theory {s}`" for s in cited))
    return lines


def report(results: list[CheckResult], title: str, path: Path, stream=None) -> str:
    """A readable report of ``run_checks``'s results."""
    lines = [title, f"grading {path}", ""]
    for r in results:
        lines.extend(result_lines(r))
    text = "\n".join(lines + summary_lines(results))
    print(text, file=stream or sys.stdout)
    return text
