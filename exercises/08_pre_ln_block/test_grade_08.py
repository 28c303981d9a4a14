"""Grader for exercise 8 (P2's update at every position of a GPT-2 style pre-ln block)."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, check_close, check_shape, check_true

CFG = ref.BlockConfig(d_model=8, d_mlp=32, n_heads=4, kind="pre-ln", activation="gelu", attn_bias=True)
PARAMS = ref.init_block(CFG, seed=8, bias_std=0.2, ln_std=0.2)
Z = np.random.default_rng(80).standard_normal((6, 8))
T, M, D = 6, 32, 8
UPD = ref.position_updates(PARAMS, CFG, Z, query="last")


def _get(student):
    got = call(student, "position_updates_last", PARAMS, CFG, Z)
    check_true(isinstance(got, tuple) and len(got) == 3, "position_updates_last returns (u, a_x, delta_b)",
               got=type(got).__name__)
    return got


def test_position_updates_shapes(student):
    """u (T, M), a_x (D,), delta_b (T, D)"""
    u, a, db = _get(student)
    check_shape("u", u, (T, M), hint="one left factor per position")
    check_shape("a_x", a, (D,), hint="ONE right factor, shared by every position: the tap of the last token alone")
    check_shape("delta_b", db, (T, D))


def test_position_updates_values(student):
    """u_i = W (a_i − a_x), a_x and Δb_i = r_i − r_x match the reference (P2's convention)"""
    u, a, db = _get(student)
    check_close("a_x", a, UPD.a[0], hint="taps of Z[-1:] (the last token as a length-1 sequence), first tap")
    check_close("u", u, UPD.u, hint="u_i = W (a_i − a_x), a_i from the full sequence Z")
    check_close("delta_b", db, UPD.delta_b,
                hint="Δb_i = r_i − r_x = ΔA_i + Δz_i: the residual r includes the token itself, so the swap "
                     "Z_i → x belongs in the bias")


def test_identity_every_position(student):
    """at every position i: Block_{W+ΔW_i, b+Δb_i}([x]) = Block(Z)_i"""
    u, a, db = _get(student)
    full = ref.block(PARAMS, CFG, Z)
    got = []
    for i in range(T):
        dW = np.outer(check_shape("u", u, (T, M))[i], check_shape("a_x", a, (D,))) / (a @ a)
        new = dict(PARAMS, **{"mlp.W": PARAMS["mlp.W"] + dW, "mlp.b_out": PARAMS["mlp.b_out"] + np.asarray(db)[i]})
        got.append(ref.block(new, CFG, Z[-1:])[0])
    check_close("Block_{W+ΔW_i, b+Δb_i}([x]) for i = 1..T", np.stack(got), full, rtol=1e-9, atol=1e-12,
                hint="position i's update starts from the LAST token alone; its bias must absorb Z_i − x too")


def test_delta_W_from_factors(student):
    """ΔW_i = u_i aᵀ/‖a‖² for every position, (T, M, D)"""
    got = check_shape("delta_W_from_factors(u, a)", call(student, "delta_W_from_factors", UPD.u, UPD.a[0]), (T, M, D),
                      hint="broadcast u[:, :, None] * a[None, None, :]")
    check_close("delta_W_from_factors(u, a)", got, UPD.delta_W, hint="divide by ‖a‖², not ‖a‖")


def test_alignment(student):
    """alignment = normalised Frobenius inner products of the ΔW_i = cosines of the u_i"""
    got = check_shape("alignment(u)", call(student, "alignment", UPD.u), (T, T))
    mats = UPD.delta_W.reshape(T, -1)                                  # (T, M·D): the matrices, flattened
    expected = (mats @ mats.T) / np.outer(np.linalg.norm(mats, axis=1), np.linalg.norm(mats, axis=1))
    check_close("alignment(u)", got, expected, hint="normalise each row of u to unit length, then take all dot products")
    check_close("diagonal of alignment(u)", np.diag(got), np.ones(T), hint="each ΔW_i is perfectly aligned with itself")


def test_rank_of_sum(student):
    """Σ_i ΔW_i has rank 1: every ΔW_i shares the right factor a_x"""
    got = call(student, "rank_of_sum", UPD.u, UPD.a[0])
    check_true(isinstance(got, (int, np.integer)), "rank_of_sum returns an int", got=repr(got))
    check_true(int(got) == 1, "rank_of_sum(u, a) for P2's updates", expected=1, got=int(got),
               hint="count the singular values of Σ_i ΔW_i above tol × the largest")
    rng = np.random.default_rng(81)
    check_true(int(call(student, "rank_of_sum", rng.standard_normal((T, M)), rng.standard_normal(D))) == 1,
               "rank_of_sum of any factored updates with a shared right factor", expected=1)
    v = rng.standard_normal(M)
    got = call(student, "rank_of_sum", np.stack([v, -v]), rng.standard_normal(D))      # cancels exactly
    check_true(int(got) == 0, "rank_of_sum when the updates cancel: Σ_i ΔW_i = 0 has rank 0 (rank ≤ 1, not = 1)",
               expected=0, got=int(got), hint="compute the singular values of the sum; do not assume the answer")
