"""``implicit-icl walkthrough``: the terminal walkthrough (and ``--export`` for screenshots).

Textual is imported inside ``run`` only, so ``implicit-icl --help`` works without the ``tui`` extra.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from implicit_icl import commands

HELP = "step through a prompt token by token and watch each weight delta ΔW_i (terminal UI)"
DESCRIPTION = """\
Open a terminal walkthrough of the implicit dynamics (Dherin et al. 2025, §3): a block reads a prompt c_1..c_n
and a fixed query x; at step i it has consumed c_1..c_i, and its output equals that of the query alone with
W + ΔW_i, ΔW_i = u_i aᵀ/‖a‖² (rank 1). In a block with a residual around the MLP (every kind but "plain", e.g.
the post-LN layers of --model minilm) the MLP's output bias changes too, b_out + Δb_i with Δb_i = r_i − r (P2):
there the check shows T_(W+ΔW_i, b+Δb_i)(x) and ‖Δb_i‖. The identity is exact by algebra, for any weights; the
check shows the round-off of the dtype (float64 ~1e-16, float32 ~1e-7, relative to the output).
The app shows ΔW_i as a heatmap with its factors, the check (output with context vs the query alone with the
update), the gradient-descent reading of each step (P1 Prop. 3.1), and the curves ‖ΔW_i‖, ‖ΔW_(i+1) − ΔW_i‖ and
their ratio next to an untrained block of the same shape.

By default it opens on the bundled trained checkpoint (implicit_icl/data/p1.npz) and a generated regression
prompt; without that file (or with --random) it uses a seeded random plain block and says so. --model minilm
reads TEXT with a layer of all-MiniLM-L6-v2 (extra 'real'; its files come from the folder in the environment
variable IMPLICIT_ICL_MINILM_DIR if set, else from the installed package); --tokens, --seed and --backend do
not apply there.
The app needs a terminal of at least 80x24; below 100x34 it shows a compact layout (the heatmap and the
check, without the GD view and the curves). --export FILE renders one step to an .svg or .txt file instead
(missing folders are created; --size 80x24 shows the compact layout). Keys: → ← (l h) step, Home End,
space play/pause, b baseline, s step view, [ ] layer (--model), ? help, q or Ctrl-C quit; click a token.

  implicit-icl walkthrough
  implicit-icl walkthrough --random --seed 3 --tokens 80
  implicit-icl walkthrough --export docs/walkthrough.svg --step 12
  implicit-icl walkthrough --model minilm "France is to Paris as Japan is to" --layer 3
"""

DEFAULT_EXPORT_SIZE = (140, 45)
MAX_EXPORT_SIZE = (400, 200)      # --size at most (columns, lines): larger renders take minutes and gigabytes


def add_arguments(parser) -> None:
    from implicit_icl.tui.data import MAX_TOKENS          # NumPy and the reference only: --help still never imports textual

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="a single-block checkpoint (.npz, e.g. from implicit-icl train)")
    source.add_argument("--random", action="store_true", help="a seeded random (untrained) plain block")
    source.add_argument("--model", metavar="NAME_OR_PATH",
                        help="a real model on TEXT: 'minilm', 'fewshot' (the bundled few-shot Llama) or the folder "
                             "of any checkpoint implicit_icl.models.hf.load reads (config.json + safetensors)")
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the text to read with --model")
    parser.add_argument("--layer", type=int, default=None, metavar="L",
                        help="with --model: the layer to open on (default: 3 for minilm, as in the README; the last "
                             "layer for a decoder; [ and ] switch layers in the app)")
    parser.add_argument("--position", type=int, default=None, metavar="P",
                        help="with --model: the query token's index in the token list ([CLS] is 0; negative "
                             "counts from the end, so -1 is the final [SEP]); default: the last real token "
                             "before [SEP]")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the prompt (and of the random block); default 0; not with --model")
    parser.add_argument("--tokens", type=int, default=None, metavar="N",
                        help=f"context tokens in the prompt, 1..{MAX_TOKENS} (default: the checkpoint's, else 50); "
                             "not with --model (the text sets them)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="compute the trajectory with this backend: numpy (default, float64), torch, or "
                             "one an installed plugin registers; not with --model (float64 NumPy)")
    parser.add_argument("--step", type=int, default=0, metavar="I", help="open at step I (default: 0)")
    parser.add_argument("--export", metavar="FILE",
                        help="render step --step to FILE (.svg or .txt) and exit; missing folders are created; an "
                             "existing file is replaced only if it is such an export")
    parser.add_argument("--force", action="store_true", help="let --export replace a file that is not an export")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help=f"--export size in cells (default: {DEFAULT_EXPORT_SIZE[0]}x{DEFAULT_EXPORT_SIZE[1]}; "
                             f"at most {MAX_EXPORT_SIZE[0]}x{MAX_EXPORT_SIZE[1]})")


def fail(message: str) -> int:
    """The walkthrough's error line (exit 2): ``commands.fail`` for this command."""
    return commands.fail("walkthrough", message)


