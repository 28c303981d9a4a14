"""Validation losses of a model with the float64 NumPy reference (no torch needed).

The prediction is the last coordinate of the (last block's) output at the query (P1 §4). "Via ΔW" runs the query
**alone** through the model whose ``mlp.W`` (and ``mlp.b_out``) carry the implicit update of the whole context
(P1 Thm 2.2 corollary; for a stack the per-block last-token updates of THEORY §3c, whose composition is ours).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicit_icl.reference import (apply_model_updates, apply_update, block_output, implicit_update,
                                    model_forward, model_updates, split_stack)
from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.tasks import RegressionPrompts, prediction, regression_prompts


def validation_prompts(n_prompts: int, n_points: int, d: int, seed: int) -> RegressionPrompts:
    """The fixed, seeded validation prompts a checkpoint's recorded losses refer to."""
    return regression_prompts(n_prompts, n_points, d, seed)


def blocks_of(params: dict, n_blocks: int) -> list[dict]:
    """A single block (``n_blocks = 0``) or a stack keyed ``blocks.<l>.…`` as a list of block dicts."""
    return split_stack(params) if n_blocks else [params]


def predict(params: dict, cfg: BlockConfig, n_blocks: int, Z: np.ndarray) -> np.ndarray:
    """``ŷ`` for every prompt of ``Z`` (B, n+1, d+1) → (B,): the model run on context and query."""
    blocks = blocks_of(params, n_blocks)
    return np.array([prediction(model_forward(blocks, cfg, z)[-1][-1]) for z in Z])


def predict_via_update(params: dict, cfg: BlockConfig, n_blocks: int, Z: np.ndarray) -> np.ndarray:
    """``ŷ`` from the query alone through ``W + ΔW(C)`` (and ``b_out + Δb``) in every block → (B,)."""
    blocks = blocks_of(params, n_blocks)
    out = []
    for z in Z:
        if len(blocks) == 1:
            updated = [apply_update(blocks[0], implicit_update(blocks[0], cfg, z[:-1], z[-1]))]
        else:
            updated = apply_model_updates(blocks, model_updates(blocks, cfg, z))
        out.append(prediction(model_forward(updated, cfg, z[-1:])[-1][-1]))
    return np.array(out)


@dataclass(frozen=True)
class Validation:
    """Mean squared errors on the validation prompts and the largest gap between the two predictions."""

    loss: float
    loss_via_update: float
    max_abs_diff: float
    loss_zero: float


def validate(params: dict, cfg: BlockConfig, n_blocks: int, prompts: RegressionPrompts) -> Validation:
    """float64 validation with context, via ΔW, and of predicting 0 (the baseline ``E[⟨w,x_q⟩²] = d``)."""
    y = prompts.target
    pred = predict(params, cfg, n_blocks, prompts.Z)
    pred_dw = predict_via_update(params, cfg, n_blocks, prompts.Z)
    return Validation(
        loss=float(np.mean((pred - y) ** 2)),
        loss_via_update=float(np.mean((pred_dw - y) ** 2)),
        max_abs_diff=float(np.max(np.abs(pred - pred_dw))),
        loss_zero=float(np.mean(y ** 2)),
    )


def checkpoint_validation(params: dict, cfg: BlockConfig, meta: dict) -> Validation:
    """Recompute a trained checkpoint's validation from the preset recorded in its meta."""
    preset = meta["preset"]
    prompts = validation_prompts(preset["val_prompts"], preset["n_points"], preset["d"], preset["val_seed"])
    return validate(params, cfg, meta["n_blocks"], prompts)
