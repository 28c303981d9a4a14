"""The torch backend beyond the conformance scenarios: batching, the O(n·d) scan checked tensor by tensor against
the reference (llm.c style), extreme logits, long contexts in float32, laziness, conversions, devices."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'implicit-icl[torch]')")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend  # noqa: E402
from implicit_icl.backends.torch_backend import Trajectory, Update, layer_norm_increment  # noqa: E402
from implicit_icl.backends.torch_scan import prefix_softmax_means, prefix_softmax_scan  # noqa: E402
from implicit_icl.reference.blocks import sequence  # noqa: E402
from implicit_icl.reference.layers import layer_norm  # noqa: E402

T64 = get_backend("torch", dtype="float64")
T32 = get_backend("torch", dtype="float32")
EPS64 = 2.0 ** -52


def _block(kind="pre-ln", d=6, m=12, heads=2, seed=0, **kw):
    cfg = ref.BlockConfig(d_model=d, d_mlp=m, n_heads=heads, kind=kind, activation="gelu", attn_bias=True, **kw)
    return cfg, ref.init_block(cfg, seed, bias_std=0.3, ln_std=0.3)


def _naive_prefix_means(s, v):
    """float64 softmax means over every prefix, one prefix at a time (the definition)."""
    s, v = np.asarray(s, np.float64), np.asarray(v, np.float64)
    out = np.empty(s.shape + v.shape[-1:])
    for i in range(s.shape[-1]):
        w = np.exp(s[..., : i + 1] - s[..., : i + 1].max(-1, keepdims=True))
        out[..., i, :] = (w[..., None] * v[..., : i + 1, :]).sum(-2) / w.sum(-1)[..., None]
    return out


# --- the scan, tensor by tensor -------------------------------------------------------------------------------

@settings(max_examples=20)
@given(L=st.integers(1, 300), block=st.sampled_from([2, 3, 8, 64]), scale=st.sampled_from([0.1, 3.0, 50.0, 1e4]),
       seed=st.integers(0, 2**16))
def test_prefix_softmax_scan_is_the_running_softmax(L, block, scale, seed):
    """``N_i / D_i`` equals the softmax mean over the prefix, float64 to 64·eps, for logits up to ±1e4."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, L, generator=g, dtype=torch.float64) * scale
    V = torch.randn(2, L, 3, generator=g, dtype=torch.float64)
    m, N = prefix_softmax_scan(s, torch.cat([V, torch.ones(2, L, 1, dtype=torch.float64)], -1), block)
    assert torch.equal(m, torch.cummax(s, -1).values)
    assert bool((N[..., -1] >= 1).all())                       # the running max has weight exactly 1: no 0/0
    got = (N[..., :-1] / N[..., -1:]).numpy()
    np.testing.assert_allclose(got, _naive_prefix_means(s, V), rtol=0, atol=64 * EPS64 * V.abs().max().item())


@settings(max_examples=20)
@given(L=st.integers(1, 400), chunk=st.sampled_from([1, 4, 16, 256]), scale=st.sampled_from([1.0, 30.0, 1e4]),
       seed=st.integers(0, 2**16))
