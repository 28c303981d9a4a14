"""``models.hf_torch`` (issue 15 item 6): a loaded model run on the torch backend layer by layer, batched, in float64,
float32 and bfloat16, placed over a list of devices; ``models.hf_torch_check`` against the float64 reference.

Three models: the bundled few-shot Llama (gated: RMSNorm, rotary, GQA, SwiGLU), and a random tiny GPT-NeoX (parallel,
partial rotary, LayerNorm) and Gemma 2 (post-norms, attention and final soft-caps, a sliding window, √d embeddings)
built with transformers and saved with ``save_pretrained`` (``test_hf_families``' configs and weights). Tolerances: float64 torch equals the NumPy model to ``1e-12 · scale`` (the conformance suite's float64
target, relative to the values' magnitude); float32 and bfloat16 within ``hf_torch_check``'s ``K · eps · scale``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from implicit_icl.models import hf  # noqa: E402
from implicit_icl.models.bundled import fewshot_dir  # noqa: E402
from implicit_icl.models.hf_families import Parts  # noqa: E402
from implicit_icl.models.hf_torch import TorchModel, place  # noqa: E402
from implicit_icl.models.hf_torch_check import K_BLOCK, check_against_float64  # noqa: E402
from implicit_icl.reference import model_updates, position_updates  # noqa: E402

# fewshot's task, "a 3 c 7 f 1 h 12 b 9 k 0 m 5 d 2 c" (key → value pairs, then a query key) through its tokenizer:
# ids here, so that the CUDA case needs neither tokenizers nor transformers on the GPU machine
FEWSHOT_IDS = [1, 20, 3, 24, 6, 18, 8, 29, 2, 26, 11, 17, 13, 22, 4, 19, 3]
TINY_IDS = np.array([[3, 17, 0, 42, 8, 8, 25, 11, 30], [49, 2, 2, 7, 13, 40, 1, 0, 21]])
MODELS = ["fewshot", "gpt_neox", "gemma2"]
CUDA_MISSING = "CUDA is not available on this machine (run scripts/gpu_check.sh on a GPU machine)"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``name → (HFModel, (B, T) ids)``: the bundled fewshot model (weights and config only) and a tiny random
    gpt_neox and gemma2, each where this install can have it."""
    out = {}
    if (fewshot_dir() / "config.json").is_file():
        folder = tmp_path_factory.mktemp("fewshot")
        for name in ("config.json", "model.safetensors"):
            shutil.copy(fewshot_dir() / name, folder / name)
        out["fewshot"] = hf.load(folder), np.stack([FEWSHOT_IDS, np.roll(FEWSHOT_IDS, 4)])
    if importlib.util.find_spec("transformers") is not None:
        from test_hf_families import FAMILIES, randomise

        for name in ("gpt_neox", "gemma2"):
            torch.manual_seed(0)
            config, cls = FAMILIES[name]()
            model = cls._from_config(config, attn_implementation="eager", dtype=torch.float64).eval()
            randomise(model, seed=7)
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder, safe_serialization=True)
            out[name] = hf.load(folder), TINY_IDS
    return out


def _get(models, name):
    if name not in models:
        pytest.skip("the bundled few-shot model is not in this install (implicit-icl train --preset fewshot)"
                    if name == "fewshot" else f"transformers is not installed (it builds the tiny {name})")
    return models[name]


def np64(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def close(got, want, what: str, rel: float = 1e-12):
    """``|got − want| ≤ rel · scale``, scale the largest |value| of ``want`` (at least 1)."""
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np64(got) - want).max())
    assert err <= rel * scale, f"{what}: error {err:.3e} > {rel:g} × scale {scale:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_float64_torch_equals_the_numpy_model(models, name):
    """Every hidden state, the logits, each layer's last-token and every-position updates, per prompt of a batch."""
    model, ids = _get(models, name)
    tm = TorchModel(model, "float64")
    H, logits = tm.hidden_states(ids), tm.logits(ids)
    last, every = tm.last_token_updates(ids), tm.position_updates(ids)
    assert tuple(logits.shape) == (*ids.shape, model.lm_head.shape[0]) and logits.dtype == torch.float64
    for b, row in enumerate(ids):
        want_H = model.hidden_states(row)
        for l, h in enumerate(want_H):
            close(H[l][b], h, f"{name} prompt {b} H^{l}")
        close(logits[b], model.logits(row), f"{name} prompt {b} logits")
        for l, up in enumerate(model_updates(list(model.blocks), list(model.cfgs), want_H[0])):
            close(last[l].u[b], up.u, f"{name} layer {l} last-token u")
            close(last[l].delta_b[b], up.delta_b, f"{name} layer {l} last-token Δb")
        for l, (p, c) in enumerate(zip(model.blocks, model.cfgs)):
            up = position_updates(p, c, want_H[l])
            close(every[l].u[b], up.u, f"{name} layer {l} position u")
            close(every[l].delta_b[b], up.delta_b, f"{name} layer {l} position Δb")


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("name", MODELS)
def test_check_against_float64_within_K_eps_scale(models, name, dtype):
    """Each dtype's hidden states, logits and position updates at the first, a middle and the last position are
    within ``K · eps · scale``; the errors are real round-off (not zero) below float64."""
    model, ids = _get(models, name)
    report = check_against_float64(TorchModel(model, dtype), ids, [0, 4, -1])
    assert set(report) == {"hidden", "logits", "u", "delta_b"}
    eps = torch.finfo(getattr(torch, dtype)).eps
    for a in report.values():
        assert a.tolerance == pytest.approx(K_BLOCK[dtype] * (model.n_layers + 1) * eps * a.scale, rel=1e-12)
        assert a.ok, f"{name} {dtype} {a}"
    if dtype != "float64":
        assert report["hidden"].error > eps * 1e-3 * report["hidden"].scale       # the dtype really was used


