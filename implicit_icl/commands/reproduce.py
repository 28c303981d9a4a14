"""``implicit-icl reproduce``: the papers' experiments E1–E6 in one command."""
from __future__ import annotations

import sys

from implicit_icl.commands import as_option, fail

HELP = "reproduce the papers' experiments E1-E6 (figures, report.json, report.md)"
DESCRIPTION = """\
Train and run the experiments of P1 (Dherin et al.) and P2 (Innocenti & Achour) on in-context linear regression:

  E1  train, validation and "validation via dW" losses during training; the largest gap between the two
      validation predictions, float32 (torch) and re-checked in float64 (NumPy reference)
  E2  ||dW_{i+1} - dW_i|| and the relative change against i over 100 prompts, trained vs untrained (p1)
  E3  test loss against i: implicit update vs online SGD on mlp.W vs least squares; update alignment and
      its null (another task's SGD update), for every SGD learning rate of the grid (p1)
  E4  the p2 stack (residual blocks): per-block identity errors at every position (P2), rank(sum_i dW_i),
      token alignment, all last-token updates composed (ours)
  E5  a query-independent dW(C) ("thought patch") fitted on K calibration queries, error on new queries
      against K (p1; the thought patch of Mazzawi et al. 2025, arXiv 2510.08734; our least-squares fit)
  E6  step norms with an untrained RNN as the contextual layer vs untrained softmax attention (p1; ours, a
      later P1 version reportedly makes the same contrast, UNCONFIRMED): which layer makes the steps decay

Writes PNG figures, report.json (every number) and report.md (generated from report.json) into OUT.
--quick trains briefly (measured: 35-40 s on a 2-core CPU) and studies the bundled p1 model in E2/E3/E5; without
it the full recipes are trained (measured: about 2.7 minutes on a 2-core CPU, most of it training). Every model in
the report is scored on the same validation prompts. Rerunning into the same OUT resumes (or reuses) its training
runs.

--checkpoint: a single block is studied in E2/E3/E5 (--preset p1 only); a stack (n_blocks >= 1) in E4, instead of
a p2 run. It is checked before anything runs.

Examples:
  implicit-icl reproduce --quick --out runs/quick
  implicit-icl reproduce --out runs/full
  implicit-icl reproduce --quick --out runs/mine --checkpoint runs/p1/model.npz

Exit status: 0 done; 1 a run failed (training diverged, an unusable training folder in OUT); 2 a bad argument;
130 interrupted (finished training runs are kept and reused on the next run into OUT).
"""


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="p1", choices=("p1", "p2"), help="E1's model (default p1)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="short training runs (35-40 s on a 2-core CPU)")
    parser.add_argument("--checkpoint", help="study this model in E2/E3/E5 (a p1-like block, --preset p1) or E4 "
                                             "(a stack)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of the test tasks (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from implicit_icl.experiments.reproduce import checkpoint_problem, reproduce
    from implicit_icl.commands.train import OPTIONS, run_reporting_errors, say, seed_problem

    from implicit_icl.checkpoint import output_dir_problem

    #: reproduce's arguments (and the library's names for them) as its options; train's for the training it runs
    options = OPTIONS | {"preset": "--preset", "quick": "--quick"}
    problem = seed_problem(args.seed) or output_dir_problem(args.out, "--out")
    if problem is None and args.checkpoint is not None:
        # a file that does not load, an unusable meta record, or no experiment for it with this --preset: a bad
        # argument (exit 2), as in walkthrough --checkpoint, found before OUT is made or anything trains
        if why := checkpoint_problem(args.checkpoint, args.preset, args.quick):
            problem = f"--checkpoint: {as_option(why, options)}"
    if problem:
        return fail("reproduce", f"error: {problem}")
    command = " ".join(["implicit-icl", "reproduce"] + sys.argv[2:]) if sys.argv[1:2] == ["reproduce"] else None
    return run_reporting_errors("reproduce", args.out, lambda: reproduce(
        args.preset, args.out, quick=args.quick, checkpoint=args.checkpoint, seed=args.seed,
        progress=not args.no_progress, command=command, log=say), options)
