"""``models.analysis`` reads a model only through its documented interface: a toy causal pre-LN stack of the
reference's own blocks (no BERT, no tokenizer, a different config per layer) gets the same explanation, and its
identities hold to float64 round-off. Runs everywhere (NumPy only)."""
from __future__ import annotations

import numpy as np
import pytest

from implicit_icl.models import analysis
from implicit_icl.reference import BlockConfig, block, implicit_update, init_block, model_forward

TOL = 1e-12


class ToyCausalModel:
    """The analysis interface over two causal pre-LN blocks (GPT-2's kind) with different activations."""

    layer_name = "toy block <l>"

    def __init__(self, seed=0):
        self.configs = (BlockConfig(d_model=8, d_mlp=16, n_heads=2, kind="pre-ln", activation="gelu_tanh"),
                        BlockConfig(d_model=8, d_mlp=12, n_heads=4, kind="pre-ln", activation="relu"))
        self.blocks = tuple(init_block(c, seed + l) for l, c in enumerate(self.configs))
        self.vocab = {w: np.random.default_rng([seed, i]).standard_normal(8) for i, w in enumerate("abcdefgh")}

    def text_hidden_states(self, text):     # no second segment: the analysis passes pair only when given
        tokens = text.split()
        return tokens, model_forward(list(self.blocks), list(self.configs), np.stack([self.vocab[t] for t in tokens]))

    def default_position(self, tokens):
        return len(tokens) - 1


@pytest.fixture(scope="module")
def toy():
    return ToyCausalModel()


def test_causal_context_is_the_rows_before_the_query():
    H = np.arange(12.0).reshape(6, 2)
    _, query, index = analysis.split_query(H, 3, causal=True)
    assert index.tolist() == [0, 1, 2] and query.tolist() == [6.0, 7.0]
    assert analysis.split_query(H, 3)[2].tolist() == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("layer, position", [(0, None), (1, None), (1, 2), (0, 0)])
def test_explain_layer_on_a_causal_model(toy, layer, position):
    text = "a b c d e"
    ex = analysis.explain_layer(toy, text, layer, position)
    tokens, H = toy.text_hidden_states(text)
    p = 4 if position is None else position
    assert (ex.position, ex.context_index.tolist()) == (p, list(range(p)))
    assert ex.identity_error <= TOL * (1 + ex.output_scale)
    cfg, params = toy.configs[layer], toy.blocks[layer]
    # the update is the reference's for the rows the query sees, and it reproduces the model's row p
    ref = implicit_update(params, cfg, H[layer][:p], H[layer][p])
    np.testing.assert_allclose(ex.update.u, ref.u, rtol=0, atol=TOL)
    np.testing.assert_allclose(block(params, cfg, H[layer][:p + 1])[-1], H[layer + 1][p], rtol=0, atol=TOL)
    assert ex.update.u.shape == (cfg.d_mlp,) and ex.marginal_norm.shape == (p,)
    for j in range(p):      # each marginal is the reference's update removing c_j alone
        one = implicit_update(params, cfg, H[layer][:p], H[layer][p], remove=[j])
        assert abs(ex.marginal_norm[j] - float(one.norm)) <= TOL * (1 + float(one.norm))
    if p:
        assert ex.dynamics.prediction_error.max() <= TOL * (1 + ex.output_scale)


def test_explain_all_layers_composes_on_a_causal_model(toy):
    ex = analysis.explain_all_layers(toy, "a b c d e f", 3)
    assert ex.composed_error <= TOL * (1 + ex.output_scale)
    assert np.all(ex.layer_errors <= TOL * (1 + ex.layer_scales))
    assert [u.u.shape[0] for u in ex.updates] == [16, 12]          # each layer's own config


def test_text_trajectories_and_errors_name_the_model(toy):
    tokens, traj, base = analysis.text_trajectories(toy, "a b c d", 1, baseline_seed=2)
    assert tokens == ["a", "b", "c", "d"] and traj.n == 3 and base.n == 3
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\) \(toy block <l>\), got 2"):
        analysis.explain_layer(toy, "a b", 2)
    with pytest.raises(ValueError, match="position must be an int"):
        analysis.explain_layer(toy, "a b", 0, 5)
