"""``implicit-icl train``: train a preset on in-context linear regression (P1 §4)."""
from __future__ import annotations

import sys

from implicit_icl.commands import as_option, fail

HELP = "train the in-context regression transformer (presets p1, p2) or the few-shot Llama LM (fewshot); resumable"
DESCRIPTION = """\
Train a preset on in-context linear regression (P1 §4): prompts (x_1, <w,x_1>), ..., (x_N, <w,x_N>), (x_q, 0) with
w, x ~ N(0, I_d) fresh every batch; the prediction is the last coordinate at the query. Seeded and deterministic.

  p1  one 'plain' block (no skip, no LayerNorm, no positional encoding), causal, d=2, N=50, 8 heads x 4, MLP 128
  p2  a stack of 3 residual GELU blocks (P2), d=2, N=50, 4 heads x 4, MLP 32
  fewshot  a Llama-architecture LM (2 gated blocks: RMSNorm, SwiGLU, rotary, 4 heads sharing 2 kv heads) on a
           key -> value task with a fresh random mapping per prompt (--n-points pairs per sequence); OUT then holds a
           Hugging Face folder (config.json, model.safetensors, tokenizer.json) instead of model.npz

Writes OUT/checkpoint.npz (atomic, no pickle; model + Adam state), OUT/metrics.jsonl (one line per evaluation) and,
when done, OUT/model.npz (the model with its float64 validation loss recorded). Interrupt at any time and rerun the
same command with --resume: the run ends bit-identical to an uninterrupted one. On --resume only --checkpoint-every
may differ, and --steps may be raised to extend a run (the learning rate does not depend on the total).
A new run needs a new or empty OUT (--overwrite starts over in one that holds files); a run that fails before its
first checkpoint after step 0 leaves nothing behind. --batch-size, --n-points and --val-prompts are checked against
this machine's memory before anything is written.

Examples:
  implicit-icl train --preset p1 --out runs/p1                 the bundled model's recipe (1.5-2.5 min, 2-core CPU)
  implicit-icl train --preset p1 --out runs/p1 --resume        continue after an interrupt
  implicit-icl train --preset p1 --out runs/short --steps 300  a short run

Exit status: 0 done; 1 training failed (diverged, or a checkpoint that cannot be resumed); 2 a bad argument;
130 interrupted (the last checkpoint is kept).
"""

#: the preset's settings a user sets: option, ``Preset`` field, metavar, what it is
SETTINGS = (("--steps", "steps", "N", "training steps"),
            ("--batch-size", "batch_size", "N", "prompts per batch"),
            ("--lr", "lr", "LR", "Adam's learning rate"),
            ("--eval-every", "eval_every", "N", "evaluate every N steps"),
            ("--checkpoint-every", "checkpoint_every", "N", "checkpoint every N steps"),
            ("--val-prompts", "val_prompts", "N", "validation prompts"),
            ("--n-points", "n_points", "N", "in-context examples per prompt"))
#: the library's names (``Preset`` fields, ``train``'s arguments) for what train's options set
OPTIONS = {field: option for option, field, *_ in SETTINGS} | {
    "name": "--preset", "out": "--out", "seed": "--seed", "resume": "--resume", "overwrite": "--overwrite",
    "threads": "--threads"}


def say(message: str) -> None:
    """Print a line the training logs, its arguments named as train's options (the library's ``log``)."""
    print(as_option(message, OPTIONS), file=sys.stderr)


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="p1", choices=("p1", "p2", "fewshot"),
                        help="model and recipe (default p1)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--seed", type=int, default=0, help="init and data seed (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.npz")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an OUT that is not empty: replaces the run's checkpoint.npz, "
                             "metrics.jsonl and model.npz there (without it OUT must be new or empty)")
    from implicit_icl.experiments.presets import PRESETS

    def preset_values(field: str) -> str:          # "(the presets': p1 4000, p2 2000)", "(the presets': 64)"
        values = {name: getattr(p, field) for name, p in PRESETS.items()}
        if len(set(values.values())) == 1:
            return f"(the presets': {next(iter(values.values()))})"
        return "(the presets': " + ", ".join(f"{name} {v}" for name, v in values.items()) + ")"

    for option, field, metavar, what in SETTINGS:
        parser.add_argument(option, type=float if field == "lr" else int, metavar=metavar,
                            help=f"{what} {preset_values(field)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 1, or on --resume the count recorded "
                                                    "in the checkpoint; part of bit-for-bit determinism)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def preset_from_args(args):
    """The preset with the command line's overrides; ``ValueError`` (its message names the option) if one is bad."""
    from implicit_icl.experiments.presets import get_preset

    from implicit_icl.commands.options import threads_problem

    from implicit_icl.experiments.train import LR_MAX, memory_problem

    for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "val_prompts", "n_points"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"{OPTIONS[name]} must be >= 1, got {value}")
    if problem := seed_problem(args.seed) or threads_problem(args.threads):
        raise ValueError(problem)
    if args.lr is not None and not 0 < args.lr <= LR_MAX:          # nan fails both; 1e39 overflowed torch's Adam
        raise ValueError(f"--lr must be a number > 0 and at most {LR_MAX:g} (Adam's learning rate), got {args.lr}")
    preset = get_preset(args.preset).with_overrides(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, val_prompts=args.val_prompts, n_points=args.n_points)
    if problem := memory_problem(preset):
        raise ValueError(as_option(problem, OPTIONS))
    return preset


