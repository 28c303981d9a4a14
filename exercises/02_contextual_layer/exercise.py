"""Exercise 2: the contextual layer A(C, x) and A(x) (your file).

Replace every `raise NotImplementedError` with your code, then run
    implicit-icl exercises check 2
or  pytest exercises/02_contextual_layer

P1 §2 (arXiv 2507.16003): a contextual layer maps a query x alone to A(x) and a context C = [c_1..c_n] plus x to
A(C, x) := A([C, x]), the output at the position of x (the last token). The context vector of a subset Y ⊆ C is
ΔA(Y) = A(C, x) − A(C\\Y, x), where C\\Y keeps the order of the remaining tokens.

You may use ``attention(params, cfg, Z)`` from the reference (imported below) — the multi-head causal attention
at every position of Z, (T, D) → (T, D). (Exercise 1's ``self_attention`` is single-head; the grader's
block has two heads, so use ``attention``.)
"""
import numpy as np

from implicit_icl.reference import attention


def A_context(params, cfg, context, query):
    """A(C, x): the attention output at the query's position of the sequence [C, x].

    context: (n, D), n ≥ 0 (n = 0 means no context); query: (D,). Returns (D,).
    """
    raise NotImplementedError  # your code here


def A_alone(params, cfg, query):
    """A(x) = A([x]): the same layer run on the length-1 sequence [x]. query: (D,). Returns (D,)."""
    raise NotImplementedError  # your code here


def A_alone_closed_form(params, query):
    """A(x) without running attention: on one token every softmax weight is 1, so A(x) = W_o W_v x
    (no attention biases; THEORY §10.7). query: (D,). Returns (D,)."""
    raise NotImplementedError  # your code here


def context_vector(params, cfg, context, query, remove=None):
    """ΔA(Y) = A(C, x) − A(C\\Y, x) (P1 Eq. 1 for Y = C).

    remove: the indices of Y in the context (a list of ints); None means Y = C (the whole context).
    C\\Y deletes those tokens (np.delete) and keeps the order of the others. Returns (D,).
    """
    raise NotImplementedError  # your code here
