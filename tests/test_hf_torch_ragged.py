"""``models.hf_torch_ragged``: a ragged batch of ``TorchModel`` runs in length buckets (``length_buckets``: sorted by
length, each bucket's padded tokens ``B_g · T_g ≤ (1 + slack) · Σ len_b``), and its results come back in the caller's
order, each equal to its prompt run alone.

Tolerance: float64 to ``1e-12`` of the values' scale (``test_hf_torch.close``). The bucketed batch and the prompt
alone run the same operations on the same real rows; only the batch shape differs, so a matmul may block and sum in
another order: a round-off of a few eps (2.2e-16) per operation over two tiny layers, far below 1e-12 (~4500 eps),
while a real fault — a pad attended to, a position shifted, a result given to another prompt — is an error of order 1
(or a shape mismatch).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from implicit_icl.models.hf_torch_ragged import SLACK, in_buckets, length_buckets, padded

torch = pytest.importorskip("torch")

from implicit_icl.models.hf_torch import TorchModel  # noqa: E402
from test_hf_torch import _same_update, close, np64, tiny  # noqa: E402,F401 (tiny: the fixture)

#: very different lengths, out of order: sorting (longest first) gives 40, 38 | 5, 4, 3
LENGTHS = [3, 40, 5, 38, 4]


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50, n) for n in lengths]


def _padded_tokens(lengths, buckets):
    return sum(len(g) * max(lengths[i] for i in g) for g in buckets)


# the rule ----------------------------------------------------------------------------------------------------------
def test_length_buckets_on_examples():
    """Longest first, ties in input order; equal lengths are one bucket; ``slack`` 0 is one bucket per length and
    ``inf`` one bucket of everything; the example's padding drops from 5 · 40 = 200 tokens to 95 (real: 90)."""
    assert length_buckets(LENGTHS) == [[1, 3], [2, 4, 0]]
    assert _padded_tokens(LENGTHS, length_buckets(LENGTHS)) == 2 * 40 + 3 * 5 == 95
    assert length_buckets([7] * 5) == [[0, 1, 2, 3, 4]] and length_buckets([9]) == [[0]] and length_buckets([]) == []
    assert length_buckets([4, 6, 4, 6], slack=0) == [[1, 3], [0, 2]]
    assert length_buckets(LENGTHS, slack=math.inf) == [[1, 3, 2, 4, 0]]
    # the bound is inclusive: 5, 4, 3 pad to 15 = 1.25 · 12 tokens; one more short prompt would exceed it
    assert length_buckets([5, 4, 3, 3]) == [[0, 1, 2], [3]]
    assert length_buckets(np.array([2, 2, 1]), slack=0.5) == [[0, 1, 2]]              # 6 ≤ 1.5 · 5


@given(st.lists(st.integers(1, 200), max_size=40), st.sampled_from([0.0, 0.1, SLACK, 1.0]))
def test_length_buckets_partition_and_bound(lengths, slack):
    """Every index exactly once; each bucket within ``(1 + slack)`` of its real tokens (so is the whole batch);
    buckets in decreasing length, each greedy (its successor's first prompt would break its bound); at most one
    bucket per distinct length and ``1 + log(T_max / T_min) / log(1 + slack)`` buckets."""
    buckets = length_buckets(lengths, slack)
    assert sorted(i for g in buckets for i in g) == list(range(len(lengths)))
    for g in buckets:
        assert len(g) * max(lengths[i] for i in g) <= (1 + slack) * sum(lengths[i] for i in g) + 1e-9
    assert _padded_tokens(lengths, buckets) <= (1 + slack) * sum(lengths) + 1e-9
    flat = [lengths[i] for g in buckets for i in g]
    assert flat == sorted(lengths, reverse=True)
    for g, nxt in zip(buckets, buckets[1:]):
        T, real = lengths[g[0]], sum(lengths[i] for i in g)
        assert (len(g) + 1) * T > (1 + slack) * (real + lengths[nxt[0]])
    if lengths:
        assert len(buckets) <= len(set(lengths))
        if slack > 0:
            assert len(buckets) <= 1 + math.log(max(lengths) / min(lengths)) / math.log(1 + slack) + 1e-9


def test_length_buckets_refuses_bad_arguments_by_name():
    for lengths, slack, match in (([3, 0], SLACK, "lengths must be positive"), ([3], -0.1, "slack must be"),
                                  ([3], math.nan, "slack must be"), ([3], "0.25", "slack must be"),
                                  ([3], True, "slack must be")):
        with pytest.raises(ValueError, match=match):
            length_buckets(lengths, slack)
    assert length_buckets([3, 2], np.float32(0.5)) == length_buckets([3, 2], 0.5)     # NumPy reals are numbers


def test_in_buckets_restores_the_callers_order():
    """``run`` sees each bucket longest first; the results come back in the order of ``rows``."""
    rows = _prompts(LENGTHS)
    seen = []

    def run(group):
        seen.append([len(r) for r in group])
        assert padded(group).shape == (len(group), len(group[0]))
        return [len(r) for r in group]
    assert in_buckets(rows, run) == LENGTHS and seen == [[40, 38], [5, 4, 3]]
    with pytest.raises(RuntimeError, match="a bucket of 2 prompts gave 1 results"):
        in_buckets(rows, lambda group: [0])


