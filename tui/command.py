"""``implicit-icl walkthrough``: the terminal walkthrough (and ``--export`` for screenshots).

Textual is imported inside ``run`` only, so ``implicit-icl --help`` works without the ``tui`` extra.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

HELP = "step through a prompt token by token and watch each weight delta ΔW_i (terminal UI)"
DESCRIPTION = """\
Open a terminal walkthrough of the implicit dynamics (Dherin et al. 2025, §3): a block reads a prompt c_1..c_n
and a fixed query x; at step i it has consumed c_1..c_i, and its output equals that of the query alone with
W + ΔW_i, ΔW_i = u_i aᵀ/‖a‖² (rank 1). The app shows ΔW_i as a heatmap with its factors, the check
(prediction with context vs with the update), the gradient-descent reading of each step (P1 Prop. 3.1), and the
curves ‖ΔW_i‖, ‖ΔW_(i+1) − ΔW_i‖ and their ratio next to an untrained block of the same shape.

By default it opens on the bundled trained checkpoint (implicit_icl/data/p1.npz) and a generated regression
prompt; without that file (or with --random) it uses a seeded random plain block and says so.
Keys: → ← (l h) step, Home End, space play/pause, b baseline, s step view, ? help, q quit; click a token.

  implicit-icl walkthrough
  implicit-icl walkthrough --random --seed 3 --tokens 80
  implicit-icl walkthrough --export docs/walkthrough.svg --step 12
"""

DEFAULT_EXPORT_SIZE = (140, 45)


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH", help="a trained single-block checkpoint (.npz)")
    source.add_argument("--random", action="store_true", help="a seeded random (untrained) plain block")
    source.add_argument("--model", metavar="NAME", help="a real pretrained model ('minilm') on TEXT")
    parser.add_argument("text", nargs="?", help="the text to read with --model")
    parser.add_argument("--layer", type=int, default=None, help="with --model: the block to show (default: 0)")
    parser.add_argument("--position", type=int, default=None,
                        help="with --model: the query token's position (default: the last)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt (and of the random block)")
    parser.add_argument("--tokens", type=int, default=None, metavar="N",
                        help="context tokens in the prompt (default: the checkpoint's, else 50)")
    parser.add_argument("--backend", default="numpy", metavar="NAME",
                        help="compute the trajectory with this backend: numpy (default) or torch")
    parser.add_argument("--step", type=int, default=0, metavar="I", help="open at step I (default: 0)")
    parser.add_argument("--export", metavar="FILE", help="render step --step to FILE (.svg or .txt) and exit")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help=f"--export size in cells (default: {DEFAULT_EXPORT_SIZE[0]}x{DEFAULT_EXPORT_SIZE[1]})")


def fail(message: str) -> int:
    print(f"implicit-icl walkthrough: {message}", file=sys.stderr)
    return 2


def parse_size(text: str | None) -> tuple[int, int]:
    from .app import MIN_SIZE

    if text is None:
        return DEFAULT_EXPORT_SIZE
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 140x45, got {text!r}") from None
    if w < MIN_SIZE[0] or h < MIN_SIZE[1]:
        raise ValueError(f"--size {w}x{h} is too small: the walkthrough needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}")
    return w, h


def get_backend(name: str):
    """``None`` for the NumPy reference; else ``implicit_icl.backends.get_backend(name)``."""
    if name == "numpy":
        return None
    try:
        from implicit_icl.backends import get_backend as lookup
    except ImportError:
        lookup = None
    if lookup is None:
        if name == "torch":
            raise ValueError("--backend torch needs implicit_icl.backends.get_backend, which this install lacks")
        raise ValueError(f"--backend must be 'numpy' or 'torch', got {name!r}")
    try:
        return lookup(name)
    except (ImportError, KeyError, ValueError) as exc:
        raise ValueError(f"--backend {name!r} is not available ({exc})") from None


def prepare(args):
    """The ``WalkthroughData`` the arguments ask for (raises ``ValueError`` with a clear message)."""
    from .data import check_tokens, default_data, text_data

    if args.tokens is not None:
        check_tokens(args.tokens)
    if args.seed < 0:                    # numpy's seed streams take non-negative integers only
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.model is not None:
        if not args.text:
            raise ValueError("--model needs the TEXT to read, e.g. implicit-icl walkthrough --model minilm \"…\"")
        return text_data(args.model, args.text, layer=0 if args.layer is None else args.layer,
                         position=args.position)
    if args.text:
        raise ValueError(f"unexpected TEXT {args.text!r}: TEXT is only read with --model")
    for name in ("layer", "position"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name} only applies with --model")
    backend = get_backend(args.backend)
    return default_data(n_tokens=args.tokens, seed=args.seed, random=args.random, checkpoint=args.checkpoint,
                        backend=backend)


def export(app, path: Path, size: tuple[int, int]) -> None:
    """Render the app headless at ``size`` and write an SVG (or, for ``.txt``, plain text) screenshot.

    Raises ``OSError`` when ``path`` cannot be written (after the app has closed)."""
    from .app import screen_text

    shot: list[str] = []

    async def shoot(pilot) -> None:
        await pilot.pause()
        await pilot.pause()
        shot.append(screen_text(app) if path.suffix.lower() == ".txt" else app.export_screenshot())
        app.exit()

    app.run(headless=True, size=size, auto_pilot=shoot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(shot[0], encoding="utf-8")


def run(args) -> int:
    from implicit_icl.checkpoint import CheckpointError

    from .app import MIN_SIZE

    export_path = Path(args.export) if args.export else None
    try:
        if export_path is not None:
            if export_path.suffix.lower() not in (".svg", ".txt"):
                raise ValueError(f"--export must name a .svg or .txt file, got {export_path.name!r}")
            size = parse_size(args.size)
        elif args.size is not None:
            raise ValueError("--size only applies to --export")
        data = prepare(args)
    except (CheckpointError, ValueError) as exc:          # ZeroNormError and WalkthroughError are ValueErrors
        return fail(str(exc))
    if not 0 <= args.step <= data.n:
        return fail(f"--step must be from 0 to {data.n} (the context length), got {args.step}")

    from .app import WalkthroughApp

    app = WalkthroughApp(data, start=args.step)
    if export_path is not None:
        try:
            export(app, export_path, size)
        except OSError as exc:
            return fail(f"--export {export_path}: cannot write it ({exc.strerror or exc})")
        print(f"wrote {export_path} (step {args.step} of {data.n}, {size[0]}x{size[1]})")
        return 0
    width, height = shutil.get_terminal_size(fallback=(DEFAULT_EXPORT_SIZE[0], DEFAULT_EXPORT_SIZE[1]))
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        return fail(f"the terminal is {width}x{height}; the walkthrough needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]} "
                    "(enlarge the window, or use --export FILE.svg)")
    app.run()
    return 0
