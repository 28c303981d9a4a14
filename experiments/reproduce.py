"""``implicit-icl reproduce``: train, run E1–E6, draw the figures, write report.json and report.md.

Which model each experiment studies:

- E1 is a training run of the chosen preset (``--quick``: a short one) in ``OUT/train_<preset>``.
- E2/E3 (single-block experiments, ``p1`` only) study ``--checkpoint`` if given; otherwise, with ``--quick``, the
  bundled ``p1`` model (the full recipe; the quick E1 run is too short to stand for it), and without ``--quick``
  the model E1 just trained (the same recipe and seed as the bundled model). The untrained baseline is the same
  architecture at its seeded initial weights.
- E5 (``p1`` only) studies the E2/E3 model on the E2 prompts' contexts with fresh queries.
- E6 (``p1`` only) compares E2's untrained attention block with an untrained RNN contextual layer, same prompts.
- E4 studies a stack: ``--checkpoint`` when it is one, else E1's model when ``--preset p2``, else a ``p2`` run in
  ``OUT/train_p2``. A single-block ``--checkpoint`` with ``--preset p2`` (where no experiment would study it) is
  refused, as is any checkpoint that does not fit, before anything runs.

The Models table scores every model on the same prompts: the validation prompts of E1's training run (``--quick``
keeps the presets' 256), so its losses, E1's curve and the bundled model's recorded loss compare.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.checkpoint import CheckpointError, atomic_write_bytes, default_checkpoint_path, load_checkpoint

from . import experiments as E
from .evaluate import validate, validation_prompts
from .presets import get_preset
from .report import PAPER, render

SGD_LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SETTINGS = {
    # --quick: 35-40 s on a 2-core CPU (E2/E3 keep the papers' 100 prompts; training is shortened). Training keeps
    # the presets' 256 validation prompts, so E1's run and the bundled model are scored on the same prompts.
    "quick": {"train": {"p1": dict(steps=300, eval_every=25, checkpoint_every=100),
                        "p2": dict(steps=300, eval_every=50, checkpoint_every=100)},
              "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 5, "e5_test_queries": 100},
    "full": {"train": {"p1": {}, "p2": {}}, "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 20,
             "e5_test_queries": 100},
}


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


@contextmanager
def one_torch_thread():
    """Run the block on one torch CPU thread and restore the caller's count afterwards.

    The experiments are many small batched operations, for which one thread is as fast as two; worse, on a 2-core
    machine growing torch's pool back to 2 threads after training (which runs on 1) made E5 about 15× slower
    (measured: 37.6 s against 2.5 s on one thread).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def validation_set(preset) -> dict:
    """The seeded validation prompts of a training preset, as the arguments of ``validation_prompts``."""
    return {"n_prompts": preset.val_prompts, "n_points": preset.n_points, "d": preset.d, "seed": preset.val_seed}


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


def _external_role(path: Path, cfg, meta: dict, preset_name: str, presets: dict) -> str:
    """Which experiments study ``--checkpoint``: a single block E2/E3/E5 (``--preset p1``), a stack E4."""
    if meta.get("n_blocks"):
        if cfg.d_model < 2:
            raise CheckpointError(f"checkpoint {path}: d_model {cfg.d_model} leaves no room for the regression "
                                  "tokens (x, y): E4 needs d_model >= 2")
        return "E4"
    if preset_name != "p1":
        raise CheckpointError(f"checkpoint {path}: a single block, but with --preset {preset_name} only E1 and E4 "
                              "run and E4 studies a stack (n_blocks >= 1): pass a stack, or use --preset p1 to "
                              "study this block in E2/E3/E5")
    if cfg.d_model != presets["p1"].d + 1:
        raise CheckpointError(f"checkpoint {path}: d_model {cfg.d_model} does not fit the regression "
                              f"tokens (x, y) of width d + 1 = {presets['p1'].d + 1}")
    return "E2/E3/E5"


def _presets(settings: dict) -> dict:
    """The p1 and p2 presets with the training settings of a ``SETTINGS`` entry."""
    return {name: get_preset(name).with_overrides(**settings["train"][name]) for name in ("p1", "p2")}


def checkpoint_problem(path, preset_name: str, quick: bool = False) -> str | None:
    """Why ``reproduce`` cannot study ``path`` as its ``--checkpoint`` (the file, its meta record, or no experiment
    for it with ``--preset preset_name``), or None: what ``reproduce`` itself refuses first, so that the command line
    can call it a bad argument before anything runs."""
    path = Path(path)
    try:
        _, cfg, meta = _load_checked(path)
        _external_role(path, cfg, meta, preset_name, _presets(SETTINGS["quick" if quick else "full"]))
    except CheckpointError as exc:
        return str(exc)
    return None


