"""Crossing between the reference, the numpy backend and the torch backend: what converts, what is refused by name,
and results that must never be silently wrong (a batched trajectory read as one, an overflow read as a number)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'implicit-icl[torch]')")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend  # noqa: E402

T64 = get_backend("torch", dtype="float64")
T32 = get_backend("torch", dtype="float32")
NB = get_backend("numpy")
RNG = np.random.default_rng(0)


def _block(kind="residual", d=4, m=8, **kw):
    cfg = ref.BlockConfig(d_model=d, d_mlp=m, kind=kind, **kw)
    return ref.init_block(cfg, seed=1), cfg


def test_a_batched_trajectory_is_not_read_as_one_context():
    """The reference's Trajectory has the prefix on axis 0: a batch of two read as one had n = 1 and indexed the
    batch in update(i). Refused by name in both directions; one context of the batch converts exactly."""
    p, cfg = _block()
    C, x = RNG.standard_normal((2, 7, 4)), RNG.standard_normal((2, 4))
    tr = T64.trajectory(p, cfg, C, x)
    for convert in (T64.to_numpy, NB.asarray):
        with pytest.raises(ValueError, match=r"batched Trajectory \(batch shape \(2,\)\)"):
            convert(tr)
    one = T64.to_numpy(T64.trajectory(p, cfg, C[1], x[1]))
    want = ref.trajectory(p, cfg, C[1], x[1])
    assert one.n == want.n == 7
    np.testing.assert_allclose(one.update(3).delta_W, want.update(3).delta_W, rtol=1e-12, atol=1e-14)


def test_reference_objects_pass_through_to_numpy_and_a_trajectory_is_not_an_array():
    p, cfg = _block()
    C, x = RNG.standard_normal((5, 4)), RNG.standard_normal(4)
    tr, upd = ref.trajectory(p, cfg, C, x), ref.implicit_update(p, cfg, C, x)
    assert T64.to_numpy(tr) is tr and T64.to_numpy(upd) is upd
    with pytest.raises(ValueError, match="x is a Trajectory: asarray converts arrays, params dicts and Updates"):
        T64.asarray(tr)


def test_the_reference_reads_torch_inputs_and_names_torch_params():
    """Inputs that require grad or are bfloat16 are read (detached, as float64); a dict of tensors is refused with
    the way to convert it, not torch's dtype RuntimeError."""
    p, cfg = _block("pre-ln")
    C, x = RNG.standard_normal((5, 4)), RNG.standard_normal(4)
    want = ref.block_output(p, cfg, C, x)
    Ct = torch.tensor(C, requires_grad=True)
    np.testing.assert_array_equal(ref.block_output(p, cfg, Ct, torch.tensor(x)), want)
    xb = torch.tensor(x).bfloat16()
    np.testing.assert_array_equal(ref.block_output(p, cfg, C, xb), ref.block_output(p, cfg, C, xb.double().numpy()))
    with pytest.raises(ValueError, match=r"params\['attn.W_q'\] is a torch tensor.*convert the dict first"):
        ref.block_output(T32.asarray(p), cfg, C, x)


@pytest.mark.parametrize("kind", ref.KINDS)
def test_an_empty_sequence_gives_an_empty_output_in_both(kind):
    p, cfg = _block(kind, n_heads=2)
    Z = np.zeros((0, 4))
    for f in ("block", "attention"):
        got = getattr(ref, f)(p, cfg, Z)
        assert got.shape == (0, 4), f
        assert tuple(getattr(T64, f)(p, cfg, Z).shape) == (0, 4), f


def test_a_zero_norm_error_names_the_batch_element():
    p, cfg = _block("plain", d=8, m=16)
    x = RNG.standard_normal(8)
    with pytest.raises(ref.ZeroNormError, match=r"for the query of batch element \(2,\)"):
        T64.implicit_update(p, cfg, RNG.standard_normal((5, 8)), np.stack([x, x, np.zeros(8)]))
    Z = RNG.standard_normal((2, 3, 5, 8))
    Z[1, 2, 3] = 0
    with pytest.raises(ref.ZeroNormError, match=r"for position 3 of batch element \(1, 2\)"):
        T64.position_updates(p, cfg, Z)


@pytest.mark.parametrize("op", ["block", "block_output", "implicit_update", "position_updates", "trajectory"])
def test_a_float32_overflow_is_an_error_not_a_silent_nan(op):
    """Context rows of 1e20 are finite in float32, but LayerNorm's variance (1e40) is not: every result was nan.
    The reference (float64) is finite there; float32 says what happened."""
    p, cfg = _block("pre-ln")
    C, x = RNG.standard_normal((5, 4)) * 1e20, RNG.standard_normal(4)
    args = {"block": (np.concatenate([C, x[None]]),), "position_updates": (np.concatenate([C, x[None]]),)}.get(op, (C, x))
    assert np.all(np.isfinite(np.asarray(getattr(ref, op)(p, cfg, *args).u if op in ("implicit_update",
                                                                                          "position_updates")
                                         else getattr(ref, op)(p, cfg, *args).delta_W_norm if op == "trajectory"
                                         else getattr(ref, op)(p, cfg, *args))))
    with pytest.raises(ValueError, match="overflowed in float32.*dtype=.float64."):
        getattr(T32, op)(p, cfg, *args)
    getattr(T64, op)(p, cfg, *args)                                        # float64 has the range