def test_prefix_softmax_means_with_carry(L, chunk, scale, seed):
    """The fast path (cumulative sums per chunk, exact fallback where the max jumps) continues a carry exactly;
    ``p_i (v_i − o_{i−1})`` is the increment ``o_i − o_{i−1}``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, L + 1, generator=g, dtype=torch.float64) * scale
    V = torch.randn(3, L + 1, 4, generator=g, dtype=torch.float64)
    carry = (s[:, 0], V[:, 0], torch.ones(3, dtype=torch.float64))   # token 0 alone
    o, p, (cm, cnum, cden) = prefix_softmax_means(s[:, 1:], V[:, 1:], carry, chunk=chunk)
    want = _naive_prefix_means(s, V)                                  # (3, L+1, 4), row 0 is token 0 alone
    tol = 64 * EPS64 * V.abs().max().item()
    np.testing.assert_allclose(o.numpy(), want[:, 1:], rtol=0, atol=tol)
    np.testing.assert_allclose((p[..., None] * (V[:, 1:] - torch.from_numpy(want[:, :-1]))).numpy(),
                               np.diff(want, axis=1), rtol=0, atol=4 * tol)
    np.testing.assert_allclose((cnum / cden[:, None]).numpy(), want[:, -1], rtol=0, atol=tol)


def test_scan_float32_survives_logits_of_1e4():
    """Logits of ±1e4 in float32 (exp overflows at 88): no nan/inf, and the means match float64."""
    g = torch.Generator().manual_seed(0)
    L = 5000
    s = (torch.rand(4, L, generator=g, dtype=torch.float64) * 2 - 1) * 1e4
    s[:, ::97] += 1e4 * torch.linspace(0, 1, s[:, ::97].shape[1], dtype=torch.float64)   # many jumps of the max
    V = torch.randn(4, L, 3, generator=g, dtype=torch.float64)
    carry = (torch.full((4,), -1e4, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64),
             torch.ones(4, dtype=torch.float64))
    o32, p32, _ = prefix_softmax_means(s.float(), V.float(), tuple(c.float() for c in carry))
    o64, _, _ = prefix_softmax_means(s, V, carry)
    assert bool(torch.isfinite(o32).all()) and bool(torch.isfinite(p32).all())
    # logits of 1e4 are themselves rounded by 1e4·2⁻²⁴ ≈ 6e-4 in float32, so weights can differ by that much
    np.testing.assert_allclose(o32.double().numpy(), o64.numpy(), rtol=0, atol=2e-3 * V.abs().max().item())


@pytest.mark.parametrize("kind", ref.KINDS)
def test_scan_against_reference_tensor_by_tensor(kind):
    """llm.c style: A_i (the query's attention over prefix i), then the taps a_i and r_i, then δ_i, u_i, the steps
    and the norms, each checked against the reference re-running every prefix (float64, 64·eps·scale)."""
    cfg, p = _block(kind, seed=3)
    rng = np.random.default_rng(4)
    C, x = rng.standard_normal((40, 6)), rng.standard_normal(6)
    A_scan = T64.to_numpy(T64.prefix_attention(p, cfg, C, x, slab=7))                     # (n+1, D)
    seqs = [sequence(C[:i], x) for i in range(41)]
    A_ref = np.stack([ref.attention(p, cfg, Z)[-1] for Z in seqs])
    tol = 64 * EPS64
    np.testing.assert_allclose(A_scan, A_ref, rtol=0, atol=tol * np.abs(A_ref).max())
    taps_ref = [ref.taps(p, cfg, Z) for Z in seqs]
    a_ref = np.stack([t[0][-1] for t in taps_ref])
    r_ref = np.stack([t[1][-1] for t in taps_ref])
    tr = T64.trajectory(p, cfg, C, x, slab=7)
    scale = max(np.abs(a_ref).max(), np.abs(r_ref).max())
    np.testing.assert_allclose(T64.to_numpy(tr.a), a_ref[0], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(T64.to_numpy(tr.delta), a_ref - a_ref[0], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(T64.to_numpy(tr.delta_b), r_ref - r_ref[0], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(T64.to_numpy(tr.steps), np.diff(a_ref, axis=0), rtol=0, atol=tol * scale)
    W = p["mlp.W"]
    u_ref = (a_ref - a_ref[0]) @ W.T
    np.testing.assert_allclose(T64.to_numpy(tr.u), u_ref, rtol=0, atol=tol * scale * np.linalg.norm(W, 2))
    norms = np.linalg.norm(u_ref, axis=1) / np.linalg.norm(a_ref[0])
    np.testing.assert_allclose(T64.to_numpy(tr.delta_W_norm), norms, rtol=0, atol=tol * norms.max() * 10)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**16), size=st.sampled_from([1e-9, 1e-4, 1.0]))
def test_layer_norm_increment_is_the_difference_without_cancellation(seed, size):
    """``LN(y+dy) − LN(y)`` from the closed form matches float64 differencing (to eps·|LN|) and, for tiny dy,
    is relatively accurate where differencing in float32 loses every digit."""
    r = np.random.default_rng(seed)
    y, dy, g = r.standard_normal((5, 8)), size * r.standard_normal((5, 8)), 1 + 0.3 * r.standard_normal(8)
    direct = layer_norm(y + dy, g, 0 * g, 1e-5) - layer_norm(y, g, 0 * g, 1e-5)
    got = layer_norm_increment(*(torch.from_numpy(t) for t in (y, dy, g)), 1e-5).numpy()
    np.testing.assert_allclose(got, direct, rtol=0, atol=64 * EPS64 * np.abs(g).max() * 4)
    got32 = layer_norm_increment(*(torch.from_numpy(t).float() for t in (y, dy, g)), 1e-5).double().numpy()
    np.testing.assert_allclose(got32, got, rtol=0, atol=1e-5 * np.abs(got).max() + 1e-30)


# --- long contexts in float32 -------------------------------------------------------------------------------

def test_long_context_float32_matches_float64_and_stays_factored():
    """n = 2^15 tokens (d 32, 4 heads): float32 ‖ΔW_i‖ within 1e-4 relative of float64 (the issue's 1M-token target
    is measured by ``implicit-icl bench``), with W_q scaled so logits reach about ±1e3, and no (n, d_mlp) array is
    formed until asked for."""
    cfg = ref.BlockConfig(d_model=32, d_mlp=128, n_heads=4, kind="plain")
    p = ref.init_block(cfg, 0)
    p["attn.W_q"] = 30.0 * p["attn.W_q"]
    g = torch.Generator().manual_seed(0)
    C = torch.randn(1 << 15, 32, generator=g, dtype=torch.float64)
    x = torch.randn(32, generator=g, dtype=torch.float64)
    t64 = T64.trajectory(p, cfg, C, x)
    t32 = T32.trajectory(p, cfg, C.float(), x.float())
    assert "u" not in t32.__dict__ and "pred_context" not in t32.__dict__           # lazy: O(n·d) so far
    assert all(v.shape[-1] != cfg.d_mlp for v in (t32.delta, t32.delta_b, t32.steps))
    ref_norm = t64.delta_W_norm[1:]
    rel = ((t32.delta_W_norm[1:].double() - ref_norm).abs() / ref_norm).max().item()
    assert rel < 1e-4, rel
    # exact increments and scaled Gram norms: steps of 1e-6·‖ΔW‖ (and far smaller) keep ~1e-5 relative accuracy
    # (differencing would leave ~1e-1). A token whose weight e^{s−max} is below float32's normal range (1e-38)
    # rounds to a subnormal or 0, so steps under 1e-36·max are only held to that absolute floor
    err = (t32.step_norm.double() - t64.step_norm).abs()
    floor = 1e-36 * t64.step_norm.max()
    assert bool((err <= 1e-4 * t64.step_norm + floor).all()), (err / t64.step_norm).max().item()
    assert (t64.step_norm / t64.delta_W_norm[:-1].clamp_min(1e-300)).min().item() < 1e-6   # such tiny steps exist


# --- batching ------------------------------------------------------------------------------------------------

def _device_param(device: str, dtype: str, *more):
    """A ``pytest.param`` for a device (id ``batch-…-<device>-<dtype>``, so the GPU check counts it as a case on
    the device) that skips with a reason where the machine lacks it."""
    missing = device == "cuda" and not torch.cuda.is_available()
    return pytest.param(*more, device, dtype, id="-".join(["batch", *more, device, dtype]), marks=pytest.mark.skipif(
        missing, reason="CUDA is not available on this machine (run scripts/gpu_check.sh on a GPU machine)"))


@pytest.mark.parametrize("kind, device, dtype", [_device_param(d, "float64", k) for k in ("plain", "post-ln", "pre-ln")
                                                 for d in ("cpu", "cuda")])
def test_leading_batch_dimensions_equal_the_reference_per_element(kind, device, dtype):
    """Leading batch dimensions of every core method and of a stack's prefix dynamics, on each device: each batch
    element equals the float64 reference run on that element alone. float64 on both devices, so the tolerance is
    round-off: the values are O(1) and each passes ~10 rounding stages of ≤ 32 terms, so errors are ~1e-15;
    ``1e-12`` absolute leaves 1000× room and still fails any indexing or broadcasting mistake (errors of O(1))."""
    tb = get_backend("torch", device=device, dtype=dtype)
    cfg, p = _block(kind, seed=1)
    rng = np.random.default_rng(2)
    C, X, Z = rng.standard_normal((2, 3, 9, 6)), rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 7, 6))
    tr = tb.trajectory(p, cfg, C, X, slab=4)
    up = tb.implicit_update(p, cfg, C, X, remove=[0, 3])
    out = tb.block_output(p, cfg, C, X)
    pos = tb.position_updates(p, cfg, Z, query="last")
    scfg = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind=kind, attn_bias=True)
    blocks = ref.init_model(scfg, 2, seed=5, bias_std=0.2, ln_std=0.2)
    mtr = tb.model_trajectory(blocks, scfg, C[0], X[0], elements=50)             # batch (3,), chunked pass
    assert tr.delta.device.type == device and tuple(tr.batch_shape) == (2, 3)
    assert tuple(tr.delta.shape) == (2, 3, 10, 6) and tuple(tr.h.shape) == (2, 3)
    close = dict(rtol=0, atol=1e-12)
    for i in range(2):
        for j in range(3):
            c, x = C[i, j], X[i, j]
            want, got = ref.trajectory(p, cfg, c, x), tb.to_numpy(tr[i, j])
            for f in ("delta", "delta_W_norm", "step_norm", "loss", "u", "pred_update"):
                np.testing.assert_allclose(getattr(got, f), getattr(want, f), **close, err_msg=f"{f} of ({i}, {j})")
            np.testing.assert_allclose(tb.to_numpy(up.u[i, j]), ref.implicit_update(p, cfg, c, x, remove=[0, 3]).u,
                                       **close)
            np.testing.assert_allclose(tb.to_numpy(out[i, j]), ref.block_output(p, cfg, c, x), **close)
            np.testing.assert_allclose(tb.to_numpy(pos.u[i, j]), ref.position_updates(p, cfg, Z[i, j], query="last").u,
                                       **close)
    for j in range(3):                                        # the stack: its last prefix is the whole context
        last = ref.model_updates(blocks, scfg, np.vstack([C[0, j], X[0, j]]))
        for layer in range(2):
            np.testing.assert_allclose(tb.to_numpy(mtr[layer].u[j, -1]), last[layer].u, **close)


@pytest.mark.parametrize("device, dtype", [_device_param(d, "float32") for d in ("cpu", "cuda")])
def test_a_batch_of_long_float32_contexts_matches_float64_per_element(device, dtype):
    """A batch of four 20,000-token contexts in float32 on each device (the scan's blocks, batched): ``‖ΔW_i‖``
    of every element within 1e-4 relative of the float64 scan of that element alone (issue 3's accuracy target;
    measured ~4e-7 at 1M tokens)."""
    cfg, p = _block("pre-ln", seed=9)
    g = torch.Generator().manual_seed(9)
    C, X = torch.randn(4, 20_000, 6, generator=g), torch.randn(4, 6, generator=g)
    got = get_backend("torch", device=device, dtype=dtype).trajectory(p, cfg, C, X).delta_W_norm
    assert tuple(got.shape) == (4, 20_001) and got.device.type == device
    for b in range(4):
        want = T64.trajectory(p, cfg, C[b].double(), X[b].double()).delta_W_norm[1:]
        rel = ((got[b, 1:].cpu().double() - want).abs() / want).max().item()
        assert rel < 1e-4, f"batch element {b}: relative error {rel:.2e}"


def test_bad_slab_is_refused():
    """A slab of 0 or less used to skip the scan and return uninitialised memory as ``delta``."""
    cfg, p = _block("plain")
    C, x = np.ones((5, 6)), np.ones(6)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"slab \(context tokens per scan step\) must be a positive int"):
            T64.trajectory(p, cfg, C, x, slab=bad)
        with pytest.raises(ValueError, match=r"slab \(context tokens per scan step\) must be a positive int"):
            T64.prefix_attention(p, cfg, C, x, slab=bad)


def test_default_remove_does_no_host_index_arithmetic(monkeypatch):
    """``remove=None`` (Y = C) keeps no token: it used to build ``arange(n)`` and a set difference on the host at
    every call, O(n log n) CPU work and a host-to-device copy that dominated the per-prefix baseline of the bench."""
    cfg, p = _block("pre-ln")
    rng = np.random.default_rng(0)
    C, x = rng.standard_normal((6, 6)), rng.standard_normal(6)
    want = ref.implicit_update(p, cfg, C, x)

    def boom(*a, **k):
        raise AssertionError("host index arithmetic for remove=None")
    monkeypatch.setattr(np, "setdiff1d", boom)
    got = T64.implicit_update(p, cfg, C, x)
    np.testing.assert_allclose(got.u.numpy(), want.u, rtol=0, atol=1e-13)
    np.testing.assert_allclose(got.delta_b.numpy(), want.delta_b, rtol=0, atol=1e-13)


def test_context_and_query_batches_broadcast():
    cfg, p = _block("residual")
    rng = np.random.default_rng(0)
    C, X = rng.standard_normal((9, 6)), rng.standard_normal((4, 6))
    out = T64.block_output(p, cfg, C, X)                                       # one context, four queries
    for k in range(4):
        np.testing.assert_allclose(out[k].numpy(), ref.block_output(p, cfg, C, X[k]), atol=1e-13)
    with pytest.raises(ValueError, match="broadcastable"):
        T64.block_output(p, cfg, rng.standard_normal((3, 9, 6)), X)


# --- stacks ---------------------------------------------------------------------------------------------------

def test_model_trajectory_is_chunk_size_independent_and_matches_the_last_prefix():
    cfg = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind="pre-ln", attn_bias=True)
    blocks = ref.init_model(cfg, 3, seed=5, bias_std=0.2, ln_std=0.2)
    rng = np.random.default_rng(6)
    C, x = rng.standard_normal((30, 6)), rng.standard_normal(6)
    small = T64.model_trajectory(blocks, cfg, C, x, elements=17)
    big = T64.model_trajectory(blocks, cfg, C, x)
    last = ref.model_updates(blocks, cfg, np.vstack([C, x]))
    for l in range(3):
        np.testing.assert_allclose(small[l].u.numpy(), big[l].u.numpy(), rtol=0, atol=1e-13)
        np.testing.assert_allclose(big[l].u[-1].numpy(), last[l].u, rtol=0, atol=1e-12)
        np.testing.assert_allclose(big[l].delta_b[-1].numpy(), last[l].delta_b, rtol=0, atol=1e-12)
    # block 1's prefix updates are the single-block trajectory's
    tr = T64.trajectory(blocks[0], cfg, C, x)
    np.testing.assert_allclose(big[0].u.numpy(), tr.u.numpy(), rtol=0, atol=1e-12)


def test_model_trajectory_holds_about_elements_logits_at_a_time(monkeypatch):
    """Issue 3: a stack's prefix dynamics in chunks, so memory stays O(n·d). Every softmax the pass takes sees at
    most ``elements`` logits plus each row's own one (the unchunked pass would hold (n+1)·n·H ≈ 18,000 here)."""
    import torch
    cfg = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind="pre-ln", attn_bias=True)
    blocks = ref.init_model(cfg, 2, seed=7, bias_std=0.2, ln_std=0.2)
    rng = np.random.default_rng(8)
    C, x = rng.standard_normal((95, 6)), rng.standard_normal(6)
    seen, softmax = [], torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda t, dim, *a, **k: seen.append(t.numel()) or softmax(t, dim, *a, **k))
    elements = 600
    T64.model_trajectory(blocks, cfg, C, x, elements=elements)
    rows_max = max(1, elements // (len(C) * cfg.n_heads))                 # query rows per chunk at most
    assert len(seen) > 10 and max(seen) <= elements + rows_max * cfg.n_heads, (len(seen), max(seen))


def test_model_trajectory_rejects_non_causal_stacks():
    cfg = ref.BlockConfig(d_model=4, d_mlp=8, causal=False)
    blocks = ref.init_model(cfg, 2)
    with pytest.raises(ValueError, match="model_cfg must be causal"):
        T64.model_trajectory(blocks, cfg, np.ones((3, 4)), np.ones(4))


def test_model_trajectory_allows_a_non_causal_last_block():
    """Only the blocks that feed another block must be causal: the last block's query (its last position) sees
    the whole prefix either way, so a causal stack topped by a bidirectional block has exact prefix dynamics."""
    causal = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind="pre-ln", attn_bias=True)
    cfgs = [causal, causal, ref.BlockConfig(**dict(causal.to_dict(), causal=False))]
    blocks = ref.init_model(causal, 3, seed=7, bias_std=0.2, ln_std=0.2)
    rng = np.random.default_rng(8)
    C, x = rng.standard_normal((11, 6)), rng.standard_normal(6)
    got = T64.model_trajectory(blocks, cfgs, C, x)
    want = get_backend("numpy").model_trajectory(blocks, cfgs, C, x)             # re-runs every prefix
    for l in range(3):
        np.testing.assert_allclose(got[l].u.numpy(), want[l].u, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got[l].delta_b.numpy(), want[l].delta_b, rtol=0, atol=1e-12)


