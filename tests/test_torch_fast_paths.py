"""The torch backend's fast paths for updates at every position (issue 16), each against the plain computation it
replaces: the alone taps from the attention pass's own value heads, u written into a stack's one buffer, the MLP's
activation in its own buffer, params checked once per call, and one cheap deferred check whose alarms are confirmed
exactly."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'implicit-icl[torch]')")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend, torch_checks, torch_ops  # noqa: E402
from implicit_icl.backends.torch_checks import Checks  # noqa: E402
from implicit_icl.identities import MODERN_CONFIGS  # noqa: E402
from implicit_icl.reference.update import update_from_taps  # noqa: E402

T64 = get_backend("torch", dtype="float64")
T32 = get_backend("torch", dtype="float32")
RNG = np.random.default_rng(16)

CONFIGS = {kind: dict(kind=kind, n_heads=2, activation="gelu", attn_bias=True) for kind in ref.KINDS}
CONFIGS.update({name: dict(cfg) for name, cfg in MODERN_CONFIGS.items()})


def _block(name, d=None, m=10, seed=0):
    kw = dict(CONFIGS[name])
    d = d or (6 if name in MODERN_CONFIGS else 8)
    cfg = ref.BlockConfig(d_model=d, d_mlp=m, **kw)
    return cfg, ref.init_block(cfg, seed, bias_std=0.3, ln_std=0.3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_attention_with_alone_is_attention_and_each_token_alone(name):
    """One pass gives both, bit for bit: the value heads of the attention are each token's whole attention alone."""
    cfg, p = _block(name)
    P = T64.prepare(p, cfg)
    Z = torch.as_tensor(RNG.standard_normal((3, 7, cfg.d_model)))
    A, A_x = torch_ops.attention_with_alone(P, cfg, Z)
    assert torch.equal(A, torch_ops.attention(P, cfg, Z))
    assert torch.equal(A_x, torch_ops.alone_attention(P, cfg, Z))


