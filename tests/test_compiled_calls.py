"""The compiled block calls of the torch backend (``compile=True``: ``block``, ``position_updates``,
``model_forward``, ``model_position_updates``; ``torch_compile``): when they run compiled, that they fall back rather
than fail, and that they are compiled once. Their numbers are checked against the reference in the conformance suite
(``test_torch_compiled_calls_match_reference``); these tests pin the machinery around them."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend, torch_compile  # noqa: E402
from implicit_icl.bench.common import calls_on  # noqa: E402

needs_compile = pytest.mark.skipif(not torch_compile.compile_available("cpu"),
                                   reason="torch.compile needs a C++ compiler on the CPU")


def _stack(d_model: int, kind: str = "pre-ln", layers: int = 2):
    cfg = ref.BlockConfig(d_model=d_model, d_mlp=2 * d_model, n_heads=2, kind=kind)
    blocks = ref.init_model(cfg, layers, 0, bias_std=0.1, ln_std=0.1)
    return cfg, blocks, np.random.default_rng(0).standard_normal((2, 7, d_model))


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@needs_compile
def test_each_call_is_compiled_once_per_block_config_and_query_and_reused():
    """Two blocks of one config share one graph per call (the params are its inputs), and calling again compiles
    nothing: a d_model no other test uses makes the config new to this process. The stack's updates compile two
    graphs (every block but the last also hands its output on)."""
    cfg, blocks, Z = _stack(d_model=14)
    tb = get_backend("torch", dtype="float32", compile=True)
    before, compiled = _graphs(), calls_on("compiled")
    tb.model_position_updates(blocks, cfg, Z)
    tb.model_forward(blocks, cfg, Z)
    assert _graphs() - before == 3                   # updates with and without the hand-on, and the forward
    assert calls_on("compiled") - compiled == 4        # each block of each call ran compiled
    tb.model_position_updates(blocks, cfg, Z)
    tb.model_forward(blocks, cfg, Z)
    assert _graphs() - before == 3


def test_a_failing_compile_warns_once_and_runs_that_call_eagerly(broken_compiler):
    """If compiling raises (no compiler, an unsupported op, Dynamo's recompile limit), the call warns once, gives
    the eager numbers exactly, and that block config runs eagerly from then on (counted as eager calls)."""
    cfg, blocks, Z = _stack(d_model=8)
    tb, eager = get_backend("torch", dtype="float32", compile=True), get_backend("torch", dtype="float32")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler in this test"):
        got = tb.position_updates(blocks[0], cfg, Z)
    want = eager.position_updates(blocks[0], cfg, Z)
    assert all(torch.equal(g, w) for g, w in zip((got.u, got.a, got.delta_b), (want.u, want.a, want.delta_b)))
    assert (("position_updates", cfg, "own", False), "cpu") in torch_compile.FAILED
    eager_calls = calls_on("eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no second warning, for any call
        tb.position_updates(blocks[0], cfg, Z)
        assert torch.equal(tb.block(blocks[0], cfg, Z), eager.block(blocks[0], cfg, Z))
    assert calls_on("eager") - eager_calls == 2
    assert (("block", cfg), "cpu") in torch_compile.FAILED


def test_with_dynamo_disabled_compiling_is_unavailable_and_calls_count_as_eager(monkeypatch):
    """With ``TORCH_COMPILE_DISABLE=1`` (``torch._dynamo.config.disable``) ``torch.compile`` returns the eager
    function: the backend then says compiling is unavailable, its path is eager and no call counts as compiled
    (what ``scripts/gpu_check.sh`` sets where its probe cannot compile, so that the bench says so)."""
    cfg, blocks, Z = _stack(d_model=8)
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    assert torch_compile.compile_unavailable("cpu") == \
        "torch.compile is disabled here (TORCH_COMPILE_DISABLE=1 or torch._dynamo.config.disable)"
    compiled = calls_on("compiled")
    tb = get_backend("torch", dtype="float32", compile=True)
    tb.block(blocks[0], cfg, Z)
    tb.position_updates(blocks[0], cfg, Z)
    assert tb.path == "eager" and calls_on("compiled") == compiled


@needs_compile
def test_calls_autograd_must_see_run_eagerly_and_keep_their_gradients():
    """The compiled forms are for inference: with params that require grad the calls take the eager code (no
    compiled call counted), and the gradient of a loss on ``u`` is the eager backend's."""
    cfg, blocks, Z = _stack(d_model=8)
    tb = get_backend("torch", dtype="float64", compile=True)
    grads = []
    for backend in (tb, get_backend("torch", dtype="float64")):
        P = {k: torch.tensor(v, requires_grad=True) for k, v in blocks[0].items()}
        compiled = calls_on("compiled")
        backend.position_updates(P, cfg, Z).u.square().sum().backward()
        assert calls_on("compiled") == compiled
        grads.append(P["mlp.W"].grad)
    assert torch.equal(*grads)


def test_compile_stays_off_unless_asked_and_the_backend_says_which_path_runs():
    """``compile`` is opt-in (DESIGN "Performance stance"); ``path`` says which path the calls take."""
    cfg, blocks, Z = _stack(d_model=8)
    eager = get_backend("torch", dtype="float32")
    compiled = calls_on("compiled")
    eager.block(blocks[0], cfg, Z)
    assert calls_on("compiled") == compiled and eager.path == "eager"
    want = "compiled" if torch_compile.compile_available("cpu") else "eager"
    assert get_backend("torch", dtype="float32", compile=True).path == want


@needs_compile
def test_a_zero_tap_raises_the_same_error_on_the_compiled_path():
    """The deferred check reads the compiled graph's own reductions: a token whose tap is zero (a zero token in a
    block without biases: ``a_x = W_o W_v 0 = 0``) raises the eager path's error, naming the same position."""
    cfg = ref.BlockConfig(d_model=8, d_mlp=16, n_heads=2, kind="plain")
    params = ref.init_block(cfg, 0)
    Z = np.random.default_rng(1).standard_normal((5, 8))
    Z[3] = 0.0
    messages, compiled = [], calls_on("compiled")
    for backend in (get_backend("torch", dtype="float32", compile=True), get_backend("torch", dtype="float32")):
        with pytest.raises(ref.ZeroNormError, match="position 3") as err:
            backend.position_updates(params, cfg, Z)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and calls_on("compiled") == compiled + 1


@needs_compile
def test_a_call_past_dynamos_recompile_limit_is_retried_with_the_raised_limit(monkeypatch):
    """A key's variants (its dtypes, devices and shapes) share its code object; a call that meets Dynamo's limit
    (here set to 1, so a second sequence length meets it) is compiled again under ``RECOMPILE_LIMIT`` rather than
    run eagerly, and the limit is raised only for that retry."""
    limit_name = torch_compile._LIMIT_NAME
    monkeypatch.setattr(torch._dynamo.config, limit_name, 1)
    tb = get_backend("torch", dtype="float32", compile=True)
    cfg, blocks, _ = _stack(d_model=6)                                   # a config no other test uses
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        for T in (5, 9):
            Z = np.random.default_rng(T).standard_normal((T, 6))
            compiled = calls_on("compiled")
            out = tb.block(blocks[0], cfg, Z)
            assert calls_on("compiled") == compiled + 1
            # float32 against float64 on O(1) values through a few matmuls: ~1e-6; the conformance suite's bounds
            # are the exact ones, this checks that the retried compile computed the block at all
            np.testing.assert_allclose(out.numpy(), ref.block(blocks[0], cfg, Z), rtol=1e-4, atol=1e-5)
    assert getattr(torch._dynamo.config, limit_name) == 1


@needs_compile
def test_each_block_config_compiles_static_graphs_of_its_own():
    """Each key compiles from a code object of its own (``torch_compile.own_copy``), on which Dynamo keeps its
    variants: two block configs hold one variant each (shared, the second config would have been a recompile of the
    first's code object with symbolic sizes: generic kernels, and the two keys' variants counted together)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    tb = get_backend("torch", dtype="float32", compile=True)
    codes = []
    for d_model in (12, 18):                                             # configs no other test uses
        cfg, blocks, Z = _stack(d_model=d_model)
        tb.block(blocks[0], cfg, Z)
        codes.append(torch_compile._COMPILED["block", cfg].code)
    assert codes[0] is not codes[1]
    assert [len(_debug_get_cache_entry_list(c)) for c in codes] == [1, 1]


def test_own_copy_binds_keyword_only_arguments_and_refuses_others():
    """The static settings become the copy's keyword defaults, which only keyword-only arguments have: any other
    name would be ignored on the compiled path while the eager one raised, so it is refused by name."""
    def f(x, *, k):
        return x * k

    assert torch_compile.own_copy(f, {"k": 3})(2) == 6
    with pytest.raises(ValueError, match="static must name keyword-only arguments of f"):
        torch_compile.own_copy(f, {"x": 1})