# --- types, conversions, devices -------------------------------------------------------------------------------

def test_update_type_behaves_like_the_reference():
    cfg, p = _block("p1-skip")
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((5, 6))
    pu, pr = T64.position_updates(p, cfg, Z), ref.position_updates(p, cfg, Z)
    assert isinstance(pu, Update) and len(pu) == len(pr) == 5
    np.testing.assert_allclose(pu[2].delta_W.numpy(), pr[2].delta_W, atol=1e-14)
    np.testing.assert_allclose(pu.norm.numpy(), pr.norm, atol=1e-14)
    np.testing.assert_allclose(pu.h.numpy(), pr.h, rtol=1e-14)
    with pytest.raises(TypeError):
        len(pu[0])
    new = T64.apply_update(p, pu[4])
    np.testing.assert_allclose(new["mlp.W"].numpy(), ref.apply_update(p, pr[4])["mlp.W"], atol=1e-14)


def test_trajectory_methods_and_to_numpy():
    cfg, p = _block("post-ln")
    rng = np.random.default_rng(1)
    C, x = rng.standard_normal((6, 6)), rng.standard_normal(6)
    tt, tr = T64.trajectory(p, cfg, C, x), ref.trajectory(p, cfg, C, x)
    assert isinstance(tt, Trajectory) and tt.n == tr.n == 6
    for i in (0, 3, 6):
        np.testing.assert_allclose(tt.W(i).numpy(), tr.W(i), atol=1e-14)
    np.testing.assert_allclose(tt.gradient(2).numpy(), tr.gradient(2), atol=1e-14)
    assert float(tt.prediction_error.max()) < 1e-13
    back = T64.to_numpy(tt)
    assert isinstance(back, ref.Trajectory) and back.u.shape == tr.u.shape