def parse_size(text: str | None) -> tuple[int, int]:
    from implicit_icl.tui.app import COMPACT_MIN, MIN_SIZE

    if text is None:
        return DEFAULT_EXPORT_SIZE
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 140x45, got {text!r}") from None
    if w > MAX_EXPORT_SIZE[0] or h > MAX_EXPORT_SIZE[1]:
        raise ValueError(f"--size {w}x{h} is too large: at most {MAX_EXPORT_SIZE[0]}x{MAX_EXPORT_SIZE[1]} cells")
    if w < COMPACT_MIN[0] or h < COMPACT_MIN[1]:
        raise ValueError(f"--size {w}x{h} is too small: the walkthrough needs at least "
                         f"{COMPACT_MIN[0]}x{COMPACT_MIN[1]} (below {MIN_SIZE[0]}x{MIN_SIZE[1]} in its compact layout)")
    return w, h


def known_backends() -> list[str]:
    """The backend names ``--backend`` accepts: the built-in ones and any registered by an installed plugin."""
    try:
        from implicit_icl.backends import factories
    except ImportError:
        return ["numpy", "torch"]
    return sorted(factories())


def check_backend_name(name: str | None) -> None:
    """``--backend`` must name a known backend (whatever else was asked); raises ``ValueError`` otherwise."""
    if name is None:
        return
    known = known_backends()
    if name not in known:
        raise ValueError(f"--backend must be one of {', '.join(known)}, got {name!r}")


def get_backend(name: str | None):
    """``None`` for the NumPy reference (``name`` ``None`` or ``"numpy"``); else
    ``implicit_icl.backends.get_backend(name)``; ``name`` was checked by ``check_arguments``. Raises ``ValueError``
    naming ``--backend`` if it cannot be loaded."""
    if name is None or name == "numpy":
        return None
    try:
        from implicit_icl.backends import get_backend as lookup
    except ImportError as exc:
        raise ValueError(f"--backend {name!r} is not available ({exc})") from None
    try:
        return lookup(name)
    except (ImportError, KeyError, ValueError) as exc:
        raise ValueError(f"--backend {name!r} is not available ({exc})") from None


def check_arguments(args) -> None:
    """Every check of the arguments that needs no computation (raises ``ValueError`` naming the option)."""
    from implicit_icl.tui.data import check_tokens

    check_backend_name(args.backend)                                   # checked whatever the source
    if args.tokens is not None:
        try:
            check_tokens(args.tokens)
        except ValueError as exc:
            raise ValueError(commands.as_option(exc, {"n_tokens": "--tokens"})) from None
    if args.seed is not None and args.seed < 0:       # numpy's seed streams take non-negative integers only
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.model is not None:
        if args.text is None:
            raise ValueError("--model needs the TEXT to read, e.g. implicit-icl walkthrough --model minilm \"…\"")
        if not args.text.strip():
            raise ValueError("TEXT is empty: --model needs a text to read, e.g. "
                             "implicit-icl walkthrough --model minilm \"France is to Paris as Japan is to\"")
        for option, given, why in (
                ("--tokens", args.tokens is not None, "the text sets the tokens"),
                ("--seed", args.seed is not None, "there is no generated prompt or random block to seed"),
                ("--backend", args.backend is not None, "the real model runs on the float64 NumPy reference")):
            if given:
                raise ValueError(f"{option} does not apply with --model ({why})")
        return
    if args.text is not None:
        raise ValueError(f"unexpected TEXT {args.text!r}: TEXT is only read with --model")
    for name in ("layer", "position"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name} only applies with --model")


