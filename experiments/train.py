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
from .progress import progress_bar  # noqa: F401 (the one progress display: fewshot_train and reproduce use it)
from .train_resume import (  # noqa: F401 (re-exported for fewshot_train and the tests)
    ABSENT, FREE_ON_RESUME, STATE_DTYPE, SettingsMismatch, _check_arrays, _check_meta_fields,
    _check_metrics, _check_resumable, _check_settings, _flat, _setting_changes, optim_key,
)

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
MODEL = "model.npz"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LR_MAX = 1.0            # Adam moves every weight by about lr per step: above 1 a run diverges at once (1e39 overflowed)


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
    """Why ``preset`` cannot run in this machine's memory (its fields named), or None; checked before any file."""
    total = machine_memory()
    if not total:
        return None
    train_bytes, val_bytes = memory_needed(preset)
    for needed, field, what in ((train_bytes, "batch_size", "a training step"),
                                (val_bytes, "val_prompts", "the validation")):
        if needed > total:
            return (f"`{field}` {getattr(preset, field)} with `n_points` {preset.n_points}: "
                    f"{what} would need about {needed / 2**30:.3g} GiB of memory, more than this machine's "
                    f"{total / 2**30:.3g} GiB; lower `{field}` or `n_points`")
    return None


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
    run = _Run(torch, preset, Path(out_dir), seed, threads, log)
    if resume:
        run.resume()
    else:
        run.start_over(overwrite)
    made_out_dir = not run.out_dir.exists()
    run.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        run.loop(progress, stop_after)
    except BaseException as exc:
        if run.kept_step is None:                  # a failed start: leave nothing behind
            run.remove_what_it_wrote(made_out_dir)
        if isinstance(exc, TrainingError):
            kept = (f"the last checkpoint in {run.out_dir} (step {run.kept_step}) is kept" if run.kept_step is not None
                    else f"no training step was checkpointed, so the run's files were removed from {run.out_dir}")
            raise TrainingError(f"{exc}. {kept[0].upper()}{kept[1:]}") from None
        raise
    return run.finish(time.perf_counter() - t0)


