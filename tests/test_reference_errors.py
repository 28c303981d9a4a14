"""Bad input raises clear errors naming the argument (DESIGN.md "Errors are part of the API")."""
import numpy as np
import pytest

from implicit_icl.reference import (
    BlockConfig, ZeroNormError, apply_update, block, block_output, implicit_update, init_block, model_updates,
    position_updates, trajectory,
)

CFG = BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind="plain")
P = init_block(CFG, 0)
C = np.random.default_rng(0).standard_normal((5, 4))
X = np.random.default_rng(1).standard_normal(4)


def test_zero_query_through_bias_free_block_raises_named_error():
    """A(x) = W_O W_V 0 = 0, so ‖a‖² = 0: a ZeroNormError (not a nan) that says which query and which tap."""
    with pytest.raises(ZeroNormError, match=r"the query.*A\(C\\Y, x\)"):
        implicit_update(P, CFG, C, np.zeros(4))
    with pytest.raises(ZeroNormError, match="the query"):
        trajectory(P, CFG, C, np.zeros(4))


def test_zero_token_in_position_updates_names_the_position():
    Z = np.vstack([C, X])
    Z[2] = 0.0
    with pytest.raises(ZeroNormError, match="position 2"):
        position_updates(P, CFG, Z, query="own")
    position_updates(P, CFG, Z, query="last")   # the last token is fine, so P2's convention works


def test_zero_norm_error_is_a_value_error():
    assert issubclass(ZeroNormError, ValueError)


@pytest.mark.parametrize("context, msg", [
    (np.zeros((5, 3)), r"context must have shape \(n, 4\), got \(5, 3\)"),
    (np.zeros(4), r"context must have shape \(n, 4\), got \(4,\)"),
    (np.zeros((1, 5, 4)), r"context must have shape \(n, 4\)"),
])
def test_wrong_context_shape(context, msg):
    with pytest.raises(ValueError, match=msg):
        implicit_update(P, CFG, context, X)


def test_wrong_query_shape():
    with pytest.raises(ValueError, match=r"query must have shape \(4,\), got \(1, 4\)"):
        block_output(P, CFG, C, X[None])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(bad):
    Cb = C.copy()
    Cb[1, 2] = bad
    with pytest.raises(ValueError, match="context contains non-finite"):
        implicit_update(P, CFG, Cb, X)
    Xb = X.copy()
    Xb[0] = bad
    with pytest.raises(ValueError, match="query contains non-finite"):
        trajectory(P, CFG, C, Xb)
    Pb = dict(P, **{"mlp.W": P["mlp.W"].copy()})
    Pb["mlp.W"][0, 0] = bad
    with pytest.raises(ValueError, match=r"params\['mlp.W'\] contains non-finite"):
        block(Pb, CFG, C)


def test_wrong_dtypes():
    with pytest.raises(ValueError, match="context must be a real floating-point"):
        implicit_update(P, CFG, C.astype(complex), X)
    with pytest.raises(ValueError, match="query must be a real floating-point"):
        implicit_update(P, CFG, C, np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="Z must be a real floating-point"):
        block(P, CFG, C > 0)


@pytest.mark.parametrize("remove, msg", [
    ([5], r"remove indices must lie in \[0, 5\)"),
    ([-1], r"remove indices must lie in \[0, 5\)"),
    ([1, 1], "remove must not hold duplicate indices"),
    ([[0, 1]], "remove must be a 1-D sequence"),
    ([0.5], "remove must hold integer indices"),
])
def test_bad_remove(remove, msg):
    with pytest.raises(ValueError, match=msg):
        implicit_update(P, CFG, C, X, remove=remove)


def test_params_missing_key_and_wrong_shape():
    with pytest.raises(ValueError, match=r"params is missing 'mlp.W' \(expected shape \(8, 4\)\)"):
        block(dict((k, v) for k, v in P.items() if k != "mlp.W"), CFG, C)
    with pytest.raises(ValueError, match=r"params\['attn.W_q'\] must have shape \(4, 4\), got \(4, 3\)"):
        block(dict(P, **{"attn.W_q": np.zeros((4, 3))}), CFG, C)
    with pytest.raises(ValueError, match="params is missing 'ln1.g'"):
        block(P, BlockConfig(d_model=4, d_mlp=8, n_heads=2, kind="pre-ln"), C)


