"""Training on in-context linear regression (P1 §4) with resumable, atomic, pickle-free checkpoints.

Files in the run directory:

- ``checkpoint.npz``: the training state, written with ``save_checkpoint`` every ``checkpoint_every`` steps and at
  the end. Arrays: the model params plus Adam's moments keyed ``optim.exp_avg.<name>`` / ``optim.exp_avg_sq.<name>``
  (``blocks.<l>.optim.…`` in a stack, so the file stays a valid stack checkpoint). Meta: preset, seed, step, Adam's
  step count, the running train-loss accumulator and the data-stream position.
- ``metrics.jsonl``: one JSON line per evaluation (E1's curves); on ``--resume`` lines after the checkpoint's step
  are dropped and training continues from there.
- ``model.npz``: the final model alone, with its float64 (NumPy reference) validation losses in the meta.

Determinism: the batch of step ``t`` is drawn from ``numpy.random.default_rng([seed, 1, t])``, a counter-based
stream, so the data RNG state *is* the step number (recorded as ``rng`` in the meta); there is no other randomness
after the seeded init. Torch runs on ``threads`` CPU threads (default 1; recorded in the checkpoint, and on
``--resume`` taken from it unless given) with deterministic algorithms, so a run resumed from any checkpoint ends
bit-identical to an uninterrupted one. Resuming with a different thread count works but says that the result may
differ in the last bits (a float32 sum split over other threads is added in another order).

A resume must use the recorded settings, except ``checkpoint_every`` (it changes when files are written, nothing
else) and a larger ``steps`` (Adam's learning rate is constant, so the run continues as an uninterrupted longer run
would; refused when the shorter run's final evaluation fell off the ``eval_every`` grid, since the longer run would
not make it). The checkpoint is checked before it is loaded: meta fields and types, shapes and finite Adam moments.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.checkpoint import (CheckpointError, atomic_write_bytes, is_optim_key, load_checkpoint,
                                     save_checkpoint, stored_dtypes)
from implicit_icl.reference.tasks import regression_prompts

from .evaluate import validate, validation_prompts
from .presets import Preset, is_count

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
MODEL = "model.npz"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LR_MAX = 1.0            # Adam moves every weight by about lr per step: above 1 a run diverges at once (1e39 overflowed)
STATE_DTYPE = np.float32    # what a training checkpoint stores (the model and Adam's moments)


def memory_needed(preset: Preset) -> tuple[int, int]:
    """About how many bytes one training step and the validation need: float32 activations per prompt (H·T²
    attention weights, the MLP's hidden layer twice, the projections; measured ~0.1 MB per p1 prompt, estimated
    0.16 MB), doubled for the backward pass."""
    cfg, T = preset.cfg, getattr(preset, "seq_len", preset.n_points + 1)     # fewshot: 2 tokens a pair
    d_head = cfg.d_head or cfg.d_model // cfg.n_heads
    per_prompt = 4 * max(preset.n_blocks, 1) * (cfg.n_heads * T * T + 2 * T * cfg.d_mlp
                                                 + 4 * T * (cfg.n_heads * d_head + cfg.d_model))
    return 2 * per_prompt * preset.batch_size, per_prompt * preset.val_prompts


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_problem(preset: Preset) -> str | None:
    """Why ``preset`` cannot run in this machine's memory (the options named), or None; checked before any file."""
    total = machine_memory()
    if not total:
        return None
    train_bytes, val_bytes = memory_needed(preset)
    for needed, option, what in ((train_bytes, "--batch-size", "a training step"),
                                 (val_bytes, "--val-prompts", "the validation")):
        if needed > total:
            return (f"{option} {getattr(preset, option[2:].replace('-', '_'))} with --n-points {preset.n_points}: "
                    f"{what} would need about {needed / 2**30:.3g} GiB of memory, more than this machine's "
                    f"{total / 2**30:.3g} GiB; lower {option} or --n-points")
    return None


def optim_key(name: str, slot: str) -> str:
    """Where Adam's ``slot`` for the param ``name`` lives in the checkpoint (stack-compatible; ``is_optim_key``)."""
    if name.startswith("blocks."):
        _, l, rest = name.split(".", 2)
        return f"blocks.{l}.optim.{slot}.{rest}"
    return f"optim.{slot}.{name}"


