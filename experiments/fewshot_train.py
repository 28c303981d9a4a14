"""Training the ``fewshot`` preset: a Llama-architecture LM on the key → value task (ours; issue 15 item 4).

The same run directory contract as ``train`` (P1's trainer), whose checks it reuses: ``checkpoint.npz`` (the
model and Adam's moments, atomic, no pickle; meta fields as ``train``'s, so ``train._check_meta_fields``,
``_check_settings``, ``_check_arrays`` and ``_check_metrics`` apply unchanged), ``metrics.jsonl`` (one line per
evaluation: train loss, validation loss and accuracy with the context and with the query alone) and, when done,
the model as a Hugging Face folder in ``OUT`` itself: ``config.json``, ``model.safetensors``, ``tokenizer.json``
(``fewshot_model.save_folder``), which ``transformers.LlamaForCausalLM.from_pretrained(OUT)`` loads.

Determinism as in ``train``: the init comes from ``seed``, the batch of step ``t`` from
``numpy.random.default_rng([seed, 1, t])``, torch runs with deterministic algorithms on ``threads`` threads, so a
resumed run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.checkpoint import CheckpointError, atomic_write_bytes

from . import fewshot_model, fewshot_task
from . import train as T
from .fewshot_accuracy import evaluate

STATE_FORMAT = "implicit-icl-fewshot-state"
FOLDER_FILES = (fewshot_model.CONFIG, fewshot_model.WEIGHTS, fewshot_model.TOKENIZER)


@dataclass
class FewshotResult:
    out_dir: Path
    step: int
    params: dict            # torch float32 tensors
    metrics: list
    seconds: float


def save_state(path: Path, arrays: dict, **meta) -> None:
    """The training state: ``arrays`` and a JSON ``__meta__`` record in one ``.npz``, written atomically."""
    record = {"format": STATE_FORMAT, "code_version": __version__, **meta}
    blob = np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, __meta__=blob, **arrays))


def load_state(path: Path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a ``save_state`` file; ``CheckpointError`` naming it on any problem."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable few-shot training state ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a few-shot training state (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r}, expected {STATE_FORMAT!r})")
    return arrays, meta


def batch(preset, seed: int, step: int) -> np.ndarray:
    """The token ids of ``step``'s training sequences: a pure function of ``(seed, step)``."""
    return fewshot_task.training_batch(preset.batch_size, preset.n_points, np.random.default_rng([seed, 1, step]))


def train(preset, out_dir, seed: int = 0, resume: bool = False, progress: bool = True, threads: int | None = None,
          stop_after: int | None = None, log=None, overwrite: bool = False) -> FewshotResult:
    """Train ``preset`` into ``out_dir`` (arguments as ``train.train``)."""
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    if threads is None:
        threads = _recorded_threads(out_dir / T.CHECKPOINT) if resume else 1
    return T.deterministic(threads, lambda: _train(torch, preset, out_dir, seed, resume, progress, stop_after,
                                                   threads, log, overwrite))


def _recorded_threads(path: Path) -> int:
    try:
        threads = load_state(path)[1].get("threads", 1)
    except CheckpointError:
        return 1
    return threads if isinstance(threads, int) and threads >= 1 else 1


def _start(torch, preset, out_dir: Path, seed: int, resume: bool, threads: int, log, overwrite: bool):
    """The params, Adam, the step, the loss accumulator and the metrics a run starts from."""
    params = fewshot_model.init_params(preset.cfg, preset.n_blocks, len(fewshot_task.VOCAB), seed)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    names = sorted(params)
    opt = torch.optim.Adam([params[k] for k in names], lr=preset.lr, betas=T.ADAM_BETAS, eps=T.ADAM_EPS,
                           foreach=False)
    ckpt, metrics_path = out_dir / T.CHECKPOINT, out_dir / T.METRICS
    if not resume:
        if ckpt.exists() and not overwrite:
            raise FileExistsError(f"{ckpt} exists: pass `resume` to continue it, or choose another `out`")
        for name in (T.CHECKPOINT, T.METRICS) + FOLDER_FILES if overwrite else ():
            (out_dir / name).unlink(missing_ok=True)
        return params, names, opt, 0, 0.0, 0, []
    arrays, meta = load_state(ckpt)
    T._check_meta_fields(ckpt, meta)
    T._check_settings(ckpt, meta["preset"], preset, meta["step"])
    if meta["seed"] != seed:
        raise CheckpointError(f"checkpoint {ckpt}: was written with seed {meta['seed']}, not {seed}")
    T._check_arrays(ckpt, arrays, {k: tuple(params[k].shape) for k in names}, adam_started=meta["adam_step"] > 0)
    with torch.no_grad():
        for k in names:
            params[k].copy_(torch.from_numpy(arrays[k].astype(np.float32)))
    if meta["adam_step"] > 0:
        opt.load_state_dict({"state": {i: {
            "step": torch.tensor(float(meta["adam_step"])),
            "exp_avg": torch.from_numpy(arrays[T.optim_key(k, "exp_avg")].astype(np.float32)),
            "exp_avg_sq": torch.from_numpy(arrays[T.optim_key(k, "exp_avg_sq")].astype(np.float32)),
        } for i, k in enumerate(names)}, "param_groups": opt.state_dict()["param_groups"]})
    step = meta["step"]
    metrics = T._read_metrics(metrics_path, step)
    T._check_metrics(metrics_path, metrics, step, meta["preset"]["steps"], preset.eval_every)
    log(f"resuming {ckpt} at step {step}/{preset.steps} on {threads} torch thread(s)")
    for note in T._setting_changes(meta["preset"], preset):
        log(note)
    if meta.get("threads", threads) != threads:
        log(f"note: {ckpt} was written on {meta['threads']} torch thread(s), this run uses {threads}: the result "
            "may differ from an uninterrupted run in the last bits")
    return params, names, opt, step, meta["train_loss_sum"], meta["train_loss_count"], metrics


