"""``implicit-icl theory [SECTION]``: read THEORY.md, the mathematics every command cites ("THEORY §8.2"), in the
terminal; it ships with the package, so a ``pip install`` has it too."""
from __future__ import annotations

import re
from pathlib import Path

from implicit_icl.commands import fail

HELP = "print THEORY.md, the mathematics the other commands cite (§8.2, §10.7, …), or one section of it"
DESCRIPTION = """\
The theory notes behind every command: definitions, the theorem and its proof, residual/LayerNorm blocks, the
gradient-descent reading, the papers' experiments, the caveats an honest tool must state, and the checkable facts.
The other commands cite them as "THEORY §N" or "§N.k"; this prints them.

  implicit-icl theory            the table of contents (and where the file is)
  implicit-icl theory 8          section 8 (the caveats)
  implicit-icl theory 8.2        item 2 of section 8 (the update belongs to its query)
  implicit-icl theory 3b         subsection 3b (P2's residual and LayerNorm blocks)
  implicit-icl theory all        the whole file
"""

THEORY = "THEORY.md"


def add_arguments(parser) -> None:
    parser.add_argument("section", nargs="?", default=None, metavar="SECTION",
                        help="a section (8), a subsection (3b), a numbered item of a section (8.2), or 'all'")


def theory_path() -> Path:
    """THEORY.md: the checkout's ``docs/`` in an editable install, else the copy installed with the package."""
    import implicit_icl
    from implicit_icl import shipped

    return shipped(implicit_icl.__file__, f"docs/{THEORY}", f"docs/{THEORY}")


def headings(text: str) -> list[tuple[int, str, str]]:
    """``(line index, key, title)`` for every ``## N.`` section and ``### Nx.`` subsection; key ``"8"`` or ``"3b"``."""
    out = []
    for i, line in enumerate(text.splitlines()):
        m = re.match(r"(##+)\s+(\d+[a-z]?)\.?\s+(.*)", line)
        if m and len(m.group(1)) <= 3:
            out.append((i, m.group(2), m.group(3).strip()))
    return out


def section(text: str, key: str) -> str | None:
    """The text of section ``key`` (``"8"``, ``"3b"``), up to the next heading of the same or a higher level; or of
    item ``k`` of a section (``"8.2"``: the list item numbered ``2.`` and its indented lines). None if absent."""
    lines = text.splitlines()
    key = key.strip().lower().lstrip("§").strip().rstrip(".")         # "§ 8.2", "8." as well
    item = None
    m = re.fullmatch(r"(\d+[a-z]?)\.(\d+)", key)
    if m:
        key, item = m.group(1), m.group(2)
    heads = headings(text)
    for n, (start, k, _) in enumerate(heads):
        if k != key:
            continue
        level = len(lines[start]) - len(lines[start].lstrip("#"))
        end = next((i for i, _, _ in heads[n + 1:]
                    if len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
        body = lines[start:end]
        if item is None:
            return "\n".join(body).rstrip() + "\n"
        at = next((j for j, line in enumerate(body) if re.match(rf"{item}\.\s", line)), None)
        if at is None:
            return None
        stop = next((j for j in range(at + 1, len(body))
                     if body[j].strip() and not body[j].startswith((" ", "\t"))), len(body))
        return f"{lines[start]}\n\n" + "\n".join(body[at:stop]).rstrip() + "\n"
    return None


def run(args) -> int:
    path = theory_path()
    if not path.is_file():
        return fail("theory", f"{path} is missing (reinstall implicit-icl)", code=1)
    text = path.read_text(encoding="utf-8")
    if args.section is None:
        print(f"{path}\n")
        for _, key, title in headings(text):
            print(f"  {key:4} {title}")
        print("\nimplicit-icl theory SECTION prints one (8, 3b, 8.2, or 'all')")
        return 0
    if args.section.strip().lower() == "all":
        print(text, end="")
        return 0
    found = section(text, args.section)
    if found is None:
        keys = ", ".join(key for _, key, _ in headings(text))
        return fail("theory", f"SECTION must be one of {keys}, an item such as 8.2, or 'all'; got "
              f"{args.section!r}")
    print(found, end="")
    return 0
