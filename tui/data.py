"""What the walkthrough shows, prepared once outside the UI (no Textual import here).

``WalkthroughData`` holds the prompt (token labels and values), the library's ``Trajectory`` for a fixed query
(P1 §3, Prop. 3.1) and, optionally, the ``Trajectory`` of an untrained block of the same config on the same prompt
(THEORY §8.5: the decay of ``‖ΔW_{i+1} − ΔW_i‖`` is generic, so the honest picture shows both). Every number the
app displays is read from these trajectories; the app itself computes nothing.

Builders:

- ``regression_data``: a block (trained checkpoint or random) on one in-context regression prompt (P1 §4).
- ``default_data``: the bundled trained checkpoint if it exists, else a seeded random ``plain`` block.
- ``text_data``: a real pretrained model (``minilm``, ``fewshot`` or a model folder) through
  ``implicit_icl.models.analysis.text_trajectories`` (the loaders live in ``models``).

The NumPy trajectories come from ``reference.subsets.prefix_trajectory`` (the query's attention row over every
prefix in one masked pass, O(n²·d)), equal to ``reference.trajectory`` (which re-runs the block on each prefix,
O(n³·d)) to float64 round-off: the documented maximum of ``MAX_TOKENS`` context tokens takes about a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from implicit_icl.reference import BlockConfig, Trajectory, init_block
from implicit_icl.reference.checks import is_int
from implicit_icl.reference.subsets import prefix_trajectory
from implicit_icl.reference.tasks import least_squares_predictions, regression_prompts

#: The random block used when no trained checkpoint is bundled: P1's shape (THEORY §5: d = 2, so d_model = 3;
#: MLP width 128; 8 heads of width 4; no skip around the MLP, no LayerNorm, causal, ReLU).
RANDOM_CONFIG = BlockConfig(d_model=3, d_mlp=128, n_heads=8, d_head=4, kind="plain", activation="relu")
DEFAULT_TOKENS = 50
MAX_TOKENS = 2000


class WalkthroughError(ValueError):
    """A problem with what the user asked the walkthrough to show; the message says what was expected."""


@dataclass(frozen=True)
class WalkthroughData:
    """A prepared walkthrough: prompt, trajectory, optional baseline trajectory, and labels.

    token_labels:  n short strings, one chip per context token (``c_1..c_n``).
    token_values:  n longer strings describing each token (its value).
    query_value:   the fixed query ``x``, described.
    trajectory:    the library's ``Trajectory`` of the model shown (``reference.trajectory``'s fields; here from
                   ``reference.subsets.prefix_trajectory`` or a backend's ``trajectory``).
    baseline:      the same for an untrained block of the same config (or ``None``).
    readout:       index of the output coordinate that is the prediction (P1 §4: the last), or ``None`` when the
                   model has no scalar readout (then only ``max |T_ctx − T_ΔW|`` is shown).
    target:        the true value of the prediction (``⟨w, x_q⟩`` for regression), or ``None``.
    layer, n_layers: for a real model, the layer shown and how many there are (``None`` otherwise);
    switch_layer:  for a real model, ``switch_layer(layer=L)`` returns the same text's data at another layer.
    token_meaning: what the label on each token is (``"y_k = ⟨w, x_k⟩"`` on a regression prompt), or ``""``.
    least_squares: ``(n+1,)`` the least-squares prediction from the first i examples (``reference.tasks``), or
                   ``None`` (no regression prompt).
    explanation:   for a real model, ``models.minilm.explain_layer``'s ``LayerExplanation`` of the layer shown (the
                   tokens that moved W most, ``‖ΔW‖/‖W‖`` against a random layer), or ``None``.
    residual:      whether the block has a residual around the MLP (every kind but ``plain``), so that the query
                   alone reproduces the output with context only with ``W + ΔW_i`` *and* ``b_out + Δb_i``
                   (P2; ``Δb_i = r_i − r`` is ``trajectory.delta_b[i]``). ``False`` requires every ``Δb_i = 0``.
    """

    title: str
    source: str
    token_labels: tuple[str, ...]
    token_values: tuple[str, ...]
    query_value: str
    trajectory: Trajectory
    baseline: Trajectory | None = None
    baseline_label: str = "untrained block"
    baseline_short: str = "untrained"
    model_label: str = "model"
    readout: int | None = None
    target: float | None = None
    target_label: str = "true target"
    notes: tuple[str, ...] = field(default=())
    residual: bool = False
    token_meaning: str = ""
    layer: int | None = None
    n_layers: int | None = None
    switch_layer: object | None = None
    least_squares: np.ndarray | None = None
    explanation: object | None = None

    def __post_init__(self):
        n = self.trajectory.n
        if len(self.token_labels) != n or len(self.token_values) != n:
            raise WalkthroughError(
                f"token_labels and token_values must hold one entry per context token ({n}); "
                f"got {len(self.token_labels)} and {len(self.token_values)}")
        if self.baseline is not None and self.baseline.n != n:
            raise WalkthroughError(f"baseline must have the same context length ({n}), got {self.baseline.n}")
        if not self.residual and np.any(self.trajectory.delta_b != 0):
            raise WalkthroughError("residual=False, but the trajectory has a non-zero bias update Δb_i: the check "
                                   "would hide it (pass residual=True for a block with a residual around the MLP)")

    @property
    def n(self) -> int:
        """Context length: steps run over i = 0..n."""
        return self.trajectory.n

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_mlp, d_model)``: the shape of ``W`` and of every ``ΔW_i``."""
        return self.trajectory.W0.shape

    # --- the matrices shown (formed from the library's factors on request) -------------------------------------

    def delta_W(self, i: int) -> np.ndarray:
        """``ΔW_i = u_i aᵀ/‖a‖²`` (P1 Thm 2.2 for the prefix ``c_1..c_i``), ``(d_mlp, d_model)``."""
        return self.trajectory.delta_W(i)

    def step(self, i: int) -> np.ndarray:
        """``ΔW_i − ΔW_{i−1} = W_i − W_{i−1} = −h ∇L_{i−1}`` (P1 Prop. 3.1), for ``1 ≤ i ≤ n``."""
        if not 1 <= i <= self.n:
            raise IndexError(f"the step ΔW_i − ΔW_(i−1) needs 1 <= i <= {self.n}, got {i}")
        return -self.trajectory.h * self.trajectory.gradient(i - 1)

    # --- step i: the update that consumed c_i (the one step convention of every panel) ----------------------------

    def gd_step(self, i: int) -> tuple[float, float, float]:
        """Step ``i`` (``1 ≤ i ≤ n``), the one that consumed ``c_i``: ``W_i = W_(i−1) − h ∇L_(i−1)(W_(i−1))``
        (P1 Prop. 3.1). Returns ``(L_(i−1)(W_(i−1)), ‖∇L_(i−1)‖, ‖ΔW_i − ΔW_(i−1)‖)`` from the trajectory."""
        if not 1 <= i <= self.n:
            raise IndexError(f"step i consumed c_i: it needs 1 <= i <= {self.n}, got {i}")
        t = self.trajectory
        return float(t.loss[i - 1]), float(t.grad_norm[i - 1]), float(t.step_norm[i - 1])

    def curves(self, which: str) -> dict[str, np.ndarray]:
        """The curves of one panel over ``i = 0..n``, each indexed by the step ``i`` (``nan`` where undefined):

        ``"norm"``: ``‖ΔW_i‖``; ``"step"``: ``‖ΔW_i − ΔW_(i−1)‖`` (none at i = 0); ``"rel"``: that over
        ``‖ΔW_(i−1)‖`` (none at i ≤ 1); ``"pred"``: the prediction ŷ with ``c_1..c_i`` (``"model"`` and
        ``"baseline"``), the least-squares prediction from the same ``i`` examples and the truth (readout only).
        Keys: ``"model"``, ``"baseline"`` (when there is one), and for ``"pred"`` ``"least squares"``, ``"truth"``."""
        if which == "pred":
            return self.prediction_curves()
        out = {"model": curve_series(self.trajectory, which)}
        if self.baseline is not None:
            out["baseline"] = curve_series(self.baseline, which)
        return out

    def prediction_curves(self) -> dict[str, np.ndarray]:
        """ŷ over ``i = 0..n`` (``T_W(c_1..c_i, x)`` at the readout) for the model and the untrained baseline, the
        least-squares prediction ``ŵ_i · x_q`` from the same examples (``reference.tasks.least_squares_predictions``)
        and the truth; empty without a readout."""
        if self.readout is None:
            return {}
        out = {"model": self.trajectory.pred_context[:, self.readout]}
        if self.baseline is not None:
            out["baseline"] = self.baseline.pred_context[:, self.readout]
        if self.least_squares is not None:
            out["least squares"] = self.least_squares
        if self.target is not None:
            out["truth"] = np.full(self.n + 1, self.target)
        return out

    # --- a real model's layer (``implicit-icl explain``'s figures, from ``explanation``) ------------------------------

    def moved_tokens(self) -> list[tuple[str, float]]:
        """The context tokens by how much they move W, largest first: ``(token, ‖ΔW({c_j})‖)``, the update that
        removes ``c_j`` alone (``LayerExplanation.marginal_norm``); empty without an explanation."""
        ex = self.explanation
        if ex is None:
            return []
        pairs = [(str(ex.tokens[j]), float(m)) for j, m in zip(ex.context_index, ex.marginal_norm)]
        return sorted(pairs, key=lambda pair: -pair[1])

    def relative_norms(self) -> tuple[float, float | None] | None:
        """``(‖ΔW‖/‖W‖, the random layer's)`` for the whole context (``explain``'s figures), or ``None``."""
        ex = self.explanation
        if ex is None:
            return None
        return float(ex.relative_norm), None if ex.baseline is None else float(ex.baseline.relative_norm)

    # --- the check (P1 §4 / THEORY §10.13) ---------------------------------------------------------------------

    def prediction_context(self, i: int) -> float | None:
        """The prediction with ``i`` tokens of context, ``T_W(c_1..c_i, x)`` at the readout."""
        return None if self.readout is None else float(self.trajectory.pred_context[i][self.readout])

    def prediction_update(self, i: int) -> float | None:
        """The prediction of the query alone with the update, ``T_{W+ΔW_i}(x)`` (``T_{W+ΔW_i, b+Δb_i}(x)`` for a
        ``residual`` block) at the readout."""
        return None if self.readout is None else float(self.trajectory.pred_update[i][self.readout])

    def prediction_difference(self, i: int) -> float | None:
        """``T_W(c_1..c_i, x) − T_{W+ΔW_i}(x)`` at the readout: round-off, by the theorem."""
        if self.readout is None:
            return None
        return float(self.trajectory.pred_context[i][self.readout] - self.trajectory.pred_update[i][self.readout])

    def output_norms(self, i: int) -> tuple[float, float]:
        """``(‖T_W(c_1..c_i, x)‖, ‖T_{W+ΔW_i}(x)‖)``: the sizes of the two outputs being compared."""
        t = self.trajectory
        return float(np.linalg.norm(t.pred_context[i])), float(np.linalg.norm(t.pred_update[i]))

    def delta_b_norm(self, i: int) -> float:
        """``‖Δb_i‖``, the bias update on the MLP's output bias (0 unless ``residual``)."""
        return float(np.linalg.norm(self.trajectory.delta_b[i]))

    def output_error(self, i: int) -> float:
        """``max |T_W(c_1..c_i, x) − T_{W+ΔW_i}(x)|`` over every output coordinate (``Trajectory.prediction_error``)."""
        return float(self.trajectory.prediction_error[i])


