"""In-context linear regression prompts (P1 §4 / THEORY §5) and the least-squares baseline.

A prompt is the row stack ``Z`` of shape ``(n + 1, d + 1)``: row i is ``(x_i, ⟨w, x_i⟩)`` for the n context
examples and the last row is the query ``(x_q, 0)``; ``w, x_i, x_q ~ N(0, I_d)`` fresh for every prompt.
The model's prediction is the last coordinate of the block output at the query's position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .checks import check_int


@dataclass(frozen=True)
class RegressionPrompts:
    """A batch of B prompts: ``Z`` (B, n+1, d+1), ``target`` (B,) = ⟨w, x_q⟩, ``w`` (B, d),
    ``x`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d)."""

    Z: np.ndarray
    target: np.ndarray
    w: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_query: np.ndarray

    @property
    def context(self) -> np.ndarray:
        """The context rows ``(B, n, d+1)``."""
        return self.Z[:, :-1]

    @property
    def query(self) -> np.ndarray:
        """The query rows ``(B, d+1)``."""
        return self.Z[:, -1]


def regression_prompts(n_prompts: int, n_points: int, d: int, seed: int | np.random.Generator = 0,
                       noise_std: float = 0.0) -> RegressionPrompts:
    """Draw ``n_prompts`` prompts of ``n_points`` examples in dimension ``d`` (seeded, reproducible)."""
    for name, value, low in (("n_prompts", n_prompts, 1), ("n_points", n_points, 0), ("d", d, 1)):
        check_int(name, value, low=low)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    w = rng.standard_normal((n_prompts, d))                                  # (B, d)
    x = rng.standard_normal((n_prompts, n_points, d))                        # (B, n, d)
    x_query = rng.standard_normal((n_prompts, d))                            # (B, d)
    y = np.einsum("bnd,bd->bn", x, w) + noise_std * rng.standard_normal((n_prompts, n_points))  # (B, n)
    context = np.concatenate([x, y[..., None]], axis=-1)                     # (B, n, d+1)
    query = np.concatenate([x_query, np.zeros((n_prompts, 1))], axis=-1)     # (B, d+1)
    Z = np.concatenate([context, query[:, None, :]], axis=1)                 # (B, n+1, d+1)
    return RegressionPrompts(Z=Z, target=np.einsum("bd,bd->b", x_query, w), w=w, x=x, y=y, x_query=x_query)


def prediction(out: np.ndarray) -> np.ndarray:
    """The model's prediction from a block output at the query: its last coordinate (P1 §4)."""
    return np.asarray(out)[..., -1]


def least_squares_predictions(x: np.ndarray, y: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    """Minimum-norm least-squares prediction ``ŵ_i · x_q`` from the first i examples, for i = 0..n.

    ``x`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d) → ``(B, n + 1)``; i = 0 predicts 0.
    """
    x, y, x_query = np.asarray(x, float), np.asarray(y, float), np.asarray(x_query, float)
    if x.ndim != 3 or y.shape != x.shape[:2] or x_query.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"expected x (B, n, d), y (B, n), x_query (B, d); got {x.shape}, {y.shape}, {x_query.shape}")
    B, n, _ = x.shape
    out = np.zeros((B, n + 1))
    for b in range(B):
        for i in range(1, n + 1):
            w_hat = scipy.linalg.lstsq(x[b, :i], y[b, :i])[0]              # (d,)
            out[b, i] = w_hat @ x_query[b]
    return out