def _load_checked(path: Path) -> tuple[dict, object, dict]:
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
    params, cfg, meta = _load_checked(path)
    fits = cfg.d_model == common["d"] + 1
    val = validate(params, cfg, meta.get("n_blocks") or 0, validation_prompts(**common)) if fits else None
    record = {"description": description, "path": str(path), "step": meta.get("step"), "seed": meta.get("seed"),
              "d_model": cfg.d_model, "val_prompts": common if fits else None,
              "val_loss": val.loss if val else None, "val_loss_zero": val.loss_zero if val else None,
              "recorded_val_loss": meta.get("val_loss")}
    return Model(path, params, cfg, meta, record)


def _train_or_resume(preset, out_dir: Path, seed: int, progress: bool, log):
    """Train ``preset`` into ``out_dir``, resuming (or reusing) a compatible earlier run of the same command."""
    from .train import CHECKPOINT, METRICS, MODEL, SettingsMismatch, train

    resume = (out_dir / CHECKPOINT).exists()
    try:
        result = train(preset, out_dir, seed=seed, resume=resume, progress=progress, log=log)
    except SettingsMismatch as exc:      # reproduce has no option to match them with: say where they came from
        raise CheckpointError(f"{out_dir} holds a training run with other settings ({exc.shown}): made with or "
                              "without --quick, or by an older implicit-icl; use another --out "
                              f"(or delete {out_dir})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. {out_dir} holds a run with other settings (--quick or not, another --seed): "
                              "use another --out") from None
    metrics = [json.loads(l) for l in (out_dir / METRICS).read_text(encoding="utf-8").splitlines()]
    return out_dir / MODEL, metrics, result


def reproduce(preset_name: str, out, quick: bool = False, checkpoint=None, seed: int = 0, progress: bool = True,
              log=None, settings: dict | None = None, command: str | None = None) -> dict:
    """Run E1–E6 into ``out``; returns the report dict (also written as ``out/report.json``).

    ``--checkpoint`` is loaded and checked (and scored) before ``out`` is created or anything trains. Everything
    runs on one torch thread (see ``one_torch_thread``).
    """
    with one_torch_thread():
        return _reproduce(preset_name, Path(out), quick, checkpoint, seed, progress,
                          log or (lambda msg: print(msg, file=sys.stderr)), settings, command)