def model_only(params: dict) -> dict:
    """The params of a training checkpoint without the optimizer arrays."""
    return {k: v for k, v in params.items() if not is_optim_key(k)}


def batch(preset: Preset, seed: int, step: int):
    """The training prompts of ``step``: a pure function of ``(seed, step)``."""
    return regression_prompts(preset.batch_size, preset.n_points, preset.d, np.random.default_rng([seed, 1, step]))


class TrainingError(RuntimeError):
    """Training cannot go on (it diverged); the message says why and what to change."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    params: dict          # numpy float32 arrays
    validation: object    # evaluate.Validation of the final model (float64 reference)
    seconds: float


def _write_metrics(path: Path, lines: list[dict]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"metrics file {path}: line {n} is not JSON ({exc})") from None
        if rec.get("step", math.inf) <= upto_step:
            out.append(rec)
    return out


def train(preset: Preset, out_dir, seed: int = 0, resume: bool = False, progress: bool = True,
          threads: int | None = None, stop_after: int | None = None, log=None, overwrite: bool = False) -> TrainResult:
    """Train ``preset`` into ``out_dir``; with ``resume`` continue from ``out_dir/checkpoint.npz``; with
    ``overwrite`` start over, removing a run already there (its checkpoint, metrics and model) first.

    A new run that fails (or is interrupted) before its first checkpoint after step 0 removes the files it wrote
    (and ``out_dir``, if it made it): a failed start leaves nothing behind.

    ``threads``: torch CPU threads; ``None`` means 1 for a new run and the checkpoint's count on ``resume``.
    ``stop_after`` ends the run after that many steps of this call (a clean interruption, for tests and demos).
    """
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if threads is None:
        threads = _recorded_threads(Path(out_dir) / CHECKPOINT) if resume else 1
    return deterministic(threads, lambda: _train(torch, preset, out_dir, seed, resume, progress, stop_after, threads,
                                                 log, overwrite))


def deterministic(threads: int, job):
    """``job()`` with torch on ``threads`` CPU threads and deterministic algorithms (so that a run and its resume
    are bit-identical), both settings restored afterwards."""
    import torch

    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return job()
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _recorded_threads(path: Path) -> int:
    """The thread count a training checkpoint was written with (1 before it was recorded; 1 if unreadable or not
    a count: the resume itself then reports the file's problem)."""
    try:
        threads = load_checkpoint(path)[2].get("threads", 1)
    except (CheckpointError, OSError):
        return 1
    return threads if is_count(threads, 1) else 1


def _train(torch, preset: Preset, out_dir, seed: int, resume: bool, progress: bool, stop_after, threads: int,
           log, overwrite: bool) -> TrainResult:
    from . import torch_model as TM

    out_dir = Path(out_dir)
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / METRICS
    cfg, L = preset.cfg, preset.n_blocks

    params = {k: v.requires_grad_(True) for k, v in TM.init_params(cfg, L, seed).items()}
    names = sorted(params)
    opt = torch.optim.Adam([params[k] for k in names], lr=preset.lr, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False)
    step, acc_sum, acc_count = 0, 0.0, 0
    if resume:
        arrays, ck_cfg, meta = load_checkpoint(ckpt_path)
        _check_resumable(ckpt_path, arrays, meta, preset, seed, {k: tuple(params[k].shape) for k in names},
                         stored_dtypes(ckpt_path))
        with torch.no_grad():
            for k in names:
                params[k].copy_(torch.from_numpy(arrays[k].astype(np.float32)))
        if meta["adam_step"] > 0:
            opt.load_state_dict({"state": {i: {
                "step": torch.tensor(float(meta["adam_step"])),
                "exp_avg": torch.from_numpy(arrays[optim_key(k, "exp_avg")].astype(np.float32)),
                "exp_avg_sq": torch.from_numpy(arrays[optim_key(k, "exp_avg_sq")].astype(np.float32)),
            } for i, k in enumerate(names)}, "param_groups": opt.state_dict()["param_groups"]})
        step, acc_sum, acc_count = meta["step"], meta["train_loss_sum"], meta["train_loss_count"]
        metrics = _read_metrics(metrics_path, step)
        _check_metrics(metrics_path, metrics, step, meta["preset"]["steps"], preset.eval_every)
        log(f"resuming {ckpt_path} at step {step}/{preset.steps} on {threads} torch thread(s)")
        for note in _setting_changes(meta["preset"], preset):
            log(note)
        if "threads" not in meta:
            log(f"note: {ckpt_path} does not record its torch thread count (written by an older version): resuming "
                f"on {threads}; on another count than the run began with, the result may differ from an "
                "uninterrupted run in the last bits")
        elif meta["threads"] != threads:
            log(f"note: {ckpt_path} was written on {meta['threads']} torch thread(s), this run uses {threads}: "
                "the result may differ from an uninterrupted run in the last bits (resume without --threads to "
                "keep the recorded count)")
    else:
        if ckpt_path.exists() and not overwrite:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
        if overwrite:
            for name in (CHECKPOINT, METRICS, MODEL):
                (out_dir / name).unlink(missing_ok=True)
        metrics = []
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_step = step if resume else None          # the step of the checkpoint a failure keeps; None: none yet
    wrote: set[Path] = set()                      # the files this run wrote (removed again after a failed start)

    def numpy_params() -> dict:
        return {k: params[k].detach().numpy().copy() for k in names}

    def evaluate(train_loss):
        with torch.no_grad():
            pred = TM.predict(params, cfg, L, Zv)
            pred_dw = TM.predict_via_update(params, cfg, L, Zv)
        ref = validate({k: v.astype(np.float64) for k, v in numpy_params().items()}, cfg, L, val)
        return {
            "step": step, "train_loss": train_loss,
            "val_loss": float(((pred - yv) ** 2).mean()), "val_loss_via_update": float(((pred_dw - yv) ** 2).mean()),
            "max_abs_diff_f32": float((pred - pred_dw).abs().max()),
            "val_loss_f64": ref.loss, "val_loss_via_update_f64": ref.loss_via_update,
            "max_abs_diff_f64": ref.max_abs_diff, "val_loss_zero": ref.loss_zero,
        }

    def write_metrics():
        _write_metrics(metrics_path, metrics)
        wrote.add(metrics_path)

    def save():
        nonlocal kept_step
        arrays = numpy_params()
        state = opt.state_dict()["state"]
        adam_step = int(state[0]["step"]) if state else 0
        for i, k in enumerate(names):
            if state:
                arrays[optim_key(k, "exp_avg")] = state[i]["exp_avg"].numpy()
                arrays[optim_key(k, "exp_avg_sq")] = state[i]["exp_avg_sq"].numpy()
        write_metrics()
        wrote.add(ckpt_path)
        save_checkpoint(ckpt_path, arrays, cfg, preset=preset.to_dict(), seed=seed, step=step, adam_step=adam_step,
                        train_loss_sum=acc_sum, train_loss_count=acc_count, torch_version=torch.__version__,
                        threads=threads,
                        rng={"scheme": "numpy default_rng([seed, 1, step]) per batch", "seed": seed,
                             "next_step": step})
        if step > 0:
            kept_step = step

    t0, done_here = time.perf_counter(), 0
    try:
        val = validation_prompts(preset.val_prompts, preset.n_points, preset.d, preset.val_seed)
        Zv = torch.tensor(val.Z, dtype=torch.float32)
        yv = torch.tensor(val.target, dtype=torch.float32)
        if step == 0 and not metrics:
            metrics.append(evaluate(None))
            if not all(math.isfinite(metrics[0][k]) for k in ("val_loss", "val_loss_f64")):
                raise TrainingError(f"the validation loss of the initial model is not finite ({metrics[0]['val_loss']}"
                                    f" in float32, {metrics[0]['val_loss_f64']} in float64): there is nothing to "
                                    "train from")
            save()
        with progress_bar(preset.steps, step, f"train {preset.name}", progress) as bar:
            while step < preset.steps and (stop_after is None or done_here < stop_after):
                prompts = batch(preset, seed, step)
                Z = torch.tensor(prompts.Z, dtype=torch.float32)              # (B, N+1, d+1)
                y = torch.tensor(prompts.target, dtype=torch.float32)         # (B,)
                try:
                    loss = ((TM.predict(params, cfg, L, Z) - y) ** 2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if preset.grad_clip:
                        torch.nn.utils.clip_grad_norm_([params[k] for k in names], preset.grad_clip)
                    opt.step()
                except RuntimeError as exc:           # torch's own errors (an overflowing lr, memory): one line
                    raise TrainingError(f"training failed at step {step + 1} (Adam lr {preset.lr:g}): "
                                        f"{str(exc).strip().splitlines()[0]}") from None
                step += 1
                done_here += 1
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value) or not all(bool(torch.isfinite(params[k]).all()) for k in names):
                    # Never evaluate or checkpoint a diverged state: the last checkpoint stays the last good one.
                    raise TrainingError(f"training diverged at step {step}: the loss or the weights are no longer "
                                        f"finite (Adam lr {preset.lr:g}); lower --lr")
                acc_sum += loss_value
                acc_count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)      # shown at the bar's next redraw
                if step % preset.eval_every == 0 or step == preset.steps:
                    rec = evaluate(acc_sum / acc_count)
                    metrics.append(rec)
                    acc_sum, acc_count = 0.0, 0
                    bar.set_postfix(loss=f"{rec['train_loss']:.4f}", val=f"{rec['val_loss']:.4f}", refresh=False)
                    write_metrics()
                if step % preset.checkpoint_every == 0 or step == preset.steps:
                    save()
    except BaseException as exc:
        if kept_step is None:                      # a failed start: leave nothing behind
            for path in wrote:
                path.unlink(missing_ok=True)
            if made_out_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()
        if isinstance(exc, TrainingError):
            kept = (f"the last checkpoint in {out_dir} (step {kept_step}) is kept" if kept_step is not None else
                    f"no training step was checkpointed, so the run's files were removed from {out_dir}")
            raise TrainingError(f"{exc}. {kept[0].upper()}{kept[1:]}") from None
        raise
    seconds = time.perf_counter() - t0
    final = numpy_params()
    result_val = None
    if step == preset.steps:
        result_val = validate({k: v.astype(np.float64) for k, v in final.items()}, cfg, L, val)
        save_model(out_dir / MODEL, final, preset, seed, step, result_val)
        log(f"done: {step} steps; validation loss {result_val.loss:.4g} (predicting 0: {result_val.loss_zero:.4g}); "
            f"model in {out_dir / MODEL}")
    else:
        save()
        log(f"stopped at step {step}/{preset.steps}; continue with --resume")
    return TrainResult(out_dir=out_dir, step=step, params=final, validation=result_val, seconds=seconds)


