"""What a training run checks before it resumes from a checkpoint: its meta fields, settings, arrays and metrics.

A resume must use the recorded settings, except ``checkpoint_every`` and a larger ``steps`` (see ``train``); each
check raises a ``CheckpointError`` that names the file and what differs, with the arguments a user would change
(``Preset`` fields and ``train``'s own, in backticks: `` `steps` ``; the train command names them as its options).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from implicit_icl.checkpoint import CheckpointError, is_optim_key

from .presets import Preset, is_count

STATE_DTYPE = np.float32    # what a training checkpoint stores (the model and Adam's moments)


def optim_key(name: str, slot: str) -> str:
    """Where Adam's ``slot`` for the param ``name`` lives in the checkpoint (stack-compatible; ``is_optim_key``)."""
    if name.startswith("blocks."):
        _, l, rest = name.split(".", 2)
        return f"blocks.{l}.optim.{slot}.{rest}"
    return f"optim.{slot}.{name}"


FREE_ON_RESUME = ("checkpoint_every",)
ABSENT = "(absent)"         # how a setting one side does not record is shown


def _check_resumable(path: Path, arrays: dict, meta: dict, preset: Preset, seed: int, shapes: dict,
                     dtypes: dict | None = None) -> None:
    """Raise ``CheckpointError`` (naming ``path``) unless the training state in ``path`` continues ``preset``.

    Checked before anything is loaded into the model: the meta fields and their types, the settings (only
    ``checkpoint_every`` may differ, and ``steps`` may be raised), the seed, and, once Adam has stepped, its two
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
                              "start a new run into another `out`")


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
                              "a new run with `overwrite` or into another `out`")


def _check_meta_fields(path: Path, meta: dict) -> None:
    """The training fields of the meta record: present, of the right types, and consistent."""
    needed = ("preset", "seed", "step", "adam_step", "train_loss_sum", "train_loss_count")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint (its meta lacks {missing})")

    def bad(field, expected):
        raise CheckpointError(f"checkpoint {path}: its meta '{field}' must be {expected}, got {meta[field]!r}; the "
                              "file is damaged: start a new run into another `out`")

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
        shown = "; ".join(f"`{k}`: recorded {rec.get(k, ABSENT)!r}, given {given.get(k, ABSENT)!r}" for k in differ)
        raise SettingsMismatch(f"checkpoint {path}: was written for a different preset/settings ({shown}); resume "
                               "with the recorded values (on resume only `checkpoint_every` may change, and `steps` "
                               "may be raised)", shown)
    old_steps = rec.get("steps")
    if not is_count(old_steps, 1) or step > old_steps:
        raise CheckpointError(f"checkpoint {path}: its recorded preset has steps {old_steps!r} but the state is at "
                              f"step {step}; the file is damaged")
    if preset.steps < old_steps:
        raise CheckpointError(f"checkpoint {path}: `steps`: recorded {old_steps}, given {preset.steps}: `steps` can be "
                              f"raised on resume, not lowered (a {preset.steps}-step run ends with an evaluation at "
                              "its last step that this run did not make); train the shorter run into another `out`")
    if preset.steps > old_steps and step == old_steps and old_steps % preset.eval_every:
        raise CheckpointError(
            f"checkpoint {path}: `steps`: recorded {old_steps}, given {preset.steps}: this run ended at step "
            f"{old_steps} with a final evaluation off the `eval_every` {preset.eval_every} grid, which an "
            f"uninterrupted {preset.steps}-step run would not make (its metrics would differ); train the longer "
            "run into another `out`")


def _setting_changes(recorded: dict, preset: Preset) -> list[str]:
    """Notes for the settings a resume changes (those ``_check_settings`` lets through)."""
    notes = []
    if preset.steps != recorded["steps"]:
        notes.append(f"extending the run from {recorded['steps']} to {preset.steps} steps (the same as an "
                     f"uninterrupted {preset.steps}-step run: the learning rate does not depend on the total)")
    for k in FREE_ON_RESUME:
        if recorded.get(k) != getattr(preset, k):
            notes.append(f"`{k}` {getattr(preset, k)} from now on (recorded {recorded.get(k)!r}); "
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
                                  f"shape {shape}; the file is damaged: start a new run into another `out`")