def _reproduce(preset_name: str, out: Path, quick: bool, checkpoint, seed: int, progress: bool, log,
               settings: dict | None, command: str | None) -> dict:
    import torch

    from . import plots
    from .torch_model import init_params

    t_start = time.perf_counter()
    S = settings or SETTINGS["quick" if quick else "full"]
    presets = _presets(S)
    common = validation_set(presets[preset_name])
    timings = {}
    models = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t0
        return value

    ext = ext_role = None
    if checkpoint is not None:          # fail before any training, and before creating OUT, if the file is unusable
        ext = load_model(checkpoint, f"--checkpoint `{checkpoint}`", common)
        ext_role = _external_role(ext.path, ext.cfg, ext.meta, preset_name, presets)
    out.mkdir(parents=True, exist_ok=True)

    # ---- E1: train the chosen preset, with the identity checked at every evaluation.
    log(f"E1: training {preset_name} in {out / f'train_{preset_name}'}")
    model_path, metrics, _ = timed(f"E1 train {preset_name}", lambda: _train_or_resume(
        presets[preset_name], out / f"train_{preset_name}", seed, progress, log))
    e1 = E.e1(metrics)
    trained = load_model(model_path, f"trained in this run (`train_{preset_name}/model.npz`)", common)
    models["E1"] = trained.record

    e2 = e3 = e5 = e6 = None
    if preset_name == "p1":
        if ext_role == "E2/E3/E5":
            m = ext
        elif quick:
            m = load_model(default_checkpoint_path(), "the bundled p1 model (`implicit_icl/data/p1.npz`)", common)
        else:
            m = trained.described("trained in this run (E1)")
        params, cfg = m.params, m.cfg
        models["E2/E3/E5"] = m.record
        init_seed = seed if m.meta.get("seed") is None else m.meta["seed"]
        untrained = {k: v.numpy().astype(np.float64) for k, v in init_params(cfg, 0, init_seed).items()}
        d = cfg.d_model - 1
        n_points = n_points_of(m.meta, presets["p1"])
        prompts = E.fresh_prompts(S["e2_prompts"], n_points, d, seed)
        held_out = E.regression_prompts(S["e3_held_out"], n_points, d, np.random.default_rng([seed, 4]))
        log(f"E2: trajectories over {S['e2_prompts']} prompts, trained and untrained")
        tr = timed("E2 trajectories (trained)", lambda: E.trajectories(params, cfg, prompts))
        un = timed("E2 trajectories (untrained)", lambda: E.trajectories(untrained, cfg, prompts))
        e2 = E.e2(tr, un)
        log("E3: implicit update vs online SGD vs least squares")
        e3 = timed("E3 SGD + least squares", lambda: E.e3(params, cfg, prompts, tr, held_out, SGD_LR_GRID))
        log(f"E5: a query-independent ΔW(C) fitted on K calibration queries, {S['e5_test_queries']} new queries")
        e5 = timed("E5 thought patch", lambda: E.e5(params, cfg, prompts, S["e5_test_queries"], seed))
        log("E6: the same step norms with an RNN as the contextual layer (untrained)")
        e6 = timed("E6 RNN contextual layer", lambda: E.e6(un, prompts, cfg.d_mlp, seed))

    # ---- E4: the p2 stack: --checkpoint when it is a stack, else E1's model (--preset p2) or a p2 run.
    if ext_role == "E4":
        p2 = ext
    elif preset_name == "p2":
        p2 = trained.described("trained in this run (E1)")
    else:
        log(f"E4: training p2 in {out / 'train_p2'}")
        p2_path, _, _ = timed("E4 train p2", lambda: _train_or_resume(presets["p2"], out / "train_p2", seed,
                                                                     progress, log))
        p2 = load_model(p2_path, "trained in this run (`train_p2/model.npz`)", common)
    models["E4"] = p2.record
    log(f"E4: per-block identities at every position over {S['e4_prompts']} prompts")
    e4_prompts = E.fresh_prompts(S["e4_prompts"], n_points_of(p2.meta, presets["p2"]), p2.cfg.d_model - 1, seed)
    e4 = timed("E4 identities", lambda: E.e4(p2.params, p2.cfg, p2.n_blocks, e4_prompts))

    report = {
        "command": command or f"implicit-icl reproduce --preset {preset_name} --out {out}"
                              + (" --quick" if quick else "") + (f" --checkpoint {checkpoint}" if checkpoint else ""),
        "preset": preset_name, "quick": quick, "seed": seed,
        "versions": {"implicit_icl": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "settings": {"train": {k: v.to_dict() for k, v in presets.items()}, "e2_prompts": S["e2_prompts"],
                     "e3_held_out": S["e3_held_out"], "e4_prompts": S["e4_prompts"],
                     "e5_test_queries": S["e5_test_queries"], "sgd_lr_grid": list(SGD_LR_GRID),
                     "val_prompts": common},
        "models": models, "paper": PAPER, "e1": e1, "e2": e2, "e3": e3, "e4": e4, "e5": e5, "e6": e6,
    }
    t0 = time.perf_counter()
    figures = [plots.plot_e1(e1, out, preset_name)]
    if e2:
        figures.append(plots.plot_e2(e2, out))
    if e3:
        figures.append(plots.plot_e3(e3, out))
    figures += plots.plot_e4(e4, out)
    if e5:
        figures.append(plots.plot_e5(e5, out))
    if e6:
        figures.append(plots.plot_e6(e6, out))
    timings["figures"] = time.perf_counter() - t0
    report["figures"] = figures
    report["timings_s"] = timings
    report["total_s"] = time.perf_counter() - t_start
    write_report(report, out)
    log(f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(figures)} figures in {report['total_s']:.0f} s")
    return report


def write_report(report: dict, out: Path) -> None:
    """report.json, then report.md rendered from the JSON as it was written (round-tripped, not the live dict)."""
    text = json.dumps(_json_safe(report), indent=1, allow_nan=False)
    atomic_write_bytes(out / "report.json", lambda f: f.write(text.encode("utf-8")))
    md = render(json.loads(text))
    atomic_write_bytes(out / "report.md", lambda f: f.write(md.encode("utf-8")))


def _json_safe(x):
    """nan/inf (e.g. the relative change at i = 0, where ΔW_0 = 0) become null; numpy scalars become Python's."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
