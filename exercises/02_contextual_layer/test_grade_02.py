"""Grader for exercise 2 (the contextual layer A(C, x), A(x) and the context vector ΔA(Y))."""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import call, check_close, check_shape

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'A(C, x) is the LAST row of the attention on the sequence [C; x]; A(x) is the attention on [x] alone.',
    'np.concatenate([context, query[None]]) builds [C; x]; reference.attention(params, cfg, Z) runs the layer.',
    'ΔA(Y) = A(C, x) − A(C \\ Y, x): DELETE the rows of Y from the context (np.delete), never set them to zero; a zero row still takes softmax weight (THEORY §9.2).',
)

CFG = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=2)
PARAMS = ref.init_block(CFG, seed=2)
_rng = np.random.default_rng(20)
C = _rng.standard_normal((5, 4))
X = _rng.standard_normal(4)


def _A(context, query):
    return ref.attention(PARAMS, CFG, np.concatenate([context, query[None]]))[-1]


def test_A_context_shape(student):
    """A(C, x) is one vector of the token space, (D,)"""
    check_shape("A_context(params, cfg, C, x) with C (5, 4), x (4,)", call(student, "A_context", PARAMS, CFG, C, X), (4,),
                hint="run attention on [C, x] and keep only the row of the query")


def test_A_alone_shape(student):
    """A(x) is one vector, (D,)"""
    check_shape("A_alone(params, cfg, x)", call(student, "A_alone", PARAMS, CFG, X), (4,))
    check_shape("A_alone_closed_form(params, x)", call(student, "A_alone_closed_form", PARAMS, X), (4,))


def test_A_context_values(student):
    """A(C, x) is the output at the query's (last) position"""
    check_close("A_context(params, cfg, C, x)", call(student, "A_context", PARAMS, CFG, C, X), _A(C, X),
                hint="stack the sequence as [C, x] (query LAST) and take the last row of the attention output")


def test_A_context_no_context(student):
    """with an empty context, A(∅, x) = A(x)"""
    empty = np.zeros((0, 4))
    check_close("A_context(params, cfg, C of shape (0, 4), x)", call(student, "A_context", PARAMS, CFG, empty, X),
                ref.attention(PARAMS, CFG, X[None])[0], hint="np.concatenate handles a (0, D) context")


def test_A_alone_values(student):
    """A(x) is the layer on the length-1 sequence [x], which equals W_o W_v x"""
    expected = ref.attention(PARAMS, CFG, X[None])[0]
    check_close("A_alone(params, cfg, x)", call(student, "A_alone", PARAMS, CFG, X), expected,
                hint="run the same attention on the sequence [x] of length 1 (x[None, :]); do not reuse the last "
                     "row of the full sequence (THEORY §9.2)")
    check_close("A_alone_closed_form(params, x)", call(student, "A_alone_closed_form", PARAMS, X), expected,
                hint="on one token the softmax weight is 1 in every head, so A(x) = W_o (W_v x)")


def test_context_vector_shape(student):
    """ΔA(Y) is a vector of the token space, (D,)"""
    check_shape("context_vector(params, cfg, C, x)", call(student, "context_vector", PARAMS, CFG, C, X), (4,))


def test_context_vector_whole_context(student):
    """ΔA(C) = A(C, x) − A(x) (P1 Eq. 1)"""
    expected = _A(C, X) - ref.attention(PARAMS, CFG, X[None])[0]
    check_close("context_vector(params, cfg, C, x) (Y = C)", call(student, "context_vector", PARAMS, CFG, C, X),
                expected, hint="remove=None means Y = C: subtract A(x), the query alone")


def test_context_vector_subset(student):
    """ΔA(Y) for Y = {c_1, c_3}: the removed tokens are deleted, not zeroed"""
    kept = np.delete(C, [0, 2], axis=0)
    expected = _A(C, X) - _A(kept, X)
    check_close("context_vector(params, cfg, C, x, remove=[0, 2])",
                call(student, "context_vector", PARAMS, CFG, C, X, remove=[0, 2]), expected,
                hint="C\\Y deletes the rows of Y (np.delete). A zeroed row is still a token: it gets softmax "
                     "weight exp(0) and dilutes the others")


def test_context_vector_empty_subset(student):
    """ΔA(∅) = 0: removing nothing changes nothing"""
    check_close("context_vector(params, cfg, C, x, remove=[])",
                call(student, "context_vector", PARAMS, CFG, C, X, remove=[]), np.zeros(4),
                hint="an empty `remove` keeps the whole context")