def test_asarray_to_numpy_and_dtypes():
    tb = get_backend("torch", dtype="bfloat16")
    p = ref.init_block(ref.BlockConfig(4, 8), 0)
    tp = tb.asarray(p)
    assert all(v.dtype == torch.bfloat16 for v in tp.values())
    back = tb.to_numpy(tp)
    assert back["mlp.W"].dtype == np.float64                     # NumPy has no bfloat16
    np.testing.assert_allclose(back["mlp.W"], p["mlp.W"], rtol=2.0 ** -8)
    assert get_backend("torch", dtype=torch.float64).dtype == "float64"
    assert get_backend("torch", dtype=np.float32).dtype == "float32"
    with pytest.raises(ValueError, match="x must be a real"):
        tb.asarray(np.array(["a"]))


def test_numpy_backend_takes_torch_results():
    """The numpy backend's ``asarray`` turns the torch backend's ``Update`` (single, batched, a list per block) and
    ``Trajectory`` into the reference's; ``apply_update`` takes the torch one as it is (as the torch backend takes
    the reference's) and refuses anything else naming its class."""
    nb = get_backend("numpy")
    cfg, p = _block("pre-ln")
    rng = np.random.default_rng(3)
    C, x = rng.standard_normal((5, 6)), rng.standard_normal(6)
    tb16 = get_backend("torch", dtype="bfloat16")
    for tb in (T64, tb16):
        tu = tb.implicit_update(p, cfg, C, x)
        nu = nb.asarray(tu)
        assert isinstance(nu, ref.Update) and nu.u.dtype == np.float64 and nu.u.shape == (12,)
        want = tb.to_numpy(tu)
        for f in ("u", "a", "delta_b"):
            np.testing.assert_array_equal(getattr(nu, f), getattr(want, f))
        np.testing.assert_allclose(nb.apply_update(p, nu)["mlp.W"], ref.apply_update(p, want)["mlp.W"], rtol=0,
                                   atol=0)
        np.testing.assert_array_equal(nb.apply_update(p, tu)["mlp.W"], nb.apply_update(p, nu)["mlp.W"])
    with pytest.raises(ValueError, match=r"update must be an Update .* got builtins\.dict"):
        nb.apply_update(p, {"u": 1})
    batched = nb.asarray(T64.position_updates(p, cfg, np.vstack([C, x])))
    assert isinstance(batched, ref.Update) and batched.u.shape == (6, 12)
    per_block = nb.asarray(T64.model_updates([p, p], cfg, np.vstack([C, x])))
    assert isinstance(per_block, list) and all(isinstance(u, ref.Update) for u in per_block)
    np.testing.assert_allclose(per_block[1].u, ref.model_updates([p, p], cfg, np.vstack([C, x]))[1].u, atol=1e-12)
    tr = nb.asarray(T64.trajectory(p, cfg, C, x))
    assert isinstance(tr, ref.Trajectory)
    np.testing.assert_allclose(tr.u, ref.trajectory(p, cfg, C, x).u, atol=1e-12)
    hidden = nb.asarray(T64.model_forward([p, p], cfg, np.vstack([C, x])))
    assert [h.shape for h in hidden] == [(6, 6)] * 3 and all(h.dtype == np.float64 for h in hidden)


