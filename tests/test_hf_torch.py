"""``models.hf_torch`` (issue 15 item 6): a loaded model run on the torch backend layer by layer, batched, in float64,
float32 and bfloat16, placed over a list of devices; ``models.hf_torch_check`` against the float64 reference.

Three models: the bundled few-shot Llama (gated: RMSNorm, rotary, GQA, SwiGLU), and a random tiny GPT-NeoX (parallel,
partial rotary, LayerNorm) and Gemma 2 (post-norms, attention and final soft-caps, a sliding window, √d embeddings)
built with transformers and saved with ``save_pretrained`` (``test_hf_families``' configs and weights). Tolerances: float64 torch equals the NumPy model to ``1e-12 · scale`` (the conformance suite's float64
target, relative to the values' magnitude); float32 and bfloat16 within ``hf_torch_check``'s ``K · eps · scale``.
"""
from __future__ import annotations

import dataclasses
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
from transformers_oracle import transformers_unusable  # noqa: E402

# fewshot's task, "a 3 c 7 f 1 h 12 b 9 k 0 m 5 d 2 c" (key → value pairs, then a query key) through its tokenizer:
# ids here, so that the CUDA case needs neither tokenizers nor transformers on the GPU machine
FEWSHOT_IDS = [1, 20, 3, 24, 6, 18, 8, 29, 2, 26, 11, 17, 13, 22, 4, 19, 3]
TINY_IDS = np.array([[3, 17, 0, 42, 8, 8, 25, 11, 30], [49, 2, 2, 7, 13, 40, 1, 0, 21]])
MODELS = ["fewshot", "gpt_neox", "gemma2"]
CUDA_MISSING = "CUDA is not available on this machine (run scripts/gpu_check.sh on a GPU machine)"


def _tiny_model(name: str, tmp_path_factory):
    """A tiny random float64 model of ``test_hf_families``' config for ``name``, saved by ``transformers`` and loaded
    by ours (needs transformers)."""
    from test_hf_families import FAMILIES, randomise

    torch.manual_seed(0)
    config, cls = FAMILIES[name]()
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float64).eval()
    randomise(model, seed=7)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder, safe_serialization=True)
    return hf.load(folder)


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
    if transformers_unusable() is None:
        for name in ("gpt_neox", "gemma2"):
            out[name] = _tiny_model(name, tmp_path_factory), TINY_IDS
    return out


def _get(models, name):
    if name not in models:
        pytest.skip("the bundled few-shot model is not in this install (implicit-icl train --preset fewshot)"
                    if name == "fewshot" else f"{transformers_unusable()} (it builds the tiny {name})")
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
    for bad, match in (([[1, 2], 3], "token_ids must be"), ([0.5, 1.0], "token_ids must be"),
                       ([1, 50], r"token_ids must lie in 0..49"), ([], "token_ids must be"),
                       ([[1, 2], []], r"token_ids\[1\] must be a \(T,\) array of integers with T >= 1"),
                       ([[1, 2], [0.5]], r"token_ids\[1\] must be a \(T,\) array of integers"),
                       ([[[1, 2]], [3]], r"token_ids\[0\] must be a \(T,\) array of integers"),
                       ([[1, 2], [3, -1, 4]], r"token_ids\[1\] must lie in 0..49")):
        for call in (tm.logits, tm.hidden_states, tm.last_token_updates, tm.position_updates):
            with pytest.raises(ValueError, match=match):
                call(bad)
    with pytest.raises(ValueError, match="model must be a model that models.hf.load returned"):
        TorchModel(model.parts)
    with pytest.raises(ValueError, match="updates must hold one Update per layer"):
        tm.with_updates([])
    with pytest.raises(ValueError, match=r"positions must lie in -9..8"):
        check_against_float64(tm, TINY_IDS, [9])