def test_repeat_kv_repeats_each_kv_head_for_its_group_and_nothing_without_groups():
    cfg = ref.BlockConfig(d_model=8, d_mlp=4, n_heads=4, n_kv_heads=2, kind="gated")
    x = torch.arange(2 * 3).reshape(2, 3)                                  # (kv heads, …)
    assert torch.equal(torch_ops.repeat_kv(cfg, x, 0), x[[0, 0, 1, 1]])
    y = torch.arange(5 * 2).reshape(5, 2)                                  # (…, kv heads)
    assert torch.equal(torch_ops.repeat_kv(cfg, y, -1), y[:, [0, 0, 1, 1]])
    plain = ref.BlockConfig(d_model=8, d_mlp=4, n_heads=4, kind="gated")
    assert torch_ops.repeat_kv(plain, x, 0) is x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_update_from_taps_into_a_stacked_buffer_equals_a_fresh_one(dtype):
    W = torch.randn(12, 5, dtype=dtype)
    a, r, a_x, r_x = (torch.randn(2, 4, 5, dtype=dtype) for _ in range(4))
    want = update_from_taps(W, a, r, a_x, r_x)
    u, other = torch_ops.stacked_buffers([(2, 4, 12), (3, 7)], a)
    assert u.shape == (2, 4, 12) and other.shape == (3, 7) and u.dtype == dtype
    assert u.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()     # one allocation
    got = update_from_taps(W, a, r, a_x, r_x, out=u, ops=torch_ops.OPS)
    assert got.u is u
    for field in ("u", "a", "delta_b"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("query", ["own", "last"])
def test_model_position_updates_are_position_updates_on_the_forward_states(name, query):
    """The stack's one pass (shared attention, u in one buffer, no last head) gives what a user gets block by
    block from model_forward's hidden states, bit for bit."""
    cfg, _ = _block(name)
    blocks = [T64.prepare(p, cfg) for p in ref.init_model(cfg, 3, 1, bias_std=0.3, ln_std=0.3)]
    Z = torch.as_tensor(RNG.standard_normal((2, 6, cfg.d_model)))
    got = T64.model_position_updates(blocks, cfg, Z, query=query)
    Hs = T64.model_forward(blocks, cfg, Z)
    for l, (P, H) in enumerate(zip(blocks, Hs[:-1])):
        want = T64.position_updates(P, cfg, H, query=query)
        for field in ("u", "a", "delta_b"):
            assert torch.equal(getattr(got[l], field), getattr(want, field)), (l, field)


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("kind", ["pre-ln", "gated"])
def test_the_activation_overwrites_only_its_own_buffer_and_keeps_autograd(kind, activation):
    """The MLP's hidden units in its pre-activations' buffer give the same numbers as a fresh one, and where autograd
    needs the buffer (params that require grad) they take a fresh one: the same gradients as the plain MLP."""
    F = torch.nn.functional
    act = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu,
           "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[activation]

    def plain_mlp(P, a):                                                   # the MLP written out, nothing in place
        pre = F.linear(a, P["mlp.W"], P["mlp.b"])
        hidden = act(pre[..., :cfg.d_mlp]) * pre[..., cfg.d_mlp:] if kind == "gated" else act(pre)
        return F.linear(hidden, P["mlp.W_out"], P["mlp.b_out"])

    cfg = ref.BlockConfig(d_model=6, d_mlp=8, n_heads=2, kind=kind, activation=activation)
    P = {k: torch.as_tensor(v) for k, v in ref.init_block(cfg, 0, bias_std=0.3).items()}
    a = torch.as_tensor(RNG.standard_normal((4, 6)))
    with torch.no_grad():
        assert torch.equal(torch_ops.mlp(P, cfg, a), plain_mlp(P, a))      # in place
    grads = []
    for f in (torch_ops.mlp, lambda P, cfg, a: plain_mlp(P, a)):
        Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
        f(Pg, cfg, a).pow(2).sum().backward()
        grads.append({k: v.grad for k, v in Pg.items() if k.startswith("mlp.")})
    for k in grads[1]:
        assert torch.equal(grads[0][k], grads[1][k]), k
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch_ops.activation(cfg, x, overwrite=True).data_ptr() != x.data_ptr()   # autograd needs x
    with torch.no_grad():
        y = torch.randn(3, 5, dtype=torch.float64)
        assert torch_ops.activation(cfg, y, overwrite=True).data_ptr() == y.data_ptr()


def test_a_stack_is_checked_once_per_block_and_once_at_the_end(monkeypatch):
    cfg, _ = _block("pre-ln")
    blocks = ref.init_model(cfg, 3, 0, bias_std=0.3, ln_std=0.3)           # plain NumPy dicts: checked here
    Z = RNG.standard_normal((5, cfg.d_model))
    calls = {"params_like": 0, "expect": 0}
    params_like, expect = torch_checks.params_like, Checks.expect

    def counting_params_like(*args, **kwargs):
        calls["params_like"] += 1
        return params_like(*args, **kwargs)

    def counting_expect(self, *args):
        calls["expect"] += 1
        return expect(self, *args)
    monkeypatch.setattr(torch_checks, "params_like", counting_params_like)
    monkeypatch.setattr(Checks, "expect", counting_expect)
    T64.model_position_updates(blocks, cfg, Z)
    assert calls["params_like"] == 3
    prepared = [T64.prepare(p, cfg) for p in blocks]
    calls.update(params_like=0, expect=0)
    T64.model_position_updates(prepared, cfg, Z)
    assert calls["params_like"] == 0 and calls["expect"] == 2                # Z, then the whole stack
    calls.update(params_like=0)
    T64.model_updates(blocks, cfg, Z)                                        # its forward and per-block updates too
    assert calls["params_like"] == 3


def test_the_stack_check_names_the_first_failing_block_and_position():
    cfg = ref.BlockConfig(d_model=8, d_mlp=10, n_heads=2, kind="plain")
    blocks = ref.init_model(cfg, 2, 0)
    Z = RNG.standard_normal((2, 5, 8))
    Z[1, 3] = 0                                                              # no biases: a_x = 0 there, in block 1
    with pytest.raises(ref.ZeroNormError, match=r"for position 3 of batch element \(1,\)"):
        T64.model_position_updates(blocks, cfg, Z)
    with pytest.raises(ref.ZeroNormError, match=r"for position 3 of batch element \(1,\)"):
        T64.position_updates(blocks[0], cfg, Z)


def test_a_sum_that_overflows_is_a_false_alarm_and_a_nan_is_not():
    """The flags are sums: finite values whose sum overflows are looked at exactly and pass; an inf or a nan raise
    the same error as before, deferred or not."""
    check = Checks(torch.device("cpu"), torch.float32)
    big = torch.full((4, 3), 3e38)
    assert not torch.isfinite(big.sum())
    check.finite("op", u=big)                                                # no error: each value is finite
    check.tensor(big, "Z", (3,))
    with check.one_sync():
        check.finite("op", u=big)
        check.norm(torch.full((2, 3), 1e19), ref.BlockConfig(d_model=3, d_mlp=2, n_heads=1, kind="plain"), "q")
    bad = big.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="op's u overflowed in float32"):
        check.finite("op", u=bad)
    with pytest.raises(ValueError, match=r"Z contains non-finite values"):
        with check.one_sync():
            check.tensor(bad, "Z", (3,))
            check.finite("op", u=bad)
    nan = torch.ones(3)
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="op's delta_b overflowed"):
        with check.one_sync():
            check.finite("op", u=big, delta_b=nan)