# the model ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "gemma2"])        # rotary + GQA; sliding windows, soft-caps
def test_very_different_lengths_equal_each_prompt_alone(tiny, name, monkeypatch):
    """Lengths 3, 40, 5, 38, 4 run as two padded batches, (2, 40) and (3, 5), not one (5, 40); each prompt's
    embeddings, hidden states, logits, every-position updates (both queries) and last-token updates are those of
    the prompt alone, in the caller's order, float64 to 1e-12 of the values' scale (module docstring)."""
    model = tiny(name)
    tm = TorchModel(model, "float64")
    prompts = _prompts(LENGTHS)
    shapes = []
    embed_ids = tm._embed_ids
    monkeypatch.setattr(tm, "_embed_ids", lambda ids: shapes.append(tuple(ids.shape)) or embed_ids(ids))
    H, logits, H0 = tm.hidden_states(prompts), tm.logits(prompts), tm.embed(prompts)
    own, last_query = tm.position_updates(prompts), tm.position_updates(prompts, query="last")
    last = tm.last_token_updates(prompts)
    assert shapes == [(2, 40), (3, 5)] * 6
    alone = TorchModel(model, "float64")
    for b, (prompt, n) in enumerate(zip(prompts, LENGTHS)):
        close(H0[b], np64(alone.embed(prompt)), f"{name} prompt {b} H⁰")
        want_H = alone.hidden_states(prompt)
        assert len(H[b]) == len(want_H) == model.n_layers + 1
        for l, h in enumerate(want_H):
            assert H[b][l].shape == h.shape == (n, model.parts.tokens.shape[1])
            close(H[b][l], np64(h), f"{name} prompt {b} H^{l}")
        assert logits[b].shape == (n, model.lm_head.shape[0])
        close(logits[b], np64(alone.logits(prompt)), f"{name} prompt {b} logits")
        wants = alone.position_updates(prompt), alone.position_updates(prompt, "last"), alone.last_token_updates(prompt)
        for got, want, what in zip((own, last_query, last), wants, ("own", "last", "last-token")):
            assert len(got[b]) == model.n_layers
            for l in range(model.n_layers):
                _same_update(got[b][l], want[l], f"{name} prompt {b} layer {l} {what}")


def test_outputs_follow_the_input_order(tiny):
    """Lengths whose sorted order is not the input order (the buckets run 40, 38 | 5, 4, 3): each output has its own
    prompt's length, which the sorted order would not give; a permuted input gives the same results permuted, bit
    for bit (distinct lengths: the same buckets run in the same order)."""
    tm = TorchModel(tiny("llama"), "float64")
    prompts = _prompts(LENGTHS)
    run_order = [i for g in length_buckets(LENGTHS) for i in g]
    assert run_order != list(range(len(LENGTHS)))
    logits, last = tm.logits(prompts), tm.last_token_updates(prompts)
    assert [x.shape[0] for x in logits] == LENGTHS != [LENGTHS[i] for i in run_order]
    for b, prompt in enumerate(prompts):
        close(last[b][-1].u, np64(tm.last_token_updates(prompt)[-1].u), f"prompt {b} last-token u")
    perm = [2, 0, 4, 1, 3]
    p_logits, p_last = tm.logits([prompts[i] for i in perm]), tm.last_token_updates([prompts[i] for i in perm])
    for k, i in enumerate(perm):
        assert torch.equal(p_logits[k], logits[i])
        assert all(torch.equal(a.u, b.u) and torch.equal(a.delta_b, b.delta_b) for a, b in zip(p_last[k], last[i]))


@pytest.mark.parametrize("slack", [0.0, math.inf])
def test_the_buckets_do_not_change_the_numbers(tiny, slack):
    """GPT-2 (learned positions): one bucket per length (``ragged_slack`` 0) and one padded batch (``inf``, the
    former behaviour) give the default buckets' results to 1e-12; equal lengths make one batch at any slack."""
    tm = TorchModel(tiny("gpt2"), "float64")
    prompts = _prompts([3, 16, 5, 14, 4, 16])
    default_H, default_ups = tm.hidden_states(prompts), tm.position_updates(prompts)
    tm.ragged_slack = slack
    H, ups = tm.hidden_states(prompts), tm.position_updates(prompts)
    for b in range(len(prompts)):
        for l, h in enumerate(default_H[b]):
            close(H[b][l], np64(h), f"slack {slack} prompt {b} H^{l}")
        for l, up in enumerate(default_ups[b]):
            _same_update(ups[b][l], up, f"slack {slack} prompt {b} layer {l}")
    shapes = []
    embed_ids = tm._embed_ids
    tm._embed_ids = lambda ids: shapes.append(tuple(ids.shape)) or embed_ids(ids)
    tm.logits(_prompts([6, 6, 6]))
    assert shapes == [(3, 6)]


def test_the_last_query_runs_prompts_of_one_length_as_one_batch(tiny, monkeypatch):
    """With ``query="last"`` each prompt's query is its own last token: the prompts of one length in a bucket run as
    one batched call per layer (here lengths 5, 4, 5, 5 in one bucket: two calls per layer, not four), each equal to
    its prompt alone (float64, 1e-12 of the scale); so do the last-token updates, batched the same way."""
    from implicit_icl.backends.torch_backend import TorchBackend
    model = tiny("llama")
    tm = TorchModel(model, "float64")
    prompts = _prompts([5, 4, 5, 5])
    batches = []
    call = TorchBackend.position_updates
    monkeypatch.setattr(TorchBackend, "position_updates",
                        lambda self, P, c, Z, query="own": batches.append(tuple(Z.shape[:-1])) or call(self, P, c, Z,
                                                                                                       query))
    got = tm.position_updates(prompts, query="last")
    assert batches == [(3, 5), (1, 4)] * model.n_layers
    monkeypatch.undo()
    last = tm.last_token_updates(prompts)
    for b, prompt in enumerate(prompts):
        alone = TorchModel(model, "float64")
        want, want_last = alone.position_updates(prompt, "last"), alone.last_token_updates(prompt)
        for l in range(model.n_layers):
            _same_update(got[b][l], want[l], f"prompt {b} layer {l}")
            _same_update(last[b][l], want_last[l], f"prompt {b} layer {l} last-token")