def prepare(args):
    """The ``WalkthroughData`` the arguments ask for, once ``check_arguments`` has passed them (raises
    ``ValueError`` with a clear message)."""
    from implicit_icl.tui.data import default_data, text_data

    if args.model is not None:
        return text_data(args.model, args.text, layer=args.layer, position=args.position)
    backend = get_backend(args.backend)
    return default_data(n_tokens=args.tokens, seed=0 if args.seed is None else args.seed, random=args.random,
                        checkpoint=args.checkpoint, backend=backend)


def export(app, path: Path, size: tuple[int, int]) -> None:
    """Render the app headless at ``size`` and write an SVG (or, for ``.txt``, plain text) screenshot.

    Raises ``OSError`` when ``path`` cannot be written (after the app has closed)."""
    from implicit_icl.tui.app import screen_text

    shot: list[str] = []

    async def shoot(pilot) -> None:
        await pilot.pause()
        await pilot.pause()
        shot.append(screen_text(app) if path.suffix.lower() == ".txt" else app.export_screenshot())
        app.exit()

    app.run(headless=True, size=size, auto_pilot=shoot)
    from implicit_icl.checkpoint import atomic_write_bytes

    data = shot[0].encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(data))        # creates missing folders; never a half-written file


def is_export(path: Path) -> bool:
    """Whether ``path`` holds what ``export`` writes: Rich's SVG, or a text screen whose first line is the
    walkthrough's status bar (it shows ``step i =``)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if path.suffix.lower() == ".svg":
        return head.startswith(b'<svg class="rich-terminal"')
    return b"step i = " in head.split(b"\n", 1)[0]


EXPORT_KIND = ("a walkthrough export (Rich's SVG, or a text screen of the walkthrough)", is_export)


def interactive_terminal() -> bool:
    """Whether stdin and stdout are both a terminal (the interactive app needs one for keys and for drawing)."""
    try:
        return sys.stdin is not None and sys.stdout is not None and sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):          # a closed or replaced stream
        return False


def run(args) -> int:
    from implicit_icl.checkpoint import CheckpointError, output_path_problem

    from implicit_icl.tui.app import COMPACT_MIN, MIN_SIZE

    export_path = Path(args.export) if args.export is not None else None
    try:
        if export_path is not None:
            if export_path.suffix.lower() not in (".svg", ".txt"):
                raise ValueError(f"--export must name a .svg or .txt file, got {export_path.name!r}")
            problem = output_path_problem(export_path, "--export", EXPORT_KIND, force=args.force)  # before any work
            if problem:
                raise ValueError(problem)
            size = parse_size(args.size)
        elif args.size is not None:
            raise ValueError("--size only applies to --export")
        check_arguments(args)                      # a wrong option first; then the terminal, before any work
        if export_path is None and not interactive_terminal():
            raise ValueError("the interactive walkthrough needs a terminal (stdin and stdout are not both one); "
                             "to render a step to a file use --export FILE.svg (or FILE.txt) with --step I")
        data = prepare(args)
    except (CheckpointError, ValueError) as exc:          # ZeroNormError and WalkthroughError are ValueErrors
        return fail(commands.as_option(exc, commands.ANALYSIS_OPTIONS))
    except OSError as exc:
        return fail(f"cannot read what was asked for: {exc}")
    if not 0 <= args.step <= data.n:
        return fail(f"--step must be from 0 to {data.n} (the context length), got {args.step}")

    from implicit_icl.tui.app import WalkthroughApp

    app = WalkthroughApp(data, start=args.step)
    if export_path is not None:
        try:
            export(app, export_path, size)
        except OSError as exc:
            return fail(f"--export {export_path}: cannot write it ({exc.strerror or exc})")
        print(f"wrote {export_path} (step {args.step} of {data.n}, {size[0]}x{size[1]})", file=sys.stderr)
        return 0
    width, height = shutil.get_terminal_size(fallback=(DEFAULT_EXPORT_SIZE[0], DEFAULT_EXPORT_SIZE[1]))
    if width < COMPACT_MIN[0] or height < COMPACT_MIN[1]:
        return fail(f"the terminal is {width}x{height}; the walkthrough needs at least "
                    f"{COMPACT_MIN[0]}x{COMPACT_MIN[1]}, {MIN_SIZE[0]}x{MIN_SIZE[1]} for every panel "
                    "(enlarge the window, or use --export FILE.svg)")
    app.run()
    return 0
