"""What the experiments of one ``implicit-icl reproduce`` run share: the models they study, their prompts, timings.

Each experiment's ``compute(study)`` asks the ``Study`` for what it needs; what several experiments use (E1's
training run, the single block of E2/E3/E5/E6 and its trajectories, E4's stack) is made once, on first use, and
entered in the Models table then. Which model each experiment studies is documented in ``reproduce``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from implicit_icl.checkpoint import CheckpointError, default_checkpoint_path, load_checkpoint
from implicit_icl.reference.tasks import regression_prompts

from . import e2_convergence
from .evaluate import validate, validation_prompts


@dataclass(frozen=True)
class Model:
    """A model the report studies: its arrays, config, meta record, and its row of the Models table."""

    path: Path
    params: dict
    cfg: object
    meta: dict
    record: dict

    @property
    def n_blocks(self) -> int:
        return self.meta.get("n_blocks") or 0

    def described(self, description: str) -> "Model":
        """The same model under another description in the Models table."""
        return replace(self, record=dict(self.record, description=description))


def validation_set(preset) -> dict:
    """The seeded validation prompts of a training preset, as the arguments of ``validation_prompts``."""
    return {"n_prompts": preset.val_prompts, "n_points": preset.n_points, "d": preset.d, "seed": preset.val_seed}


def fresh_prompts(n_prompts: int, n_points: int, d: int, seed: int):
    """Fresh tasks for E2–E4, disjoint in seed from training (seed, t) and validation streams."""
    return regression_prompts(n_prompts, n_points, d, np.random.default_rng([seed, 3]))


def _meta_problem(meta: dict) -> str | None:
    """What in a checkpoint's meta record the experiments cannot use, or None."""
    from .presets import is_count, seed_ok

    n_blocks = meta.get("n_blocks")
    if n_blocks is not None and not is_count(n_blocks):
        return f"its meta 'n_blocks' must be a whole number >= 0, got {n_blocks!r}"
    seed = meta.get("seed")
    if seed is not None and not seed_ok(seed):
        return f"its meta 'seed' must be a whole number from 0 to 2**64 - 1, got {seed!r}"
    step = meta.get("step")
    if step is not None and not is_count(step):
        return f"its meta 'step' must be a whole number >= 0, got {step!r}"
    preset = meta.get("preset")
    if preset is not None and not isinstance(preset, dict):
        return f"its meta 'preset' must be a record (a JSON object), got {preset!r}"
    n_points = (preset or {}).get("n_points")
    if n_points is not None and not is_count(n_points, 1):
        return f"its meta 'preset.n_points' must be a whole number >= 1, got {n_points!r}"
    return None


def n_points_of(meta: dict, preset) -> int:
    """The prompt length N a model was trained on: its recorded preset's, else ``preset``'s."""
    return (meta.get("preset") or {}).get("n_points", preset.n_points)


def load_checked(path: Path) -> tuple[dict, object, dict]:
    """``load_checkpoint`` with the meta record checked for what the experiments read (``CheckpointError``)."""
    params, cfg, meta = load_checkpoint(path)
    if problem := _meta_problem(meta):
        raise CheckpointError(f"checkpoint {path}: {problem}")
    return params, cfg, meta


def load_model(path, description: str, common: dict) -> Model:
    """Load a model and score it for the Models table on ``common``, the validation prompts of E1's run.

    Every row is scored on the same prompts so that the losses compare. A model whose tokens have another width
    cannot read those prompts: its row says so (``val_loss`` None) instead of showing a loss on other prompts.
    """
    path = Path(path)
    params, cfg, meta = load_checked(path)
    fits = cfg.d_model == common["d"] + 1
    val = validate(params, cfg, meta.get("n_blocks") or 0, validation_prompts(**common)) if fits else None
    record = {"description": description, "path": str(path), "step": meta.get("step"), "seed": meta.get("seed"),
              "d_model": cfg.d_model, "val_prompts": common if fits else None,
              "val_loss": val.loss if val else None, "val_loss_zero": val.loss_zero if val else None,
              "recorded_val_loss": meta.get("val_loss")}
    return Model(path, params, cfg, meta, record)


def train_or_resume(preset, out_dir: Path, seed: int, progress: bool, log):
    """Train ``preset`` into ``out_dir``, resuming (or reusing) a compatible earlier run of the same command."""
    from .train import CHECKPOINT, METRICS, MODEL, SettingsMismatch, train

    resume = (out_dir / CHECKPOINT).exists()
    try:
        result = train(preset, out_dir, seed=seed, resume=resume, progress=progress, log=log)
    except SettingsMismatch as exc:      # reproduce has no option to match them with: say where they came from
        raise CheckpointError(f"{out_dir} holds a training run with other settings ({exc.shown}): made with or "
                              "without `quick`, or by an older implicit-icl; use another `out` "
                              f"(or delete {out_dir})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. {out_dir} holds a run with other settings (`quick` or not, another `seed`): "
                              "use another `out`") from None
    metrics = [json.loads(l) for l in (out_dir / METRICS).read_text(encoding="utf-8").splitlines()]
    return out_dir / MODEL, metrics, result