def test_missing_device_raises_a_value_error(monkeypatch):
    """On a machine without CUDA (made so here, so that the check also runs on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device must be available"):
        get_backend("torch", device="cuda")


def test_missing_gpu_index_raises_a_value_error(monkeypatch):
    """``cuda:3`` on a one-GPU machine is refused when the backend is made, not with a CUDA error later."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\)"):
        get_backend("torch", device="cuda:3")


@pytest.mark.parametrize("device", ["gpu", 3, "xla", "meta", "cuda:x", "", "cuda:-1", "mps:1", "cpu:1",
                                    "cuda:01", torch.device("cpu", 1), "cuda:99999999999999999999",
                                    torch.device("meta"), torch.device("mps", 1), 1.5])
def test_unknown_device_raises_a_value_error_naming_device(device):
    """Only cpu, cuda, cuda:<i> and mps(:0) are devices of the backend: anything else (a typo, an integer, a device
    type torch knows but the backend cannot compute on) is refused with a ValueError, not torch's RuntimeError."""
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cpu:0', 'cuda', 'cuda:<i>', 'mps'") as err:
        get_backend("torch", device=device)
    assert "device" in str(err.value) and repr(device) in str(err.value)


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu"), "cpu:0", torch.device("cpu", 0)])
def test_cpu_devices_are_accepted(device):
    tb = get_backend("torch", device=device)
    assert tb.device == "cpu" and tb.torch_device == torch.device("cpu")


