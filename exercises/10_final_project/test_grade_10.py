"""Grader for exercise 10, the final project: a model trained with `implicit-icl train` against an untrained twin.

The model is the one trained into ``run/`` beside this file (``implicit-icl train --preset p1 --out
exercises/10_final_project/run --steps 300``); where there is none (or it cannot be used) the bundled p1 model stands
in, and a note says so. The report graded is ``report.json`` beside the student's ``exercise.py`` (``python
exercise.py`` writes it); where there is none, or another file is graded (``--solution``, ``--file``), the grader asks
that file's ``measure`` for the report, and says so. Every number in the report is recomputed with the library (the
reference's trajectories and E2's ``convergence``, on the protocol the report states) and must agree within
``REL`` / ``ABS``; a number that does not is named.
"""
import json
from pathlib import Path

import numpy as np

from implicit_icl import reference as ref
from implicit_icl.checkpoint import default_checkpoint_path, load_checkpoint
from implicit_icl.experiments import e2_convergence as e2
from implicit_icl.experiments.statistics import loglog_slope
from implicit_icl.grading import (GradingFailure, Mistake, call, check_close, check_shape, check_true, depends_on,
                                  note, save_plot)
from implicit_icl.reference.tasks import regression_prompts

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'trajectory(params, cfg, context, query).step_norm is one prompt\'s ‖ΔW_{i+1} − ΔW_i‖ for i = 0..n−1: stack them '
    'over the prompts and take the median over axis 0.',
    'The slope is fitted against log i, the step index itself (step i consumes token c_{i+1}), over i >= fit_from: '
    'np.polyfit(np.log(i[keep]), np.log(curve[keep]), 1)[0], as E2 does (THEORY §8.5).',
    'measure: load_checkpoint gives (params, cfg, meta); meta["step"] and meta["preset"]["n_points"] are the run\'s; '
    'the prompts are regression_prompts(N_PROMPTS, n_points, cfg.d_model − 1, seed=PROMPT_SEED).Z and the twin is '
    'init_block(cfg, seed=UNTRAINED_SEED); every number the report states is computed from those, never typed in.',
)

HERE = Path(__file__).resolve().parent
RUN = HERE / "run" / "model.npz"
TRAIN = "implicit-icl train --preset p1 --out exercises/10_final_project/run --steps 300"
# Every number is float64 arithmetic on the same inputs, so a correct report agrees with the recomputation to ~1e-13;
# these leave room for another correct order of operations (or float32 torch), and a wrong formula (log(i + 1), a
# mean for the median) moves the numbers by 1e-2 or more.
REL = 1e-6             # norms and their ratio: |reported − recomputed| <= REL·|recomputed| + 1e-12
ABS = 1e-6             # slopes and their gap: |reported − recomputed| <= ABS


def _model():
    """``(path, params, cfg, meta, label)`` of the student's trained model, or of the bundled one (with a reason)."""
    why = f"there is no {RUN} yet (train yours: `{TRAIN}`)"
    if RUN.is_file():
        try:
            params, cfg, meta = load_checkpoint(RUN)
            if not meta.get("n_blocks"):
                return RUN, params, cfg, meta, f"your model {RUN} ({meta.get('step')} training steps)"
            why = f"{RUN} is a stack of {meta['n_blocks']} blocks; this project measures one block (--preset p1)"
        except Exception as exc:  # a broken run must not stop the grading; say what happened
            why = f"{RUN} could not be loaded ({exc})"
    path = default_checkpoint_path()
    params, cfg, meta = load_checkpoint(path)
    return path, params, cfg, meta, f"the bundled p1 model {path}, because {why}"


CHECKPOINT, PARAMS, CFG, META, MODEL_LABEL = _model()
TWIN = ref.init_block(CFG, seed=0)
SMALL = regression_prompts(6, 20, CFG.d_model - 1, seed=70).Z                # (6, 21, D)


def _ref_median(params, z):
    return np.median([ref.trajectory(params, CFG, p[:-1], p[-1]).step_norm for p in z], axis=0)


def test_median_step_norms_shape(student):
    """median_step_norms has one entry per step, (n,)"""
    check_shape("median_step_norms(params, cfg, Z) for Z of shape (6, 21, D)",
                call(student, "median_step_norms", TWIN, CFG, SMALL), (20,),
                hint="one value per step i = 0..n−1, the median over the prompts (axis 0)")


def test_median_step_norms_values(student):
    """the median step norms of the trained model and of its untrained twin match the reference's trajectories"""
    note(f"model: {MODEL_LABEL}")
    for label, params in (("the trained model", PARAMS), ("the untrained twin", TWIN)):
        steps = [ref.trajectory(params, CFG, p[:-1], p[-1]).step_norm for p in SMALL]
        check_close(f"median_step_norms on {label}", call(student, "median_step_norms", params, CFG, SMALL),
                    np.median(steps, axis=0), hint="median over the prompts of trajectory(...).step_norm",
                    mistakes=[Mistake("the MEAN over the prompts: E2 reports the median (a few prompts with large "
                                      "steps move a mean)", value=np.mean(steps, axis=0))])


