"""Grader for exercise 1 (softmax attention and the causal mask): compares your functions with the reference."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import Mistake, call, check_close, check_shape, check_true, depends_on

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'Work one function at a time, in the order of the file: softmax, causal_mask, attention_weights, self_attention; each later one calls the earlier ones.',
    'softmax: subtract x.max(axis=axis, keepdims=True) before np.exp, and divide by the sum along the same axis (keepdims=True). causal_mask: np.tril of a (T, T) array of True.',
    'attention_weights: logits = Q @ K.T / √d_k; where the mask is False put −inf (np.where) BEFORE the softmax over the last axis. self_attention: weights @ (Z W_vᵀ), then @ W_oᵀ (THEORY §10.7).',
)

# d_head = 3 differs from d_model = 4, so scaling the logits by √D instead of √d_k is caught.
CFG = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=1, d_head=3)
PARAMS = ref.init_block(CFG, seed=1)
Z = np.random.default_rng(0).standard_normal((6, 4))


def test_softmax_shape(student):
    """softmax keeps the shape of its input"""
    x = np.random.default_rng(1).standard_normal((3, 5))
    check_shape("softmax(x) for x of shape (3, 5)", call(student, "softmax", x), (3, 5))
    check_shape("softmax(x, axis=0) for x of shape (3, 5)", call(student, "softmax", x, axis=0), (3, 5))


def test_softmax_values(student):
    """softmax matches the reference along the last axis and along axis 0"""
    x = np.random.default_rng(2).standard_normal((3, 5))
    check_close("softmax(x)", call(student, "softmax", x), ref.softmax(x),
                hint="exponentiate, then divide by the sum along the given axis (use keepdims=True)")
    check_close("softmax(x, axis=0)", call(student, "softmax", x, axis=0), ref.softmax(x, axis=0),
                hint="use the `axis` argument in both the max and the sum")


def test_softmax_large_logits(student):
    """softmax is stable for large logits (no overflow to nan)"""
    x = np.array([1000.0, 1001.0, 1002.0])
    check_close("softmax([1000, 1001, 1002]) (equals softmax([0, 1, 2]))", call(student, "softmax", x),
                ref.softmax(np.array([0.0, 1.0, 2.0])),
                hint="exp(1000) overflows to inf and inf/inf = nan; softmax(x) = softmax(x − max x), so subtract "
                     "the maximum before exponentiating")


def test_causal_mask(student):
    """causal_mask(T) is True exactly where j ≤ i"""
    got = check_shape("causal_mask(5)", call(student, "causal_mask", 5), (5, 5))
    check_close("causal_mask(5) (as 0/1)", got.astype(float), np.tril(np.ones((5, 5))),
                hint="row i is the query position, column j the key; position i sees itself and the past: "
                     "np.tril")


@depends_on("test_softmax_values")
def test_attention_weights(student):
    """attention weights: shape (T, T), rows sum to 1, zero above the diagonal, scaled by 1/√d_k"""
    rng = np.random.default_rng(3)
    Q, K = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    got = check_shape("attention_weights(Q, K) for Q, K of shape (6, 3)", call(student, "attention_weights", Q, K),
                      (6, 6))
    after = ref.softmax(Q @ K.T / np.sqrt(3)) * np.tril(np.ones((6, 6)))      # masked after the softmax
    check_close("row sums of the attention weights", got.sum(axis=1), np.ones(6),
                hint="apply the softmax along the key axis (axis=-1)",
                mistakes=[Mistake("you masked AFTER the softmax: zeroing the future weights of a normalised row "
                                  "leaves a row that sums to less than 1. Mask the LOGITS with −inf where j > i, "
                                  "then take the softmax", value=after.sum(axis=1))])
    check_close("attention weights above the diagonal (future tokens)", np.triu(got, 1), np.zeros((6, 6)),
                hint="mask the logits with −inf where j > i before the softmax")
    logits = np.where(np.tril(np.ones((6, 6), bool)), Q @ K.T / np.sqrt(3), -np.inf)
    check_close("attention weights", got, ref.softmax(logits), hint="divide the logits q_i·k_j by √d_k, d_k = Q.shape[1]")
    full = call(student, "attention_weights", Q, K, causal=False)
    check_close("attention weights with causal=False", full, ref.softmax(Q @ K.T / np.sqrt(3)),
                hint="with causal=False every position sees every token")


def test_attention_shape(student):
    """self_attention returns one vector per token, (T, D)"""
    check_shape("self_attention(params, Z) for Z of shape (6, 4)", call(student, "self_attention", PARAMS, Z), (6, 4),
                hint="project with W_o at the end: the output lives in the token space, D = 4")


@depends_on("test_softmax_values", "test_attention_weights")
def test_attention_values(student):
    """self_attention matches the reference (causal)"""
    check_close("self_attention(params, Z)", call(student, "self_attention", PARAMS, Z), ref.attention(PARAMS, CFG, Z),
                hint="Q = Z W_qᵀ, K = Z W_kᵀ, V = Z W_vᵀ; out = weights @ V @ W_oᵀ")


@depends_on("test_softmax_values", "test_attention_weights")
def test_attention_non_causal(student):
    """self_attention with causal=False matches the reference"""
    cfg = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=1, d_head=3, causal=False)
    check_close("self_attention(params, Z, causal=False)", call(student, "self_attention", PARAMS, Z, causal=False),
                ref.attention(PARAMS, cfg, Z), hint="pass `causal` on to attention_weights")


@depends_on("test_softmax_values", "test_attention_weights")
def test_attention_single_token(student):
    """on one token the weight is exactly 1, so A([x]) = W_o W_v x (THEORY §10.7)"""
    x = Z[:1]
    got = call(student, "self_attention", PARAMS, x)
    expected = (PARAMS["attn.W_o"] @ PARAMS["attn.W_v"] @ x[0])[None]
    check_close("self_attention(params, [x])", got, expected,
                hint="a length-1 sequence has a single weight, softmax of one logit = 1")
    full = check_shape("self_attention(params, Z)", call(student, "self_attention", PARAMS, Z), (6, 4))
    check_true(np.allclose(full[0], expected[0], rtol=1e-7, atol=1e-10),
               "with the causal mask, position 0 sees only itself: A(Z)_0 = W_o W_v z_0",
               hint="the mask must keep j ≤ i (including the diagonal)")