def test_cuda_and_mps_device_forms_pass_the_name_check(monkeypatch):
    """``cuda``, ``cuda:<i>``, ``mps``, ``mps:0`` and their torch.device twins get past the name check (made
    available here, so the check runs on any machine)."""
    from implicit_icl.backends.torch_backend import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for dev in ("cuda", "cuda:0", "cuda:3", torch.device("cuda"), torch.device("cuda", 2)):
        assert resolve_device(dev) == torch.device(dev)
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        for dev in ("mps", "mps:0", torch.device("mps"), torch.device("mps", 0)):
            assert resolve_device(dev) == torch.device(dev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_trajectory_matches_cpu():
    cfg, p = _block("pre-ln")
    g = torch.Generator().manual_seed(0)
    C, x = torch.randn(5000, 6, generator=g), torch.randn(6, generator=g)
    gpu = get_backend("torch", device="cuda", dtype="float32").trajectory(p, cfg, C, x)
    cpu = T64.trajectory(p, cfg, C.double(), x.double())
    rel = ((gpu.delta_W_norm[1:].cpu().double() - cpu.delta_W_norm[1:]).abs() / cpu.delta_W_norm[1:]).max()
    assert rel.item() < 1e-4


@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_self_attention_uses_a_fused_kernel_for_any_batch_rank(batch):
    """``torch_ops.self_attention`` hands SDPA 4-D tensors whatever the leading dimensions: 3-D or 5-D inputs
    fall back to the math path, which forms the (T × T) logits (O(T²) memory: 2.5 GB at T = 8k, an out-of-memory
    error on long sequences). Restricted to the fused kernel, the call must still run and match the reference."""
    attention = pytest.importorskip("torch.nn.attention", reason="sdpa_kernel needs torch >= 2.3")
    if not hasattr(attention, "sdpa_kernel"):
        pytest.skip("torch.nn.attention.sdpa_kernel needs torch >= 2.3")
    SDPBackend, sdpa_kernel = attention.SDPBackend, attention.sdpa_kernel
    from implicit_icl.backends import torch_ops

    cfg, p = _block("plain", causal=True)
    Z = np.random.default_rng(0).standard_normal((*batch, 7, 6))
    P = T64.asarray(p)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = torch_ops.self_attention(P, cfg, torch.from_numpy(Z)).numpy()
    want = np.stack([ref.attention(p, cfg, z) for z in Z.reshape(-1, 7, 6)]).reshape(Z.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * EPS64 * np.abs(want).max())


@pytest.mark.parametrize("compute_in", ["float32", "bfloat16"])
def test_bfloat16_trajectories_compute_in_float32(compute_in):
    """A bfloat16 backend takes bfloat16 inputs and computes in float32 (``acc_dtype``: projections, taps, softmax
    sums, running means), rounding only its outputs: over 4,096 tokens ‖ΔW_i‖ stays within 0.8·eps(bfloat16) of
    float64 on the same rounded inputs, relative to its largest value (0.32·eps here, 0.31–0.41 over six seeds;
    the output rounding alone allows 0.5). Computing in bfloat16 gives 1.3·eps (1.1–1.9), which the conformance
    tolerance (16·eps, sized for any device's kernels) lets through; this test does not, and runs that mistake to
    show it. (Only the scan's cumulative sums in bfloat16 would hide under the output rounding: 0.318·eps.)"""
    import torch
    cfg = ref.BlockConfig(d_model=16, d_mlp=32, n_heads=2, kind="pre-ln", activation="gelu")
    p = ref.init_block(cfg, 3, bias_std=0.1, ln_std=0.1)
    r = np.random.default_rng(0)
    C, x = r.standard_normal((4096, 16)), r.standard_normal(16)
    b16 = get_backend("torch", dtype="bfloat16")
    pr, Cr, xr = (b16.to_numpy(b16.asarray(v)) for v in (p, C, x))                # the inputs bfloat16 sees
    want = T64.trajectory(pr, cfg, Cr, xr).delta_W_norm
    if compute_in == "bfloat16":                                                    # the mistake, on purpose
        b16.acc_dtype = torch.bfloat16
    got = b16.trajectory(pr, cfg, Cr, xr).delta_W_norm.double()
    err = ((got - want).abs().max() / want.abs().max()).item() / 2.0 ** -7          # in units of eps(bfloat16)
    assert (err <= 0.8) == (compute_in == "float32"), f"error {err:.2f}·eps with {compute_in} sums"


def test_prepared_params_are_checked_once_and_every_call_reads_its_checks_back_once(monkeypatch):
    """Issue 16's structural fix: ``prepare`` checks and converts a params dict once (read-only afterwards), and a
    call settles all of its finiteness and ‖a‖² checks in one host read-back (a sync on a GPU) instead of one per
    parameter and input. Counted on the CPU by the tensor→bool conversions each call makes."""
    cfg = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind="pre-ln", activation="gelu", attn_bias=True)
    p = ref.init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    C, x = np.random.default_rng(0).standard_normal((5, 6)), np.random.default_rng(1).standard_normal(6)
    P = T64.prepare(p, cfg)
    with pytest.raises(TypeError, match="read-only"):
        P["mlp.W"] = P["mlp.W"] * 2
    count = {"n": 0}
    real_bool = torch.Tensor.__bool__

    def counting(t):
        count["n"] += 1
        return real_bool(t)
    monkeypatch.setattr(torch.Tensor, "__bool__", counting)
    for op, args in (("implicit_update", (C, x)), ("block_output", (C, x)), ("position_updates", (np.vstack([C, x]),)),
                     ("block", (np.vstack([C, x]),))):
        for params, syncs in ((P, 1), (p, 1)):
            count["n"] = 0
            got = getattr(T64, op)(params, cfg, *args)
            assert count["n"] == syncs, (op, count["n"])
        want = getattr(ref, op)(p, cfg, *args)
        for g, w in zip(*(flatten_update(v) for v in (T64.to_numpy(got), want))):
            np.testing.assert_allclose(g, w, atol=1e-12)
    monkeypatch.setattr(torch.Tensor, "__bool__", real_bool)
    other = ref.BlockConfig(**dict(cfg.to_dict(), activation="relu"))
    assert T64.check.params(P, other) is not P                   # another config: checked again, not waved through
    nan_C = C.copy()
    nan_C[1, 2] = np.nan
    with pytest.raises(ValueError, match="context contains non-finite"):   # the input's error, though ‖a‖² is 0 too
        T64.implicit_update(P, cfg, nan_C, np.zeros(6))