def save_model(path, params: dict, preset: Preset, seed: int, step: int, validation) -> Path:
    """The trained model alone (float32 arrays), with the validation it was checked on recorded beside it."""
    return save_checkpoint(
        path, model_only(params), preset.cfg, preset=preset.to_dict(), seed=seed, step=step,
        val_loss=validation.loss, val_loss_via_update=validation.loss_via_update,
        val_max_abs_diff=validation.max_abs_diff, val_loss_zero=validation.loss_zero,
        val_note="float64 NumPy reference on the preset's seeded validation prompts "
                 "(regression_prompts(val_prompts, n_points, d, val_seed))",
        trained_by=f"implicit-icl train --preset {preset.name} --seed {seed} (implicit-icl {__version__})",
    )


# Options a resume may change: neither alters the weights, the metrics or what the run's end writes (see
# _check_settings for --steps, which may only be raised).
FREE_ON_RESUME = ("checkpoint_every",)
OPTION_NAMES = {"name": "--preset", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr",
                "eval_every": "--eval-every", "checkpoint_every": "--checkpoint-every",
                "val_prompts": "--val-prompts", "n_points": "--n-points"}
ABSENT = "(absent)"         # how a setting one side does not record is shown


def _check_resumable(path: Path, arrays: dict, meta: dict, preset: Preset, seed: int, shapes: dict,
                     dtypes: dict | None = None) -> None:
    """Raise ``CheckpointError`` (naming ``path``) unless the training state in ``path`` continues ``preset``.

    Checked before anything is loaded into the model: the meta fields and their types, the settings (only
    ``--checkpoint-every`` may differ, and ``--steps`` may be raised), the seed, and, once Adam has stepped, its two
    moments for every parameter (present, of the parameter's shape, finite, the second one non-negative); with
    ``dtypes`` (the file's stored dtypes, ``stored_dtypes``) every one of those arrays stored as float32 (or
    wider, holding float32 values: a lossless copy).
    """
    _check_meta_fields(path, meta)
    _check_settings(path, meta["preset"], preset, meta["step"])
    if meta["seed"] != seed:
        raise CheckpointError(f"checkpoint {path}: was written with seed {meta['seed']}, not {seed}")
    _check_arrays(path, arrays, shapes, adam_started=meta["adam_step"] > 0)
    for key, dtype in sorted((dtypes or {}).items()):
        if key not in shapes and not is_optim_key(key):
            continue
        what = "Adam's state" if is_optim_key(key) else "the parameter"
        if dtype.kind != "f" or dtype.itemsize < np.dtype(STATE_DTYPE).itemsize:
            problem = f"is stored as {dtype}"               # float16: the trained values lost their last bits
        elif dtype != STATE_DTYPE and not np.array_equal(arrays[key].astype(STATE_DTYPE), arrays[key]):
            problem = f"is stored as {dtype} with values that are not {np.dtype(STATE_DTYPE)} numbers"
        else:
            continue                                        # float32, or wider holding float32 values exactly
        raise CheckpointError(f"checkpoint {path}: {what} {key!r} {problem}, expected {np.dtype(STATE_DTYPE)} (what "
                              "train writes; a copy re-saved in another dtype cannot continue the run exactly): "
                              "start a new run into another --out")