def test_decay_slope(student):
    """decay_slope fits log curve[i] against log i over i >= fit_from, as E2 does"""
    i = np.arange(40)
    curve = 3.0 * np.maximum(i, 1) ** -0.8 * np.exp(0.2 * np.random.default_rng(71).standard_normal(40))
    curve[:4] *= 5.0                                              # the first steps are off the power law: not fitted
    got = check_shape("decay_slope(curve, fit_from=4) for a curve of 40 steps", call(student, "decay_slope", curve, 4),
                      ())
    keep = i >= 4
    check_close("decay_slope(curve, fit_from=4)", got, loglog_slope(i[keep], curve[keep]),
                hint="least squares of log curve[i] against log i over i >= fit_from (np.polyfit, degree 1)",
                mistakes=[Mistake("you fitted against log(i + 1): E2 fits against the step index i itself (step i "
                                  "consumes token c_{i+1}), THEORY §8.5",
                                  value=np.polyfit(np.log(i[keep] + 1), np.log(curve[keep]), 1)[0]),
                          Mistake("you fitted every step: only i >= fit_from count (the first steps are off the line)",
                                  value=loglog_slope(i, curve))])


_REPORTS: dict = {}


def _report(student) -> tuple[dict, str, Path | None]:
    """``(report, where it came from, the folder its relative paths start from)``; read or made once per student."""
    if id(student) not in _REPORTS:
        graded = Path(getattr(student, "__file__", None) or "graded.py")
        path = graded.with_name("report.json")
        if graded.name == "exercise.py" and path.is_file():
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise GradingFailure(f"{path} is JSON", got=str(exc),
                                     hint="let `python exercise.py` write it") from None
            _REPORTS[id(student)] = report, f"your report {path}", path.parent
        else:
            report = call(student, "measure", str(CHECKPOINT))
            _REPORTS[id(student)] = (report, f"the report your measure() made for {CHECKPOINT} (no report.json beside "
                                     "your exercise.py: `python exercise.py` writes one)", None)
    return _REPORTS[id(student)]


FIELDS = {"checkpoint": str, "train_steps": int, "n_points": int, "n_prompts": int, "prompt_seed": int,
          "untrained_seed": int, "fit_from": int, "slope_gap": float, "scale_ratio": float, "verdict": str}
MODEL_FIELDS = {"median_step_norm": list, "slope": float, "step_norm_at_1": float}


def _check_fields(report) -> None:
    check_true(isinstance(report, dict), "the report is a dict (a JSON object)", got=type(report).__name__)
    for where, fields in ((report, FIELDS), (report.get("trained"), MODEL_FIELDS),
                          (report.get("untrained"), MODEL_FIELDS)):
        if not isinstance(where, dict):
            raise GradingFailure('the report has "trained" and "untrained" objects', got=repr(where)[:200],
                                 hint="see the docstring of measure for the report's keys")
        for key, kind in fields.items():
            value = where.get(key)
            kinds = (int, float) if kind is float else kind               # a whole number is a number too
            check_true(isinstance(value, kinds) and not isinstance(value, bool),
                       f"the report's {key!r} is a {kind.__name__}", got=f"{type(value).__name__}: {value!r}"[:200],
                       hint="see the docstring of measure for the report's keys")


def _checkpoint_of(report, base) -> Path:
    path = Path(report["checkpoint"])
    if not path.is_absolute() and base is not None and (base / path).is_file():
        path = base / path
    return path


def test_report_states_its_protocol(student):
    """the report states its checkpoint, that checkpoint's training steps and length of prompt, and a usable protocol"""
    report, source, base = _report(student)
    note(f"report: {source}")
    _check_fields(report)
    path = _checkpoint_of(report, base)
    check_true(path.is_file(), "the checkpoint the report measured exists", expected="a model.npz",
               got=str(path), hint=f"train it (`{TRAIN}`) and measure that file")
    _, cfg, meta = load_checkpoint(path)
    check_true(not meta.get("n_blocks"), "the checkpoint is one block (--preset p1)",
               got=f"{meta.get('n_blocks')} blocks")
    check_true(report["train_steps"] == meta.get("step"), "train_steps is the checkpoint's own step count",
               expected=str(meta.get("step")), got=str(report["train_steps"]), hint='take it from meta["step"]')
    n_points = meta.get("preset", {}).get("n_points")
    check_true(report["n_points"] == n_points, "n_points is the length of the prompts the model was trained on",
               expected=str(n_points), got=str(report["n_points"]), hint='take it from meta["preset"]["n_points"]')
    check_true(8 <= report["n_prompts"] <= 512, "the medians are over 8 to 512 prompts", got=str(report["n_prompts"]))
    check_true(min(report["prompt_seed"], report["untrained_seed"]) >= 0, "the seeds are whole numbers >= 0",
               got=f"prompt_seed {report['prompt_seed']}, untrained_seed {report['untrained_seed']}")
    check_true(1 <= report["fit_from"] <= n_points - 3, f"fit_from leaves at least 3 steps to fit (1..{n_points - 3})",
               got=str(report["fit_from"]))
    if path.resolve() == default_checkpoint_path().resolve():
        note(f"the report measures the bundled model, not one you trained: train yours with `{TRAIN}`")


