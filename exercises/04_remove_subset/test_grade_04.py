"""Grader for exercise 4 (ΔW(Y) for a removed subset Y, and its minimality)."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, check_close, check_shape, check_true

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'Removing a subset Y changes only the left factor: ΔA(Y) = A(C, x) − A(C \\ Y, x); the right factor is still A(C \\ Y, x), what W reads once Y is gone.',
    'projector_perp(a) = I − a aᵀ/‖a‖²; any M P added to ΔW leaves (W + ΔW) a unchanged, because P a = 0.',
    'rank1_update_remove: kept = np.delete(context, remove, axis=0); a = A(kept, x); u = W (A(C, x) − a); return np.outer(u, a) / (a @ a).',
)

CFG = ref.BlockConfig(d_model=5, d_mlp=16, n_heads=1)
PARAMS = ref.init_block(CFG, seed=4)
_rng = np.random.default_rng(40)
C = _rng.standard_normal((7, 5))
X = _rng.standard_normal(5)
Y = [1, 4, 5]
KEPT = np.delete(C, Y, axis=0)
A_KEPT = ref.attention(PARAMS, CFG, np.concatenate([KEPT, X[None]]))[-1]
M_RANDOM = _rng.standard_normal((16, 5))


def test_rank1_update_remove_shape(student):
    """ΔW(Y) has the shape of W, (d_mlp, d_model)"""
    check_shape("rank1_update_remove(params, cfg, C, x, remove=[1, 4, 5])",
                call(student, "rank1_update_remove", PARAMS, CFG, C, X, Y), (16, 5))


def test_rank1_update_remove_values(student):
    """ΔW(Y) = W ΔA(Y) A(C\\Y, x)ᵀ/‖A(C\\Y, x)‖² matches the reference"""
    check_close("rank1_update_remove(params, cfg, C, x, remove=[1, 4, 5])",
                call(student, "rank1_update_remove", PARAMS, CFG, C, X, Y),
                ref.implicit_update(PARAMS, CFG, C, X, remove=Y).delta_W,
                hint="the right factor is a = A(C\\Y, x), computed with the KEPT tokens (np.delete them: a zeroed "
                     "token still takes attention) and the query, not A(x); the left one is W ΔA(Y)")


def test_identity_with_kept_tokens(student):
    """the identity: W + ΔW(Y) on (C\\Y, x) gives T_W(C, x) (P1 Thm 2.2)"""
    dW = check_shape("ΔW(Y)", call(student, "rank1_update_remove", PARAMS, CFG, C, X, Y), (16, 5))
    new = dict(PARAMS, **{"mlp.W": PARAMS["mlp.W"] + dW})
    check_close("T_{W+ΔW(Y)}(C\\Y, x)", ref.block_output(new, CFG, KEPT, X), ref.block_output(PARAMS, CFG, C, X),
                rtol=1e-9, atol=1e-12,
                hint="after the update W reads A(C\\Y, x); ΔW must map exactly that vector to W ΔA(Y)")


def test_remove_nothing_or_everything(student):
    """Y = ∅ gives ΔW = 0; Y = C gives exercise 3's ΔW(C)"""
    check_close("rank1_update_remove(..., remove=[])", call(student, "rank1_update_remove", PARAMS, CFG, C, X, []),
                np.zeros((16, 5)), hint="removing nothing changes nothing: ΔA(∅) = 0")
    check_close("rank1_update_remove(..., remove=all)",
                call(student, "rank1_update_remove", PARAMS, CFG, C, X, list(range(7))),
                ref.implicit_update(PARAMS, CFG, C, X).delta_W, hint="with Y = C, C\\Y is empty and a = A(x)")


def test_projector_perp(student):
    """P = I − a aᵀ/‖a‖² is a projector (P² = P) that kills a"""
    P = check_shape("projector_perp(a) for a of shape (5,)", call(student, "projector_perp", A_KEPT), (5, 5))
    check_close("projector_perp(a) @ a", P @ A_KEPT, np.zeros(5), atol=1e-12, hint="P a = a − a (aᵀa)/‖a‖² = 0")
    check_close("projector_perp(a)", P, np.eye(5) - np.outer(A_KEPT, A_KEPT) / (A_KEPT @ A_KEPT),
                hint="I − outer(a, a)/(a·a)")
    check_close("P @ P", P @ P, P, atol=1e-12, hint="a projector is idempotent")


def test_other_solution_same_output(student):
    """ΔW + M P reproduces the same output: the update is not unique"""
    dW = ref.implicit_update(PARAMS, CFG, C, X, remove=Y).delta_W
    other = check_shape("other_solution(ΔW, a, M)", call(student, "other_solution", dW, A_KEPT, M_RANDOM), (16, 5))
    P = np.eye(5) - np.outer(A_KEPT, A_KEPT) / (A_KEPT @ A_KEPT)
    check_close("other_solution(ΔW, a, M)", other, dW + M_RANDOM @ P,
                hint="M P with P = projector_perp(a), added to ΔW")
    new = dict(PARAMS, **{"mlp.W": PARAMS["mlp.W"] + other})
    check_close("T_{W+ΔW+MP}(C\\Y, x)", ref.block_output(new, CFG, KEPT, X), ref.block_output(PARAMS, CFG, C, X),
                rtol=1e-9, atol=1e-12, hint="(ΔW + M P) a = ΔW a because P a = 0")


def test_minimal_norm(student):
    """your ΔW(Y) is the minimum-norm solution: ‖ΔW + MP‖² = ‖ΔW‖² + ‖MP‖², and ΔW = (W ΔA) a⁺"""
    dW = check_shape("ΔW(Y)", call(student, "rank1_update_remove", PARAMS, CFG, C, X, Y), (16, 5))
    other = check_shape("other_solution", call(student, "other_solution", dW, A_KEPT, M_RANDOM), (16, 5))
    MP = M_RANDOM @ (np.eye(5) - np.outer(A_KEPT, A_KEPT) / (A_KEPT @ A_KEPT))
    check_close("‖ΔW + MP‖²_F (Pythagoras)", np.sum(other ** 2), np.sum(dW ** 2) + np.sum(MP ** 2),
                hint="the rows of ΔW must be multiples of aᵀ, a = A(C\\Y, x), so that they are orthogonal to MP")
    target = PARAMS["mlp.W"] @ (ref.attention(PARAMS, CFG, np.concatenate([C, X[None]]))[-1] - A_KEPT)   # W ΔA(Y)
    min_norm = np.outer(target, np.linalg.pinv(A_KEPT[:, None])[0])                  # (16, 5): t a⁺
    check_close("ΔW(Y) vs the pseudo-inverse solution (W ΔA) a⁺ of  X a = W ΔA", dW, min_norm,
                hint="the minimum-norm solution of X a = t is t aᵀ/‖a‖²")
    check_true(np.sum(dW ** 2) <= np.sum(other ** 2), "‖ΔW‖_F ≤ ‖ΔW + MP‖_F",
               got=f"{np.linalg.norm(dW):.4g} vs {np.linalg.norm(other):.4g}")
