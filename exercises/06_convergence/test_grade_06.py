"""Grader for exercise 6 (convergence of ‖ΔW_{i+1} − ΔW_i‖ on the trained model vs an untrained one).

The "trained" model is the bundled checkpoint ``implicit_icl/data/p1.npz`` (``implicit-icl train --preset p1``)
when it exists; otherwise a seeded random block with the same shapes stands in, and a note says so.
"""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import Mistake, call, check_close, check_shape, depends_on, note, save_plot
from implicit_icl.reference.tasks import regression_prompts

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'A step is rank 1, ΔW_{i+1} − ΔW_i = W_0 (A_{i+1} − A_i) A(x)ᵀ/‖A(x)‖²: take its norm from the factors.',
    '‖u aᵀ‖ = ‖u‖ ‖a‖, so the norm of a step is ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖ (one power of ‖A(x)‖).',
    'np.diff(A, axis=0) @ W.T gives every W_0 (A_{i+1} − A_i) at once; decay_exponent is np.polyfit(np.log(k + 1), np.log(steps), 1)[0] (THEORY §8.5).',
)

# P1's model as THEORY §5 records it (UNCONFIRMED details): d = 2, MLP width 128, 8 heads of width 4, no skip.
P1_CFG = ref.BlockConfig(d_model=3, d_mlp=128, n_heads=8, d_head=4, kind="plain", activation="relu")


def trained_model():
    """``(params, cfg, label)`` of the trained p1 block, or of a seeded random stand-in when it is unavailable."""
    try:
        from implicit_icl.checkpoint import default_checkpoint_path, load_checkpoint
        path = default_checkpoint_path()
        if path.is_file():
            params, cfg, meta = load_checkpoint(path)
            if meta.get("n_blocks"):
                return ref.split_stack(params)[0], cfg, f"block 0 of the trained checkpoint {path}"
            return params, cfg, f"the trained checkpoint {path}"
        why = f"{path} does not exist yet"
    except Exception as exc:  # a broken checkpoint must not stop the exercise; say what happened
        why = f"the checkpoint could not be loaded ({exc})"
    return (ref.init_block(P1_CFG, seed=2025), P1_CFG,
            f"a seeded random block (seed 2025) standing in for the trained model, because {why}: "
            "the 'trained vs untrained' comparison is then random vs random")


TRAINED, TRAINED_CFG, TRAINED_LABEL = trained_model()
UNTRAINED, UNTRAINED_CFG = ref.init_block(TRAINED_CFG, seed=0), TRAINED_CFG
D_TASK = TRAINED_CFG.d_model - 1
ONE = regression_prompts(1, 20, D_TASK, seed=60).Z[0]                  # (21, D): one prompt, n = 20
BATCH = regression_prompts(8, 40, D_TASK, seed=61).Z                   # (8, 41, D)


def _ref_steps(params, cfg, z):
    return ref.trajectory(params, cfg, z[:-1], z[-1]).step_norm


def _step_mistakes(params, cfg, z):
    """The two common wrong step norms: the difference of the norms, and ‖A(x)‖² in the denominator."""
    norm_a = float(np.linalg.norm(ref.attention(params, cfg, z[-1:])[0]))
    return [Mistake("the norm of the DIFFERENCE, ‖W_0 (A_{i+1} − A_i)‖/‖A(x)‖, not the difference of the norms "
                    "‖ΔW_{i+1}‖ − ‖ΔW_i‖", value=np.abs(np.diff(ref.trajectory(params, cfg, z[:-1], z[-1]).delta_W_norm))),
            Mistake("you divided by ‖A(x)‖²: that is ΔW's denominator, but the NORM of a rank-1 step is "
                    "‖u aᵀ‖/‖a‖² = ‖u‖‖a‖/‖a‖² = ‖u‖/‖a‖, so divide by ‖A(x)‖ once", factor=1 / norm_a,
                    name="1/‖A(x)‖")]


STEP_HINT = "‖ΔW_{i+1} − ΔW_i‖ = ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖, from the factors (exercise 5)"


def test_step_norms_shape(student):
    """step_norms has one entry per context token, (n,)"""
    check_shape("step_norms(params, cfg, C, x) with n = 20",
                call(student, "step_norms", UNTRAINED, UNTRAINED_CFG, ONE[:-1], ONE[-1]), (20,),
                hint="n steps for n context tokens: step i goes from i to i + 1 tokens")


def test_step_norms_untrained(student):
    """‖ΔW_{i+1} − ΔW_i‖ on the untrained block matches the reference"""
    check_close("step_norms on the untrained block",
                call(student, "step_norms", UNTRAINED, UNTRAINED_CFG, ONE[:-1], ONE[-1]),
                _ref_steps(UNTRAINED, UNTRAINED_CFG, ONE), hint=STEP_HINT,
                mistakes=_step_mistakes(UNTRAINED, UNTRAINED_CFG, ONE))


