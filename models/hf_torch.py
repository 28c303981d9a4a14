"""A loaded Hugging Face model (``models.hf.load``) run on the torch backend, layer by layer, batched, on any device.

``TorchModel(model, dtype="float32", devices=None)`` converts every array of the model once: each layer's params are
checked and moved by ``backend.prepare`` (a read-only ``CheckedParams`` on that layer's device and dtype), the
embeddings go to the first layer's device and the final norm and LM head to the last one's. Then

- ``embed(ids)`` ``(..., T, D)``, ``hidden_states(ids)`` ``[H⁰..H^L]``, ``logits(ids)`` ``(..., T, V)``;
- ``last_token_updates(ids)``: each layer's last-token update (``model_updates``, THEORY §3c), one ``Update`` per
  layer with the batch's leading dimensions;
- ``position_updates(ids, query="own")``: each layer's update at every position (``model_position_updates``);
- ``with_updates(updates)``: the same model with one (unbatched) ``Update`` per layer put into its weights;

all return tensors. ``ids`` is ``(T,)`` or ``(..., T)``: a batch is prompts of **equal length** T (left-aligned,
no padding and no attention mask; pad or group prompts by length yourself). Rows are at positions ``0..T−1``.

**Placement.** ``devices`` is one device (``"cpu"``, ``"cuda:1"``, …; default ``"cpu"``), a list of devices, or
``"auto"`` (every visible CUDA device, else ``"cpu"``). The layers are split into ``len(devices)`` contiguous groups
of (nearly) equal size, group k on ``devices[k]``; the hidden state moves to the next group's device with
``Tensor.to`` between them. That is torch's own placement, layer by layer: no tensor is split across devices. A list
may repeat a device (``["cpu", "cpu"]`` runs the moving code on one machine).
"""
from __future__ import annotations

import copy
import dataclasses
import types

import numpy as np

from .errors import MissingExtraError
from .hf import HFModel

try:
    import torch
except ImportError as exc:
    raise MissingExtraError("implicit_icl.models.hf_torch needs torch, which is not installed: "
                            "pip install 'implicit-icl[torch]'") from exc

from implicit_icl.backends import get_backend, torch_ops
from implicit_icl.backends.torch_checks import resolve_device
from implicit_icl.reference.update import Update

__all__ = ["TorchModel", "place"]

#: the ``Parts`` fields this module computes; any other field that is set (a family added later, e.g. a final logit
#: soft-cap) is refused by name rather than dropped
KNOWN_PARTS = {"cfgs", "blocks", "tokens", "final_norm", "lm_head", "layer_name", "positions", "embed_scale",
               "token_type", "embed_norm", "head_transform", "lm_head_bias", "final_softcap"}


def place(n_layers: int, devices=None) -> list[torch.device]:
    """The device of each of ``n_layers`` layers (module docstring): contiguous groups, sizes differing by at most
    one, the larger groups first."""
    return [d for d, (start, stop) in zip(*placement(n_layers, devices)) for _ in range(start, stop)]


def placement(n_layers: int, devices=None) -> tuple[list[torch.device], list[tuple[int, int]]]:
    """``(devices, groups)``: the resolved devices and, for each, its layers ``range(start, stop)``."""
    if devices is None:
        devices = ["cpu"]
    elif isinstance(devices, str) and devices == "auto":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    elif isinstance(devices, (str, torch.device)):
        devices = [devices]
    elif not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(f"devices must be a device, a non-empty list of devices or 'auto', got {devices!r}")
    devs = [resolve_device(d) for d in devices]
    if len(devs) > n_layers:
        raise ValueError(f"devices must not outnumber the model's {n_layers} layers, got {len(devs)} devices")
    per, extra = divmod(n_layers, len(devs))
    stops = np.cumsum([per + (k < extra) for k in range(len(devs))]).tolist()
    return devs, list(zip([0] + stops[:-1], stops))