# ragged batches ---------------------------------------------------------------------------------------------------
#: three prompts of lengths 3, 7, 5: as a list, a NumPy array and a tensor (each kind of prompt a list may hold)
RAGGED = [[3, 17, 0], np.array([49, 2, 2, 7, 13, 40, 1]), torch.tensor([8, 25, 11, 30, 4])]
RAGGED_MODELS = ["llama", "gpt2", "mistral", "gemma2"]   # rotary + GQA, learned positions, sliding windows (3 < 7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``name → HFModel``, a tiny random model of ``test_hf_families``' config for ``name``, built on first use."""
    why = transformers_unusable()
    if why is not None:
        pytest.skip(f"{why} (it builds the tiny models)")
    built = {}

    def get(name):
        if name not in built:
            built[name] = _tiny_model(name, tmp_path_factory)
        return built[name]
    return get


def _same_update(got, want, what):
    for field in ("u", "a", "delta_b"):
        assert getattr(got, field).shape == getattr(want, field).shape, f"{what} {field}"
        close(getattr(got, field), np64(getattr(want, field)), f"{what} {field}")


@pytest.mark.parametrize("name", RAGGED_MODELS)
def test_a_ragged_batch_equals_its_prompts_one_by_one(tiny, name):
    """Prompts of lengths 3, 7, 5 in one call (padded on the right, layers split over ``["cpu", "cpu"]``): each
    prompt's hidden states, logits, every-position updates (both queries) and last-token updates equal the same
    calls on that prompt alone, float64 to 1e-12 of the values' scale. Not bit-for-bit: a (3, 7)-row matmul may
    block and sum in another order than a (1, n)-row one, a float64 round-off of ~eps per operation (1e-12 is
    ~4500 eps, and an error of order 1 — a pad attended to, a position shifted — would miss it by far)."""
    model = tiny(name)
    tm, split = TorchModel(model, "float64"), TorchModel(model, "float64", devices=["cpu", "cpu"])
    H, logits, embedded = split.hidden_states(RAGGED), split.logits(RAGGED), split.embed(RAGGED)
    own, last_query = split.position_updates(RAGGED), split.position_updates(RAGGED, query="last")
    last = split.last_token_updates(RAGGED)
    for out in (H, logits, embedded, own, last_query, last):
        assert isinstance(out, list) and len(out) == len(RAGGED)
    for b, prompt in enumerate(RAGGED):
        n = len(prompt)
        close(embedded[b], np64(tm.embed(prompt)), f"{name} prompt {b} H⁰")
        assert len(H[b]) == model.n_layers + 1
        for l, h in enumerate(tm.hidden_states(prompt)):
            assert H[b][l].shape == (n, model.parts.tokens.shape[1])
            close(H[b][l], np64(h), f"{name} prompt {b} H^{l}")
        assert logits[b].shape == (n, model.lm_head.shape[0])
        close(logits[b], np64(tm.logits(prompt)), f"{name} prompt {b} logits")
        alone = tm.position_updates(prompt), tm.position_updates(prompt, "last"), tm.last_token_updates(prompt)
        for got, want, what in zip((own, last_query, last), alone, ("own", "last", "last-token")):
            for l in range(model.n_layers):
                _same_update(got[b][l], want[l], f"{name} prompt {b} layer {l} {what}")


def test_ragged_prompts_are_padded_on_the_right_and_left_padding_would_fail(tiny):
    """The padding side is what makes a ragged batch exact: ``prompts`` puts each prompt at positions ``0..len−1``;
    the same prompts padded on the left by hand (no mask) give other hidden states at their real rows (a real token
    attends to the pads before it, and GPT-2's learned positions shift), far beyond round-off."""
    model = tiny("gpt2")
    tm = TorchModel(model, "float64")
    ids, lengths = tm.prompts(RAGGED)
    assert lengths == [3, 7, 5] and tuple(ids.shape) == (3, 7)
    for b, prompt in enumerate(RAGGED):
        assert ids[b, :lengths[b]].tolist() == list(np.asarray(prompt))
    left = np.stack([np.pad(np.asarray(p), (7 - len(p), 0), mode="edge") for p in RAGGED])
    H_left = tm.hidden_states(left)[-1]
    for b, prompt in enumerate(RAGGED):
        alone = np64(tm.hidden_states(prompt)[-1])
        err = float(np.abs(np64(H_left[b, 7 - len(prompt):]) - alone).max())
        assert (err > 1e-3) == (len(prompt) < 7), f"prompt {b}: left padding error {err:.3e}"


