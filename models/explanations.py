"""What the model analysis (``analysis.py``) returns: one layer's explanation, all layers', and their baseline.

The result types hold the numbers and say what each means (``to_dict`` gives the JSON report); ``analysis.py``
computes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicit_icl.reference import Trajectory, Update

__all__ = ["Baseline", "LayerExplanation", "ModelExplanation", "top_share"]


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
    """Layer ℓ's implicit update for one query token of one text (see ``analysis``'s docstring for the choices).

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


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if np.size(values) else float("nan")
