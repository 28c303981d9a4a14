"""The building blocks: softmax, LayerNorm, GELU, attention masks, and torch_ops against the reference."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from implicit_icl.identities import MODERN_CONFIGS
from implicit_icl.reference import KINDS, BlockConfig, attention, block, gelu, init_block, layer_norm, softmax, taps


def test_softmax_is_stable_for_huge_logits():
    x = np.array([1e4, 1e4 - 1.0, -1e4])
    p = softmax(x)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[:2], [1 / (1 + math.e ** -1), math.e ** -1 / (1 + math.e ** -1)], rtol=1e-14)


def test_gelu_is_the_exact_erf_form():
    xs = np.linspace(-5, 5, 41)
    want = [0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in xs]
    np.testing.assert_allclose(gelu(xs), want, rtol=1e-14, atol=1e-300)


def test_gelu_tanh_is_gpt2s_approximation_and_not_the_erf_form():
    from implicit_icl.reference.layers import gelu_tanh

    xs = np.linspace(-5, 5, 41)
    want = [0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))) for x in xs]
    np.testing.assert_allclose(gelu_tanh(xs), want, rtol=1e-14, atol=1e-15)   # 1 + tanh cancels for x ≪ 0
    gap = np.max(np.abs(gelu_tanh(xs) - gelu(xs)))
    assert 1e-4 < gap < 1e-2                     # close, but a swapped activation is seen at any tolerance we use


def test_layer_norm_normalises():
    x = np.random.default_rng(0).standard_normal((3, 7)) * 5 + 2
    y = layer_norm(x, np.ones(7), np.zeros(7), 0.0)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-14)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-13)


@given(seed=st.integers(0, 1000), t=st.integers(1, 12), kind=st.sampled_from(KINDS))
def test_causal_attention_ignores_future_tokens(seed, t, kind):
    cfg = BlockConfig(d_model=6, d_mlp=8, n_heads=3, kind=kind, causal=True, attn_bias=True)
    p = init_block(cfg, seed, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((t + 3, 6))
    Z2 = Z.copy()
    Z2[t:] = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(block(p, cfg, Z)[:t], block(p, cfg, Z2)[:t])


def test_bidirectional_attention_is_permutation_equivariant():
    cfg = BlockConfig(d_model=6, d_mlp=8, n_heads=2, kind="post-ln", causal=False, attn_bias=True)
    p = init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    Z = np.random.default_rng(0).standard_normal((9, 6))
    perm = np.random.default_rng(1).permutation(9)
    np.testing.assert_allclose(attention(p, cfg, Z)[perm], attention(p, cfg, Z[perm]), atol=1e-14)


def test_heads_with_explicit_width():
    """d_head decouples the head width from d_model (P1's replication: 8 heads × 4 on 3-dim tokens)."""
    cfg = BlockConfig(d_model=3, d_mlp=16, n_heads=8, d_head=4)
    p = init_block(cfg, 0)
    assert p["attn.W_q"].shape == (32, 3) and p["attn.W_o"].shape == (3, 32)
    assert block(p, cfg, np.ones((4, 3))).shape == (4, 3)


def test_taps_of_each_kind():
    """(a, r) for each kind as in DESIGN.md's table, from independent arithmetic."""
    Z = np.random.default_rng(0).standard_normal((5, 4))
    for kind in KINDS:
        cfg = BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind=kind)
        p = init_block(cfg, 1, bias_std=0.1, ln_std=0.1)
        a, r = taps(p, cfg, Z)
        A = attention(p, cfg, Z)
        ln = lambda v, i: layer_norm(v, p[f"ln{i}.g"], p[f"ln{i}.b"], cfg.ln_eps)
        rms = lambda v, i: p[f"ln{i}.g"] * v / np.sqrt((v ** 2).sum(-1, keepdims=True) / v.shape[-1] + cfg.ln_eps)
        want = {"plain": (A, 0 * A), "p1-skip": (A, Z + A), "residual": (Z + A, Z + A),
                "pre-ln": (ln(Z + A, 2) if kind == "pre-ln" else None, Z + A),
                "post-ln": (ln(Z + A, 1) if kind == "post-ln" else None, ln(Z + A, 1) if kind == "post-ln" else None),
                "gated": (rms(Z + A, 2) if kind == "gated" else None, Z + A),
                "parallel": (ln(Z, 2) if kind == "parallel" else None, Z + A)}
        np.testing.assert_allclose(a, want[kind][0], atol=1e-15)
        np.testing.assert_allclose(r, want[kind][1], atol=1e-15)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_torch_activations_match_reference_float64(activation):
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    from implicit_icl.backends import torch_ops
    from implicit_icl.reference.layers import ACTIVATION_FNS

    xs = np.linspace(-6, 6, 97)
    got = torch_ops.activation(BlockConfig(d_model=2, d_mlp=2, activation=activation), torch.tensor(xs)).numpy()
    np.testing.assert_allclose(got, ACTIVATION_FNS[activation](xs), rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
def test_torch_ops_match_reference_float64(kind, causal):
    """llm.c habit: the torch building blocks against the oracle, tensor by tensor (float64, 1e-13 absolute)."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    from implicit_icl.backends import torch_ops

    cfg = BlockConfig(d_model=6, d_mlp=20, n_heads=3, kind=kind, activation="gelu", causal=causal, attn_bias=True)
    p = init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    Z = np.random.default_rng(1).standard_normal((2, 9, 6))
    tp = {k: torch.tensor(v) for k, v in p.items()}
    tZ = torch.tensor(Z)
    for i in range(2):   # batched over a leading dimension
        np.testing.assert_allclose(torch_ops.attention(tp, cfg, tZ)[i].numpy(), attention(p, cfg, Z[i]), atol=1e-13)
        for got, want in zip(torch_ops.taps(tp, cfg, tZ), taps(p, cfg, Z[i])):
            np.testing.assert_allclose(got[i].numpy(), want, atol=1e-13)
        np.testing.assert_allclose(torch_ops.block(tp, cfg, tZ)[i].numpy(), block(p, cfg, Z[i]), atol=1e-13)


MODERN = MODERN_CONFIGS


@pytest.mark.parametrize("name", sorted(MODERN))
def test_torch_ops_match_reference_on_modern_blocks(name):
    """The torch pieces of the modern kinds (rotary, grouped-query heads, q/k norm, sliding window, RMSNorm, gated
    MLP, parallel residual) against the reference, tensor by tensor (float64, 1e-13), at the default positions and at
    the positions of a sequence with tokens removed (a mask: the kept tokens keep their indices)."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    from implicit_icl.backends import torch_ops

    cfg = BlockConfig(d_model=6, d_mlp=10, **MODERN[name])
    p = init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    Z = np.random.default_rng(1).standard_normal((2, 9, 6))
    tp = {k: torch.tensor(v) for k, v in p.items()}
    for positions in (None, np.array([0, 2, 3, 6, 7, 8, 11, 12, 15])):
        for i in range(2):
            tpos = None if positions is None else torch.tensor(positions)
            got = torch_ops.taps(tp, cfg, torch.tensor(Z), tpos)
            for g, want in zip(got, taps(p, cfg, Z[i], positions)):
                np.testing.assert_allclose(g[i].numpy(), want, atol=1e-13)
    np.testing.assert_allclose(torch_ops.block(tp, cfg, torch.tensor(Z))[1].numpy(), block(p, cfg, Z[1]), atol=1e-13)


def test_rotary_positions_matter_and_removal_keeps_them():
    """Rotary attention depends on where the tokens sit: the same rows at other positions give another output, and
    a removed token is a mask (the kept rows keep their indices), so T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x) holds with the
    kept rows at their own positions and fails when they are re-indexed."""
    from implicit_icl.reference import apply_update, block_output, implicit_update
    from implicit_icl.reference.blocks import kept_positions, sequence

    cfg = BlockConfig(d_model=6, d_mlp=10, **MODERN["llama-gqa-rotary"])
    p = init_block(cfg, 2, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(3)
    C, x = rng.standard_normal((7, 6)), rng.standard_normal(6)
    remove = np.array([1, 4])
    kept = np.delete(np.arange(7), remove)
    upd = implicit_update(p, cfg, C, x, remove=remove)
    want = block_output(p, cfg, C, x)
    new = apply_update(p, upd)
    Zk = sequence(C[kept], x)
    got_mask = head_at_last(new, cfg, Zk, kept_positions(kept, 7))
    got_reindexed = head_at_last(new, cfg, Zk, None)
    assert np.abs(got_mask - want).max() < 1e-12 * (1 + np.abs(want).max())
    assert np.abs(got_reindexed - want).max() > 1e-6


def head_at_last(params, cfg, Z, positions):
    from implicit_icl.reference.blocks import head

    a, r = taps(params, cfg, Z, positions)
    return head(params, cfg, a[-1], r[-1])


def test_a_gated_mlp_needs_both_reading_matrices_updated():
    """THEORY §11: in W_down(act(W_gate a) ⊙ (W_up a)) both W_gate and W_up read a, so both get a rank-1 update
    with the same right factor; patching only W_gate (the mistake of public sketches) misses T_W(C, x)."""
    from implicit_icl.reference import apply_update, block_output, implicit_update
    from implicit_icl.reference.update import reading_parts

    cfg = BlockConfig(d_model=6, d_mlp=10, **MODERN_CONFIGS["llama-gqa-rotary"])
    p = init_block(cfg, 4, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(5)
    C, x = rng.standard_normal((6, 6)), rng.standard_normal(6)
    upd = implicit_update(p, cfg, C, x)
    parts = reading_parts(upd, cfg)
    assert set(parts) == {"W_gate", "W_up"} and all(u.shape == (10,) for u in parts.values())
    assert np.linalg.norm(parts["W_up"]) > 1e-3                     # W_up's update is not zero here
    want = block_output(p, cfg, C, x)
    both = block_output(apply_update(p, upd), cfg, C[:0], x)
    gate_only = dict(p, **{"mlp.W": p["mlp.W"] + np.concatenate([upd.delta_W[:10], np.zeros((10, 6))])})
    gate_only["mlp.b_out"] = p["mlp.b_out"] + upd.delta_b
    assert np.abs(both - want).max() < 1e-12 * (1 + np.abs(want).max())
    assert np.abs(block_output(gate_only, cfg, C[:0], x) - want).max() > 1e-4


def test_a_parallel_block_update_is_all_bias():
    """THEORY §11: a parallel block's MLP reads N2 x alone, so u = 0 exactly (not round-off) and Δb = ΔA carries the
    whole context."""
    from implicit_icl.reference import apply_update, attention, block_output, implicit_update

    cfg = BlockConfig(d_model=6, d_mlp=10, **MODERN_CONFIGS["neox-partial-rotary"])
    p = init_block(cfg, 6, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(7)
    C, x = rng.standard_normal((6, 6)), rng.standard_normal(6)
    upd = implicit_update(p, cfg, C, x)
    assert np.all(upd.u == 0.0)
    Z = np.vstack([C, x])
    np.testing.assert_allclose(upd.delta_b, attention(p, cfg, Z)[-1] - attention(p, cfg, x[None])[0], atol=1e-14)
    want = block_output(p, cfg, C, x)
    assert np.abs(block_output(apply_update(p, upd), cfg, C[:0], x) - want).max() < 1e-12 * (1 + np.abs(want).max())
