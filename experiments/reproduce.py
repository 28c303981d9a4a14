"""``implicit-icl reproduce``: train, run E1–E6, draw the figures, write report.json and report.md.

Every experiment of ``registry.EXPERIMENTS`` is computed in turn on one shared ``study.Study`` (which makes the models
and prompts several experiments share, once), then each draws its figures; ``report`` renders report.md.

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
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.checkpoint import CheckpointError, atomic_write_bytes

from .e3_finetuning import SGD_LR_GRID
from .presets import get_preset
from .registry import EXPERIMENTS
from .report import PAPER, render
from .study import Study, load_checked, load_model, validation_set

SETTINGS = {
    # --quick: 35-40 s on a 2-core CPU (E2/E3 keep the papers' 100 prompts; training is shortened). Training keeps
    # the presets' 256 validation prompts, so E1's run and the bundled model are scored on the same prompts.
    "quick": {"train": {"p1": dict(steps=300, eval_every=25, checkpoint_every=100),
                        "p2": dict(steps=300, eval_every=50, checkpoint_every=100)},
              "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 5, "e5_test_queries": 100},
    "full": {"train": {"p1": {}, "p2": {}}, "e2_prompts": 100, "e3_held_out": 100, "e4_prompts": 20,
             "e5_test_queries": 100},
}


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


def _external_role(path: Path, cfg, meta: dict, preset_name: str, presets: dict) -> str:
    """Which experiments study ``--checkpoint``: a single block E2/E3/E5 (``--preset p1``), a stack E4."""
    if meta.get("n_blocks"):
        if cfg.d_model < 2:
            raise CheckpointError(f"checkpoint {path}: d_model {cfg.d_model} leaves no room for the regression "
                                  "tokens (x, y): E4 needs d_model >= 2")
        return "E4"
    if preset_name != "p1":
        raise CheckpointError(f"checkpoint {path}: a single block, but with `preset` {preset_name} only E1 and E4 "
                              "run and E4 studies a stack (n_blocks >= 1): pass a stack, or use `preset` p1 to "
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
        _, cfg, meta = load_checked(path)
        _external_role(path, cfg, meta, preset_name, _presets(SETTINGS["quick" if quick else "full"]))
    except CheckpointError as exc:
        return str(exc)
    return None


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

    t_start = time.perf_counter()
    S = settings or SETTINGS["quick" if quick else "full"]
    presets = _presets(S)
    common = validation_set(presets[preset_name])
    ext = ext_role = None
    if checkpoint is not None:          # fail before any training, and before creating OUT, if the file is unusable
        ext = load_model(checkpoint, f"--checkpoint `{checkpoint}`", common)
        ext_role = _external_role(ext.path, ext.cfg, ext.meta, preset_name, presets)
    out.mkdir(parents=True, exist_ok=True)
    study = Study(preset_name, presets, S, seed, out, quick, progress, log, common, ext, ext_role)
    results = {exp.KEY: exp.compute(study) for exp in EXPERIMENTS}
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
        "models": study.models, "paper": PAPER, **results,
    }
    report["figures"] = study.timed("figures", lambda: [name for exp in EXPERIMENTS if report[exp.KEY]
                                                        for name in exp.plot(report, out)])
    report["timings_s"] = study.timings
    report["total_s"] = time.perf_counter() - t_start
    write_report(report, out)
    log(f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(report['figures'])} figures in "
        f"{report['total_s']:.0f} s")
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