def _step(torch, params, names, opt, preset, ids) -> float:
    """One Adam step on the next-token loss at the key positions (each predicts its value)."""
    ids = torch.as_tensor(ids)
    lg = fewshot_model.logits(params, preset.cfg, ids[:, :-1])[:, 0::2]                 # (B, n_pairs, V)
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1::2].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if preset.grad_clip:
        torch.nn.utils.clip_grad_norm_([params[k] for k in names], preset.grad_clip)
    opt.step()
    return float(loss.detach())


def _state_arrays(params: dict, names: list, opt) -> tuple[dict, int]:
    """The params and Adam's moments as NumPy arrays (keys as ``train.optim_key``), and Adam's step count."""
    state = opt.state_dict()["state"]
    arrays = {k: params[k].detach().numpy().copy() for k in names}
    for i, k in enumerate(names):
        if state:
            arrays[T.optim_key(k, "exp_avg")] = state[i]["exp_avg"].numpy()
            arrays[T.optim_key(k, "exp_avg_sq")] = state[i]["exp_avg_sq"].numpy()
    return arrays, int(state[0]["step"]) if state else 0


def _train(torch, preset, out_dir: Path, seed, resume, progress, stop_after, threads, log, overwrite):
    params, names, opt, step, acc_sum, acc_count, metrics = _start(torch, preset, out_dir, seed, resume, threads,
                                                                   log, overwrite)
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_step = step if resume else None
    val = fewshot_task.eval_prompts(preset.val_pairs, preset.val_prompts, np.random.default_rng(preset.val_seed))

    def record(train_loss):
        r = evaluate(params, preset.cfg, val)
        metrics.append({"step": step, "train_loss": train_loss, "val_loss": r["loss"],
                        "val_accuracy": r["accuracy"], "val_accuracy_alone": r["accuracy_alone"]})
        T._write_metrics(out_dir / T.METRICS, metrics)

    def save():
        nonlocal kept_step
        arrays, adam_step = _state_arrays(params, names, opt)
        save_state(out_dir / T.CHECKPOINT, arrays, preset=preset.to_dict(), seed=seed, step=step,
                   adam_step=adam_step, train_loss_sum=acc_sum, train_loss_count=acc_count, threads=threads,
                   torch_version=torch.__version__)
        kept_step = step if step > 0 else kept_step

    t0, done_here = time.perf_counter(), 0
    try:
        if step == 0 and not metrics:
            record(None)
            save()
        with T.progress_bar(preset.steps, step, f"train {preset.name}", progress) as bar:
            while step < preset.steps and (stop_after is None or done_here < stop_after):
                loss = _step(torch, params, names, opt, preset, batch(preset, seed, step))
                step, done_here = step + 1, done_here + 1
                if not math.isfinite(loss):
                    raise T.TrainingError(f"training diverged at step {step} (Adam lr {preset.lr:g}); lower `lr`")
                acc_sum, acc_count = acc_sum + loss, acc_count + 1
                bar.update(1)
                if step % preset.eval_every == 0 or step == preset.steps:
                    record(acc_sum / acc_count)
                    acc_sum, acc_count = 0.0, 0
                    bar.set_postfix(loss=f"{metrics[-1]['train_loss']:.3f}",
                                    acc=f"{metrics[-1]['val_accuracy']:.3f}", refresh=False)
                if step % preset.checkpoint_every == 0 or step == preset.steps:
                    save()
    except BaseException:
        if kept_step is None:                      # a failed start leaves nothing behind
            for name in (T.CHECKPOINT, T.METRICS):
                (out_dir / name).unlink(missing_ok=True)
            if made_out_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if step == preset.steps:
        _finish(preset, out_dir, params, seed, step, metrics[-1], log)
    else:
        save()
        log(f"stopped at step {step}/{preset.steps}; continue with `resume`")
    final = {k: v.detach().clone() for k, v in params.items()}
    return FewshotResult(out_dir, step, final, metrics, time.perf_counter() - t0)


def _finish(preset, out_dir: Path, params: dict, seed: int, step: int, last: dict, log) -> None:
    """Write the Hugging Face folder, with how it was trained in the safetensors header."""
    fewshot_model.save_folder(out_dir, params, preset.cfg, max_positions=max(preset.seq_len, 2 * fewshot_task.N_KEYS + 1), metadata={
        "trained_by": f"implicit-icl train --preset {preset.name} --seed {seed} (implicit-icl {__version__})",
        "step": step, "val_accuracy": last["val_accuracy"], "val_accuracy_alone": last["val_accuracy_alone"],
        "preset": json.dumps(preset.to_dict(), sort_keys=True)})
    log(f"done: {step} steps; validation accuracy at k = {preset.val_pairs}: {last['val_accuracy']:.3f} "
        f"(query alone: {last['val_accuracy_alone']:.3f}); model in {out_dir} ({', '.join(FOLDER_FILES)})")
