"""Stacks of blocks (THEORY §3c): per-block last-token updates (P2, block by block) that compose exactly through the
whole model (the composition is our check, not P2's statement)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .blocks import block, init_block
from .config import BlockConfig
from .update import Update, apply_update, implicit_update, position_updates
from .validation import as_array


def normalise_stack(model_params, model_cfg) -> tuple[list[dict], list[BlockConfig]]:
    """A stack's params (a list of block dicts, or one flat dict with ``blocks.{l}.`` keys) and its config (one
    ``BlockConfig`` for every block, or one per block) as two lists of equal, non-zero length."""
    if isinstance(model_params, dict):
        model_params = split_stack(model_params)
    blocks = list(model_params)
    if not blocks:
        raise ValueError("model_params must hold at least one block")
    cfgs = [model_cfg] * len(blocks) if isinstance(model_cfg, BlockConfig) else list(model_cfg)
    if len(cfgs) != len(blocks):
        raise ValueError(f"model_cfg must be one BlockConfig or one per block ({len(blocks)}), got {len(cfgs)}")
    return blocks, cfgs


def check_causal_stack(cfgs) -> None:
    """A stack's prefix dynamics need every block but the last to be causal: a non-causal block lets later tokens
    change the context's hidden states (the last block's context states feed no block)."""
    if not all(c.causal for c in cfgs[:-1]):
        raise ValueError("model_cfg must be causal in every block but the last for a stack's prefix dynamics "
                         "(a non-causal block lets later tokens change the context's hidden states)")


def split_stack(flat: dict) -> list[dict]:
    """``{"blocks.0.attn.W_q": …}`` → ``[{"attn.W_q": …}, …]`` (the on-disk form of a stack)."""
    out: dict[int, dict] = {}
    for key, value in flat.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"model_params keys must look like 'blocks.<l>.<name>', got {key!r}")
        out.setdefault(int(parts[1]), {})[parts[2]] = value
    if sorted(out) != list(range(len(out))):
        raise ValueError(f"model_params block indices must be 0..L-1, got {sorted(out)}")
    return [out[i] for i in range(len(out))]


def join_stack(blocks: Sequence[dict]) -> dict:
    """Inverse of ``split_stack``."""
    return {f"blocks.{i}.{k}": v for i, p in enumerate(blocks) for k, v in p.items()}


def init_model(cfg: BlockConfig, n_blocks: int, seed: int = 0, **kw) -> list[dict]:
    """``n_blocks`` random blocks of the same config (block l uses seed ``seed + l``)."""
    return [init_block(cfg, seed + l, **kw) for l in range(n_blocks)]


def model_forward(model_params, model_cfg, Z, positions=None) -> list[np.ndarray]:
    """Hidden states ``[H^0 = Z, H^1, …, H^L]``, each ``(T, d_model)``; ``positions`` of the rows (default
    ``0..T−1``, see ``block_output``)."""
    blocks, cfgs = normalise_stack(model_params, model_cfg)
    H = [as_array(Z, "tokens", (None, cfgs[0].d_model))]
    for p, c in zip(blocks, cfgs):
        H.append(block(p, c, H[-1], positions))
    return H


def model_updates(model_params, model_cfg, tokens, positions=None) -> list[Update]:
    """The last-token update of every block (P2 block by block; their composition is ours, THEORY §3c).

    Block ℓ's update comes from its input ``H^{ℓ−1}`` (computed *with* context): context ``H^{ℓ−1}_{1..N}``,
    query ``x^ℓ = H^{ℓ−1}_{N+1}``. Putting all of them in at once and running the last token alone
    reproduces the model's last-token output exactly (``apply_model_updates``).
    """
    blocks, cfgs = normalise_stack(model_params, model_cfg)
    tokens = as_array(tokens, "tokens", (None, cfgs[0].d_model))
    if tokens.shape[0] == 0:
        raise ValueError("tokens must hold at least the query, got shape (0, d_model)")
    H = model_forward(blocks, cfgs, tokens, positions)
    return [implicit_update(p, c, H[l][:-1], H[l][-1], positions=positions)
            for l, (p, c) in enumerate(zip(blocks, cfgs))]


def model_position_updates(model_params, model_cfg, Z, query: str = "own") -> list[Update]:
    """Every block's update at every position (P2 block by block, THEORY §3b; ``query`` as in
    ``position_updates``): block ℓ's from its input ``H^{ℓ−1}``. One stacked ``Update`` per block, ``u`` (T, d_mlp)."""
    blocks, cfgs = normalise_stack(model_params, model_cfg)
    H = model_forward(blocks, cfgs, Z)
    return [position_updates(p, c, H[l], query) for l, (p, c) in enumerate(zip(blocks, cfgs))]


def apply_model_updates(model_params, updates: Sequence[Update]) -> list[dict]:
    """Every block's params with its own update applied."""
    blocks = split_stack(model_params) if isinstance(model_params, dict) else list(model_params)
    if len(updates) != len(blocks):
        raise ValueError(f"updates must hold one Update per block ({len(blocks)}), got {len(updates)}")
    return [apply_update(p, u) for p, u in zip(blocks, updates)]
