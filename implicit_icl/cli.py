"""The one command-line entry point: ``implicit-icl <command> …``.

Each command lives in its own module that exposes ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy dependencies (torch, textual,
matplotlib) inside ``run`` only, so ``implicit-icl --help`` stays fast and works without the extras.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from implicit_icl import __version__
from implicit_icl.commands import fail, missing_extra

# command name -> module; the order is the order of `implicit-icl --help`.
COMMANDS = {
    "verify": "implicit_icl.commands.verify",
    "bench": "implicit_icl.commands.bench",
    "walkthrough": "implicit_icl.commands.walkthrough",
    "train": "implicit_icl.commands.train",
    "reproduce": "implicit_icl.commands.reproduce",
    "exercises": "implicit_icl.commands.exercises",
    "explain": "implicit_icl.commands.explain",
    "theory": "implicit_icl.commands.theory",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="implicit-icl",
        description=(
            "In-context learning as an exact rank-1 weight update. A self-attention layer followed by an MLP "
            "turns its context C into ΔW = (W ΔA) A(x)ᵀ/‖A(x)‖² on the MLP's first matrix, so that "
            "T_W(C, x) = T_{W+ΔW}(x) (Dherin et al. 2025; Innocenti & Achour 2025)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"implicit-icl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:                          # said by the command's own parser: its usage, its name in the message
        (getattr(args, "_parser", None) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as exc:
        hint = missing_extra(args.command, exc.name)
        if hint is None:
            raise
        return fail(args.command, hint, code=1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