class _Run:
    """One training run: the params, Adam, the step and the train-loss accumulator, the metrics, and the files it
    wrote (a failed start removes them)."""

    def __init__(self, torch, preset: Preset, out_dir: Path, seed: int, threads: int, log):
        from . import torch_model as TM

        self.torch, self.TM, self.preset, self.out_dir, self.seed, self.threads, self.log = \
            torch, TM, preset, out_dir, seed, threads, log
        self.ckpt_path, self.metrics_path = out_dir / CHECKPOINT, out_dir / METRICS
        self.cfg, self.L = preset.cfg, preset.n_blocks
        self.params = {k: v.requires_grad_(True) for k, v in TM.init_params(self.cfg, self.L, seed).items()}
        self.names = sorted(self.params)
        self.opt = torch.optim.Adam([self.params[k] for k in self.names], lr=preset.lr, betas=ADAM_BETAS,
                                    eps=ADAM_EPS, foreach=False)
        self.step, self.acc_sum, self.acc_count = 0, 0.0, 0
        self.metrics: list[dict] = []
        self.kept_step = None                         # the step of the checkpoint a failure keeps; None: none yet
        self.wrote: set[Path] = set()                 # the files this run wrote (removed again after a failed start)

    def resume(self) -> None:
        """Load the checkpoint (checked first), Adam's state and the metrics up to its step."""
        torch, names, preset, ckpt_path = self.torch, self.names, self.preset, self.ckpt_path
        arrays, ck_cfg, meta = load_checkpoint(ckpt_path)
        _check_resumable(ckpt_path, arrays, meta, preset, self.seed,
                         {k: tuple(self.params[k].shape) for k in names}, stored_dtypes(ckpt_path))
        with torch.no_grad():
            for k in names:
                self.params[k].copy_(torch.from_numpy(arrays[k].astype(np.float32)))
        if meta["adam_step"] > 0:
            self.opt.load_state_dict({"state": {i: {
                "step": torch.tensor(float(meta["adam_step"])),
                "exp_avg": torch.from_numpy(arrays[optim_key(k, "exp_avg")].astype(np.float32)),
                "exp_avg_sq": torch.from_numpy(arrays[optim_key(k, "exp_avg_sq")].astype(np.float32)),
            } for i, k in enumerate(names)}, "param_groups": self.opt.state_dict()["param_groups"]})
        self.step, self.acc_sum, self.acc_count = meta["step"], meta["train_loss_sum"], meta["train_loss_count"]
        self.metrics = _read_metrics(self.metrics_path, self.step)
        _check_metrics(self.metrics_path, self.metrics, self.step, meta["preset"]["steps"], preset.eval_every)
        self.kept_step = self.step
        self.log(f"resuming {ckpt_path} at step {self.step}/{preset.steps} on {self.threads} torch thread(s)")
        for note in _setting_changes(meta["preset"], preset):
            self.log(note)
        self._thread_note(meta)

    def _thread_note(self, meta: dict) -> None:
        if "threads" not in meta:
            self.log(f"note: {self.ckpt_path} does not record its torch thread count (written by an older version): "
                     f"resuming on {self.threads}; on another count than the run began with, the result may differ "
                     "from an uninterrupted run in the last bits")
        elif meta["threads"] != self.threads:
            self.log(f"note: {self.ckpt_path} was written on {meta['threads']} torch thread(s), this run uses "
                     f"{self.threads}: the result may differ from an uninterrupted run in the last bits (resume "
                     "without `threads` to keep the recorded count)")

    def start_over(self, overwrite: bool) -> None:
        if self.ckpt_path.exists() and not overwrite:
            raise FileExistsError(f"{self.ckpt_path} exists: pass `resume` to continue it, or choose another `out`")
        if overwrite:
            for name in (CHECKPOINT, METRICS, MODEL):
                (self.out_dir / name).unlink(missing_ok=True)

    def numpy_params(self) -> dict:
        return {k: self.params[k].detach().numpy().copy() for k in self.names}

    def evaluate(self, train_loss) -> dict:
        with self.torch.no_grad():
            pred = self.TM.predict(self.params, self.cfg, self.L, self.Zv)
            pred_dw = self.TM.predict_via_update(self.params, self.cfg, self.L, self.Zv)
        ref = validate({k: v.astype(np.float64) for k, v in self.numpy_params().items()}, self.cfg, self.L, self.val)
        yv = self.yv
        return {
            "step": self.step, "train_loss": train_loss,
            "val_loss": float(((pred - yv) ** 2).mean()), "val_loss_via_update": float(((pred_dw - yv) ** 2).mean()),
            "max_abs_diff_f32": float((pred - pred_dw).abs().max()),
            "val_loss_f64": ref.loss, "val_loss_via_update_f64": ref.loss_via_update,
            "max_abs_diff_f64": ref.max_abs_diff, "val_loss_zero": ref.loss_zero,
        }

    def write_metrics(self) -> None:
        _write_metrics(self.metrics_path, self.metrics)
        self.wrote.add(self.metrics_path)

    def save(self) -> None:
        arrays = self.numpy_params()
        state = self.opt.state_dict()["state"]
        adam_step = int(state[0]["step"]) if state else 0
        for i, k in enumerate(self.names):
            if state:
                arrays[optim_key(k, "exp_avg")] = state[i]["exp_avg"].numpy()
                arrays[optim_key(k, "exp_avg_sq")] = state[i]["exp_avg_sq"].numpy()
        self.write_metrics()
        self.wrote.add(self.ckpt_path)
        save_checkpoint(self.ckpt_path, arrays, self.cfg, preset=self.preset.to_dict(), seed=self.seed, step=self.step,
                        adam_step=adam_step, train_loss_sum=self.acc_sum, train_loss_count=self.acc_count,
                        torch_version=self.torch.__version__, threads=self.threads,
                        rng={"scheme": "numpy default_rng([seed, 1, step]) per batch", "seed": self.seed,
                             "next_step": self.step})
        if self.step > 0:
            self.kept_step = self.step

    def loop(self, progress: bool, stop_after) -> None:
        """Evaluate the initial model (a new run), then train up to ``preset.steps`` (or ``stop_after`` steps)."""
        torch, preset = self.torch, self.preset
        self.val = validation_prompts(preset.val_prompts, preset.n_points, preset.d, preset.val_seed)
        self.Zv = torch.tensor(self.val.Z, dtype=torch.float32)
        self.yv = torch.tensor(self.val.target, dtype=torch.float32)
        if self.step == 0 and not self.metrics:
            self.metrics.append(self.evaluate(None))
            first = self.metrics[0]
            if not all(math.isfinite(first[k]) for k in ("val_loss", "val_loss_f64")):
                raise TrainingError(f"the validation loss of the initial model is not finite ({first['val_loss']}"
                                    f" in float32, {first['val_loss_f64']} in float64): there is nothing to "
                                    "train from")
            self.save()
        done_here = 0
        with progress_bar(preset.steps, self.step, f"train {preset.name}", progress) as bar:
            while self.step < preset.steps and (stop_after is None or done_here < stop_after):
                loss_value = self.train_step()
                done_here += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)      # shown at the bar's next redraw
                if self.step % preset.eval_every == 0 or self.step == preset.steps:
                    rec = self.evaluate(self.acc_sum / self.acc_count)
                    self.metrics.append(rec)
                    self.acc_sum, self.acc_count = 0.0, 0
                    bar.set_postfix(loss=f"{rec['train_loss']:.4f}", val=f"{rec['val_loss']:.4f}", refresh=False)
                    self.write_metrics()
                if self.step % preset.checkpoint_every == 0 or self.step == preset.steps:
                    self.save()

    def train_step(self) -> float:
        """One Adam step on the step's batch; the loss, or a TrainingError (torch's own, or a diverged state)."""
        torch, preset, params = self.torch, self.preset, self.params
        prompts = batch(preset, self.seed, self.step)
        Z = torch.tensor(prompts.Z, dtype=torch.float32)              # (B, N+1, d+1)
        y = torch.tensor(prompts.target, dtype=torch.float32)         # (B,)
        try:
            loss = ((self.TM.predict(params, self.cfg, self.L, Z) - y) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if preset.grad_clip:
                torch.nn.utils.clip_grad_norm_([params[k] for k in self.names], preset.grad_clip)
            self.opt.step()
        except RuntimeError as exc:           # torch's own errors (an overflowing lr, memory): one line
            raise TrainingError(f"training failed at step {self.step + 1} (Adam lr {preset.lr:g}): "
                                f"{str(exc).strip().splitlines()[0]}") from None
        self.step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or not all(bool(torch.isfinite(params[k]).all()) for k in self.names):
            # Never evaluate or checkpoint a diverged state: the last checkpoint stays the last good one.
            raise TrainingError(f"training diverged at step {self.step}: the loss or the weights are no longer "
                                f"finite (Adam lr {preset.lr:g}); lower `lr`")
        self.acc_sum += loss_value
        self.acc_count += 1
        return loss_value

    def remove_what_it_wrote(self, made_out_dir: bool) -> None:
        for path in self.wrote:
            path.unlink(missing_ok=True)
        if made_out_dir and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def finish(self, seconds: float) -> TrainResult:
        """The final model (``model.npz`` with its float64 validation) at the last step, else a checkpoint."""
        final, result_val, preset, out_dir = self.numpy_params(), None, self.preset, self.out_dir
        if self.step == preset.steps:
            result_val = validate({k: v.astype(np.float64) for k, v in final.items()}, self.cfg, self.L, self.val)
            save_model(out_dir / MODEL, final, preset, self.seed, self.step, result_val)
            self.log(f"done: {self.step} steps; validation loss {result_val.loss:.4g} (predicting 0: "
                     f"{result_val.loss_zero:.4g}); model in {out_dir / MODEL}")
        else:
            self.save()
            self.log(f"stopped at step {self.step}/{preset.steps}; continue with `resume`")
        return TrainResult(out_dir=out_dir, step=self.step, params=final, validation=result_val, seconds=seconds)


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
# _check_settings for steps, which may only be raised).