def curve_series(t: Trajectory, which: str) -> np.ndarray:
    """One trajectory's curve over ``i = 0..n`` indexed by the step ``i`` that consumed ``c_i`` (see ``curves``)."""
    if which == "norm":
        return t.delta_W_norm
    if which == "step":
        return np.concatenate([[np.nan], t.step_norm])               # step i = ΔW_i − ΔW_(i−1): none at i = 0
    if which == "rel":
        return np.concatenate([[np.nan], t.relative_change])         # over ‖ΔW_(i−1)‖: nan at i ≤ 1 (ΔW_0 = 0)
    raise ValueError(f"which must be 'norm', 'step', 'rel' or 'pred', got {which!r}")


# --- builders -----------------------------------------------------------------------------------------------------

def check_tokens(n_tokens) -> int:
    """``n_tokens`` (the prompt's context tokens) must be an int in ``1..MAX_TOKENS``."""
    if not is_int(n_tokens) or not 1 <= n_tokens <= MAX_TOKENS:
        raise WalkthroughError(f"n_tokens must be an integer from 1 to {MAX_TOKENS} (context tokens), got {n_tokens!r}")
    return int(n_tokens)


def _vector(v: np.ndarray, digits: int = 2) -> str:
    return "(" + ", ".join(f"{x:+.{digits}f}" for x in v) + ")"


