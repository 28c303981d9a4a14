"""The compiled path of the torch trajectory (``torch_scan``): where it runs, when it hands a slab back to the eager
step, and that it falls back rather than fails. Its numbers are checked against the reference in the conformance
suite (``test_torch_compiled_scan_matches_reference``); these tests pin the machinery around them."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend, torch_compile, torch_scan  # noqa: E402

needs_compile = pytest.mark.skipif(not torch_compile.compile_available("cpu"),
                                   reason="torch.compile needs a C++ compiler on the CPU")


def _block(d_model: int = 8, seed: int = 0, kind: str = "pre-ln"):
    cfg = ref.BlockConfig(d_model=d_model, d_mlp=16, n_heads=2, kind=kind)
    params = ref.init_block(cfg, seed, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(seed)
    return cfg, params, rng.standard_normal((20, d_model)), rng.standard_normal(d_model)


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@needs_compile
def test_the_compiled_step_is_compiled_once_per_block_and_reused_across_slabs_and_calls():
    """20 tokens in slabs of 4: five full slabs through one graph (the state's strides and aliasing are the same at
    every slab: no recompilation), and a second call compiles nothing. A d_model no other test uses makes the
    block new to this process."""
    cfg, params, C, x = _block(d_model=10)
    tb = get_backend("torch", dtype="float32", compile=True)
    before = _graphs()
    tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm
    assert _graphs() - before == 1
    tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm
    assert _graphs() - before == 1


@needs_compile
@pytest.mark.parametrize("jumps, reruns", [((13,), [4]), ((5, 13), [4, 4])])
def test_a_flagged_slab_is_run_again_by_the_eager_step(monkeypatch, jumps, reruns):
    """A logit that jumps by 100 or more inside a slab (past RISE = 20 inside a cumulative-sum chunk) makes the
    compiled step raise its flag, read once after all slabs ran; each flagged slab alone is re-run by the eager step
    from the state it started from (the state it handed on is right: the slabs after it stand), and the result is
    the reference's."""
    cfg, params, C, x = _block(kind="residual")           # attention reads the tokens as they are (no norm)
    dh = cfg.d_model // cfg.n_heads
    q0 = params["attn.W_q"][:dh] @ x                                             # head 0's query (no biases)
    k_dir = params["attn.W_k"][:dh].T @ q0                                       # the token direction it favours
    for j in jumps:
        C[j] = 200.0 * (1 + j) * k_dir / (k_dir @ k_dir)  # head 0's logit of token j: 100 (1 + j), a new max each
    eager_runs = []
    step = torch_scan.slab_step

    def spy(*args, cfg, keep, fast):
        if not fast:
            eager_runs.append(args[6].shape[-2])
        return step(*args, cfg=cfg, keep=keep, fast=fast)

    monkeypatch.setattr(torch_scan, "slab_step", spy)
    tb = get_backend("torch", dtype="float64", compile=True)
    counts = _slabs_during(lambda: tb.trajectory(params, cfg, C, x, slab=4, keep=True))
    assert eager_runs == reruns                           # the flagged slabs only (4..7, 12..15), run again eagerly
    assert counts == {"compiled": 5 - len(reruns), "rescued": len(reruns), "eager": 0}
    tr, want_all = tb.trajectory(params, cfg, C, x, slab=4, keep=True), ref.trajectory(params, cfg, C, x)
    np.testing.assert_allclose(tr.delta.numpy(), want_all.delta, rtol=1e-12, atol=1e-13)  # the rewritten vectors too
    got = tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm.numpy()
    want = ref.trajectory(params, cfg, C, x).delta_W_norm
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)   # float64 round-off over 20 tokens


