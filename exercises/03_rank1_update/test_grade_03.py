"""Grader for exercise 3 (the rank-1 update ΔW(C) and the identity T_W(C, x) = T_{W+ΔW}(x))."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import Mistake, call, check_close, check_shape, check_true, depends_on, save_plot

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'ΔW has two factors: u = W ΔA (the left, (M,)) and A(x) (the right, (D,)), divided by ‖A(x)‖².',
    'ΔA = A(C, x) − A(x), both from exercise 2; the right factor is A(x), the query ALONE.',
    'np.outer(W @ (A_C − A_x), A_x) / (A_x @ A_x); its Frobenius norm is ‖u‖/‖A(x)‖ (THEORY §10.6).',
)

CFG = ref.BlockConfig(d_model=5, d_mlp=20, n_heads=1, activation="gelu")
PARAMS = ref.init_block(CFG, seed=3, bias_std=0.5)
_rng = np.random.default_rng(30)
C = _rng.standard_normal((8, 5))
X = _rng.standard_normal(5)
EMPTY = np.zeros((0, 5))


def _reference_update():
    return ref.implicit_update(PARAMS, CFG, C, X)


def test_rank1_update_shape(student):
    """ΔW has the shape of W, (d_mlp, d_model)"""
    check_shape("rank1_update(params, cfg, C, x) with d_mlp = 20, d_model = 5",
                call(student, "rank1_update", PARAMS, CFG, C, X), (20, 5),
                hint="np.outer(u, a) of u = W ΔA (20,) and a = A(x) (5,)")


def test_rank1_update_values(student):
    """ΔW = (W ΔA) A(x)ᵀ / ‖A(x)‖² matches the reference"""
    up = _reference_update()
    a_C = ref.attention(PARAMS, CFG, np.concatenate([C, X[None]]))[-1]
    norm_a = float(np.linalg.norm(up.a))
    check_close("rank1_update(params, cfg, C, x)", call(student, "rank1_update", PARAMS, CFG, C, X), up.delta_W,
                hint="ΔW = np.outer(W ΔA, A(x)) / ‖A(x)‖², with A(x) the attention on the query alone",
                mistakes=[Mistake("the right factor is A(x), the query ALONE (not A(C, x)), divided by ‖A(x)‖²",
                                  value=np.outer(up.u, a_C) / (a_C @ a_C)),
                          Mistake("you divided by ‖A(x)‖ where ΔW needs ‖A(x)‖² = A(x) @ A(x): then "
                                  "ΔW A(x) = W ΔA · ‖A(x)‖ instead of W ΔA", factor=norm_a, name="‖A(x)‖")])


def test_rank1_update_has_rank_one(student):
    """ΔW has rank exactly 1: one non-zero singular value"""
    dW = check_shape("rank1_update(params, cfg, C, x)", call(student, "rank1_update", PARAMS, CFG, C, X), (20, 5))
    s = np.linalg.svd(dW, compute_uv=False)
    check_true(s[0] > 0 and s[1] <= 1e-12 * s[0], "ΔW has one non-zero singular value",
               expected="σ_2/σ_1 ≤ 1e-12", got=f"singular values {np.array2string(s, precision=3)}",
               hint="an outer product of two vectors has rank 1")

    def draw(fig):
        heat, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        lim = float(np.abs(dW).max()) or 1.0
        image = heat.imshow(dW, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        fig.colorbar(image, ax=heat)
        heat.set(title="your ΔW (20 × 5): every row is a multiple of A(x)ᵀ", xlabel="column (d_model)",
                 ylabel="row (d_mlp)")
        bars.bar(np.arange(1, len(s) + 1), np.maximum(s, 1e-18))
        bars.set(yscale="log", xlabel="k", ylabel="σ_k", title="its singular values: one non-zero, the rest ~1e-16")

    save_plot("rank1_update.png", draw)


def test_apply_rank1_update(student):
    """apply_rank1_update adds ΔW to mlp.W only, and leaves the input params untouched"""
    dW = _reference_update().delta_W
    before = {k: v.copy() for k, v in PARAMS.items()}
    new = call(student, "apply_rank1_update", PARAMS, dW)
    check_true(isinstance(new, dict), "apply_rank1_update returns a dict of params", got=type(new).__name__)
    check_close("new['mlp.W']", new.get("mlp.W"), before["mlp.W"] + dW, hint="W + ΔW")
    for k in PARAMS:
        check_close(f"params[{k!r}] after the call (the input must not change)", PARAMS[k], before[k],
                    hint="copy the dict (dict(params)) and put a NEW array in 'mlp.W'; `+=` modifies the original")
        if k != "mlp.W":
            check_close(f"new[{k!r}] (only mlp.W changes)", new.get(k), before[k], hint="copy every other entry")


@depends_on("test_rank1_update_values", "test_apply_rank1_update")
def test_identity_query_alone(student):
    """the identity: the block with W + ΔW on the query ALONE gives T_W(C, x) (P1 Thm 2.2, Y = C)"""
    dW = call(student, "rank1_update", PARAMS, CFG, C, X)
    new = call(student, "apply_rank1_update", PARAMS, dW)
    check_close("T_{W+ΔW}(x), the updated block on the query alone", ref.block_output(new, CFG, EMPTY, X),
                ref.block_output(PARAMS, CFG, C, X), rtol=1e-9, atol=1e-12,
                hint="(W + ΔW) A(x) must equal W A(C, x): check both factors of ΔW")


@depends_on("test_rank1_update_values")
def test_identity_preactivations(student):
    """the first-layer pre-activations agree as vectors: (W + ΔW) A(x) = W A(C, x) (THEORY §10.6)"""
    dW = call(student, "rank1_update", PARAMS, CFG, C, X)
    A_x = ref.attention(PARAMS, CFG, X[None])[0]
    A_C = ref.attention(PARAMS, CFG, np.concatenate([C, X[None]]))[-1]
    check_close("(W + ΔW) A(x)", (PARAMS["mlp.W"] + check_shape("ΔW", dW, (20, 5))) @ A_x, PARAMS["mlp.W"] @ A_C,
                rtol=1e-9, atol=1e-12, hint="ΔW A(x) = W ΔA needs A(x)ᵀA(x)/‖A(x)‖² = 1")


def test_update_norm(student):
    """‖ΔW‖_F = ‖ΔW‖_2 = ‖W ΔA‖/‖A(x)‖, computed from the factors"""
    got = check_shape("update_norm(params, cfg, C, x)", call(student, "update_norm", PARAMS, CFG, C, X), (),
                      hint="return one float")
    dW = _reference_update().delta_W
    check_close("update_norm(params, cfg, C, x)", got, np.linalg.norm(dW, "fro"),
                hint="‖u aᵀ‖_F /‖a‖² = ‖u‖‖a‖/‖a‖² = ‖u‖/‖a‖")
    check_close("update_norm vs the spectral norm ‖ΔW‖_2", got, np.linalg.norm(dW, 2),
                hint="rank 1: the only singular value is the Frobenius norm")