def _trajectory(params: dict, cfg: BlockConfig, context: np.ndarray, query: np.ndarray, backend=None) -> Trajectory:
    """The library's trajectory: the NumPy reference's (one masked pass for all prefixes, equal to
    ``reference.trajectory`` to round-off), or a backend's ``trajectory`` converted to NumPy."""
    if backend is None:
        return prefix_trajectory(params, cfg, context, query)
    out = backend.trajectory(backend.asarray(params), cfg, backend.asarray(context), backend.asarray(query))
    out = backend.to_numpy(out)
    if not isinstance(out, Trajectory):
        raise WalkthroughError(f"backend {backend.name!r} returned {type(out).__name__} from trajectory(), "
                               "expected a Trajectory (after to_numpy)")
    return out


def backend_label(backend) -> str:
    """``"numpy reference (float64)"`` or ``"torch backend (cpu, float32)"``."""
    if backend is None:
        return "numpy reference (float64)"
    return f"{backend.name} backend ({backend.device}, {backend.dtype})"


def regression_data(params: dict, cfg: BlockConfig, *, n_tokens: int = DEFAULT_TOKENS, seed: int = 0,
                    title: str, source: str, model_label: str, baseline_seed: int | None = None,
                    baseline_short: str = "untrained", backend=None) -> WalkthroughData:
    """The block on one regression prompt of ``n_tokens`` examples (P1 §4), with an untrained baseline.

    The prompt has ``d = d_model − 1`` input coordinates; the prediction is the last output coordinate.
    The baseline is ``init_block(cfg, baseline_seed)`` on the same prompt (default seed: ``seed + 1``).
    """
    n_tokens = check_tokens(n_tokens)
    if cfg.d_model < 2:
        raise WalkthroughError(f"a regression prompt needs d_model >= 2 (d = d_model − 1 inputs plus y); "
                               f"the block has d_model = {cfg.d_model}")
    prompt = regression_prompts(1, n_tokens, cfg.d_model - 1, seed)
    context, query = prompt.context[0], prompt.query[0]                     # (n, D), (D,)
    traj = _trajectory(params, cfg, context, query, backend)
    baseline_seed = seed + 1 if baseline_seed is None else baseline_seed
    base = _trajectory(init_block(cfg, baseline_seed), cfg, context, query, backend)
    x, y = prompt.x[0], prompt.y[0]
    return WalkthroughData(
        title=title,
        source=f"{source} · {backend_label(backend)}",
        token_labels=tuple(f"{y_k:+.2f}" for y_k in y),
        token_values=tuple(f"x = {_vector(x_k)}, y = ⟨w, x⟩ = {y_k:+.3f}" for x_k, y_k in zip(x, y)),
        token_meaning="numbers: y values, y_k = ⟨w, x_k⟩",
        query_value=f"x_q = {_vector(prompt.x_query[0])}, y slot 0",
        trajectory=traj,
        baseline=base,
        baseline_label=f"untrained block (seed {baseline_seed})",
        baseline_short=baseline_short,
        model_label=model_label,
        readout=cfg.d_model - 1,
        target=float(prompt.target[0]),
        target_label="⟨w, x_q⟩",
        residual=cfg.kind != "plain",
        least_squares=least_squares_predictions(prompt.x, prompt.y, prompt.x_query)[0],
    )


