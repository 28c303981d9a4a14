"""``implicit-icl reproduce``: train, run E1–E6, draw the figures, write report.json and report.md.

Which model each experiment studies:

- E1 is a training run of the chosen preset (``--quick``: a short one) in ``OUT/train_<preset>``.
- E2/E3 (single-block experiments, ``p1`` only) study ``--checkpoint`` if given; otherwise, with ``--quick``, the
  bundled ``p1`` model (the full recipe; the quick E1 run is too short to stand for it), and without ``--quick``
  the model E1 just trained (the same recipe and seed as the bundled model). The untrained baseline is the same
  architecture at its seeded initial weights.
- E5 (``p1`` only) studies the E2/E3 model on the E2 prompts' contexts with fresh queries.
- E6 (``p1`` only) compares E2's untrained attention block with an untrained RNN contextual layer, same prompts.
- E4 studies the ``p2`` stack: E1's model when ``--preset p2``, else a ``p2`` run in ``OUT/train_p2``
  (or ``--checkpoint`` when it is a ``p2`` stack).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.checkpoint import CheckpointError, atomic_write_bytes, default_checkpoint_path, load_checkpoint

from . import experiments as E
from .evaluate import checkpoint_validation
from .presets import get_preset
from .report import PAPER, render

SGD_LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SETTINGS = {
    # --quick: < 3 minutes on a 2-core CPU (E2/E3 keep the papers' 100 prompts; training is shortened).
    "quick": {"train": {"p1": dict(steps=300, eval_every=25, checkpoint_every=100, val_prompts=64),
                        "p2": dict(steps=300, eval_every=50, checkpoint_every=100, val_prompts=32)},
              "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 5, "e5_test_queries": 100},
    "full": {"train": {"p1": {}, "p2": {}}, "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 20,
             "e5_test_queries": 100},
}


def _train_or_resume(preset, out_dir: Path, seed: int, progress: bool, log):
    """Train ``preset`` into ``out_dir``, resuming (or reusing) a compatible earlier run of the same command."""
    from .train import CHECKPOINT, METRICS, MODEL, train

    resume = (out_dir / CHECKPOINT).exists()
    try:
        result = train(preset, out_dir, seed=seed, resume=resume, progress=progress, log=log)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. {out_dir} holds a run with other settings (--quick or not, another --seed): "
                              "use another --out") from None
    metrics = [json.loads(l) for l in (out_dir / METRICS).read_text(encoding="utf-8").splitlines()]
    return out_dir / MODEL, metrics, result


def _model_record(path: Path, description: str) -> tuple[dict, object, dict, dict]:
    params, cfg, meta = load_checkpoint(path)
    val = checkpoint_validation(params, cfg, meta) if "preset" in meta else None
    record = {"description": description, "path": str(path), "step": meta.get("step"), "seed": meta.get("seed"),
              "val_loss": val.loss if val else None, "val_loss_zero": val.loss_zero if val else None,
              "recorded_val_loss": meta.get("val_loss")}
    return params, cfg, meta, record


def reproduce(preset_name: str, out, quick: bool = False, checkpoint=None, seed: int = 0, progress: bool = True,
              log=None, settings: dict | None = None, command: str | None = None) -> dict:
    """Run E1–E6 into ``out``; returns the report dict (also written as ``out/report.json``)."""
    import torch

    from . import plots
    from .torch_model import init_params

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    S = settings or SETTINGS["quick" if quick else "full"]
    presets = {name: get_preset(name).with_overrides(**S["train"][name]) for name in ("p1", "p2")}
    timings = {}
    models = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t0
        return value

    ext = None
    if checkpoint is not None:          # fail before any training if the file is unusable
        ext = _model_record(Path(checkpoint), f"--checkpoint `{checkpoint}`")
        if preset_name == "p1" and not ext[2].get("n_blocks") and ext[1].d_model != presets["p1"].d + 1:
            raise CheckpointError(f"checkpoint {checkpoint}: d_model {ext[1].d_model} does not fit the regression "
                                  f"tokens (x, y) of width d + 1 = {presets['p1'].d + 1}")

    # ---- E1: train the chosen preset, with the identity checked at every evaluation.
    log(f"E1: training {preset_name} in {out / f'train_{preset_name}'}")
    model_path, metrics, _ = timed(f"E1 train {preset_name}", lambda: _train_or_resume(
        presets[preset_name], out / f"train_{preset_name}", seed, progress, log))
    e1 = E.e1(metrics)
    *_, models["E1"] = _model_record(model_path, f"trained in this run (`train_{preset_name}/model.npz`)")

    e2 = e3 = e5 = e6 = None
    if preset_name == "p1":
        if ext is not None and not ext[2].get("n_blocks"):
            params, cfg, meta, rec = ext
        elif quick:
            params, cfg, meta, rec = _model_record(default_checkpoint_path(), "the bundled p1 model "
                                                   "(`implicit_icl/data/p1.npz`)")
        else:
            params, cfg, meta, rec = _model_record(model_path, "trained in this run (E1)")
        models["E2/E3/E5"] = rec
        init_seed = meta.get("seed", seed)
        untrained = {k: v.numpy().astype(np.float64) for k, v in init_params(cfg, 0, init_seed).items()}
        d = cfg.d_model - 1
        n_points = meta.get("preset", {}).get("n_points", presets["p1"].n_points)
        prompts = E.fresh_prompts(S["e2_prompts"], n_points, d, seed)
        held_out = E.regression_prompts(S["e3_held_out"], n_points, d, np.random.default_rng([seed, 4]))
        log(f"E2: trajectories over {S['e2_prompts']} prompts, trained and untrained")
        tr = timed("E2 trajectories (trained)", lambda: E.trajectories(params, cfg, prompts))
        un = timed("E2 trajectories (untrained)", lambda: E.trajectories(untrained, cfg, prompts))
        e2 = E.e2(tr, un)
        log("E3: implicit update vs online SGD vs least squares")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)           # tiny batched matmuls: one thread is fastest here
        try:
            e3 = timed("E3 SGD + least squares", lambda: E.e3(params, cfg, prompts, tr, held_out, SGD_LR_GRID))
        finally:
            torch.set_num_threads(threads)
        log(f"E5: a query-independent ΔW(C) fitted on K calibration queries, {S['e5_test_queries']} new queries")
        e5 = timed("E5 thought patch", lambda: E.e5(params, cfg, prompts, S["e5_test_queries"], seed))
        log("E6: the same step norms with an RNN as the contextual layer (untrained)")
        e6 = timed("E6 RNN contextual layer", lambda: E.e6(un, prompts, cfg.d_mlp, seed))

    # ---- E4: the p2 stack.
    if preset_name == "p2":
        p2_path, p2_desc = model_path, "trained in this run (E1)"
    elif ext is not None and ext[2].get("n_blocks"):
        p2_path, p2_desc = Path(checkpoint), f"--checkpoint `{checkpoint}`"
    else:
        log(f"E4: training p2 in {out / 'train_p2'}")
        p2_path, _, _ = timed("E4 train p2", lambda: _train_or_resume(presets["p2"], out / "train_p2", seed,
                                                                     progress, log))
        p2_desc = "trained in this run (`train_p2/model.npz`)"
    p2_params, p2_cfg, p2_meta, models["E4"] = _model_record(p2_path, p2_desc)
    log(f"E4: per-block identities at every position over {S['e4_prompts']} prompts")
    e4_prompts = E.fresh_prompts(S["e4_prompts"], p2_meta["preset"]["n_points"], p2_cfg.d_model - 1, seed)
    e4 = timed("E4 identities", lambda: E.e4(p2_params, p2_cfg, p2_meta["n_blocks"], e4_prompts))

    report = {
        "command": command or f"implicit-icl reproduce --preset {preset_name} --out {out}"
                              + (" --quick" if quick else "") + (f" --checkpoint {checkpoint}" if checkpoint else ""),
        "preset": preset_name, "quick": quick, "seed": seed,
        "versions": {"implicit_icl": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "settings": {"train": {k: v.to_dict() for k, v in presets.items()}, "e2_prompts": S["e2_prompts"],
                     "e3_held_out": S["e3_held_out"], "e4_prompts": S["e4_prompts"],
                     "e5_test_queries": S["e5_test_queries"], "sgd_lr_grid": list(SGD_LR_GRID)},
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
