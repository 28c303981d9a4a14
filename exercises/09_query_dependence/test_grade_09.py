"""Grader for exercise 9 (the update belongs to its query; one least-squares patch for many queries)."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, call_returning, check_close, check_shape, check_true

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'Each query x has its own exact update (u_x, a_x); one patch for K queries must map every a_k to its u_k.',
    'Stack the taps as columns: A = [a_1 … a_K] is D × K and U = [u_1 … u_K] is M × K, as in the README; the patch solves ΔW A = U.',
    'The minimum-norm least-squares solution is ΔW = U A⁺ = np.linalg.lstsq(A.T, U.T, rcond=None)[0].T; Δb is the mean of the Δb_k (THEORY §8.2).',
)

# A residual block: its bias update Δb = r(C, x) − r(x) is non-zero and differs from query to query, so every
# check below also tests Δb. The last check uses a plain block (no bias update), where K ≤ d_model queries are fitted
# exactly in the output too.
CFG = ref.BlockConfig(d_model=4, d_mlp=12, n_heads=2, kind="residual", activation="gelu", attn_bias=True)
PARAMS = ref.init_block(CFG, seed=9, bias_std=0.3)
CFG_PLAIN = ref.BlockConfig(d_model=4, d_mlp=12, n_heads=2, kind="plain", activation="gelu", attn_bias=True)
PARAMS_PLAIN = ref.init_block(CFG_PLAIN, seed=9, bias_std=0.3)
_rng = np.random.default_rng(90)
C = _rng.standard_normal((8, 4))
X, X_OTHER = _rng.standard_normal((2, 4))
CALIB2 = _rng.standard_normal((2, 4))             # K = 2 ≤ d_model: an exact fit exists
CALIB10 = _rng.standard_normal((10, 4))           # K = 10 > d_model: least squares only
TEST = _rng.standard_normal((6, 4))


def _reference_patch(queries):
    ups = [ref.implicit_update(PARAMS, CFG, C, q) for q in queries]
    A, U = np.stack([u.a for u in ups]), np.stack([u.u for u in ups])
    return np.linalg.lstsq(A, U, rcond=None)[0].T, np.mean([u.delta_b for u in ups], axis=0)


def _output_alone(params, x):
    return ref.block_output(params, CFG, C[:0], x)


def test_output_with_update_of_shape(student):
    """x_other alone through the block updated for x: one output vector, (d_model,)"""
    check_shape("output_with_update_of(params, cfg, C, x, x_other)",
                call(student, "output_with_update_of", PARAMS, CFG, C, X, X_OTHER), (4,))


def test_own_query_is_exact(student):
    """with x_other = x it is the theorem: T_{W+ΔW(C,x)}(x) = T_W(C, x)"""
    check_close("output_with_update_of(params, cfg, C, x, x)", call(student, "output_with_update_of",
                PARAMS, CFG, C, X, X), ref.block_output(PARAMS, CFG, C, X), rtol=1e-9, atol=1e-12,
                hint="apply x's implicit_update, ΔW AND Δb (apply_update adds both), and run x with an EMPTY "
                     "context (C[:0])")


def test_output_with_update_of_values(student):
    """x's update on another query x′ matches the reference"""
    want = _output_alone(ref.apply_update(PARAMS, ref.implicit_update(PARAMS, CFG, C, X)), X_OTHER)
    check_close("output_with_update_of(params, cfg, C, x, x_other)",
                call(student, "output_with_update_of", PARAMS, CFG, C, X, X_OTHER), want,
                hint="the update is x's (implicit_update with query x, ΔW and Δb), the input is x_other run alone")


def test_other_query_misses(student):
    """x's update does NOT reproduce the context for x′: it belongs to x (THEORY §8.2)"""
    got = check_shape("output_with_update_of(params, cfg, C, x, x_other)",
                      call(student, "output_with_update_of", PARAMS, CFG, C, X, X_OTHER), (4,))
    miss = float(np.max(np.abs(got - ref.block_output(PARAMS, CFG, C, X_OTHER))))
    check_true(miss > 1e-3, "max |T_{W+ΔW(C,x)}(x′) − T_W(C, x′)| is far from round-off", expected="> 1e-3",
               got=f"{miss:.3g}", hint="did you run x_other with the context, or use x_other's own update?")


