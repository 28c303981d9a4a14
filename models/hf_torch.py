"""A loaded Hugging Face model (``models.hf.load``) run on the torch backend, layer by layer, batched, on any device.

``TorchModel(model, dtype="float32", devices=None, compile=False)`` (``compile``: the layers' calls through
``torch.compile``, ``backends.torch_compile``) converts every array of the model once: each layer's params are
checked and moved by ``backend.prepare`` (a read-only ``CheckedParams`` on that layer's device and dtype), the
embeddings go to the first layer's device and the final norm and LM head to the last one's. Then

- ``embed(ids)`` ``(..., T, D)``, ``hidden_states(ids)`` ``[H⁰..H^L]``, ``logits(ids)`` ``(..., T, V)``;
- ``last_token_updates(ids)``: each layer's last-token update (``model_updates``, THEORY §3c), one ``Update`` per
  layer with the batch's leading dimensions;
- ``position_updates(ids, query="own")``: each layer's update at every position (``model_position_updates``);
- ``with_updates(updates)``: the same model with one (unbatched) ``Update`` per layer put into its weights;

all return tensors. ``ids`` is ``(T,)`` or ``(..., T)`` (an array or tensor: prompts of equal length, rows at
positions ``0..T−1``, no padding), or a **ragged batch**: a list (or tuple) of 1-D prompts, of any lengths. A ragged
batch runs in **length buckets** (``models.hf_torch_ragged``): the prompts sorted by length and cut into groups whose
padding is at most ``ragged_slack`` (25%) of their real tokens (``B_g · T_g ≤ 1.25 · Σ len_b``; one group where all
lengths are equal), each group padded on the *right* to its own longest prompt and run as one ``(B_g, T_g)`` batch, so
one long prompt and many short ones cost about their real tokens, not ``B · T_max``. Under causal attention no real
token attends to a pad and every real token keeps its position ``0..len−1``: each prompt's rows do not depend on the
other prompts (nor on its group), and are those of the prompt run alone (to the round-off of batched matmuls). Each
method then returns a list with one entry per prompt, in the caller's order, each what the call on that prompt alone
returns: ``embed``/``logits`` ``[(len_b, ·)]``, ``hidden_states`` ``[[H⁰..H^L] of prompt b]``, ``position_updates``
``[[one Update per layer, u (len_b, d_in)]]`` and ``last_token_updates`` ``[[one Update per layer, u (d_in,)]]`` at
each prompt's own last token (layer by layer, the every-position update at ``len_b − 1``, whose query is that token).
A list returns a list even where its prompts happen to have equal lengths (then one bucket, the whole list in its
order); pass an array for a batched tensor. A bidirectional model (BERT: ``cfg.causal`` False) would attend to the
padding, so it refuses prompts of different lengths.

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
from implicit_icl.reference.checks import check_bool
from implicit_icl.reference.update import Update

from .hf_torch_ragged import SLACK, in_buckets, padded

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

    #: a ragged batch's length buckets may hold this fraction more tokens than their prompts (``hf_torch_ragged``;
    #: ``0``: one bucket per length, ``inf``: one padded batch); set it on an instance to change it there
    ragged_slack = SLACK

    def __init__(self, model, dtype="float32", devices=None, compile: bool = False):
        self.compile = check_bool("compile", compile)     # the layers' calls through torch.compile (torch_compile)
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
            self._backends[str(dev)] = get_backend("torch", device=dev, dtype=self._requested_dtype,
                                                   compile=self.compile)
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
        except ValueError:                                       # e.g. [[1, 2], 3]: neither an array nor prompts
            raise ValueError("token_ids must be a (..., T) array of integers or a list of 1-D prompts, got a "
                             "ragged sequence") from None
        return torch.as_tensor(self._checked(ids, "token_ids", "(..., T)"), device=self.layer_devices[0])

    def _checked(self, ids: np.ndarray, name: str, shape: str) -> np.ndarray:
        """``ids`` as int64 NumPy after the checks of ``check_ids`` (the one place of their messages), ``name``
        the argument (``token_ids`` or one prompt ``token_ids[b]``), ``shape`` ``"(..., T)"`` or ``"(T,)"``."""
        if (ids.ndim == 0 or (shape == "(T,)" and ids.ndim != 1) or ids.shape[-1] == 0 or ids.size == 0
                or not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"{name} must be a {shape} array of integers with T >= 1, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        V = self.source.parts.tokens.shape[0]
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"{name} must lie in 0..{V - 1}, got {int(ids.min())}..{int(ids.max())}")
        P = self.source.parts.positions
        if P is not None and ids.shape[-1] > P.shape[0]:
            raise ValueError(f"{name} must hold at most {P.shape[0]} tokens (learned positions), got "
                             f"{ids.shape[-1]}")
        return ids.astype(np.int64)

    def prompts(self, token_ids) -> tuple[torch.Tensor, list[int] | None]:
        """``(ids, lengths)``: an array or tensor as ``check_ids`` with ``lengths`` ``None``; a ragged batch (a
        non-empty list or tuple of 1-D prompts, module docstring) as one ``(B, T_max)`` batch padded on the right
        (each prompt with its own last token, a real id that no real position attends to) and each prompt's length.
        The methods do not run this batch: they run its length buckets (``_each``)."""
        rows = self._rows(token_ids)
        return (self.check_ids(token_ids), None) if rows is None else self._padded(rows)

    def _padded(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """``rows`` as one ``(B, T_max)`` batch padded on the right, on the first layer's device, and their lengths."""
        return torch.as_tensor(padded(rows), device=self.layer_devices[0]), [len(r) for r in rows]

    def _rows(self, token_ids) -> list[np.ndarray] | None:
        """A ragged batch's prompts, each checked as ``(T,)`` int64 NumPy (prompts of different lengths refused for a
        bidirectional model); ``None`` for anything else (an array or tensor, left to ``check_ids``)."""
        if not (isinstance(token_ids, (list, tuple)) and token_ids and all(map(_is_sequence, token_ids))):
            return None
        rows = [self._checked(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t),
                              f"token_ids[{b}]", "(T,)") for b, t in enumerate(token_ids)]
        lengths = [len(r) for r in rows]
        if len(set(lengths)) > 1 and not all(c.causal for c in self.cfgs):
            raise ValueError(f"token_ids must be prompts of equal length for a bidirectional model "
                             f"({self.source.family}), got lengths {lengths}: padding would be attended to")
        return rows

    def _each(self, token_ids, run):
        """``run(ids, lengths)`` on ``token_ids``: an array or tensor once (``lengths`` ``None``, its result as it
        is); a ragged batch once per length bucket (``ids`` ``(B_g, T_g)`` padded on the right, ``lengths`` its
        prompts', ``run`` returning one result per prompt), the results as one list in the caller's order."""
        rows = self._rows(token_ids)
        if rows is None:
            return run(self.check_ids(token_ids), None)
        return in_buckets(rows, lambda group: run(*self._padded(group)), self.ragged_slack)

    def embed(self, token_ids):
        """``H⁰`` ``(..., T, D)`` as ``HFModel.embed``, on the first layer's device (a ragged batch: a list)."""
        return self._each(token_ids, lambda ids, lengths: _trim(self._embed_ids(ids), lengths))

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        e = self._embed
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

    def hidden_states(self, token_ids) -> list:
        """``[H⁰, H¹, …, H^L]`` of ``token_ids`` (``HFModel.hidden_states``), each ``(..., T, D)`` (a ragged batch:
        one such list per prompt)."""
        return self._each(token_ids, self._hidden_states)

    def _hidden_states(self, ids: torch.Tensor, lengths) -> list:
        Hs = self.forward(self._embed_ids(ids))
        return Hs if lengths is None else [[H[b, :n] for H in Hs] for b, n in enumerate(lengths)]

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

    def logits(self, token_ids):
        """``(..., T, V)`` logits at every position (a ragged batch: one ``(len_b, V)`` per prompt, the head run on
        the real rows only)."""
        return self._each(token_ids, self._logits)

    def _logits(self, ids: torch.Tensor, lengths):
        H = self.forward(self._embed_ids(ids), keep=False)[-1]
        return self.logits_from(H) if lengths is None else [self.logits_from(h) for h in _trim(H, lengths)]

    # ------------------------------------------------------------------------------------------- updates
    def last_token_updates(self, token_ids) -> list:
        """Each layer's last-token update (``model_updates``: context ``H^ℓ_{0..T−2}``, query ``H^ℓ_{T−1}``), one
        ``Update`` per layer on its device: ``u`` ``(..., d_in)``, ``a``/``delta_b`` ``(..., D)``. One forward: the
        query's attention without context is O(T·d) per layer.

        A ragged batch: one such list per prompt, at its own last token ``len_b − 1`` (``_ragged_last_token_updates``:
        context its rows ``0..len_b−2`` of its length bucket's hidden states, query its row ``len_b − 1``)."""
        return self._each(token_ids, self._last_token_updates)

    def _last_token_updates(self, ids: torch.Tensor, lengths) -> list:
        if lengths is not None:
            return self._ragged_last_token_updates(ids, lengths)
        ups, H = [], self._embed_ids(ids)
        for start, stop in self.stages():
            blocks, cfgs, H = self._stage_args(start, stop, H)
            Hs = self.backend(start).model_forward(blocks, cfgs, H)
            be = self.backend(start)
            ups += [be.implicit_update(P, c, Hl[..., :-1, :], Hl[..., -1, :]) for P, c, Hl in zip(blocks, cfgs, Hs)]
            H = Hs[-1]
        return ups

    def position_updates(self, token_ids, query: str = "own") -> list:
        """Each layer's update at every position (``model_position_updates``), ``u`` ``(..., T, d_in)``. On one
        device this is one pass; over several, each run of layers but the last is also run forward once more to
        hand its output on. A ragged batch: one such list per prompt, ``u`` ``(len_b, d_in)``; with ``"own"`` its
        length bucket's padded rows trimmed, with ``"last"`` (the query is each prompt's own last token) each layer's
        updates of each prompt from its rows of its bucket's hidden states."""
        return self._each(token_ids, lambda ids, lengths: self._position_updates(ids, lengths, query))

    def _position_updates(self, ids: torch.Tensor, lengths, query: str) -> list:
        if lengths is not None and query == "last":
            return self._ragged_last_query_updates(ids, lengths)
        ups, H = [], self._embed_ids(ids)
        stages = self.stages()
        for k, (start, stop) in enumerate(stages):
            args = self._stage_args(start, stop, H)
            ups += self.backend(start).model_position_updates(*args, query=query)
            if k + 1 < len(stages):
                H = self.backend(start).model_forward(*args)[-1]
        return ups if lengths is None else [[u.map(lambda t: t[b, :n]) for u in ups] for b, n in enumerate(lengths)]

    def _layer_inputs(self, ids: torch.Tensor):
        """``(layer, backend, params, cfg, H^ℓ)`` for every layer ℓ, ``H^ℓ`` (the layer's input) on its device."""
        Hs = self.forward(self._embed_ids(ids))
        for l, (P, c) in enumerate(zip(self.blocks, self.cfgs)):
            yield l, self.backend(l), P, c, Hs[l].to(self.layer_devices[l])

    def _ragged_last_token_updates(self, ids: torch.Tensor, lengths: list[int]) -> list[list[Update]]:
        """Each prompt's last-token update per layer, as ``model_updates`` forms it for the prompt alone (context
        ``H^ℓ_{0..n−2}``, query ``H^ℓ_{n−1}``): O(n·d) per prompt and layer, not the every-position updates of the
        padded batch (``(B, T, d_in)`` per layer) of which B rows would be kept."""
        return self._per_length(ids, lengths, lambda be, P, c, H: be.implicit_update(P, c, H[:, :-1], H[:, -1]))

    def _ragged_last_query_updates(self, ids: torch.Tensor, lengths: list[int]) -> list[list[Update]]:
        """``"last"`` in a padded bucket: each prompt's query is its own last token."""
        return self._per_length(ids, lengths, lambda be, P, c, H: be.position_updates(P, c, H, "last"))

    def _per_length(self, ids: torch.Tensor, lengths: list[int], update) -> list[list[Update]]:
        """One ``Update`` per layer for each prompt of a padded bucket whose update reads the prompt's own last
        token: ``update(backend, params, cfg, H)`` on the layer's input rows of the prompts of one length ``n``,
        ``H`` ``(rows, n, D)`` (one batched call per layer and distinct length, not per prompt), split per prompt."""
        out = [[] for _ in lengths]
        same = {n: [b for b, m in enumerate(lengths) if m == n] for n in dict.fromkeys(lengths)}
        for l, be, P, c, H in self._layer_inputs(ids):
            for n, rows in same.items():
                upd = update(be, P, c, H[rows, :n])                                    # leading axis: rows
                for j, b in enumerate(rows):
                    out[b].append(upd.map(lambda t, j=j: t[j]))
        return out

    def with_updates(self, updates) -> "TorchModel":
        """This model with layer ℓ's weights moved by ``updates[ℓ]`` (``apply_update``: ``mlp.W += ΔW``,
        ``mlp.b_out += Δb``), each a single (unbatched) ``Update``; embeddings and head shared."""
        if len(updates) != self.n_layers:
            raise ValueError(f"updates must hold one Update per layer ({self.n_layers}), got {len(updates)}")
        new = copy.copy(self)
        new.blocks = tuple(self.backend(l).prepare(self.backend(l).apply_update(P, u), c)
                           for l, (P, c, u) in enumerate(zip(self.blocks, self.cfgs, updates)))
        return new


def _is_sequence(x) -> bool:
    """One prompt of a ragged batch: a list, tuple, range or an array or tensor of at least one dimension."""
    return isinstance(x, (list, tuple, range)) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim >= 1)


def _trim(X: torch.Tensor, lengths):
    """``X`` ``(B, T_max, …)`` as it is (``lengths`` ``None``) or its real rows, one ``(len_b, …)`` per prompt."""
    return X if lengths is None else [X[b, :n] for b, n in enumerate(lengths)]


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
