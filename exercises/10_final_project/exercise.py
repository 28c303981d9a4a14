"""Exercise 10, the final project: a model you trained, its implicit dynamics against an untrained twin (your file).

First train a model with the real tool (from the folder that holds exercises/; about 10 s on a laptop):

    implicit-icl train --preset p1 --out exercises/10_final_project/run --steps 300

then run this file, which writes report.json beside it, and let the grader recompute every number:

    python exercises/10_final_project/exercise.py
    implicit-icl exercises check 10

The measurement is P1 §4's (E2 of `implicit-icl reproduce`, THEORY §8.5): on fresh regression prompts, the median
over the prompts of the step norm ‖ΔW_{i+1} − ΔW_i‖ against i (step i consumes token c_{i+1}), its log-log slope,
for the trained block and for an untrained twin of the same config. A prompt is a row stack Z (n + 1, D): n context
rows (x_i, y_i) and the query row (x_q, 0) last. Use the library: ``trajectory`` from the reference gives each
prompt's step norms; ``load_checkpoint`` reads the model that `implicit-icl train` wrote.

Replace every `raise NotImplementedError` with your code. The constants below are your protocol: the report states
them and the grader recomputes every number with them.
"""
import json
import sys
from pathlib import Path

import numpy as np

from implicit_icl.checkpoint import load_checkpoint
from implicit_icl.experiments.e2_convergence import GENERIC_SLOPE_GAP
from implicit_icl.reference import init_block, trajectory
from implicit_icl.reference.tasks import regression_prompts

HERE = Path(__file__).resolve().parent
N_PROMPTS = 32          # fresh test prompts: regression_prompts(N_PROMPTS, n_points, d, seed=PROMPT_SEED)
PROMPT_SEED = 10
UNTRAINED_SEED = 0      # the untrained twin: init_block(cfg, seed=UNTRAINED_SEED), the trained model's config
FIT_FROM = 5            # the slope is fitted over the steps i >= FIT_FROM (E2's convention)


def median_step_norms(params, cfg, Z):
    """The median over the prompts of ‖ΔW_{i+1} − ΔW_i‖, for i = 0..n−1: shape (n,) for Z of shape (B, n + 1, D).

    Prompt b's context is Z[b, :-1] and its query Z[b, -1]; entry i is the step that consumes token c_{i+1}.
    """
    raise NotImplementedError  # your code here


def decay_slope(curve, fit_from):
    """The least-squares slope of log curve[i] against log i over the steps i >= fit_from (−1 means ∝ 1/i).

    ``curve`` is indexed by the step i = 0..n−1 itself (step i consumes token c_{i+1}), as E2 fits it.
    """
    raise NotImplementedError  # your code here


def measure(checkpoint):
    """The project's report for the model at ``checkpoint`` (a model.npz of `implicit-icl train --preset p1`), a dict:

    checkpoint (str), train_steps (the checkpoint's step), n_points, n_prompts, prompt_seed, untrained_seed, fit_from;
    "trained" and "untrained": {"median_step_norm": [n floats], "slope": float, "step_norm_at_1": float};
    slope_gap (|trained slope − untrained slope|), scale_ratio (trained step_norm_at_1 / untrained's) and verdict, how
    the untrained twin decays next to the trained model, in E2's words: "at the same rate" when slope_gap <=
    GENERIC_SLOPE_GAP, else "more slowly" (its slope is the larger) or "faster".
    """
    raise NotImplementedError  # your code here: load, prompts, twin, the two curves, the numbers


def _main(argv):
    """``python exercise.py [CHECKPOINT [REPORT]]``: measure the model and write the report (JSON)."""
    checkpoint = Path(argv[1]) if len(argv) > 1 else HERE / "run" / "model.npz"
    out = Path(argv[2]) if len(argv) > 2 else HERE / "report.json"
    out.write_text(json.dumps(measure(checkpoint), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}; now run `implicit-icl exercises check 10`")


if __name__ == "__main__":
    _main(sys.argv)
