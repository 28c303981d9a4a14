"""The few-shot decomposition of a causal LM's next-token prediction, and transfer of its updates (issue 15 item 5).

Every layer's last-token update (``reference.model_updates``: ``ΔW^ℓ = u aᵀ/‖a‖²`` on the matrices that read the
MLP's input, ``W`` or ``W_gate`` and ``W_up``, plus ``Δb^ℓ`` on the block output) is computed from the prompt with
its context. Then the query token is run *alone* (its row of ``H⁰``, one token) through the model with:

- ``all``: every layer's update. Exactly the prompt's own next-token distribution (THEORY §3c, §11): its KL to the
  prompt's distribution is round-off, the check that the rest is measured on the right thing;
- ``none``: no update: the query without its context (what the context did, by difference);
- ``delta_W``: only the ``ΔW``\\ s (every ``Δb`` left out); ``delta_b``: only the ``Δb``\\ s. Neither is exact:
  the gap to the prompt's distribution is the measurement (THEORY §11 "how much flows through the ΔWs", ours);
- ``layer ℓ``: only layer ℓ's update (``ΔW`` and ``Δb``).

Each is read against the prompt's own distribution ``p``: ``KL(p ‖ q)`` in nats, the probability ``q(t)`` and the
rank of the model's top token ``t = argmax p``, and whether ``argmax q = t``. The share that flows through the
weights is ``1 − KL(p ‖ q_ΔW) / KL(p ‖ q_none)`` (ours: 1 = the ΔWs alone recover the context's effect, 0 = no
better than no update, negative = worse; undefined, ``None``, where the context moves the prediction by less than
``SHARE_FLOOR`` nats). The ΔW and Δb shares are not a split of one whole: they need not add to 1, and in the ΔW-only
run each later layer's ΔW meets an input other than the one it was computed for. For a ``parallel`` block the MLP
never sees the context, so ``ΔW = 0`` exactly and ``delta_W`` *is* ``none`` (THEORY §11); ``Decomposition.delta_W_zero`` says so.

Transfer ("thought patch", Mazzawi et al. 2025, arXiv 2510.08734; THEORY §8.2): the updates computed for one query
applied to another query of the same context, run alone, against that query run with its context, with no update,
and with a patch fitted over K other queries (per layer the minimum-norm least squares ``ΔW a_k = u_k`` over the
K queries' taps and the mean of their ``Δb_k``, as ``experiments/e5_thought_patch.py`` does for one block).
``untrained_twin`` gives the control: the same shapes, every array redrawn (seeded).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from implicit_icl.reference import Update, apply_update, bias_key, model_forward, model_updates

from .analysis import matched_random_block

__all__ = ["SHARE_FLOOR", "Decomposition", "Transfer", "decompose", "fit_patch", "kl_divergence", "log_softmax",
           "readout", "run_alone", "transfer", "untrained_twin"]


SHARE_FLOOR = 1e-3   # nats: below this KL(p ‖ q_none) a share is a ratio of two tiny numbers, so it is not given


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log softmax`` over the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """``KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)`` in nats, ``p`` and ``q`` the softmax of the logits."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def readout(reference_logits: np.ndarray, logits: np.ndarray, target: int | None = None) -> dict:
    """``logits`` read against the prompt's own ``reference_logits``: KL, the reference's top token's probability
    and (1-based) rank, top-1 agreement and, with ``target``, whether ``argmax`` is the target."""
    top = int(np.argmax(reference_logits))
    lq = log_softmax(logits)
    out = {"kl": kl_divergence(reference_logits, logits), "p_top": float(np.exp(lq[top])),
           "rank_top": int(1 + np.sum(lq > lq[top])), "agrees": bool(np.argmax(lq) == top)}
    if target is not None:
        out["correct"] = bool(np.argmax(lq) == target)
    return out


def only_delta_W(update: Update) -> Update:
    return Update(update.u, update.a, np.zeros_like(update.delta_b))


def only_delta_b(update: Update) -> Update:
    return Update(np.zeros_like(update.u), update.a, update.delta_b)