def test_delta_W_norms(student):
    """‖ΔW_i‖ for i = 0..n matches the reference (and is 0 at i = 0)"""
    got = check_shape("delta_W_norms(params, cfg, C, x) with n = 20",
                      call(student, "delta_W_norms", UNTRAINED, UNTRAINED_CFG, ONE[:-1], ONE[-1]), (21,))
    check_close("delta_W_norms on the untrained block", got,
                ref.trajectory(UNTRAINED, UNTRAINED_CFG, ONE[:-1], ONE[-1]).delta_W_norm,
                hint="‖ΔW_i‖ = ‖W_0 (A_i − A_0)‖/‖A_0‖ with A_0 = A(x)")


def test_step_norms_trained(student):
    """step_norms on the trained model matches the reference"""
    note(f"trained model: {TRAINED_LABEL}")
    check_close("step_norms on the trained model", call(student, "step_norms", TRAINED, TRAINED_CFG, ONE[:-1], ONE[-1]),
                _ref_steps(TRAINED, TRAINED_CFG, ONE), hint="the same formula works for any block",
                mistakes=_step_mistakes(TRAINED, TRAINED_CFG, ONE))


@depends_on("test_step_norms_untrained")
def test_mean_step_norms(student):
    """mean_step_norms averages the step norms over a batch of prompts, (n,)"""
    got = check_shape("mean_step_norms(params, cfg, Z) for Z of shape (8, 41, D)",
                      call(student, "mean_step_norms", UNTRAINED, UNTRAINED_CFG, BATCH), (40,),
                      hint="average over the prompts (axis 0), keep one entry per step")
    check_close("mean_step_norms on the untrained block", got,
                np.mean([_ref_steps(UNTRAINED, UNTRAINED_CFG, z) for z in BATCH], axis=0),
                hint="each prompt: context = Z[b, :-1], query = Z[b, -1]")


def test_decay_exponent(student):
    """decay_exponent recovers p from steps ≈ c (k + 1)^p"""
    k = np.arange(1, 41)
    got = check_shape("decay_exponent(3 (k+1)^-0.7)", call(student, "decay_exponent", 3.0 * k ** -0.7), ())
    check_close("decay_exponent(3 (k+1)^-0.7)", got, -0.7, hint="fit a line to log steps against log(k + 1)")
    noisy = 2.0 * k ** -1.2 * np.exp(0.3 * np.random.default_rng(62).standard_normal(40))
    check_close("decay_exponent of a noisy power law", call(student, "decay_exponent", noisy),
                np.polyfit(np.log(k), np.log(noisy), 1)[0], hint="least squares in log-log coordinates (np.polyfit)")


@depends_on("test_step_norms_untrained", "test_step_norms_trained", "test_mean_step_norms", "test_decay_exponent")
def test_trained_vs_untrained(student):
    """trained vs untrained: your mean step norms match the reference on both models (see the note)"""
    rows = {}
    for label, params, cfg in (("trained", TRAINED, TRAINED_CFG), ("untrained", UNTRAINED, UNTRAINED_CFG)):
        got = check_close(f"mean_step_norms on the {label} model", call(student, "mean_step_norms", params, cfg, BATCH),
                          np.mean([_ref_steps(params, cfg, z) for z in BATCH], axis=0),
                          hint="mean_step_norms averages your step_norms; fix step_norms first")
        rows[label] = (got, float(call(student, "decay_exponent", got)))
    lines = [f"trained model: {TRAINED_LABEL}", "mean ‖ΔW_i − ΔW_(i−1)‖ over 8 prompts, after i tokens:",
             "           " + "".join(f"{f'i={i}':>9}" for i in (1, 5, 10, 20, 40)) + "   exponent p"]
    for label, (steps, p) in rows.items():
        lines.append(f"{label:>10} " + "".join(f"{steps[i - 1]:9.4f}" for i in (1, 5, 10, 20, 40)) + f"   {p:+.2f}")
    if all(p < 0 for _, p in rows.values()):
        lines.append("both decay: the shrinking steps alone do not show learning (THEORY §8.5)")
    else:
        lines.append("not both decaying here: compare the two rows before reading anything into them (THEORY §8.5)")
    note("\n".join(lines))

    def draw(fig):
        ax = fig.add_subplot()
        i = np.arange(1, len(rows["trained"][0]) + 1)
        for label, (steps, p) in rows.items():
            ax.loglog(i, steps, "o-", ms=3, label=f"{label} (slope p = {p:+.2f})")
        ax.loglog(i, rows["untrained"][0][0] / i, "k:", label="1/i, for reference")
        ax.set(xlabel="tokens consumed i", ylabel="mean ‖ΔW_i − ΔW_(i−1)‖",
               title="Exercise 6: the steps shrink, trained or not (THEORY §8.5)")
        ax.legend()

    save_plot("convergence.png", draw)