def out_problem(out: str, resume: bool, overwrite: bool) -> str | None:
    """Why ``--out`` cannot take this run, or None: a new run goes into a new or empty folder unless ``--overwrite``
    (so no file of the user's is replaced by surprise); ``--resume`` continues the run already there."""
    from pathlib import Path

    from implicit_icl.checkpoint import output_dir_problem

    from implicit_icl.experiments.train import CHECKPOINT, METRICS, MODEL

    if problem := output_dir_problem(out, "--out"):
        return problem
    if resume and overwrite:
        return "--resume and --overwrite exclude each other: --resume continues the run in --out, --overwrite " \
               "starts it over"
    path = Path(out)
    if resume or overwrite or not path.is_dir():
        return None
    held = sorted(entry.name for entry in path.iterdir())
    if not held:
        return None
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    advice = ("pass --resume to continue the run in it, or --overwrite to start it over" if CHECKPOINT in held else
              f"pass --overwrite to train into it anyway (replacing any {CHECKPOINT}, {METRICS} and {MODEL})")
    return f"--out: {out} is not empty (it holds {shown}); {advice}, or choose another --out"


def seed_problem(seed: int) -> str | None:
    """Why ``--seed`` is unusable, or None: numpy's seed streams need it non-negative, torch.manual_seed 64 bits."""
    from implicit_icl.experiments.presets import seed_ok

    return None if seed_ok(seed) else f"--seed must be from 0 to 2**64 - 1, got {seed}"


def run_reporting_errors(command: str, out, job, options: dict = OPTIONS) -> int:
    """Run ``job()`` and turn the errors a user can cause into one line on stderr and exit status 1 (the arguments
    they name named as the command's ``options``: train's by default)."""
    from implicit_icl.checkpoint import CheckpointError
    from implicit_icl.experiments.train import TrainingError

    try:
        job()
    except (CheckpointError, TrainingError) as exc:
        return fail(command, f"error: {as_option(exc, options)}", code=1)
    except MemoryError as exc:          # what memory_problem's estimate did not foresee
        hint = "; use a smaller --batch-size, --n-points or --val-prompts" if command == "train" else ""
        return fail(command, f"error: out of memory ({exc or 'no details'}){hint}", code=1)
    except OSError as exc:              # the run exists (no --resume), or --out cannot be created or written
        where = "" if exc.filename is None else f"--out {out}: {exc.filename}: "
        return fail(command, f"error: {where}{exc.strerror if where else as_option(exc, OPTIONS)}", code=1)
    return 0


def run(args) -> int:
    if args.preset == "fewshot":
        from implicit_icl.experiments.fewshot_train import train
    else:
        from implicit_icl.experiments.train import train

    try:
        preset = preset_from_args(args)
        if problem := out_problem(args.out, args.resume, args.overwrite):
            raise ValueError(problem)
    except ValueError as exc:            # a bad argument: exit status 2, as argparse gives
        return fail("train", f"error: {exc}")
    try:
        return run_reporting_errors("train", args.out, lambda: train(
            preset, args.out, seed=args.seed, resume=args.resume, progress=not args.no_progress,
            threads=args.threads, overwrite=args.overwrite, log=say))
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_state(args.out)}", file=sys.stderr)
        return 130


def interrupted_state(out) -> str:
    """What an interrupted ``train`` left in ``out`` and how to go on from it."""
    from pathlib import Path

    from implicit_icl.checkpoint import CheckpointError, load_checkpoint

    from implicit_icl.experiments.train import CHECKPOINT

    path = Path(out) / CHECKPOINT
    try:
        try:
            step = load_checkpoint(path)[2].get("step")
        except CheckpointError:                   # the fewshot preset's training state
            from implicit_icl.experiments.fewshot_train import load_state
            step = load_state(path)[1].get("step")
    except CheckpointError:
        return (f"no checkpoint was written in {out} yet; rerun the same command without --resume to start over"
                if not path.exists() else f"{path} is unreadable; start over into another --out")
    return f"the checkpoint in {out} (step {step}) is kept; rerun the same command with --resume to continue"
