"""``check_against_float64(tmodel, token_ids, positions)``: a ``TorchModel`` (``models.hf_torch``) against the
float64 NumPy reference (``HFModel``) at a few positions, with tolerances ``K · eps(dtype) · scale``.

As in the conformance suite (``tests/conformance/tolerances.py``), the reference runs on the *same inputs*: every
array of the model rounded to the torch model's dtype and read back in float64 (``rounded``), so that the weights'
quantisation is not counted as an arithmetic error. ``scale`` is the magnitude of what a quantity is computed from
(``SCALES``), and ``K`` grows with depth: each block rounds like one conformance scenario (``K_BLOCK``: 64, 16 for
bfloat16, whose eps is already 1/128) and hands its error on to the next through a residual stream whose Jacobian
is the identity plus a small term, so the errors of ``L`` blocks add: ``K = K_BLOCK · (L + 1)`` (the ``+ 1``: the
embeddings and the head). For a causal model the reference runs only the tokens up to the last position asked for
(a causal model's rows there do not depend on later tokens), so a few early positions of a long prompt are cheap.

Each row (one prompt, layer and position) has its own scale: a model's rows differ by 100× (the bundled few-shot
model's first row reaches |H²| = 459 where the others stay near 5), and one global scale would let the small rows
err by 100× more than their own round-off. Each quantity's ``Agreement`` is the row that used most of its tolerance.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from implicit_icl.reference import position_updates

from .errors import MissingExtraError
from .hf import HFModel

try:
    import torch
except ImportError as exc:
    raise MissingExtraError("implicit_icl.models.hf_torch_check needs torch, which is not installed: "
                            "pip install 'implicit-icl[torch]'") from exc

from .hf_torch import TorchModel, to_dtype

__all__ = ["Agreement", "K_BLOCK", "SCALES", "check_against_float64", "rounded"]

K_BLOCK = {"float64": 64, "float32": 64, "bfloat16": 16, "float16": 64}

#: each quantity's scale, one per row (prompt, layer ℓ, position)
SCALES = {
    "hidden": "max_d |H^ℓ_d| of the row, every layer ℓ = 0..L",
    "logits": "max over the vocabulary of Σ_d |final(H^L)_d| |W_head[v, d]| (a dot product's round-off scale)",
    "u": "max over W's rows of Σ_d |W_d| |a_x,d| (u = W(a_C − a_x) carries the round-off of its operands)",
    "delta_b": "max_d of |H^ℓ_d| and |Δb_d| (Δb = r_C − r_x is a difference of residual streams)",
}


@dataclasses.dataclass(frozen=True)
class Agreement:
    """One quantity's row that used most of its tolerance: its largest error against float64 ``error``, its
    ``scale`` and its tolerance ``K · eps · scale``."""

    name: str
    error: float
    scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.tolerance)

    @property
    def fraction(self) -> float:
        """``error / tolerance``: how much of its tolerance the quantity used."""
        return self.error / self.tolerance if self.tolerance > 0 else (np.inf if self.error > 0 else 0.0)


def rounded(model: HFModel, dtype) -> HFModel:
    """``model`` with every array rounded to the torch ``dtype`` and back to float64 (the reference's inputs)."""
    def rnd(x):
        if isinstance(x, np.ndarray):
            return to_dtype(x, dtype, "cpu").double().numpy()
        if isinstance(x, dict):
            return {k: rnd(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(rnd(v) for v in x)
        if dataclasses.is_dataclass(x):
            return dataclasses.replace(x, **{f.name: rnd(getattr(x, f.name)) for f in dataclasses.fields(x)
                                             if isinstance(getattr(x, f.name), np.ndarray)})
        return x

    parts = model.parts
    new = {f.name: rnd(getattr(parts, f.name)) for f in dataclasses.fields(parts) if f.name != "cfgs"}
    return dataclasses.replace(model, parts=dataclasses.replace(parts, **new))


def _positions(positions, T: int) -> np.ndarray:
    pos = np.atleast_1d(np.asarray(positions))
    if pos.ndim != 1 or pos.size == 0 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be a non-empty 1-D sequence of integers, got {positions!r}")
    if pos.min() < -T or pos.max() >= T:
        raise ValueError(f"positions must lie in -{T}..{T - 1} (the prompt has {T} tokens), got {pos.tolist()}")
    return np.unique(pos % T)


def _reference(model: HFModel, ids: np.ndarray, pos: np.ndarray) -> dict:
    """``name → (values, scales)`` at ``pos`` of one prompt ``ids`` ``(T,)`` in float64: values ``(…, P, n)`` and
    one scale per row ``(…, P, 1)`` (``SCALES``)."""
    if model.causal:
        ids = ids[: pos.max() + 1]
    H_all = model.hidden_states(ids)
    ups = [position_updates(p, c, h).map(lambda x: x[pos]) for p, c, h in zip(model.blocks, model.cfgs, H_all)]
    H = [h[pos] for h in H_all]                                                           # (P, D) each
    out = {"hidden": (np.stack(H), np.stack([row_max(h) for h in H])),
           "u": (np.stack([u.u for u in ups]),
                 np.stack([row_max(np.abs(u.a) @ np.abs(p["mlp.W"]).T) for u, p in zip(ups, model.blocks)])),
           "delta_b": (np.stack([u.delta_b for u in ups]),
                       np.stack([np.maximum(row_max(h), row_max(u.delta_b)) for u, h in zip(ups, H)]))}
    if model.lm_head is not None:
        out["logits"] = model.logits_from(H[-1]), row_max(np.abs(model.final(H[-1])) @ np.abs(model.lm_head).T)
    return out


def row_max(x: np.ndarray) -> np.ndarray:
    """``max |x|`` over the last axis, kept: ``(…, n) → (…, 1)``."""
    return np.abs(x).max(-1, keepdims=True)


def _torch_values(tmodel: TorchModel, ids: np.ndarray, pos: np.ndarray) -> dict:
    """The torch model's values at ``pos`` for the batch ``ids`` ``(B, T)``, as float64 NumPy ``(B, …)``."""
    def np64(t):
        return t.detach().cpu().double().numpy()

    H = tmodel.hidden_states(ids)
    ups = tmodel.position_updates(ids)
    out = {"hidden": np.stack([np64(h[:, pos]) for h in H], 1),
           "u": np.stack([np64(u.u[:, pos]) for u in ups], 1),
           "delta_b": np.stack([np64(u.delta_b[:, pos]) for u in ups], 1)}
    if tmodel.source.lm_head is not None:
        out["logits"] = np64(tmodel.logits_from(H[-1][:, pos]))
    return out


def check_against_float64(tmodel: TorchModel, token_ids, positions) -> dict[str, Agreement]:
    """The largest error of ``tmodel`` against the float64 reference at ``positions`` of each prompt of
    ``token_ids`` (``(T,)`` or ``(B, T)``), per quantity (``SCALES``: every hidden state, the logits, and every
    layer's position update ``u`` and ``Δb``), each with its tolerance ``K · eps · scale`` (module docstring)."""
    if not isinstance(tmodel, TorchModel):
        raise ValueError(f"tmodel must be a TorchModel (models.hf_torch), got {type(tmodel).__name__}")
    ids, lengths = tmodel.prompts(token_ids)
    if lengths is not None and len(set(lengths)) > 1:
        raise ValueError(f"token_ids must be prompts of equal length here (the positions are shared), got lengths "
                         f"{lengths}: check a ragged batch one prompt at a time")
    ids = ids.cpu().numpy().reshape(-1, ids.shape[-1])                                      # (B, T)
    pos = _positions(positions, ids.shape[-1])
    K = K_BLOCK[str(tmodel.dtype).removeprefix("torch.")] * (tmodel.n_layers + 1)
    eps = torch.finfo(tmodel.dtype).eps
    reference = rounded(tmodel.source, tmodel.dtype)
    refs = [_reference(reference, row, pos) for row in ids]
    got = _torch_values(tmodel, ids, pos)
    out = {}
    for name in got:
        want = np.stack([r[name][0] for r in refs])
        scale = np.stack([r[name][1] for r in refs]) * np.ones_like(want[..., :1])
        err = np.abs(got[name] - want).max(-1, keepdims=True)                           # (B, …, P, 1)
        tol = K * eps * scale
        used = np.divide(err, tol, out=np.where(err > 0, np.inf, 0.0), where=tol > 0)
        worst = np.unravel_index(np.argmax(used), used.shape)
        out[name] = Agreement(name, float(err[worst]), float(scale[worst]), float(tol[worst]))
    return out