def test_a_list_of_equal_length_prompts_is_a_list_of_results(tiny):
    """A list returns a list even where its prompts have one length (the same numbers as the array batch); a
    bidirectional model (BERT) takes such a list but refuses prompts of different lengths by name."""
    for name in ("gpt2", "bert"):
        tm = TorchModel(tiny(name), "float64")
        rows = [[3, 17, 0, 42], [49, 2, 2, 7]]
        got, want = tm.hidden_states(rows), tm.hidden_states(np.array(rows))
        assert isinstance(got, list) and len(got) == 2
        for b in range(2):
            for l, h in enumerate(want):
                close(got[b][l], np64(h[b]), f"{name} prompt {b} H^{l}")
    for call in (tm.embed, tm.logits, tm.hidden_states, tm.position_updates, tm.last_token_updates):
        with pytest.raises(ValueError, match=r"token_ids must be prompts of equal length for a bidirectional model "
                                             r"\(bert\), got lengths \[3, 7, 5\]: padding would be attended to"):
            call(RAGGED)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)
def test_cuda_ragged_batch_split_over_cuda_and_cpu(models):
    """On CUDA (scripts/gpu_check.sh): a ragged batch on ``["cuda", "cpu"]`` in float32 equals each prompt alone on
    the same placement to float32 round-off (64 eps of the values' scale). The bundled few-shot Llama (rotary, GQA),
    so that the GPU machine needs no transformers for it."""
    model, _ = _get(models, "fewshot")
    tm = TorchModel(model, "float32", devices=["cuda", "cpu"])
    rel = 64 * torch.finfo(torch.float32).eps
    ragged = [FEWSHOT_IDS[:3], np.array(FEWSHOT_IDS[2:9]), torch.tensor(FEWSHOT_IDS[9:14])]   # lengths 3, 7, 5
    last, logits = tm.last_token_updates(ragged), tm.logits(ragged)
    for b, prompt in enumerate(ragged):
        close(logits[b], np64(tm.logits(prompt)), f"prompt {b} logits", rel)
        for l, up in enumerate(tm.last_token_updates(prompt)):
            assert last[b][l].u.device == up.u.device
            close(last[b][l].u, np64(up.u), f"prompt {b} layer {l} last-token u", rel)


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


def test_check_against_float64_refuses_a_ragged_batch_by_name(models):
    """Its positions are shared by every prompt, so prompts of different lengths are refused in one line naming
    token_ids (a list of equal-length prompts is checked like an array)."""
    model, ids = next(iter(models.values()))
    tm = TorchModel(model, "float32")
    row = [int(t) for t in np.asarray(ids).reshape(-1, np.asarray(ids).shape[-1])[0]]
    with pytest.raises(ValueError, match=r"^token_ids must be prompts of equal length here"):
        check_against_float64(tm, [row, row[:-1]], [0])
    assert set(check_against_float64(tm, [row, row], [0])) == set(check_against_float64(tm, np.array([row, row]), [0]))


def test_compile_runs_the_layers_compiled_with_the_eager_numbers(models):
    """``TorchModel(..., compile=True)`` runs every layer's calls through ``torch.compile`` (counted in
    ``torch_compile.CALLS``) and gives the eager model's numbers: float64, the same operations fused, so round-off
    (1e-12 of the values' scale). The compiled forward alone is the conformance suite's (``model_forward``)."""
    from implicit_icl.backends import torch_compile
    from implicit_icl.bench.common import calls_on
    if not torch_compile.compile_available("cpu"):
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    model, ids = _get(models, "fewshot")
    eager, compiled = TorchModel(model, "float64"), TorchModel(model, "float64", compile=True)
    before = calls_on("compiled")
    got, want = compiled.position_updates(ids), eager.position_updates(ids)
    for l, (g, w) in enumerate(zip(got, want)):
        _same_update(g, w, f"layer {l}")
    assert calls_on("compiled") - before == model.n_layers
    with pytest.raises(ValueError, match="compile"):
        TorchModel(model, compile="yes")