def random_data(*, n_tokens: int = DEFAULT_TOKENS, seed: int = 0, reason: str = "", backend=None) -> WalkthroughData:
    """A seeded random (untrained) ``plain`` block of P1's shape on a regression prompt."""
    params = init_block(RANDOM_CONFIG, seed)
    why = f" ({reason})" if reason else ""
    return regression_data(
        params, RANDOM_CONFIG, n_tokens=n_tokens, seed=seed, backend=backend,
        title=f"random plain block, seed {seed} · regression prompt, seed {seed}",
        source=f"UNTRAINED random block{why}: the identity is exact anyway (THEORY §8.1)",
        model_label=f"random s{seed}",
        baseline_short=f"random s{seed + 1}",
    )


def checkpoint_data(path, *, n_tokens: int | None = None, seed: int = 0, backend=None,
                    bundled: bool = False) -> WalkthroughData:
    """A trained single block from a checkpoint on a regression prompt. Raises ``CheckpointError``."""
    from implicit_icl.checkpoint import CheckpointError, load_checkpoint

    params, cfg, meta = load_checkpoint(path)
    if meta.get("n_blocks"):
        raise CheckpointError(f"checkpoint {path}: holds a stack of {meta['n_blocks']} blocks; "
                              "the walkthrough shows a single block")
    if n_tokens is None:                                              # the prompt length the block was trained on
        preset = meta.get("preset") if isinstance(meta.get("preset"), dict) else {}
        stored = meta.get("n_points", preset.get("n_points"))
        n_tokens = stored if isinstance(stored, int) and not isinstance(stored, bool) and 1 <= stored <= MAX_TOKENS \
            else DEFAULT_TOKENS
    name = Path(path).name
    where = f"bundled checkpoint implicit_icl/data/{name}" if bundled else f"checkpoint {path}"
    title, label, trained = checkpoint_title(meta, cfg.kind, name)
    val = meta.get("val_loss")
    val = f", val loss {val:.3g}" if isinstance(val, float) and np.isfinite(val) else ""
    return regression_data(
        params, cfg, n_tokens=n_tokens, seed=seed, backend=backend,
        title=f"{title} · regression prompt, seed {seed}",
        source=f"{where}{trained}{val}",
        model_label=label,
    )