@dataclass
class Study:
    """One reproduce run's shared state. ``settings`` is a ``reproduce.SETTINGS`` entry, ``presets`` the p1 and p2
    presets with its training settings, ``common`` the validation prompts every model is scored on, ``ext`` the
    loaded ``--checkpoint`` (or None) and ``ext_role`` the experiments that study it ("E2/E3/E5" or "E4")."""

    preset_name: str
    presets: dict
    settings: dict
    seed: int
    out: Path
    quick: bool
    progress: bool
    log: object
    common: dict
    ext: Model | None = None
    ext_role: str | None = None
    models: dict = field(default_factory=dict)          # the Models table, by role
    timings: dict = field(default_factory=dict)         # seconds, by step

    def timed(self, name: str, fn):
        """``fn()``, its wall time recorded under ``name``."""
        t0 = time.perf_counter()
        value = fn()
        self.timings[name] = time.perf_counter() - t0
        return value

    def _train(self, name: str, label: str) -> tuple[Path, list]:
        """Train preset ``name`` in ``OUT/train_<name>`` for experiment ``label``: the model's path and metrics."""
        folder = self.out / f"train_{name}"
        self.log(f"{label}: training {name} in {folder}")
        path, metrics, _ = self.timed(f"{label} train {name}", lambda: train_or_resume(
            self.presets[name], folder, self.seed, self.progress, self.log))
        return path, metrics

    @cached_property
    def training(self) -> tuple[Model, list]:
        """E1's run: the chosen preset trained (or resumed), its model and its metrics records."""
        path, metrics = self._train(self.preset_name, "E1")
        model = load_model(path, f"trained in this run (`train_{self.preset_name}/model.npz`)", self.common)
        self.models["E1"] = model.record
        return model, metrics

    @cached_property
    def block(self) -> Model | None:
        """The single block E2/E3/E5 study (``--preset p1`` only, else None): ``--checkpoint`` if it is one; with
        ``--quick`` the bundled p1 model; else E1's model."""
        if self.preset_name != "p1":
            return None
        if self.ext_role == "E2/E3/E5":
            model = self.ext
        elif self.quick:
            model = load_model(default_checkpoint_path(), "the bundled p1 model (`implicit_icl/data/p1.npz`)",
                               self.common)
        else:
            model = self.training[0].described("trained in this run (E1)")
        self.models["E2/E3/E5"] = model.record
        return model

    @cached_property
    def untrained(self) -> dict:
        """The block's architecture at its seeded initial weights (float64 NumPy)."""
        from .torch_model import init_params

        m = self.block
        init_seed = self.seed if m.meta.get("seed") is None else m.meta["seed"]
        return {k: v.numpy().astype(np.float64) for k, v in init_params(m.cfg, 0, init_seed).items()}

    def _block_tasks(self) -> tuple[int, int]:
        """``(N, d)`` of the block's tasks: its prompt length and the width of x (its tokens are (x, y))."""
        return n_points_of(self.block.meta, self.presets["p1"]), self.block.cfg.d_model - 1

    @cached_property
    def prompts(self):
        """E2's test prompts, which E3, E5 and E6 share, at the block's prompt length."""
        return fresh_prompts(self.settings["e2_prompts"], *self._block_tasks(), self.seed)

    @cached_property
    def held_out(self):
        """E3's held-out tasks, on which SGD's learning rate is chosen (never the test tasks)."""
        return regression_prompts(self.settings["e3_held_out"], *self._block_tasks(),
                                  np.random.default_rng([self.seed, 4]))

    @cached_property
    def trajectories(self) -> dict:
        """The reference trajectory of every E2 prompt through the block, ``"trained"`` and ``"untrained"``."""
        m, prompts = self.block, self.prompts
        self.log(f"E2: trajectories over {self.settings['e2_prompts']} prompts, trained and untrained")
        return {"trained": self.timed("E2 trajectories (trained)",
                                      lambda: e2_convergence.trajectories(m.params, m.cfg, prompts)),
                "untrained": self.timed("E2 trajectories (untrained)",
                                        lambda: e2_convergence.trajectories(self.untrained, m.cfg, prompts))}

    @cached_property
    def stack(self) -> Model:
        """The stack E4 studies: ``--checkpoint`` when it is one, else E1's model (``--preset p2``) or a p2 run."""
        if self.ext_role == "E4":
            model = self.ext
        elif self.preset_name == "p2":
            model = self.training[0].described("trained in this run (E1)")
        else:
            path, _ = self._train("p2", "E4")
            model = load_model(path, "trained in this run (`train_p2/model.npz`)", self.common)
        self.models["E4"] = model.record
        return model