class TorchModel:
    """``model`` (an ``HFModel``) on torch in ``dtype`` over ``devices`` (module docstring)."""

    def __init__(self, model, dtype="float32", devices=None):
        if not isinstance(model, HFModel):
            raise ValueError(f"model must be a model that models.hf.load returned (an HFModel), got "
                             f"{type(model).__name__}")
        parts = model.parts
        unknown = [f.name for f in dataclasses.fields(parts)
                   if f.name not in KNOWN_PARTS and not _unset(getattr(parts, f.name), f.default)]
        if unknown:
            raise ValueError(f"{model.path}: the {model.family} model's {', '.join(unknown)} is not computed on "
                             f"torch yet (models.hf_torch)")
        self.source = model
        devs, self._stages = placement(model.n_layers, devices)
        self.layer_devices = [d for d, (start, stop) in zip(devs, self._stages) for _ in range(start, stop)]
        self._requested_dtype, self._backends = dtype, {}
        self.dtype = self.backend(0).torch_dtype
        self.blocks = tuple(self.backend(l).prepare({k: self._tensor(v, self.layer_devices[l]) for k, v in p.items()},
                                                    c) for l, (p, c) in enumerate(zip(model.blocks, model.cfgs)))
        self.cfgs = tuple(model.cfgs)
        first, last = self.layer_devices[0], self.layer_devices[-1]
        self._embed = types.SimpleNamespace(
            tokens=self._tensor(parts.tokens, first), positions=self._tensor(parts.positions, first),
            token_type=self._tensor(parts.token_type, first), norm=self._norm(parts.embed_norm, first),
            scale=parts.embed_scale)
        tied = parts.lm_head is parts.tokens and first == last
        tr = parts.head_transform
        self._head = types.SimpleNamespace(
            norm=self._norm(parts.final_norm, last),
            W=self._embed.tokens if tied else self._tensor(parts.lm_head, last),
            bias=self._tensor(parts.lm_head_bias, last), softcap=parts.final_softcap,
            transform=None if tr is None else dict(W=self._tensor(tr["W"], last), b=self._tensor(tr["b"], last),
                                                   activation=tr["activation"], norm=self._norm(tr["norm"], last)))

    # ------------------------------------------------------------------------------------------- conversions
    def backend(self, layer: int):
        """The torch backend of layer ``layer``'s device (one per device, all in this model's dtype)."""
        dev = self.layer_devices[layer]
        if str(dev) not in self._backends:
            self._backends[str(dev)] = get_backend("torch", device=dev, dtype=self._requested_dtype)
        return self._backends[str(dev)]

    def _tensor(self, arr, device):
        return None if arr is None else to_dtype(arr, self.dtype, device)

    def _norm(self, norm, device):
        if norm is None:
            return None
        return dataclasses.replace(norm, g=self._tensor(norm.g, device), b=self._tensor(norm.b, device))

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def devices(self) -> list[str]:
        """The device of each layer, as names."""
        return [str(d) for d in self.layer_devices]

    def __repr__(self) -> str:
        return (f"TorchModel({self.source.family} at {self.source.path}, dtype={str(self.dtype)[6:]!r}, "
                f"devices={sorted(set(self.devices))})")

    def stages(self) -> list[tuple[int, int]]:
        """``[(start, stop), …]``: each device's layers ``range(start, stop)``, in order (one per entry of
        ``devices``, even where a device repeats)."""
        return list(self._stages)

    # ------------------------------------------------------------------------------------------- inputs
    def check_ids(self, token_ids) -> torch.Tensor:
        """``token_ids`` ``(..., T)`` (T ≥ 1, each in ``0..V−1``, T at most the learned positions) as int64 on the
        first layer's device."""
        try:
            ids = token_ids.detach().cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        except ValueError:                                       # a ragged batch: prompts of different lengths
            raise ValueError("token_ids must be a (..., T) array of integers: prompts of equal length (pad or "
                             "group them by length), got a ragged sequence") from None
        if ids.ndim == 0 or ids.shape[-1] == 0 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be a (..., T) array of integers with T >= 1 (prompts of equal "
                             f"length), got shape {ids.shape} dtype {ids.dtype}")
        V = self.source.parts.tokens.shape[0]
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"token_ids must lie in 0..{V - 1}, got {int(ids.min())}..{int(ids.max())}")
        P = self.source.parts.positions
        if P is not None and ids.shape[-1] > P.shape[0]:
            raise ValueError(f"token_ids must hold at most {P.shape[0]} tokens (learned positions), got "
                             f"{ids.shape[-1]}")
        return torch.as_tensor(ids.astype(np.int64), device=self.layer_devices[0])

    def embed(self, token_ids) -> torch.Tensor:
        """``H⁰`` ``(..., T, D)`` as ``HFModel.embed``, on the first layer's device."""
        ids, e = self.check_ids(token_ids), self._embed
        H0 = e.tokens[ids] * e.scale if e.scale != 1.0 else e.tokens[ids]                   # (..., T, D)
        if e.positions is not None:
            H0 = H0 + e.positions[: ids.shape[-1]]
        if e.token_type is not None:
            H0 = H0 + e.token_type
        return norm(e.norm, H0) if e.norm is not None else H0

    # ------------------------------------------------------------------------------------------- forward
    def _stage_args(self, start: int, stop: int, H: torch.Tensor):
        return list(self.blocks[start:stop]), list(self.cfgs[start:stop]), H.to(self.layer_devices[start])

    def forward(self, H0: torch.Tensor, keep: bool = True) -> list[torch.Tensor]:
        """From ``H⁰`` ``(..., T, D)``: ``[H⁰, H¹, …, H^L]`` (``keep``) or ``[H^L]``, each ``H^ℓ`` (ℓ ≥ 1) on the
        device of the layer that computed it; one ``model_forward`` per device's run of layers."""
        out, H = [H0], H0
        for start, stop in self.stages():
            Hs = self.backend(start).model_forward(*self._stage_args(start, stop, H))
            H = Hs[-1]
            if keep:
                out.extend(Hs[1:])
        return out if keep else [H]

    def hidden_states(self, token_ids) -> list[torch.Tensor]:
        """``[H⁰, H¹, …, H^L]`` of ``token_ids`` (``HFModel.hidden_states``), each ``(..., T, D)``."""
        return self.forward(self.embed(token_ids))

    def final(self, H_last: torch.Tensor) -> torch.Tensor:
        """The final norm (the identity without one)."""
        return norm(self._head.norm, H_last) if self._head.norm is not None else H_last

    def logits_from(self, H_last: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., V)`` from last hidden states ``(..., D)`` (``HFModel.logits_from``)."""
        head = self._head
        if head.W is None:
            raise ValueError(f"{self.source.path} has no language-model head (a bare {self.source.family} "
                             f"encoder): no logits")
        h = self.final(H_last.to(self.layer_devices[-1]))
        if head.transform is not None:
            tr = head.transform
            act = torch_ops.activation(types.SimpleNamespace(activation=tr["activation"]), h @ tr["W"].T + tr["b"])
            h = norm(tr["norm"], act)
        logits = h @ head.W.T                                                                # (..., V)
        logits = logits + head.bias if head.bias is not None else logits
        return torch_ops.softcap(logits, head.softcap)                                      # Gemma 2's cap

    def logits(self, token_ids) -> torch.Tensor:
        """``(..., T, V)`` logits at every position."""
        return self.logits_from(self.forward(self.embed(token_ids), keep=False)[-1])

    # ------------------------------------------------------------------------------------------- updates
    def last_token_updates(self, token_ids) -> list[Update]:
        """Each layer's last-token update (``model_updates``: context ``H^ℓ_{0..T−2}``, query ``H^ℓ_{T−1}``), one
        ``Update`` per layer on its device: ``u`` ``(..., d_in)``, ``a``/``delta_b`` ``(..., D)``. One forward: the
        query's attention without context is O(T·d) per layer."""
        ups, H = [], self.embed(token_ids)
        for start, stop in self.stages():
            blocks, cfgs, H = self._stage_args(start, stop, H)
            Hs = self.backend(start).model_forward(blocks, cfgs, H)
            be = self.backend(start)
            ups += [be.implicit_update(P, c, Hl[..., :-1, :], Hl[..., -1, :]) for P, c, Hl in zip(blocks, cfgs, Hs)]
            H = Hs[-1]
        return ups

    def position_updates(self, token_ids, query: str = "own") -> list[Update]:
        """Each layer's update at every position (``model_position_updates``), ``u`` ``(..., T, d_in)``. On one
        device this is one pass; over several, each run of layers but the last is also run forward once more to
        hand its output on."""
        ups, H = [], self.embed(token_ids)
        stages = self.stages()
        for k, (start, stop) in enumerate(stages):
            args = self._stage_args(start, stop, H)
            ups += self.backend(start).model_position_updates(*args, query=query)
            if k + 1 < len(stages):
                H = self.backend(start).model_forward(*args)[-1]
        return ups

    def with_updates(self, updates) -> "TorchModel":
        """This model with layer ℓ's weights moved by ``updates[ℓ]`` (``apply_update``: ``mlp.W += ΔW``,
        ``mlp.b_out += Δb``), each a single (unbatched) ``Update``; embeddings and head shared."""
        if len(updates) != self.n_layers:
            raise ValueError(f"updates must hold one Update per layer ({self.n_layers}), got {len(updates)}")
        new = copy.copy(self)
        new.blocks = tuple(self.backend(l).prepare(self.backend(l).apply_update(P, u), c)
                           for l, (P, c, u) in enumerate(zip(self.blocks, self.cfgs, updates)))
        return new


def _unset(value, default) -> bool:
    """A ``Parts`` field left at ``None`` or its default (an array is never taken for a default)."""
    return value is None or value is default or (not isinstance(value, np.ndarray) and value == default)


def to_dtype(arr: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    """A NumPy array as a new tensor of ``dtype`` on ``device`` (rounded once; ``hf_torch_check.rounded`` reads the
    same rounding back)."""
    return torch.tensor(arr, device=device, dtype=dtype)


def norm(n, x: torch.Tensor) -> torch.Tensor:
    """A final or embedding ``Norm`` (``hf_families.Norm`` with tensors) applied over the last axis."""
    if n.kind == "rms":
        return torch_ops.rms_norm(x, n.g, n.eps, n.offset)
    return torch_ops.layer_norm(x, n.g, n.b, n.eps)