def checkpoint_title(meta: dict, kind: str, name: str) -> tuple[str, str, str]:
    """``(title, model_label, source note)`` from what a checkpoint's metadata says, claiming nothing it does not.

    Only an int ``step`` (not a bool) says the block was trained, and for how many steps; step 0 is untrained.
    Anything else (a random block saved with ``save_checkpoint``, a foreign record) is just "checkpoint <name>"."""
    step = meta.get("step")
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step >= 0:
        if step > 0:
            return f"trained {kind} block ({name})", "trained", f", trained {step} steps"
        return f"{kind} block at training step 0 ({name}): untrained", "step 0", ", training step 0 (untrained)"
    return f"checkpoint {name} ({kind} block)", "checkpoint", ""


def default_data(*, n_tokens: int | None = None, seed: int = 0, random: bool = False, checkpoint=None,
                 backend=None) -> WalkthroughData:
    """What ``implicit-icl walkthrough`` opens on: ``checkpoint`` if given; else the bundled trained checkpoint
    if it exists (and ``random`` is false); else a seeded random block, saying so."""
    from implicit_icl.checkpoint import default_checkpoint_path

    if checkpoint is not None:
        return checkpoint_data(checkpoint, n_tokens=n_tokens, seed=seed, backend=backend)
    n = DEFAULT_TOKENS if n_tokens is None else n_tokens
    if random:
        return random_data(n_tokens=n, seed=seed, reason="--random", backend=backend)
    bundled = default_checkpoint_path()
    if bundled.is_file():
        return checkpoint_data(bundled, n_tokens=n_tokens, seed=seed, backend=backend, bundled=True)
    return random_data(n_tokens=n, seed=seed, reason=f"no bundled checkpoint at {bundled.name}", backend=backend)


# the real-model view's data lives in model_data (imported last: it builds WalkthroughData from this module)
from .model_data import DEFAULT_LAYER, default_layer, text_data  # noqa: E402,F401