def test_the_check_fails_a_model_that_computes_something_else(models):
    """Weights moved by one layer's update (a change of a few % of the outputs) fail the float32 check by far."""
    model, ids = _get(models, "fewshot")
    tm = TorchModel(model, "float32")
    ups = tm.last_token_updates(ids[0])
    moved = tm.with_updates([ups[0], type(ups[1])(ups[1].u * 0, ups[1].a, ups[1].delta_b * 0)])
    report = check_against_float64(moved, ids[0], [-1])
    assert not report["hidden"].ok and report["hidden"].fraction > 100


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", MODELS)
def test_a_batch_equals_its_prompts_one_by_one(models, name, dtype):
    """A (B, T) batch and each (T,) prompt alone: the same numbers to round-off (a batched matmul may sum in
    another order: 64 eps of the values' scale)."""
    model, ids = _get(models, name)
    tm = TorchModel(model, dtype)
    rel = 64 * torch.finfo(tm.dtype).eps
    batch = (tm.logits(ids), tm.hidden_states(ids)[-1], tm.last_token_updates(ids)[-1].u,
             tm.position_updates(ids)[-1].delta_b)
    for b, row in enumerate(ids):
        alone = (tm.logits(row), tm.hidden_states(row)[-1], tm.last_token_updates(row)[-1].u,
                 tm.position_updates(row)[-1].delta_b)
        for what, x, y in zip(("logits", "H^L", "last-token u", "position Δb"), batch, alone):
            assert x.shape[1:] == y.shape
            close(x[b], np64(y), f"{name} {dtype} prompt {b} {what}", rel)


@pytest.mark.parametrize("name", MODELS)
def test_placement_over_a_list_of_devices_gives_identical_results(models, name):
    """``devices=["cpu", "cpu"]``: layer 0 in one run, layer 1 in the next, the hidden state handed on with
    ``Tensor.to`` between them; bit-for-bit what one device gives (same operations, same device)."""
    model, ids = _get(models, name)
    one, two = TorchModel(model, "float32"), TorchModel(model, "float32", devices=["cpu", "cpu"])
    assert one.stages() == [(0, 2)] and two.stages() == [(0, 1), (1, 2)] and two.devices == ["cpu", "cpu"]
    assert torch.equal(one.logits(ids), two.logits(ids))
    for a, b in zip(one.hidden_states(ids), two.hidden_states(ids)):
        assert torch.equal(a, b)
    for a, b in zip(one.last_token_updates(ids) + one.position_updates(ids),
                    two.last_token_updates(ids) + two.position_updates(ids)):
        assert torch.equal(a.u, b.u) and torch.equal(a.a, b.a) and torch.equal(a.delta_b, b.delta_b)