def run_alone(model, x0: np.ndarray, updates) -> np.ndarray:
    """Next-token logits ``(V,)`` of one token's ``H⁰`` row ``x0`` run alone through the model with ``updates[ℓ]``
    applied to layer ℓ (``None``: layer ℓ unchanged)."""
    blocks = [b if u is None else apply_update(b, u) for b, u in zip(model.blocks, updates)]
    return model.logits_from(model_forward(blocks, list(model.cfgs), x0[None, :])[-1][0])


def check_causal_lm(model) -> None:
    if not getattr(model, "causal", False) or getattr(model, "lm_head", None) is None:
        raise ValueError("the decomposition needs a causal language model (a decoder with a language-model head, "
                         "loaded by models.hf), got " + getattr(model, "family", type(model).__name__))


def with_context(model, ids) -> tuple[np.ndarray, list, np.ndarray]:
    """``(H⁰, updates, logits)`` of the prompt ``ids`` (query last): every layer's last-token update and the
    model's own next-token logits."""
    ids = model.check_ids(ids)
    H = model.hidden_states(ids)
    updates = model_updates(list(model.blocks), list(model.cfgs), H[0])
    return H[0], updates, model.logits_from(H[-1][-1])


# ------------------------------------------------------------------------------------------ decomposition


@dataclass(frozen=True)
class Decomposition:
    """The query's next-token logits under each choice of updates (module docstring), for one prompt.

    ``reference``: the prompt's own logits ``(V,)``; ``variants``: ``{"all", "none", "delta_W", "delta_b"}`` →
    logits; ``per_layer[ℓ]``: only layer ℓ's update; ``delta_W_norms`` / ``delta_b_norms`` ``(L,)``;
    ``delta_W_zero``: every ``u`` is exactly 0 (a parallel-residual model: ``delta_W`` is ``none``)."""

    ids: np.ndarray
    reference: np.ndarray
    variants: dict
    per_layer: list
    delta_W_norms: np.ndarray
    delta_b_norms: np.ndarray
    delta_W_zero: bool
    target: int | None = None

    @property
    def top(self) -> int:
        return int(np.argmax(self.reference))

    def read(self, name: str) -> dict:
        return readout(self.reference, self.variants[name], self.target)

    def read_layer(self, layer: int) -> dict:
        return readout(self.reference, self.per_layer[layer], self.target)

    def share(self, name: str) -> float | None:
        """``1 − KL(p ‖ q_name) / KL(p ‖ q_none)`` (ours; ``None`` where the context moves the prediction by less
        than ``SHARE_FLOOR`` nats: the ratio of two tiny numbers says nothing)."""
        none = self.read("none")["kl"]
        return 1.0 - self.read(name)["kl"] / none if none >= SHARE_FLOOR else None

    def to_dict(self) -> dict:
        d = {"ids": [int(i) for i in self.ids], "top_token": self.top, "target": self.target,
             "reference_p_top": float(np.exp(log_softmax(self.reference)[self.top])),
             "delta_W_zero": self.delta_W_zero,
             "variants": {name: self.read(name) for name in self.variants},
             "share_delta_W": self.share("delta_W"), "share_delta_b": self.share("delta_b"),
             "layers": [dict(self.read_layer(l), layer=l, delta_W_norm=float(w), delta_b_norm=float(b))
                        for l, (w, b) in enumerate(zip(self.delta_W_norms, self.delta_b_norms))]}
        if self.target is not None:
            d["reference_correct"] = bool(self.top == self.target)
        return d


def decompose(model, ids, target: int | None = None) -> Decomposition:
    """The decomposition of the next-token prediction after the last token of ``ids`` (module docstring);
    ``target``: the right answer's token id, when known (then each readout says whether argmax is it)."""
    check_causal_lm(model)
    H0, updates, reference = with_context(model, ids)
    x0, L = H0[-1], len(updates)
    variants = {"all": run_alone(model, x0, updates), "none": run_alone(model, x0, [None] * L),
                "delta_W": run_alone(model, x0, [only_delta_W(u) for u in updates]),
                "delta_b": run_alone(model, x0, [only_delta_b(u) for u in updates])}
    per_layer = [run_alone(model, x0, [u if k == l else None for k, u in enumerate(updates)]) for l in range(L)]
    return Decomposition(ids=np.asarray(ids), reference=reference, variants=variants, per_layer=per_layer,
                         delta_W_norms=np.array([float(u.norm) for u in updates]),
                         delta_b_norms=np.array([float(np.linalg.norm(u.delta_b)) for u in updates]),
                         delta_W_zero=all(not np.any(u.u) for u in updates), target=target)


