"""``load(path)``: a Hugging Face model folder, offline and without pickle, as one kind of model for every family.

The folder is what ``save_pretrained(..., safe_serialization=True)`` writes: ``config.json``, ``model.safetensors``
(or shards with ``model.safetensors.index.json``) and, when present, ``tokenizer.json`` (read by the ``tokenizers``
library). The family comes from ``config.json``'s ``model_type``:

============ ===================================================== ==============================================
model_type   block (reference kind)                                 quirks (``hf_families`` / ``hf_reused``)
============ ===================================================== ==============================================
gpt2         ``pre-ln``, learned positions                          Conv1D ``[in, out]`` weights, tied head
llama        ``gated`` (SmolLM, TinyLlama)                          RMSNorm, SwiGLU, rotary, grouped-query heads
mistral      ``gated``                                              a sliding window in every layer
qwen2        ``gated``                                              q/k/v biases, per-layer sliding windows
qwen3        ``gated``                                              q/k RMSNorm per head
gemma        ``gated``                                              RMSNorm ``1 + g``, embeddings × √d, GeGLU
gemma2       ``gated`` with ``post_norms``                          Gemma's, norms after attention and MLP, soft-capped
                                                                    attention and final logits, alternating windows
gpt_neox     ``parallel`` (or ``pre-ln`` with rotary)               partial rotary, fused per-head q/k/v
bert         ``post-ln``, bidirectional, learned positions          embedding LayerNorm, optional MLM head
============ ===================================================== ==============================================

Anything else, and any config field or tensor the reference does not compute, is refused with one line naming it
(``gemma3``: its rotary base per layer type). Nothing here touches the network. The weights are read into
``dtype`` (float64 by default: the reference's precision); ``hidden_states`` and ``logits`` run the NumPy
reference (``reference.model_forward``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from implicit_icl.reference import layer_norm, model_forward
from implicit_icl.reference.layers import ACTIVATION_FNS, rms_norm, softcap

from .hf_families import Norm, Parts, gated_family, gpt_neox
from .hf_files import MissingFileError, read_config, read_tokenizer, read_weights
from .hf_reused import bert_family, gpt2_family

FAMILIES = {"gpt2": gpt2_family, "llama": gated_family, "mistral": gated_family, "qwen2": gated_family,
            "qwen3": gated_family, "gemma": gated_family, "gemma2": gated_family, "gpt_neox": gpt_neox,
            "bert": bert_family}

#: families recognised but refused, and what the reference lacks for them
REFUSED = {
    "gemma3": "its rope_parameters per layer type (a local rotary base for sliding layers, often linear-scaled "
              "global layers) are not read by the loader yet, and 'gemma3' wraps a vision tower",
    "gemma3_text": "its rope_parameters per layer type (a local rotary base for sliding layers, often linear-scaled "
                   "global layers) are not read by the loader yet",
}

__all__ = ["FAMILIES", "HFModel", "load"]


@dataclass(frozen=True)
class HFModel:
    """A loaded checkpoint in the reference's layout, the same for every family.

    ``blocks`` / ``cfgs``: one params dict and one ``BlockConfig`` per layer; ``lm_head`` ``(V, D)``; the rest in
    ``parts`` (``hf_families.Parts``): ``tokens`` ``(V, D)`` the token embeddings, ``positions`` ``(P, D)`` learned
    absolute positions or ``None`` (rotary families), ``embed_scale`` (Gemma's √d), ``token_type`` /
    ``embed_norm`` (BERT), ``final_norm`` (``None`` for BERT), ``head_transform`` / ``lm_head_bias`` (BERT's MLM
    head). ``tokenizer``: a ``tokenizers.Tokenizer`` or ``None``; ``config``: ``config.json`` as read.
    """

    family: str
    path: Path
    config: dict = field(repr=False)
    parts: Parts = field(repr=False)
    tokenizer: object = field(default=None, repr=False)

    @property
    def blocks(self) -> tuple:
        """One reference params dict per layer."""
        return self.parts.blocks

    @property
    def cfgs(self) -> tuple:
        """One ``BlockConfig`` per layer (they differ where the sliding window does)."""
        return self.parts.cfgs

    @property
    def configs(self) -> tuple:
        """``cfgs`` under the name ``models.analysis`` reads."""
        return self.parts.cfgs

    @property
    def lm_head(self) -> np.ndarray | None:
        """``(V, D)``; the token embeddings themselves when tied; ``None`` without a head (a bare encoder)."""
        return self.parts.lm_head

    @property
    def n_layers(self) -> int:
        return len(self.parts.blocks)

    @property
    def causal(self) -> bool:
        return self.parts.cfgs[0].causal

    def check_ids(self, token_ids) -> np.ndarray:
        """``token_ids`` as a 1-D int64 array, each in ``0..V−1``, at most as many as the learned positions."""
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be a non-empty 1-D sequence of integers, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        V = self.parts.tokens.shape[0]
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"token_ids must lie in 0..{V - 1}, got {int(ids.min())}..{int(ids.max())}")
        P = None if self.parts.positions is None else self.parts.positions.shape[0]
        if P is not None and ids.size > P:
            raise ValueError(f"token_ids must hold at most {P} tokens (learned positions), got {ids.size}")
        return ids.astype(np.int64)

    def embed(self, token_ids) -> np.ndarray:
        """``H⁰`` ``(T, D)``: token embeddings (× ``embed_scale``), plus learned positions and BERT's type-0 row,
        through BERT's embedding LayerNorm."""
        ids, p = self.check_ids(token_ids), self.parts
        H0 = p.tokens[ids] * p.embed_scale if p.embed_scale != 1.0 else p.tokens[ids]      # (T, D)
        if p.positions is not None:
            H0 = H0 + p.positions[: ids.size]
        if p.token_type is not None:
            H0 = H0 + p.token_type
        return apply_norm(p.embed_norm, H0) if p.embed_norm is not None else H0

    def hidden_states(self, token_ids) -> list[np.ndarray]:
        """``[H⁰, H¹, …, H^L]``, each ``(T, D)``: ``H^{ℓ+1} = block_ℓ(H^ℓ)`` (positions ``0..T−1``). ``H^L`` is
        before the final norm (transformers' last ``hidden_states`` entry is after it)."""
        return model_forward(list(self.parts.blocks), list(self.parts.cfgs), self.embed(token_ids))

    def final(self, H_last: np.ndarray) -> np.ndarray:
        """The final norm of the last hidden states (the identity without one)."""
        return apply_norm(self.parts.final_norm, H_last) if self.parts.final_norm is not None else H_last

    def logits_from(self, H_last: np.ndarray) -> np.ndarray:
        """Next-token (or, for BERT, masked-token) logits ``(…, V)`` from last hidden states ``(…, D)``."""
        p = self.parts
        if p.lm_head is None:
            raise ValueError(f"{self.path} has no language-model head (a bare {self.family} encoder): no logits")
        h = self.final(H_last)
        if p.head_transform is not None:
            tr = p.head_transform
            h = apply_norm(tr["norm"], ACTIVATION_FNS[tr["activation"]](h @ tr["W"].T + tr["b"]))
        logits = h @ p.lm_head.T                                                          # (…, V)
        logits = logits + p.lm_head_bias if p.lm_head_bias is not None else logits
        return softcap(logits, p.final_softcap)                                           # Gemma 2: cap·tanh(·/cap)

    def logits(self, token_ids) -> np.ndarray:
        """``(T, V)`` logits at every position."""
        return self.logits_from(self.hidden_states(token_ids)[-1])

    # ------------------------------------------------------------------------------------------- text

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json: pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, text: str) -> tuple[np.ndarray, list[str]]:
        """``(ids, token strings)`` of ``text`` through ``tokenizer.json`` (its own special tokens, no padding)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        enc = self._need_tokenizer().encode(text)
        return np.asarray(enc.ids, dtype=np.int64), list(enc.tokens)

    def decode(self, token_ids) -> str:
        """The text of ``token_ids``."""
        return self._need_tokenizer().decode([int(i) for i in np.asarray(token_ids).ravel()])

    # what ``models.analysis`` reads (``configs``, ``layer_name``, ``default_position``), except that its
    # ``hidden_states(text)`` is ``text_hidden_states`` here: ``hidden_states`` takes token ids (issue 15 item 3)
    @property
    def layer_name(self) -> str:
        return self.parts.layer_name

    def text_hidden_states(self, text: str) -> tuple[list[str], list[np.ndarray]]:
        """``(tokens, [H⁰..H^L])`` of a text."""
        ids, tokens = self.tokenize(text)
        return tokens, self.hidden_states(ids)

    def default_position(self, tokens) -> int:
        """The last token (a causal model's next-token slot; BERT: the last before a final ``[SEP]``)."""
        T = len(tokens)
        return max(T - 2, 0) if not self.causal and T and tokens[-1] == "[SEP]" else T - 1


def apply_norm(norm: Norm, x: np.ndarray) -> np.ndarray:
    if norm.kind == "rms":
        return rms_norm(x, norm.g, norm.eps, norm.offset)
    return layer_norm(x, norm.g, norm.b, norm.eps)


def load(path: str | os.PathLike, dtype=np.float64) -> HFModel:
    """The model in the folder ``path`` (module docstring). Raises ``MissingFileError`` (a ``FileNotFoundError``
    and a ``ValueError``) for a missing folder or file, and a one-line ``ValueError`` naming the file, field or
    tensor for anything it cannot or will not read."""
    folder = Path(path)
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is not a folder (a Hugging Face model folder with config.json and "
                               f"safetensors weights; nothing is downloaded)")
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")
    config = read_config(folder)
    family = config.get("model_type")
    if family in REFUSED:
        raise ValueError(f"{folder / 'config.json'}: model_type {family!r} is not supported: {REFUSED[family]}")
    if family not in FAMILIES:
        raise ValueError(f"{folder / 'config.json'}: model_type {family!r} is not supported (supported: "
                         f"{', '.join(FAMILIES)})")
    parts = FAMILIES[family](config, read_weights(folder), dtype, family)
    return HFModel(family=family, path=folder, config=config, parts=parts, tokenizer=read_tokenizer(folder))