def test_a_failing_compile_warns_once_and_runs_that_block_eagerly(broken_compiler):
    """If compiling raises (no compiler, an unsupported op, Dynamo's recompile limit), the trajectory warns once,
    gives the eager numbers exactly, and that block runs eagerly from then on (counted as eager slabs)."""
    cfg, params, C, x = _block()
    tb = get_backend("torch", dtype="float32", compile=True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler in this test"):
        got = tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm
    want = get_backend("torch", dtype="float32").trajectory(params, cfg, C, x, slab=4).delta_W_norm
    assert torch.equal(got, want)
    assert (torch_scan.step_key(cfg, False), "cpu") in torch_compile.FAILED
    before = dict(torch_scan.SLABS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no second warning
        tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm
    assert torch_scan.SLABS["eager"] - before.get("eager", 0) == 5       # 20 tokens in slabs of 4, all eager


def _slabs_during(fn) -> dict:
    before = dict(torch_scan.SLABS)
    fn()
    return {k: torch_scan.SLABS[k] - before.get(k, 0) for k in ("compiled", "rescued", "eager")}


@needs_compile
@pytest.mark.parametrize("kind", ["parallel", "window"])
def test_blocks_whose_steps_are_exactly_zero_keep_the_compiled_numbers(kind):
    """A parallel block's δ and steps are exactly 0 (the MLP never sees the context), and so is every step of a
    sliding-window block outside its window: zero rows are exact, so they must not flag the slab for the eager
    rescue (which made the compiled path slower than the eager one)."""
    cfg, params, C, x = _block()
    if kind == "parallel":
        cfg = ref.BlockConfig(d_model=8, d_mlp=16, n_heads=2, kind="parallel")
    else:
        cfg = ref.BlockConfig(d_model=8, d_mlp=16, n_heads=2, kind="gated", sliding_window=3)
    params = ref.init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    tb = get_backend("torch", dtype="float64", compile=True)
    counts = _slabs_during(lambda: tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm)
    assert counts == {"compiled": 5, "rescued": 0, "eager": 0}
    got = tb.trajectory(params, cfg, C, x, slab=4).step_norm.numpy()
    np.testing.assert_allclose(got, ref.trajectory(params, cfg, C, x).step_norm, rtol=1e-10, atol=1e-14)


@needs_compile
def test_batched_contexts_of_any_length_reuse_one_compiled_step():
    """A batch's slabs are views strided by the context length: passed as they are, every new length recompiled
    (and the recompile limit then turned compiling off). They are made contiguous, so lengths 20, 24 and 28 compile
    one graph, and every full slab keeps the compiled numbers."""
    cfg, params, _, _ = _block(d_model=12)
    tb = get_backend("torch", dtype="float32", compile=True)
    g = torch.Generator().manual_seed(0)
    before = _graphs()
    for n in (20, 24, 28):
        C, x = torch.randn(2, n, 12, generator=g), torch.randn(2, 12, generator=g)
        counts = _slabs_during(lambda: tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm)
        assert counts == {"compiled": n // 4, "rescued": 0, "eager": 0}
    assert _graphs() - before == 1


def test_compile_is_a_checked_option_of_the_torch_backend_only():
    with pytest.raises(ValueError, match="compile must be True or False"):
        get_backend("torch", compile="yes")
    with pytest.raises(ValueError, match="backend 'numpy' takes no option \\['compile'\\]"):
        get_backend("numpy", compile=True)
    cfg, params, C, x = _block()
    with pytest.raises(ValueError, match="compile must be True or False"):
        get_backend("torch").trajectory(params, cfg, C, x, compile=1)


def test_the_eager_trajectory_reads_back_once_and_runs_the_syncing_rescues_only_on_flagged_slabs(monkeypatch):
    """Without compiling, every slab takes the fast step eagerly (no host read-back) and the flags are read once;
    the full step, whose rescues test their rows with a host sync each, runs on the flagged slab alone. Its
    numbers are the reference's."""
    cfg, params, C, x = _block(kind="residual")
    dh = cfg.d_model // cfg.n_heads
    k_dir = params["attn.W_k"][:dh].T @ (params["attn.W_q"][:dh] @ x)
    C[13] = 200.0 * k_dir / (k_dir @ k_dir)               # a logit jump of 100 inside slab 12..15
    syncing = []
    for name in ("prefix_softmax_means", "gram_norm"):    # the forms with a host sync in them
        def spy(*a, real=getattr(torch_scan, name), name=name, **k):
            syncing.append(name)
            return real(*a, **k)
        monkeypatch.setattr(torch_scan, name, spy)
    tb = get_backend("torch", dtype="float64")
    counts = _slabs_during(lambda: tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm)
    assert counts == {"compiled": 0, "rescued": 1, "eager": 4}
    assert syncing == ["prefix_softmax_means", "gram_norm", "gram_norm"]          # the flagged slab's full step
    got = tb.trajectory(params, cfg, C, x, slab=4).delta_W_norm.numpy()
    np.testing.assert_allclose(got, ref.trajectory(params, cfg, C, x).delta_W_norm, rtol=1e-12, atol=1e-14)
