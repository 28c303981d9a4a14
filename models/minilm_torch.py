"""all-MiniLM-L6-v2 through torch: the same encoder as ``minilm.forward``, batched, with a padding mask.

Built from ``implicit_icl.backends.torch_ops`` (the project's torch versions of the reference's block functions);
only the key-padding mask is added here, because the toy blocks never pad. Importing it without torch raises
``MissingExtraError`` naming the ``torch`` extra. The params are the NumPy ones of ``minilm.load_minilm`` converted
to tensors.
"""
from __future__ import annotations

import numpy as np

from .errors import MissingExtraError

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:
    raise MissingExtraError("implicit_icl.models.minilm_torch needs torch, which is not installed: "
                            "pip install 'implicit-icl[torch]'") from exc

from implicit_icl.backends import torch_ops
from implicit_icl.reference import BlockConfig

from .minilm import MiniLM


def torch_params(model: MiniLM, dtype=torch.float64, device=None) -> tuple[dict, list[dict]]:
    """``(embeddings, blocks)`` as tensors of ``dtype`` on ``device`` (same keys as the NumPy dicts)."""
    def conv(d):
        return {k: torch.as_tensor(np.array(v), dtype=dtype, device=device) for k, v in d.items()}  # a copy

    return conv(model.embeddings), [conv(b) for b in model.blocks]


def embed(embeddings: dict, ids: torch.Tensor, type_ids: torch.Tensor | None = None, eps: float = 1e-12):
    """``LN(word[ids] + position[0..T−1] + token_type[type_ids])``, ``(..., T) → (..., T, D)``."""
    T = ids.shape[-1]
    type_ids = torch.zeros_like(ids) if type_ids is None else type_ids
    positions = torch.arange(T, device=ids.device)
    x = embeddings["word"][ids] + embeddings["position"][positions] + embeddings["token_type"][type_ids]
    return torch_ops.layer_norm(x, embeddings["ln.g"], embeddings["ln.b"], eps)


def masked_self_attention(params: dict, cfg: BlockConfig, X: torch.Tensor, key_mask: torch.Tensor):
    """``torch_ops.self_attention`` with padded keys removed: ``X`` ``(B, T, D)``, ``key_mask`` ``(B, T)`` bool."""
    B, T, _ = X.shape
    H, dh = cfg.n_heads, cfg.head_dim
    q, k, v = (F.linear(X, params[f"attn.W_{n}"], params.get(f"attn.b_{n}")) for n in "qkv")   # (B, T, H*dh)
    q, k, v = (m.reshape(B, T, H, dh).transpose(1, 2) for m in (q, k, v))                        # (B, H, T, dh)
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])       # (B, H, T, dh)
    heads = heads.transpose(1, 2).reshape(B, T, H * dh)                                          # (B, T, H*dh)
    return F.linear(heads, params["attn.W_o"], params.get("attn.b_o"))                          # (B, T, D)


def forward(embeddings: dict, blocks: list, cfg: BlockConfig, ids: torch.Tensor, type_ids=None,
            attention_mask: torch.Tensor | None = None, eps: float = 1e-12) -> list[torch.Tensor]:
    """Hidden states ``[H^0..H^L]``, each ``(..., T, D)``; ``attention_mask`` ``(B, T)`` (1 = real token) or None.

    Without a mask this is ``torch_ops.block`` layer after layer (bidirectional: ``cfg.causal`` is False).
    """
    if cfg.causal:
        raise ValueError("cfg.causal must be False for a BERT encoder")
    H = [embed(embeddings, ids, type_ids, eps)]
    for params in blocks:
        Z = H[-1]
        if attention_mask is None:
            H.append(torch_ops.block(params, cfg, Z))
        else:
            A = masked_self_attention(params, cfg, Z, attention_mask.to(torch.bool))
            H.append(torch_ops.head(params, cfg, *torch_ops.taps_from_attention(params, cfg, Z, A)))
    return H
