"""The model as torch functions over a flat params dict (a single block or a ``blocks.<l>.…`` stack).

Built on ``implicit_icl.backends.torch_ops``; batched over prompts: ``Z`` is ``(B, T, d_model)``.
"""
from __future__ import annotations

import torch

from implicit_icl.backends import torch_ops as T
from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.update import update_from_taps


def block_views(params: dict, n_blocks: int) -> list[dict]:
    """The per-block dicts (views of the same tensors) of a single block or a stack."""
    if not n_blocks:
        return [params]
    return [{k[len(f"blocks.{l}."):]: v for k, v in params.items() if k.startswith(f"blocks.{l}.")}
            for l in range(n_blocks)]


def init_params(cfg: BlockConfig, n_blocks: int, seed: int, dtype=torch.float32) -> dict:
    """Seeded PyTorch-style init of every block (one generator, blocks in order)."""
    g = torch.Generator().manual_seed(seed)
    if not n_blocks:
        return T.init_block(cfg, g, dtype)
    return {f"blocks.{l}.{k}": v for l in range(n_blocks) for k, v in T.init_block(cfg, g, dtype).items()}


def forward(params: dict, cfg: BlockConfig, n_blocks: int, Z: torch.Tensor) -> torch.Tensor:
    """The last block's output at every position, ``(B, T, d_model)``."""
    H = Z
    for p in block_views(params, n_blocks):
        H = T.block(p, cfg, H)
    return H


def predict(params: dict, cfg: BlockConfig, n_blocks: int, Z: torch.Tensor) -> torch.Tensor:
    """``ŷ``: the last coordinate at the query (last) position, ``(B,)`` (P1 §4)."""
    return forward(params, cfg, n_blocks, Z)[..., -1, -1]


def head_with(params: dict, cfg: BlockConfig, a: torch.Tensor, r: torch.Tensor, W: torch.Tensor,
              b_out: torch.Tensor) -> torch.Tensor:
    """``finish(r + W_out σ(W a + b) + b_out)`` with a matrix ``W`` ((M, D), or one per prompt (B, M, D)) and bias
    ``b_out`` ((D,) or (B, D)): the kinds' one ``head``."""
    return T.head(params, cfg, a, r, W=W, b_out=b_out)


def predict_via_update(params: dict, cfg: BlockConfig, n_blocks: int, Z: torch.Tensor) -> torch.Tensor:
    """``ŷ`` from the query alone through ``W + ΔW(C)`` and the bias update ``Δb`` in every block, ``(B,)``.

    Each block's update comes from its input with context (THEORY §3c): ``u = W (a_C − a_x)``,
    ``ΔW = u a_xᵀ/‖a_x‖²`` formed as a matrix (so float32 round-off is that of the updated model),
    ``Δb = r_C − r_x``, added where the block's bias is (``kinds.head``'s ``delta_b``: on ``mlp.b_out``, or after a
    post-MLP norm). The query-alone state ``x`` then flows through the updated blocks.
    """
    H = Z                         # with context, (B, T, D)
    x = Z[:, -1, :]               # the query alone through updated blocks, (B, D)
    for p in block_views(params, n_blocks):
        a_C, r_C = (t[:, -1, :] for t in T.taps(p, cfg, H))                    # (B, D) each
        a_x, r_x = (t[:, 0, :] for t in T.taps(p, cfg, H[:, -1:, :]))          # (B, D) each
        upd = update_from_taps(p["mlp.W"], a_C, r_C, a_x, r_x)                 # u (B, M)
        # Block run on the query alone with the updated weights W + ΔW (B, M, D) and the bias update Δb (B, D): its
        # taps are (a_x, r_x) of its own input.
        a_q, r_q = (t[:, 0, :] for t in T.taps(p, cfg, x[:, None, :]))
        x = T.head(p, cfg, a_q, r_q, W=p["mlp.W"] + upd.delta_W, delta_b=upd.delta_b)
        H = T.block(p, cfg, H)
    return x[:, -1]