# --------------------------------------------------------------------------------------------- transfer


def fit_patch(updates: list[list[Update]]) -> list[Update]:
    """One query-independent update per layer from K queries' updates (``updates[k][ℓ]``): the minimum-norm least
    squares ``ΔW`` with ``ΔW a_k = u_k`` for every k (``ΔW = U A⁺``, as E5's ``thought_patch``) and the mean
    ``Δb``: one ``(ΔW (M, D), Δb (D,))`` per layer (``ΔW`` is not rank 1 when K > 1, so it is a matrix)."""
    out = []
    for l in range(len(updates[0])):
        a = np.stack([u[l].a for u in updates])                                 # (K, D)
        U = np.stack([u[l].u for u in updates])                                 # (K, M)
        dW = np.linalg.lstsq(a, U, rcond=None)[0].T                             # (M, D): ΔW aₖ = uₖ
        out.append((dW, np.mean([u[l].delta_b for u in updates], axis=0)))
    return out


def run_patched(model, x0: np.ndarray, patch: list) -> np.ndarray:
    """:func:`run_alone` with full matrices ``(ΔW, Δb)`` per layer (a fitted patch)."""
    blocks = [dict(b, **{"mlp.W": b["mlp.W"] + dW, bias_key(b): b[bias_key(b)] + db})    # b_post after a post norm
              for b, (dW, db) in zip(model.blocks, patch)]
    return model.logits_from(model_forward(blocks, list(model.cfgs), x0[None, :])[-1][0])


@dataclass(frozen=True)
class Transfer:
    """One context, Q queries. ``reference[t]``: query t's logits with the context; ``own[t]`` / ``none[t]``: query
    t alone with its own updates / none; ``cross[s][t]``: query t alone with query s's updates (``None`` on the
    diagonal); ``patch[K][t]``: query t alone with the patch fitted on the K queries after t (cyclically, t
    left out); ``targets[t]``: the right answer (or ``None``)."""

    context: np.ndarray
    queries: np.ndarray
    targets: list
    reference: list
    own: list
    none: list
    cross: list
    patch: dict

    def _reads(self, logits_of) -> list[dict]:
        return [readout(self.reference[t], logits_of(t), self.targets[t]) for t in range(len(self.queries))]

    def summary(self) -> dict:
        """Means over target queries (over sources too for ``transfer``) of KL, p(top), top-1 agreement and
        accuracy; ``with_context``: the model's own accuracy with the context; ``identity_max_kl``: the largest
        KL of a query run alone with its own updates (the identity, checked on every query)."""
        Q = len(self.queries)
        methods = {"own": self._reads(lambda t: self.own[t]), "none": self._reads(lambda t: self.none[t]),
                   "transfer": [readout(self.reference[t], self.cross[s][t], self.targets[t])
                                for s in range(Q) for t in range(Q) if s != t]}
        methods |= {f"patch_K{K}": self._reads(lambda t, K=K: self.patch[K][t]) for K in self.patch}
        out = {name: _mean_reads(reads) for name, reads in methods.items()}
        out["identity_max_kl"] = max(abs(r["kl"]) for r in methods["own"])    # own updates: exact, on every query
        known = [t for t in range(Q) if self.targets[t] is not None]
        out["with_context"] = {"kl": 0.0, "p_top": float(np.mean([np.exp(log_softmax(r).max()) for r in
                                                                self.reference])), "rank_top": 1.0, "agrees": 1.0,
                               "correct": float(np.mean([np.argmax(self.reference[t]) == self.targets[t]
                                                         for t in known])) if known else None}
        return out