def test_place_splits_layers_evenly_in_order(monkeypatch):
    """5 layers over 3 devices: 2, 2, 1; ``"auto"``: every visible CUDA device, else the cpu (CUDA is faked here,
    nothing is allocated on it); more devices than layers and an empty list are refused."""
    assert place(3) == [torch.device("cpu")] * 3 and place(2, "cpu") == [torch.device("cpu")] * 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert place(4, "auto") == [torch.device("cpu")] * 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(d) for d in place(5, ["cpu", "cuda:0", "cuda:1"])] == ["cpu", "cpu", "cuda:0", "cuda:0", "cuda:1"]
    assert [str(d) for d in place(3, "auto")] == ["cuda:0", "cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="devices must not outnumber the model's 1 layers"):
        place(1, ["cpu", "cpu"])
    with pytest.raises(ValueError, match="devices must be a device, a non-empty list"):
        place(2, [])
    with pytest.raises(ValueError, match="device must be one of"):
        place(2, ["gpu"])


@pytest.mark.parametrize("name", MODELS)
def test_every_layers_update_reproduces_the_next_token_logits(models, name):
    """float64 on torch: each prompt's last-token updates put into every layer at once; the query token run alone
    gives that prompt's next-token logits (THEORY §3c) to 1e-12 of their scale."""
    model, ids = _get(models, name)
    tm = TorchModel(model, "float64", devices=["cpu", "cpu"])
    ups, want = tm.last_token_updates(ids), tm.logits(ids)[:, -1]
    for b in range(len(ids)):
        patched = tm.with_updates([u.map(lambda t: t[b]) for u in ups])
        alone = patched.forward(tm.embed(ids[b])[-1:], keep=False)[-1][0]           # the query's row of H⁰ alone
        close(patched.logits_from(alone), np64(want[b]), f"{name} prompt {b} next-token logits")
        assert not torch.equal(patched.logits_from(alone), tm.logits(ids[b][-1:])[0])  # the updates did the work


def test_bad_input_is_refused_by_name(models):
    model, _ = _get(models, "gpt_neox")
    tm = TorchModel(model, "float32")
    for bad, match in (([[1, 2], [3]], "token_ids must be"), ([0.5, 1.0], "token_ids must be"),
                       ([1, 50], r"token_ids must lie in 0..49"), ([], "token_ids must be")):
        with pytest.raises(ValueError, match=match):
            tm.logits(bad)
    with pytest.raises(ValueError, match="model must be a model that models.hf.load returned"):
        TorchModel(model.parts)
    with pytest.raises(ValueError, match="updates must hold one Update per layer"):
        tm.with_updates([])
    with pytest.raises(ValueError, match=r"positions must lie in -9..8"):
        check_against_float64(tm, TINY_IDS, [9])


@pytest.mark.parametrize("value", [30.0, np.ones(3)], ids=["number", "array"])
def test_a_part_it_does_not_compute_is_refused_by_name(models, value):
    """A family added later with a part this module does not compute (here a made-up logit soft-cap, a number or
    an array) is refused with its field's name rather than dropped; left at its default it is not in the way."""
    model, _ = _get(models, "gpt_neox")
    Extra = dataclasses.make_dataclass("Extra", [("final_logit_softcap", object, dataclasses.field(default=None))],
                                       bases=(Parts,), frozen=True)
    known = {f.name: getattr(model.parts, f.name) for f in dataclasses.fields(Parts)}
    with pytest.raises(ValueError, match="final_logit_softcap is not computed on torch yet"):
        TorchModel(dataclasses.replace(model, parts=Extra(**known, final_logit_softcap=value)))
    TorchModel(dataclasses.replace(model, parts=Extra(**known)))


@pytest.mark.parametrize("dtype", [pytest.param(d, id=f"hf-cuda-{d}", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason=CUDA_MISSING)) for d in ("float32", "bfloat16")])
@pytest.mark.parametrize("name", MODELS)
def test_cuda_model_within_K_eps_scale_and_split_over_cpu_and_cuda(models, name, dtype):
    """On CUDA (scripts/gpu_check.sh): the check against float64 passes, and the model split over ["cuda", "cpu"]
    (layer 0 on the GPU, layer 1 on the CPU: the hidden state crosses devices) agrees with it to K·eps·scale."""
    model, ids = _get(models, name)
    tm = TorchModel(model, dtype, devices="cuda")
    report = check_against_float64(tm, ids, [0, -1])
    assert all(a.ok for a in report.values()), report
    split = TorchModel(model, dtype, devices=["cuda", "cpu"])
    assert split.devices == ["cuda", "cpu"]
    got, want = split.logits(ids), tm.logits(ids)
    assert got.device.type == "cpu" and want.device.type == "cuda"
    assert float((got.double() - want.double().cpu()).abs().max()) <= report["logits"].tolerance


@pytest.mark.parametrize("module", ["implicit_icl.models.hf_torch", "implicit_icl.models.hf_torch_check"])
def test_without_torch_the_import_names_the_extra(monkeypatch, module):
    import importlib
    import sys

    from implicit_icl.models import MissingExtraError

    monkeypatch.setitem(sys.modules, "torch", None)            # `import torch` fails, as without the extra
    for name in ("implicit_icl.models.hf_torch", "implicit_icl.models.hf_torch_check"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(MissingExtraError, match=r"implicit-icl\[torch\]"):
        importlib.import_module(module)