def _recompute(report, params, cfg) -> dict:
    """E2's numbers on the report's own protocol: the library's trajectories and ``convergence``."""
    prompts = regression_prompts(report["n_prompts"], report["n_points"], cfg.d_model - 1, seed=report["prompt_seed"])
    twin = ref.init_block(cfg, seed=report["untrained_seed"])
    return e2.convergence(e2.trajectories(params, cfg, prompts), e2.trajectories(twin, cfg, prompts),
                          report["fit_from"])


def _disagreements(report, again) -> list[tuple[str, str]]:
    """``(name, reported vs recomputed)`` for every number of the report outside its tolerance."""
    pairs = []
    for m in ("trained", "untrained"):
        pairs += [(f"{m}.median_step_norm", report[m]["median_step_norm"], again[m]["step_norm"]["median"], REL),
                  (f"{m}.slope", report[m]["slope"], again[m]["step_norm_slope"], None),
                  (f"{m}.step_norm_at_1", report[m]["step_norm_at_1"], again[m]["step_norm_at"]["1"], REL)]
    pairs += [("slope_gap", report["slope_gap"], again["generic"]["slope_gap"], None),
              ("scale_ratio", report["scale_ratio"], again["generic"]["scale_ratio"], REL)]
    bad = []
    for name, got, want, rel in pairs:
        want = np.asarray(want, dtype=np.float64)
        bound = ABS if rel is None else rel * np.abs(want) + 1e-12
        if np.shape(got) != want.shape:
            bad.append((name, f"shape {np.shape(got)}, recomputed {want.shape}"))
            continue
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            bad.append((name, "not all numbers"))
            continue
        if not np.all(np.abs(got - want) <= bound):
            k = np.unravel_index(np.nanargmax(np.where(np.isfinite(got), np.abs(got - want), np.inf)), want.shape)
            at = f"[{k[0]}]" if k else ""
            bad.append((name + at, f"reported {got[k]:.6g}, recomputed {want[k]:.6g} (tolerance "
                                   f"{np.broadcast_to(bound, want.shape)[k]:.2g})"))
    if report["verdict"] != again["generic"]["verdict"]:
        bad.append(("verdict", f"reported {report['verdict']!r}, recomputed {again['generic']['verdict']!r}"))
    return bad


@depends_on("test_median_step_norms_values", "test_decay_slope", "test_report_states_its_protocol")
def test_report_numbers_are_recomputed(student):
    """every number of the report agrees with the grader's recomputation (E2's convergence on its protocol)"""
    report, _, base = _report(student)
    params, cfg, meta = load_checkpoint(_checkpoint_of(report, base))
    again = _recompute(report, params, cfg)
    bad = _disagreements(report, again)
    if bad:
        i = np.arange(report["n_points"])
        keep = i >= report["fit_from"]
        plus_one = np.polyfit(np.log(i[keep] + 1), np.log(np.asarray(again["trained"]["step_norm"]["median"])[keep]), 1)
        hint = ("your slopes are fitted against log(i + 1): E2 fits against the step index i itself (THEORY §8.5)"
                if abs(report["trained"]["slope"] - plus_one[0]) <= ABS else
                "compute every number from the checkpoint and the protocol the report states (never type one in); "
                "rerun `python exercise.py` after changing your code or retraining")
        names = ", ".join(name for name, _ in bad[:6]) + (", …" if len(bad) > 6 else "")
        raise GradingFailure("every number of the report agrees with the grader's recomputation",
                             expected=f"within {REL:g} relative (norms, ratio) or {ABS:g} (slopes, gap)",
                             got=f"{len(bad)} disagree: {names}",
                             detail="\n".join(f"{name}: {what}" for name, what in bad[:2]), hint=hint)
    tr, un, g = again["trained"], again["untrained"], again["generic"]
    note(f"{meta.get('step')} training steps: log-log slope {tr['step_norm_slope']:+.3f} trained, "
         f"{un['step_norm_slope']:+.3f} untrained; the untrained twin decays {g['verdict']} (gap {g['slope_gap']:.3f}, "
         f"threshold {e2.GENERIC_SLOPE_GAP}); step norm at i = 1: ratio {g['scale_ratio']:.3f} trained/untrained. "
         "A decay alone is no evidence of learning (THEORY §8.5)")
    _plot(again, report["fit_from"])


def _plot(again: dict, fit_from: int) -> None:
    def draw(fig):
        ax = fig.add_subplot()
        for name in ("trained", "untrained"):
            med = np.asarray(again[name]["step_norm"]["median"])
            i = np.arange(1, len(med))
            ax.loglog(i, med[1:], "o-", ms=3, label=f"{name} (slope {again[name]['step_norm_slope']:+.2f}, "
                                                    f"fitted for i >= {fit_from})")
        ax.set(xlabel="step i (consumes token c_(i+1))", ylabel="median ‖ΔW_(i+1) − ΔW_i‖",
               title="Exercise 10: your model against its untrained twin (THEORY §8.5)")
        ax.legend()

    save_plot("final_project.png", draw)