def test_updates_cross_to_the_reference_and_torch_params_stay_torch():
    p, cfg = _block("pre-ln")
    C, x = RNG.standard_normal((5, 4)), RNG.standard_normal(4)
    tu = T64.implicit_update(p, cfg, C, x)
    new = ref.apply_update(p, tu)                                          # was "must be an Update, got Update"
    np.testing.assert_allclose(new["mlp.W"], ref.apply_update(p, ref.implicit_update(p, cfg, C, x))["mlp.W"],
                               rtol=1e-13)
    with pytest.raises(ValueError, match=r"update must be an Update \(u, a, delta_b\), got builtins.int"):
        ref.apply_update(p, 3)
    mixed = T64.apply_update(p, tu)                                        # NumPy params in, torch params out
    assert all(isinstance(v, torch.Tensor) for v in mixed.values())


def test_float16_trajectory_fields_are_checked_in_the_output_dtype():
    """The check runs after the cast to the output dtype: float16 (max 65504) overflowed in grad_norm = step·‖a‖²
    while the float32 accumulators were finite, and came back as inf without an error."""
    p, cfg = _block("plain")
    C, x = RNG.standard_normal((6, 4)) * 300, RNG.standard_normal(4) * 300
    with pytest.raises(ValueError, match="trajectory's .* overflowed in float16"):
        get_backend("torch", dtype="float16").trajectory(p, cfg, C, x)
    tr = T32.trajectory(p, cfg, C, x)                                       # float32 has the range
    assert torch.isnan(tr.relative_change[0]) and torch.isfinite(tr.grad_norm).all()


def test_float16_trajectory_taps_are_checked_too():
    """a = A(x) itself can overflow float16 (W_v, W_o scaled up, entries of 6e4): block_output and implicit_update
    said so, trajectory returned a = ±inf silently."""
    p, cfg = _block("plain")
    p = dict(p, **{"attn.W_v": p["attn.W_v"] * 20, "attn.W_o": p["attn.W_o"] * 20})
    x = RNG.standard_normal(4)
    x = x * (6e4 / np.abs(x).max())
    with pytest.raises(ValueError, match=r"trajectory's a overflowed in float16"):
        get_backend("torch", dtype="float16").trajectory(p, cfg, np.tile(x, (5, 1)), x)


def test_a_batched_trajectory_indexes_its_contexts():
    """tr[b] is context b's trajectory (what the batch was run for), and converts to the reference's."""
    p, cfg = _block("pre-ln")
    C, x = RNG.standard_normal((2, 3, 6, 4)), RNG.standard_normal((2, 3, 4))
    tr = T64.trajectory(p, cfg, C, x)
    assert tr.batch_shape == (2, 3) and tr[1].batch_shape == (3,) and tr[1, 2].batch_shape == ()
    assert tr[0:1].batch_shape == (1, 3)
    one = T64.to_numpy(tr[1, 2])
    want = ref.trajectory(p, cfg, C[1, 2], x[1, 2])
    for f in ("delta_W_norm", "step_norm", "loss", "h"):
        np.testing.assert_allclose(getattr(one, f), getattr(want, f), rtol=1e-12, atol=1e-15, err_msg=f)
    np.testing.assert_allclose(T64.to_numpy(tr[1][2].pred_update), want.pred_update, rtol=1e-12, atol=1e-14)
    with pytest.raises(IndexError, match="holds one context"):
        tr[1, 2][0]
    with pytest.raises(IndexError, match=r"batch dimensions \(2, 3\) only"):
        tr[1, 2, 0]
    with pytest.raises(ValueError, match=r"to_numpy\(tr\[b\]\)"):
        T64.to_numpy(tr)


@pytest.mark.parametrize("op", ["implicit_update", "position_updates"])
def test_an_overflow_in_u_alone_is_caught(op):
    """u = W(a_C − a_x) overflows float32 with W of 1e38 while a, r and delta_b are finite: u was returned inf."""
    p, cfg = _block("plain")
    p = dict(p, **{"mlp.W": np.sign(p["mlp.W"]) * 1e38})
    Z = RNG.standard_normal((6, 4)) * 100
    args = (Z,) if op == "position_updates" else (Z[:-1], Z[-1])
    with pytest.raises(ValueError, match=f"{op}'s u overflowed in float32"):
        getattr(T32, op)(p, cfg, *args)


def test_a_batched_trajectory_refuses_new_axes():
    p, cfg = _block()
    tr = T64.trajectory(p, cfg, RNG.standard_normal((2, 5, 4)), RNG.standard_normal((2, 4)))
    for index in (None, (0, None), Ellipsis):
        with pytest.raises(IndexError, match="batch dimensions"):
            tr[index]