def test_params_with_a_key_the_block_does_not_have_are_refused_by_name():
    """A misspelt optional key (``attn.b_V`` for ``attn.b_v``) used to be ignored, silently dropping the bias (the
    output changed by 0.41); now every backend refuses it by name, through the one ``params_like`` check."""
    cfg = BlockConfig(d_model=4, d_mlp=8, n_heads=2, attn_bias=True)
    p = init_block(cfg, seed=3, bias_std=0.5)
    bad = {("attn.b_V" if k == "attn.b_v" else k): v for k, v in p.items()}
    assert not np.allclose(block(p, cfg, C), block({k: v for k, v in p.items() if k != "attn.b_v"}, cfg, C))
    with pytest.raises(ValueError, match=r"params has the key 'attn.b_V', which a 'plain' block"):
        block(bad, cfg, C)
    torch = pytest.importorskip("torch")
    from implicit_icl.backends import get_backend
    with pytest.raises(ValueError, match=r"params has the key 'attn.b_V', which a 'plain' block"):
        get_backend("torch", dtype=torch.float64).block(bad, cfg, C)


@pytest.mark.parametrize("value, msg", [
    (np.ones((8, 4), dtype=complex), r"params\['mlp.W'\] must be a real floating-point \(or integer\) array, got dtype complex128"),
    (np.full((8, 4), "1"), r"params\['mlp.W'\] must be a real floating-point \(or integer\) array, got dtype <U1"),
    ([[1.0] * 4] * 7 + [[1.0] * 3], r"params\['mlp.W'\] must be an array, got list"),
])
def test_params_that_are_not_real_arrays_are_refused_by_name(value, msg):
    with pytest.raises(ValueError, match=msg):
        block(dict(P, **{"mlp.W": value}), CFG, C)


def test_nested_list_params_are_read_as_arrays():
    listed = {k: v.tolist() for k, v in P.items()}
    assert np.array_equal(block(listed, CFG, C), block(P, CFG, C))


@pytest.mark.parametrize("seed", [-1, 2.5, True, "0"])
def test_init_block_names_a_bad_seed(seed):
    with pytest.raises(ValueError, match=r"seed must be an int >= 0"):
        init_block(CFG, seed)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(d_model=0, d_mlp=4), "d_model must be a positive int"),
    (dict(d_model=4, d_mlp=4, causal="false"), r"BlockConfig.causal must be True or False, got 'false'"),
    (dict(d_model=4, d_mlp=4, attn_bias=1), r"BlockConfig.attn_bias must be True or False, got 1"),
    (dict(d_model=4, d_mlp=4, ln_eps=0), r"BlockConfig.ln_eps must be a finite number > 0, got 0"),
    (dict(d_model=4, d_mlp=4, ln_eps=float("inf")), r"BlockConfig.ln_eps must be a finite number > 0, got inf"),
    (dict(d_model=4, d_mlp=4, ln_eps="1e-5"), r"BlockConfig.ln_eps must be a finite number > 0"),
    (dict(d_model=True, d_mlp=4), "d_model must be a positive int, got True"),
    (dict(d_model=4, d_mlp=4, n_heads=3), "n_heads=3 must divide d_model=4"),
    (dict(d_model=4, d_mlp=4, kind="gpt"), "kind must be one of"),
    (dict(d_model=4, d_mlp=4, activation="tanh"), "activation must be one of"),
    (dict(d_model=4, d_mlp=4, d_head=0), "d_head must be a positive int"),
])
def test_bad_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        BlockConfig(**kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="query must be 'own' or 'last'"):
        position_updates(P, CFG, C, query="first")
    with pytest.raises(ValueError, match="update must be a single Update"):
        apply_update(P, position_updates(P, CFG, C))
    with pytest.raises(ValueError, match="tokens must hold at least the query"):
        model_updates([P], CFG, np.zeros((0, 4)))
    with pytest.raises(ValueError, match="cfg must be a BlockConfig"):
        block(P, {"d_model": 4}, C)


def test_empty_context_is_allowed():
    """n = 0: the query alone; the update is zero (nothing to remove)."""
    upd = implicit_update(P, CFG, np.zeros((0, 4)), X)
    assert np.all(upd.u == 0) and np.all(upd.delta_b == 0)
    tr = trajectory(P, CFG, np.zeros((0, 4)), X)
    assert tr.n == 0 and tr.step_norm.shape == (0,)


def test_integer_inputs_are_accepted_as_float64():
    out = block_output(P, CFG, C.round().astype(int), X.round().astype(int))
    assert out.dtype == np.float64