def flatten_update(v):
    return (v.u, v.a, v.delta_b) if hasattr(v, "u") else (v,)


def test_a_trajectory_forms_its_per_prefix_vectors_only_when_read():
    """Issue 16: the norms are O(n) numbers; delta, delta_b and steps (O(n·d)) are not held unless read (then one
    second scan forms them, equal bit for bit to the ones a keep=True scan writes), so a million-token trajectory
    whose norms alone are read does not hold three (n × d) arrays."""
    cfg = ref.BlockConfig(d_model=6, d_mlp=12, n_heads=2, kind="pre-ln", activation="gelu")
    p = T64.prepare(ref.init_block(cfg, 1, bias_std=0.1, ln_std=0.1), cfg)
    rng = np.random.default_rng(2)
    C, x = rng.standard_normal((2, 40, 6)), rng.standard_normal((2, 6))
    lazy, kept = T64.trajectory(p, cfg, C, x, slab=16), T64.trajectory(p, cfg, C, x, slab=16, keep=True)
    assert lazy.kept == {} and "_rescanned" not in lazy.__dict__ and set(kept.kept) == {"delta", "delta_b", "steps"}
    assert torch.equal(lazy.delta_W_norm, kept.delta_W_norm) and torch.equal(lazy.step_norm, kept.step_norm)
    assert "_rescanned" not in lazy.__dict__                         # reading the norms formed nothing
    for name in ("delta", "delta_b", "steps"):
        assert torch.equal(getattr(lazy, name), getattr(kept, name)), name
        assert torch.equal(getattr(lazy[1], name), getattr(kept[1], name)), name
    np.testing.assert_allclose(lazy[0].u.numpy(), ref.trajectory(ref.init_block(cfg, 1, bias_std=0.1, ln_std=0.1),
                                                                   cfg, C[0], x[0]).u, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e-36, 1e20, 0.0])
