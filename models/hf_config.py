"""Reading a Hugging Face ``config.json`` for the reference: the fields it computes, and one-line refusals of the
fields it does not.

Every family lists the fields it reads (``Fields``); a field that is neither read nor known to leave the forward
pass unchanged (``INERT``: dropout rates, token ids, bookkeeping) is refused with one line naming it, so that a
checkpoint whose forward the reference would silently get wrong never loads. The rotary settings come in two
spellings: transformers ≥ 5 writes ``rope_parameters`` ``{"rope_type", "rope_theta", "partial_rotary_factor"}``;
older files have ``rope_theta`` / ``rope_scaling`` (GPT-NeoX: ``rotary_emb_base`` / ``rotary_pct``) at the top
level (transformers ``modeling_rope_utils``, ``standardize_rope_params``). Only ``rope_type`` ``"default"`` (no
scaling) is computed.
"""
from __future__ import annotations

import math

#: fields that do not change the float64 forward pass of an eval-mode model (dropout, ids, bookkeeping)
INERT = frozenset({
    "_name_or_path", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "id2label", "label2id", "problem_type", "return_dict", "output_hidden_states", "output_attentions",
    "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class", "prefix", "task_specific_params",
    "attention_dropout", "hidden_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "classifier_dropout", "summary_activation", "summary_first_dropout",
    "summary_proj_to_labels", "summary_type", "summary_use_proj", "max_position_embeddings", "gradient_checkpointing",
    "finetuning_task", "tf_legacy_loss", "use_bfloat16", "torchscript", "pruned_heads", "tie_encoder_decoder",
    "transformers.js_config", "output_past",
})


class Fields:
    """The fields of one ``config.json`` as a family reads them: ``get``/``need`` mark a field as read, ``require``
    refuses a value the reference does not compute, ``refuse_unread`` refuses every field left over."""

    def __init__(self, config: dict, family: str):
        self.config, self.family, self.read = config, family, set()

    def get(self, name: str, default=None):
        self.read.add(name)
        value = self.config.get(name, default)
        return default if value is None else value

    def need(self, name: str, kind=int):
        """A field that must be there, of ``kind`` (int: a positive integer; float: a finite number > 0)."""
        self.read.add(name)
        if name not in self.config:
            raise ValueError(f"config.json lacks the field {name!r} that a {self.family} model needs")
        return self.number(name, self.config[name], kind)

    def number(self, name: str, value, kind=int):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if kind is int:
            ok = ok and float(value).is_integer()
        if not ok:
            what = "a positive integer" if kind is int else "a finite number > 0"
            raise ValueError(f"config.json field {name!r} must be {what}, got {value!r}")
        return int(value) if kind is int else float(value)

    def require(self, name: str, allowed: tuple, why: str):
        """Read ``name`` and refuse any value outside ``allowed`` (a missing field counts as ``None``)."""
        self.read.add(name)
        value = self.config.get(name)
        if value not in allowed:
            raise ValueError(f"config.json field {name!r} = {value!r} is not supported: {why}")
        return value

    def choose(self, name: str, table: dict, default):
        """``table[value]`` for the field ``name`` (missing: ``default``), refusing a value not in ``table``."""
        value = self.get(name, default)
        if value not in table:
            raise ValueError(f"config.json field {name!r} = {value!r} is not supported for {self.family} "
                             f"(supported: {', '.join(map(repr, table))})")
        return table[value]

    def refuse_unread(self):
        """Refuse the first field that no family rule read and that is not ``INERT``."""
        for name in sorted(self.config):
            if name not in self.read and name not in INERT:
                raise ValueError(f"config.json field {name!r} (= {_short(self.config[name])}) is not computed by "
                                 f"the reference for model_type {self.family!r}: refusing rather than guessing")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rope(fields: Fields, default_partial: float = 1.0) -> tuple[float, float]:
    """``(theta, partial_rotary_factor)`` from either spelling (module docstring); refuses scaled rotary."""
    params = fields.get("rope_parameters")
    scaling = fields.get("rope_scaling")
    if params is None:
        params = dict(scaling or {})
        params.setdefault("rope_theta", fields.get("rope_theta", fields.get("rotary_emb_base", 10000.0)))
        params.setdefault("partial_rotary_factor", fields.get("rotary_pct", fields.get("partial_rotary_factor",
                                                                                          default_partial)))
    elif scaling is not None and scaling != params:
        raise ValueError("config.json fields 'rope_scaling' and 'rope_parameters' disagree: refusing to guess")
    if not isinstance(params, dict):
        raise ValueError(f"config.json field 'rope_parameters' must be an object, got {_short(params)}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json rope_parameters.rope_type = {kind!r} is not supported: the reference "
                         f"computes unscaled rotary only ('default')")
    extra = sorted(set(params) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
    if extra:
        raise ValueError(f"config.json rope_parameters.{extra[0]} is not computed by the reference")
    theta = fields.number("rope_parameters.rope_theta", params.get("rope_theta", 10000.0), float)
    partial = params.get("partial_rotary_factor", default_partial)
    if not isinstance(partial, (int, float)) or isinstance(partial, bool) or not 0 < partial <= 1:
        raise ValueError(f"config.json partial_rotary_factor must lie in (0, 1], got {_short(partial)}")
    return theta, float(partial)


def sliding_windows(fields: Fields, n_layers: int, every_layer: bool, alternating: bool = False) -> list:
    """The sliding window of each layer (``None``: full attention). Mistral (``every_layer``): ``sliding_window``
    for all. Qwen2/3: ``layer_types`` (``"sliding_attention"`` layers get ``sliding_window`` when
    ``use_sliding_window``), as transformers' ``Qwen2Attention`` reads them; without ``layer_types``, layers from
    ``max_window_layers`` on (``Qwen2Config.__post_init__``). Gemma 2 (``alternating``): ``layer_types`` always
    applies; without it layers 0, 2, 4, … slide (``Gemma2Config.__post_init__``)."""
    window = fields.get("sliding_window")
    if window is not None:
        window = fields.number("sliding_window", window)
    if every_layer:
        return [window] * n_layers
    if not alternating and not fields.get("use_sliding_window", False):
        window = None
    types = fields.get("layer_types")
    if alternating:
        default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    else:
        first = fields.get("max_window_layers", n_layers)
        default = ["sliding_attention" if window is not None and i >= first else "full_attention"
                   for i in range(n_layers)]
    types = default if types is None else types
    if not isinstance(types, list) or len(types) != n_layers:
        raise ValueError(f"config.json field 'layer_types' must list {n_layers} layers, got {_short(types)}")
    bad = [t for t in types if t not in ("full_attention", "sliding_attention")]
    if bad:
        raise ValueError(f"config.json layer_types entry {bad[0]!r} is not supported (full_attention, "
                         f"sliding_attention)")
    return [window if t == "sliding_attention" else None for t in types]


#: ``hidden_act`` → the reference's activation (transformers ``activations.ACT2FN``: "gelu" is the erf form,
#: "gelu_new" and "gelu_pytorch_tanh" the tanh approximation, "swish" is SiLU)
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