def _mean_reads(reads: list[dict]) -> dict:
    """Each figure's mean over the reads that have it (``correct`` only where the query's answer is known: ``None``
    if none is), with ``n`` reads and ``n_correct`` of them scored."""
    keys = ("kl", "p_top", "rank_top", "agrees", "correct")
    means = {k: float(np.mean([r[k] for r in reads if k in r])) if any(k in r for r in reads) else None
             for k in keys}
    return means | {"n": len(reads), "n_correct": sum("correct" in r for r in reads)}


def transfer(model, context, queries, targets=None, Ks=(1, 2, 4)) -> Transfer:
    """:class:`Transfer` for the context ids ``context`` and the query token ids ``queries`` (at least 2);
    ``targets[t]`` the right answer of query t or ``None``; ``Ks``: the patch sizes (each ``< Q``)."""
    check_causal_lm(model)
    queries = [int(q) for q in queries]
    Q = len(queries)
    if Q < 2:
        raise ValueError(f"queries must hold at least 2 token ids (one to take updates from, one to apply them to), "
                         f"got {Q}")
    Ks = [K for K in Ks if 1 <= K < Q]
    targets = [None] * Q if targets is None else [None if t is None else int(t) for t in targets]
    runs = [with_context(model, np.append(np.asarray(context, dtype=np.int64), q)) for q in queries]
    x0 = [H0[-1] for H0, _, _ in runs]
    ups = [u for _, u, _ in runs]
    cross = [[None if s == t else run_alone(model, x0[t], ups[s]) for t in range(Q)] for s in range(Q)]
    patch = {K: [run_patched(model, x0[t], fit_patch([ups[(t + j) % Q] for j in range(1, K + 1)]))
                 for t in range(Q)] for K in Ks}
    return Transfer(context=np.asarray(context), queries=np.asarray(queries), targets=targets,
                    reference=[r for _, _, r in runs], own=[run_alone(model, x0[t], ups[t]) for t in range(Q)],
                    none=[run_alone(model, x0[t], [None] * len(ups[t])) for t in range(Q)], cross=cross,
                    patch=patch)


def induction_targets(context, queries) -> list:
    """Per query, the token after its last occurrence in ``context`` (the key→value task's answer; ``None`` where
    it does not occur before the last token). Ours: the task's truth read off the prompt."""
    context = [int(c) for c in context]
    out = []
    for q in queries:
        where = [i for i in range(len(context) - 1) if context[i] == int(q)]
        out.append(context[where[-1] + 1] if where else None)
    return out


# ------------------------------------------------------------------------------------------ the control


def untrained_twin(model, seed: int = 0):
    """The control: the same model object with every array redrawn i.i.d. ``N(mean, std)`` of the trained one
    (``analysis.matched_random_block``, seeded by ``(seed, layer)``; embeddings, head and norms too; a tied head
    stays tied). Same config, shapes and weight scales; nothing learned."""
    parts = model.parts
    blocks = tuple(matched_random_block(b, (seed, l)) for l, b in enumerate(parts.blocks))
    L = len(blocks)
    extra = {"tokens": parts.tokens}
    if parts.lm_head is not None and parts.lm_head is not parts.tokens:
        extra["lm_head"] = parts.lm_head
    if parts.positions is not None:
        extra["positions"] = parts.positions
    if parts.final_norm is not None:
        extra |= {f"final_norm.{k}": getattr(parts.final_norm, k) for k in ("g", "b")
                  if getattr(parts.final_norm, k, None) is not None}
    drawn = matched_random_block(extra, (seed, L))
    new = {"blocks": blocks, "tokens": drawn["tokens"]}
    new["lm_head"] = drawn.get("lm_head", drawn["tokens"] if parts.lm_head is not None else None)
    if parts.positions is not None:
        new["positions"] = drawn["positions"]
    if parts.final_norm is not None:
        new["final_norm"] = dataclasses.replace(parts.final_norm, **{k: drawn[f"final_norm.{k}"] for k in ("g", "b")
                                                                    if f"final_norm.{k}" in drawn})
    return dataclasses.replace(model, parts=dataclasses.replace(parts, **new))