def test_the_stack_runs_one_attention_per_block_and_no_last_head(monkeypatch):
    """Structure, not time: the alone taps come from the attention pass (no second pass over the tokens), and the
    last block's output, which no update reads, is not formed."""
    cfg, _ = _block("pre-ln")
    blocks = [T32.prepare(p, cfg) for p in ref.init_model(cfg, 3, 0, bias_std=0.3, ln_std=0.3)]
    counts = {"scaled_dot_product_attention": 0, "head": 0, "alone_attention": 0}
    for module, name in ((torch_ops.F, "scaled_dot_product_attention"), (torch_ops, "head"),
                         (torch_ops, "alone_attention")):
        def wrapped(*args, _fn=getattr(module, name), _name=name, **kwargs):
            counts[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)
    T32.model_position_updates(blocks, cfg, torch.randn(2, 6, cfg.d_model))
    assert counts == {"scaled_dot_product_attention": 3, "head": 2, "alone_attention": 0}


def test_update_from_taps_into_a_numpy_buffer_equals_a_fresh_one():
    """The reference's ``out`` (NumPy's ``matmul(out=)`` through ``reference.layers.matmul_into``)."""
    import numpy as np
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 5))
    a, r, a_x, r_x = (rng.standard_normal((3, 5)) for _ in range(4))
    buf = np.empty((3, 12))
    got, want = update_from_taps(W, a, r, a_x, r_x, out=buf), update_from_taps(W, a, r, a_x, r_x)
    assert got.u is buf and np.array_equal(got.u, want.u) and np.array_equal(got.delta_b, want.delta_b)


def test_model_position_updates_differentiate_like_position_updates():
    """With params or inputs that require grad, every block's u is its own tensor (``matmul(out=)`` has no
    gradient): the gradient of Σ‖u‖² through the stack equals the one through position_updates on each block's
    input, taken from model_forward."""
    cfg = ref.BlockConfig(d_model=8, d_mlp=16, n_heads=2, kind="pre-ln")
    blocks = [{k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
              for p in ref.init_model(cfg, 2, 0, bias_std=0.1, ln_std=0.1)]
    Z = torch.tensor(np.random.default_rng(1).standard_normal((5, 8)), requires_grad=True)
    T = get_backend("torch", dtype="float64")
    ups = T.model_position_updates(blocks, cfg, Z)
    g_fast = torch.autograd.grad(sum((u.u ** 2).sum() for u in ups), [Z, blocks[0]["mlp.W"]])
    Hs = T.model_forward(blocks, cfg, Z)
    slow = [T.position_updates(p, cfg, H) for p, H in zip(blocks, Hs[:-1])]
    g_slow = torch.autograd.grad(sum((u.u ** 2).sum() for u in slow), [Z, blocks[0]["mlp.W"]])
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)     # float64: the same ops in the same order
