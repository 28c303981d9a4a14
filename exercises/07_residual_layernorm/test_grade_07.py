"""Grader for exercise 7 (residual and LayerNorm blocks, P2): taps, LayerNorm and the pre-ln update."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, call_returning, check_close, check_shape

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'A block has two taps: a, the vector W reads, and r, the residual added around the MLP; the update is ΔW = W (a_C − a_x) a_xᵀ/‖a_x‖² and Δb_out = r_C − r_x.',
    'layer_norm: (x − mean)/sqrt(var + eps) * g + b over the last axis, with keepdims=True; pre-ln: r = Z + A(LN1 Z), a = LN2(r).',
    'update_pre_ln: take the last row of the taps on [C; x] and the only row of the taps on [x]; Δb uses r (BEFORE LN2), not a.',
)

PRE = ref.BlockConfig(d_model=6, d_mlp=24, n_heads=2, kind="pre-ln", activation="gelu")
RES = ref.BlockConfig(d_model=6, d_mlp=24, n_heads=2, kind="residual", activation="gelu")
# non-trivial LayerNorm gains/shifts and biases, so that every parameter matters
P_PRE = ref.init_block(PRE, seed=7, bias_std=0.3, ln_std=0.3)
P_RES = ref.init_block(RES, seed=7, bias_std=0.3)
_rng = np.random.default_rng(70)
Z = _rng.standard_normal((7, 6))
C, X = Z[:-1], Z[-1]


def test_layer_norm(student):
    """LayerNorm over the last axis: shape kept, mean 0 and variance 1 before g and b, matches the reference"""
    x = 3.0 + 2.0 * _rng.standard_normal((4, 6))
    g, b = P_PRE["ln1.g"], P_PRE["ln1.b"]
    got = check_shape("layer_norm(x, g, b, eps) for x (4, 6)", call(student, "layer_norm", x, g, b, 1e-5), (4, 6))
    plain = check_shape("layer_norm(x, 1, 0, eps)", call(student, "layer_norm", x, np.ones(6), np.zeros(6), 1e-5), (4, 6))
    check_close("row means of layer_norm(x, 1, 0, eps)", plain.mean(axis=1), np.zeros(4), atol=1e-12,
                hint="subtract the mean over the LAST axis (axis=-1, keepdims=True)")
    check_close("row variances of layer_norm(x, 1, 0, eps)", plain.var(axis=1),
                x.var(axis=1) / (x.var(axis=1) + 1e-5),   # var/(var + eps) exactly
                hint="divide by sqrt(var + eps), the POPULATION variance (np.var, ddof=0)")
    check_close("layer_norm(x, g, b, eps)", got, ref.layer_norm(x, g, b, 1e-5), hint="g ⊙ normalised + b")


def test_taps_residual(student):
    """residual block taps: r = Z + A(Z), a = r, each (T, D)"""
    got = call_returning(student, "taps_residual", ("a", "r"), P_RES, RES, Z)
    a_ref, r_ref = ref.taps(P_RES, RES, Z)
    check_shape("a of taps_residual", got[0], (7, 6))
    check_shape("r of taps_residual", got[1], (7, 6))
    check_close("r of taps_residual", got[1], r_ref, hint="the residual stream adds the attention output to the tokens")
    check_close("a of taps_residual", got[0], a_ref, hint="without LayerNorm the MLP reads the residual stream itself")


def test_taps_pre_ln_shapes(student):
    """pre-ln taps: a pair (a, r) of (T, D) arrays"""
    got = call_returning(student, "taps_pre_ln", ("a", "r"), P_PRE, PRE, Z)
    check_shape("a of taps_pre_ln", got[0], (7, 6))
    check_shape("r of taps_pre_ln", got[1], (7, 6))


def test_taps_pre_ln_values(student):
    """pre-ln taps: r = Z + A(LN1 Z), a = LN2(r) match the reference"""
    a, r = call_returning(student, "taps_pre_ln", ("a", "r"), P_PRE, PRE, Z)
    a_ref, r_ref = ref.taps(P_PRE, PRE, Z)
    check_close("r of taps_pre_ln", r, r_ref,
                hint="LN1 is applied to the attention's INPUT; the residual adds the raw Z: r = Z + A(LN1 Z)")
    check_close("a of taps_pre_ln", a, a_ref, hint="the MLP reads LN2(r), with the ln2 gain and shift")


def test_update_pre_ln_shapes(student):
    """update_pre_ln returns (ΔW (M, D), Δb_out (D,))"""
    got = call_returning(student, "update_pre_ln", ("delta_W", "delta_b"), P_PRE, PRE, C, X)
    check_shape("ΔW of update_pre_ln", got[0], (24, 6))
    check_shape("Δb_out of update_pre_ln", got[1], (6,))


def test_update_pre_ln_values(student):
    """ΔW = W (a_C − a_x) a_xᵀ/‖a_x‖² and Δb_out = r_C − r_x match the reference"""
    dW, db = call_returning(student, "update_pre_ln", ("delta_W", "delta_b"), P_PRE, PRE, C, X)
    upd = ref.implicit_update(P_PRE, PRE, C, X)
    check_close("ΔW of update_pre_ln", dW, upd.delta_W, hint="the rank-1 pair uses the post-LN2 taps a_C, a_x")
    check_close("Δb_out of update_pre_ln", db, upd.delta_b,
                hint="the bias update uses the PRE-LN2 residual difference r_C − r_x, not a_C − a_x (THEORY §3b)")


def test_identity_pre_ln(student):
    """the identity: the pre-ln block with (W + ΔW, b_out + Δb) on the query alone gives T(C, x)"""
    dW, db = call_returning(student, "update_pre_ln", ("delta_W", "delta_b"), P_PRE, PRE, C, X)
    new = dict(P_PRE, **{"mlp.W": P_PRE["mlp.W"] + check_shape("ΔW", dW, (24, 6)),
                         "mlp.b_out": P_PRE["mlp.b_out"] + check_shape("Δb", db, (6,))})
    check_close("T_{W+ΔW, b+Δb}(x)", ref.block_output(new, PRE, np.zeros((0, 6)), X), ref.block_output(P_PRE, PRE, C, X),
                rtol=1e-9, atol=1e-12,
                hint="out = r + MLP(a): ΔW fixes the MLP's input a, Δb must fix the residual r")