def test_gram_norm_is_exact_for_tiny_huge_and_zero_rows_in_float32(scale):
    """‖W y‖ from G = WᵀW: the direct product for ordinary rows, a rescaled one where yᵀGy would underflow (steps of
    1e-25 or 1e-36) or overflow (1e20) in float32; within 1e-5 relative of float64's ‖W y‖ either way."""
    from implicit_icl.backends.torch_scan import gram_norm

    rng = np.random.default_rng(0)
    W, y = rng.standard_normal((12, 6)), rng.standard_normal((5, 6))
    y[2] *= 1e-3                                                    # rows of mixed size in one call
    want = np.linalg.norm((y * scale) @ W.T, axis=-1)               # float64, from W itself
    got, yG = gram_norm(torch.tensor(y * scale, dtype=torch.float32), torch.tensor(W.T @ W, dtype=torch.float32))
    assert np.all(np.isfinite(got.numpy()))
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=0)
    np.testing.assert_allclose(yG.double().numpy(), (y * scale) @ (W.T @ W), rtol=1e-4, atol=1e-45 * scale)


def test_prepared_params_are_a_copy_that_stays_what_was_checked():
    """prepare copies: a NaN written into the caller's tensors afterwards cannot reach the prepared params (the
    unprepared call names it); the copy is read-only (|= too) and copies into a plain dict."""
    import copy

    cfg = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind="pre-ln")
    p = {k: torch.tensor(v) for k, v in ref.init_block(cfg, 0, bias_std=0.1, ln_std=0.1).items()}
    Z = np.random.default_rng(0).standard_normal((5, 4))
    P = T64.prepare(p, cfg)
    before = T64.block(P, cfg, Z)
    p["mlp.W"].fill_(float("nan"))
    assert torch.equal(T64.block(P, cfg, Z), before)
    with pytest.raises(ValueError, match=r"params\['mlp.W'\] contains non-finite values"):
        T64.block(p, cfg, Z)
    with pytest.raises(TypeError, match="read-only"):
        P |= {"mlp.W": P["mlp.W"]}
    assert type(copy.deepcopy(P)) is dict and type(copy.copy(P)) is dict


def test_float16_rms_norm_and_update_norms_do_not_overflow_silently():
    """float16's x² overflows at 256: RMSNorm takes its mean square in float32 (the output stays the float64 one,
    not 0), and an update whose own ‖a‖² (summed in float16) overflows is an overflow error, not h = 0."""
    from implicit_icl.backends import torch_ops

    x = torch.full((2, 6), 300.0, dtype=torch.float16)
    g = torch.ones(6, dtype=torch.float16)
    np.testing.assert_allclose(torch_ops.rms_norm(x, g, 1e-6).float().numpy(), np.ones((2, 6)), rtol=1e-3)
    cfg = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind="residual")
    p = ref.init_block(cfg, 0)
    T16 = get_backend("torch", dtype="float16")
    C, x = np.full((3, 4), 250.0), np.full(4, 250.0)                      # ‖a‖² ≈ 1.9e5 > 65504
    with pytest.raises(ValueError, match="overflowed in float16"):
        T16.implicit_update(p, cfg, C, x)


def test_a_batched_torch_trajectory_is_refused_before_anything_is_formed():
    cfg = ref.BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind="pre-ln")
    p = ref.init_block(cfg, 0)
    rng = np.random.default_rng(1)
    tr = T64.trajectory(p, cfg, rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match="batched Trajectory"):
        get_backend("numpy").asarray(tr)
    assert "_rescanned" not in tr.__dict__ and tr == tr and tr != tr[0]     # identity equality, no array compare


def test_positions_of_a_context_with_removed_tokens_match_the_reference():
    """The torch implicit_update and block_output take the reference's ``positions`` (where [C, x] sits in a longer
    sequence; removal stays a mask): equal to the reference at 1e-12 on a rotary, grouped-query block, and the
    positions matter (other positions give another output)."""
    from implicit_icl.identities import MODERN_CONFIGS

    cfg = ref.BlockConfig(d_model=6, d_mlp=10, **MODERN_CONFIGS["llama-gqa-rotary"])
    p = ref.init_block(cfg, 3, bias_std=0.1, ln_std=0.1)
    rng = np.random.default_rng(4)
    C, x = rng.standard_normal((5, 6)), rng.standard_normal(6)
    pos = np.array([2, 3, 7, 8, 11, 15])
    for remove in (None, np.array([1, 3])):
        want = ref.implicit_update(p, cfg, C, x, remove=remove, positions=pos)
        got = T64.implicit_update(p, cfg, C, x, remove=remove, positions=pos)
        for g, w in zip((got.u, got.a, got.delta_b), (want.u, want.a, want.delta_b)):
            np.testing.assert_allclose(g.numpy(), w, atol=1e-12)
    out = T64.block_output(p, cfg, C, x, positions=pos).numpy()
    np.testing.assert_allclose(out, ref.block_output(p, cfg, C, x, positions=pos), atol=1e-12)
    assert np.abs(out - T64.block_output(p, cfg, C, x).numpy()).max() > 1e-6
    with pytest.raises(ValueError, match="positions must be 6 strictly increasing"):
        T64.block_output(p, cfg, C, x, positions=pos[::-1])