def _check_metrics(path: Path, metrics: list[dict], step: int, recorded_steps, eval_every: int) -> None:
    """The metrics file holds every evaluation up to ``step`` (written before each checkpoint, so a resume that
    finds one missing would silently lose E1's curve): at step 0, each ``eval_every`` and a finished run's end."""
    if step == 0:                                   # a checkpoint of step 0 alone: its evaluation is made again
        return
    expected = {0, *range(eval_every, step + 1, eval_every)} | ({step} if step == recorded_steps else set())
    missing = sorted(expected - {rec.get("step") for rec in metrics})
    if missing:
        what = "is missing" if not path.exists() else \
            f"lacks the evaluations at step{'s' if len(missing) > 1 else ''} " + \
            ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
        raise CheckpointError(f"metrics file {path} {what}: the checkpoint at step {step} needs the evaluations "
                              "written before it (E1's curve would silently lose them); restore the file, or start "
                              "a new run with --overwrite or into another --out")


def _check_meta_fields(path: Path, meta: dict) -> None:
    """The training fields of the meta record: present, of the right types, and consistent."""
    needed = ("preset", "seed", "step", "adam_step", "train_loss_sum", "train_loss_count")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint (its meta lacks {missing})")

    def bad(field, expected):
        raise CheckpointError(f"checkpoint {path}: its meta '{field}' must be {expected}, got {meta[field]!r}; the "
                              "file is damaged: start a new run into another --out")

    if not isinstance(meta["preset"], dict):
        bad("preset", "a record of the training settings (a JSON object)")
    for field in ("seed", "step", "adam_step", "train_loss_count"):
        if not is_count(meta[field]):
            bad(field, "a whole number >= 0")
    loss_sum = meta["train_loss_sum"]
    if isinstance(loss_sum, bool) or not isinstance(loss_sum, (int, float)) or not math.isfinite(loss_sum):
        bad("train_loss_sum", "a finite number")
    if "threads" in meta and not is_count(meta["threads"], 1):
        bad("threads", "a whole number >= 1")
    if meta["adam_step"] != meta["step"]:
        raise CheckpointError(f"checkpoint {path}: its meta 'adam_step' {meta['adam_step']} differs from 'step' "
                              f"{meta['step']} (Adam steps once per training step); the file is damaged")
    if meta["train_loss_count"] > meta["step"]:
        bad("train_loss_count", f"at most the step, {meta['step']}")


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"cfg": {"d_mlp": 32}}`` as ``{"cfg.d_mlp": 32}`` (one level is all a preset nests)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):          # a closed or replaced stream
        return False


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + the bar) into a line of its own: for a log file."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar on stderr: redrawn in place on a terminal; anywhere else (a file, a pipe) a plain line at the start,
    every 10 s and at the end, never a carriage return. Every progress display of the project is this one."""
    from tqdm import tqdm

    terminal = _stderr_is_terminal()
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                file=sys.stderr if terminal else _Lines(sys.stderr), dynamic_ncols=terminal,
                ncols=None if terminal else 100, mininterval=0.1 if terminal else 10.0)


class SettingsMismatch(CheckpointError):
    """A training checkpoint written with other settings; ``shown`` lists them, recorded against given."""

    def __init__(self, message: str, shown: str = ""):
        super().__init__(message)
        self.shown = shown


def _check_settings(path: Path, recorded: dict, preset: Preset, step: int) -> None:
    """The given settings continue the recorded ones exactly as an uninterrupted run with the given ones would."""
    given = _flat(preset.to_dict())
    rec = _flat(recorded)
    differ = sorted(k for k in set(given) | set(rec) if rec.get(k, ABSENT) != given.get(k, ABSENT)
                    and k not in FREE_ON_RESUME + ("steps",))
    if differ:
        shown = "; ".join(f"{OPTION_NAMES.get(k, k)}: recorded {rec.get(k, ABSENT)!r}, given {given.get(k, ABSENT)!r}"
                          for k in differ)
        raise SettingsMismatch(f"checkpoint {path}: was written for a different preset/settings ({shown}); resume "
                               "with the recorded values (on resume only --checkpoint-every may change, and --steps "
                               "may be raised)", shown)
    old_steps = rec.get("steps")
    if not is_count(old_steps, 1) or step > old_steps:
        raise CheckpointError(f"checkpoint {path}: its recorded preset has steps {old_steps!r} but the state is at "
                              f"step {step}; the file is damaged")
    if preset.steps < old_steps:
        raise CheckpointError(f"checkpoint {path}: --steps: recorded {old_steps}, given {preset.steps}: --steps can be "
                              f"raised on resume, not lowered (a {preset.steps}-step run ends with an evaluation at "
                              "its last step that this run did not make); train the shorter run into another --out")
    if preset.steps > old_steps and step == old_steps and old_steps % preset.eval_every:
        raise CheckpointError(
            f"checkpoint {path}: --steps: recorded {old_steps}, given {preset.steps}: this run ended at step "
            f"{old_steps} with a final evaluation off the --eval-every {preset.eval_every} grid, which an "
            f"uninterrupted {preset.steps}-step run would not make (its metrics would differ); train the longer "
            "run into another --out")


def _setting_changes(recorded: dict, preset: Preset) -> list[str]:
    """Notes for the settings a resume changes (those ``_check_settings`` lets through)."""
    notes = []
    if preset.steps != recorded["steps"]:
        notes.append(f"extending the run from {recorded['steps']} to {preset.steps} steps (the same as an "
                     f"uninterrupted {preset.steps}-step run: the learning rate does not depend on the total)")
    for k in FREE_ON_RESUME:
        if recorded.get(k) != getattr(preset, k):
            notes.append(f"{OPTION_NAMES[k]} {getattr(preset, k)} from now on (recorded {recorded.get(k)!r}); "
                         "the weights do not depend on it")
    return notes


def _check_arrays(path: Path, arrays: dict, shapes: dict, adam_started: bool) -> None:
    """Every parameter present with its shape; once Adam has stepped, both of its moments per parameter too."""
    for name, shape in shapes.items():
        if name not in arrays or arrays[name].shape != shape:
            got = "missing" if name not in arrays else f"of shape {arrays[name].shape}"
            raise CheckpointError(f"checkpoint {path}: the parameter {name!r} is {got}, expected shape {shape}")
        if not adam_started:
            continue
        for slot in ("exp_avg", "exp_avg_sq"):
            key = optim_key(name, slot)
            value = arrays.get(key)
            if value is None:
                problem = "is missing"
            elif value.shape != shape:
                problem = f"has shape {value.shape}"
            elif not np.all(np.isfinite(value)):
                problem = "holds non-finite values"
            elif slot == "exp_avg_sq" and np.any(value < 0):
                problem = "holds negative values (a running mean of squares cannot)"
            else:
                continue
            raise CheckpointError(f"checkpoint {path}: Adam's state {key!r} {problem}, expected finite values of "
                                  f"shape {shape}; the file is damaged: start a new run into another --out")
