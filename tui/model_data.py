"""The walkthrough's data for a real model on a text (``--model minilm|fewshot|PATH``): the query's trajectory and a
random layer's from ``models.analysis``, and what ``implicit-icl explain`` shows for the layer. No maths here."""
from __future__ import annotations

import functools

from .data import WalkthroughData, WalkthroughError

#: The layer ``--model minilm`` opens on: the one the README's ``implicit-icl explain`` example uses. Other models
#: open on their last layer (``default_layer``).
DEFAULT_LAYER = 3


def default_layer(model: str, n_layers: int) -> int:
    """The layer a model opens on: ``DEFAULT_LAYER`` for minilm, else the last one."""
    return DEFAULT_LAYER if model == "minilm" else n_layers - 1


def text_data(model: str, text: str, *, layer: int | None = None, position: int | None = None) -> WalkthroughData:
    """A real pretrained model (``models.bundled.load_model``: ``minilm``, ``fewshot`` or a Hugging Face folder) on
    ``text``: ``models.analysis.text_trajectories`` gives ``(token_strings, Trajectory, baseline Trajectory)``, the
    baseline on a random layer of the same shapes and weight scale; the context is the tokens the query attends to
    in text order. ``analysis.explain_layer`` (what ``implicit-icl explain`` shows) gives the tokens that move W most
    and ``‖ΔW‖/‖W‖`` against the random layer. ``layer`` ``None``: :func:`default_layer`. Each layer is built once."""
    return _text_layer(model, text, layer, position)


def _load(model: str):
    try:
        from implicit_icl.models import analysis
        from implicit_icl.models.bundled import describe, load_model
    except ImportError as exc:
        raise WalkthroughError(f"--model needs implicit_icl.models, which is not available here ({exc})") from None
    try:
        loaded = load_model(model)
    except ImportError as exc:                                        # a missing optional extra: say what to install
        raise WalkthroughError(str(exc)) from None
    except OSError as exc:      # a model folder without its files (IMPLICIT_ICL_MINILM_DIR), or one that cannot be read
        raise WalkthroughError(f"--model {model}: {exc}") from None
    return analysis, loaded, describe(loaded, model)


@functools.lru_cache(maxsize=16)
def _text_layer(model: str, text: str, layer: int | None, position: int | None) -> WalkthroughData:
    analysis, loaded, label = _load(model)
    layer = default_layer(model, len(loaded.blocks)) if layer is None else layer
    tokens, traj, baseline = analysis.text_trajectories(loaded, text, layer, position, baseline_seed=0)
    explanation = analysis.explain_layer(loaded, text, layer, position, dynamics=False, baseline_seed=0)
    tokens = [str(t) for t in tokens]
    n = traj.n
    if len(tokens) < n:
        raise WalkthroughError(f"text_trajectories returned {len(tokens)} token strings for {n} context tokens")
    query = tokens[n] if len(tokens) > n else "(query)"
    cfg = loaded.configs[layer]
    notes = (("ΔW = 0 exactly: this parallel-residual block's MLP reads the query's own vector, which the context "
              "never touches (THEORY §11); the whole effect of the context is Δb.",) if cfg.kind == "parallel" else ())
    short = model if model in ("minilm", "fewshot") else label
    return WalkthroughData(
        title=f"{short} layer {layer} · {text[:40]!r}",
        source=f"pretrained {short}, layer {layer}, query token {query!r}, the other {n} tokens as context "
               "in text order · numpy reference (float64)",
        token_labels=tuple(tokens[:n]),
        token_values=tuple(f"token {t!r} ({k} of {n} context tokens, text order)" for k, t in enumerate(tokens[:n], 1)),
        query_value=f"token {query!r}",
        trajectory=traj,
        baseline=baseline,
        baseline_label="random layer of the same shapes and weight scale (each array redrawn N(mean, std), seed 0)",
        baseline_short="random layer",
        model_label=f"{short} layer {layer}",
        readout=None,
        residual=cfg.kind != "plain",                 # every real block has a residual (Δb) around its MLP
        notes=notes,
        explanation=explanation,
        layer=layer,
        n_layers=len(loaded.blocks),
        switch_layer=functools.partial(text_data, model, text, position=position),
    )