def test_patch_shapes(student):
    """a patch is one (ΔW, Δb): shapes (d_mlp, d_model) and (d_model,)"""
    out = call_returning(student, "patch", ("delta_W", "delta_b"), PARAMS, CFG, C, CALIB2)
    check_shape("patch(...)[0], delta_W", out[0], (12, 4))
    check_shape("patch(...)[1], delta_b", out[1], (4,))


def test_patch_of_one_query_is_its_update(student):
    """K = 1: the patch is that query's own implicit update (ΔW = u aᵀ/‖a‖², Δb)"""
    dW, db = call_returning(student, "patch", ("delta_W", "delta_b"), PARAMS, CFG, C, X[None])
    exact = ref.implicit_update(PARAMS, CFG, C, X)
    check_close("patch(params, cfg, C, [x])[0]", dW, exact.delta_W, hint="min-norm solution of ΔW a = u")
    check_close("patch(params, cfg, C, [x])[1]", db, exact.delta_b,
                hint="the mean of one Δb is that Δb (implicit_update(...).delta_b; not zero for a residual block)")


def test_patch_fits_every_calibration_query(student):
    """K = 2 ≤ d_model: ΔW fits both queries, (W + ΔW) a_k = W a(C, x_k): each query's in-context pre-activation"""
    dW, _ = call_returning(student, "patch", ("delta_W", "delta_b"), PARAMS, CFG, C, CALIB2)
    dW = check_shape("delta_W", dW, (12, 4))
    for k, q in enumerate(CALIB2):
        up = ref.implicit_update(PARAMS, CFG, C, q)
        check_close(f"delta_W @ a_{k}", dW @ up.a, up.u, rtol=1e-9, atol=1e-12,
                    hint="solve ΔW A = U for ALL queries at once (least squares), not one update per query "
                         "averaged: each exact update fits only its own query")


def test_patch_is_minimum_norm_least_squares(student):
    """K = 10 > d_model: the minimum-norm least-squares solution U A⁺ (np.linalg.lstsq)"""
    dW, db = call_returning(student, "patch", ("delta_W", "delta_b"), PARAMS, CFG, C, CALIB10)
    want_W, want_b = _reference_patch(CALIB10)
    check_close("patch(params, cfg, C, 10 queries)[0]", dW, want_W,
                hint="ΔW = U A⁺ with the columns a_k in A (D × K) and u_k in U (M × K), as in the README: "
                     "np.linalg.lstsq(A.T, U.T, rcond=None)[0].T")
    check_close("patch(params, cfg, C, 10 queries)[1]", db, want_b,
                hint="the mean (not the sum) of the ten Δb_k = implicit_update(...).delta_b")


def test_patch_misses_shape_and_values(student):
    """patch_misses: one number per test query, matching the reference"""
    dW, db = _reference_patch(CALIB10)                 # the reference patch: this check is about patch_misses alone
    got = check_shape("patch_misses(params, cfg, C, ΔW, Δb, 6 test queries)",
                      call(student, "patch_misses", PARAMS, CFG, C, dW, db, TEST), (6,))
    patched = dict(PARAMS, **{"mlp.W": PARAMS["mlp.W"] + dW, "mlp.b_out": PARAMS["mlp.b_out"] + db})
    want = [np.max(np.abs(_output_alone(patched, x) - ref.block_output(PARAMS, CFG, C, x))) for x in TEST]
    check_close("patch_misses(...)", got, want,
                hint="patched block (mlp.W + ΔW AND mlp.b_out + Δb) on x ALONE (empty context) against the original "
                     "block WITH the context; the max of the absolute differences")


def test_patch_misses_vanish_on_the_calibration_queries(student):
    """a plain block (no Δb): your patch of K = 2 queries, measured by your patch_misses on them, is round-off"""
    dW, db = call_returning(student, "patch", ("delta_W", "delta_b"), PARAMS_PLAIN, CFG_PLAIN, C, CALIB2)
    misses = check_shape("patch_misses on the calibration queries",
                         call(student, "patch_misses", PARAMS_PLAIN, CFG_PLAIN, C, dW, db, CALIB2), (2,))
    check_close("patch_misses on the calibration queries (plain block)", misses, np.zeros(2), atol=1e-10,
                hint="ΔW must fit both queries at once (see the checks above); in a residual block the ONE Δb cannot "
                     "equal both Δb_k, which is why this check uses a plain block")
