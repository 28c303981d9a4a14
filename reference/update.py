"""The implicit weight update: P1 Thm 2.2 (any removed subset Y), P1 App. A and P2 (every position, every kind)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers
from .blocks import check_context_query, check_positions, kept_positions, sequence, taps
from .config import BlockConfig
from .kinds import TAP_NAMES
from .validation import ZeroNormError, as_array, check_remove, params_like


@dataclass(frozen=True)
class Update:
    """A rank-1 weight update kept factored: ``ΔW = u aᵀ / ‖a‖²`` (P1 Thm 2.2) and ``Δb_out = delta_b``.

    ``u = W (a_C − a_x)`` has shape ``(..., d_mlp)``; ``a`` (the tap without context) and ``delta_b``
    have shape ``(..., d_model)``. Leading dimensions index positions (``position_updates``), prefixes or a batch.
    The one class of every backend: its fields are NumPy arrays (the reference) or torch tensors (the torch
    backend), and its properties use only operations both share.
    """

    u: Any
    a: Any
    delta_b: Any

    @property
    def a_norm_sq(self):
        """``‖a‖²``, the denominator of the update."""
        return (self.a * self.a).sum(-1)

    @property
    def h(self):
        """Step size ``h = 1/‖a‖²`` (P1 Prop. 3.1)."""
        return 1.0 / self.a_norm_sq

    @property
    def delta_W(self):
        """The rank-1 matrix ``u aᵀ / ‖a‖²``, shape ``(..., d_mlp, d_model)``. Formed on request only, in one pass
        over the matrix (``u/‖a‖²`` is formed on the vector first)."""
        return (self.u / self.a_norm_sq[..., None])[..., :, None] * self.a[..., None, :]

    @property
    def norm(self):
        """``‖ΔW‖_F = ‖ΔW‖_2 = ‖u‖/‖a‖`` (THEORY §10.4): equal because the matrix has rank 1."""
        return (self.u * self.u).sum(-1) ** 0.5 / self.a_norm_sq ** 0.5

    def map(self, fn) -> "Update":
        """The same update with every field passed through ``fn`` (a conversion between backends)."""
        return Update(u=fn(self.u), a=fn(self.a), delta_b=fn(self.delta_b))

    @property
    def is_numpy(self) -> bool:
        """Every field a float64 NumPy array: the reference's own form, which conversions to NumPy pass through."""
        return all(isinstance(t, np.ndarray) and t.dtype == np.float64 for t in (self.u, self.a, self.delta_b))

    def __len__(self) -> int:
        if self.u.ndim < 2:
            raise TypeError("a single Update has no length")
        return self.u.shape[0]

    def __getitem__(self, i) -> "Update":
        if self.u.ndim < 2:
            raise TypeError("a single Update cannot be indexed")
        return Update(self.u[i], self.a[i], self.delta_b[i])


def reading_parts(update: Update, cfg: BlockConfig) -> dict:
    """``u`` split by the matrices that read the tap ``a`` (THEORY §11): ``{"W": u}``, or for the gated MLP, whose
    first matrix is stored stacked ``[W_gate; W_up]``, ``{"W_gate": u[:M], "W_up": u[M:]}``: every reading matrix gets
    its own rank-1 update ``u_k aᵀ/‖a‖²`` with the same right factor. ``(..., d_mlp)`` each."""
    if cfg.kind == "gated":
        return {"W_gate": update.u[..., :cfg.d_mlp], "W_up": update.u[..., cfg.d_mlp:]}
    return {"W": update.u}


def update_from_taps(W, a_C, r_C, a_x, r_x, out=None, ops=layers) -> Update:
    """The one update formula (P1 Thm 2.2, P1 App. A, P2's generalisation: THEORY §3b), for every kind and backend.

    ``u = W (a_C − a_x)``, ``ΔW = u a_xᵀ/‖a_x‖²`` (kept factored) and ``Δb_out = r_C − r_x``, where ``(a_C, r_C)`` are
    the query's taps with the context and ``(a_x, r_x)`` without it (or without the removed subset Y). Taps
    ``(..., d_model)``, ``W`` ``(d_mlp, d_model)``; ``u`` ``(..., d_mlp)``, written into ``out`` if given (a buffer of
    that shape, e.g. a slice of one buffer for a whole stack) by ``ops.matmul_into`` (``ops`` the backend's ops
    module, as in ``reference.kinds``).
    """
    u = (a_C - a_x) @ W.T if out is None else ops.matmul_into(a_C - a_x, W.T, out)
    return Update(u=u, a=a_x, delta_b=r_C - r_x)


def check_norm(a_norm_sq, kind: str, where: str, *, indexed: bool = False, overflow=None) -> None:
    """Raise :class:`ZeroNormError` if any ``‖a‖²`` (NumPy, one per query) is zero or non-finite: the one message
    of every backend. The leading axes of ``a_norm_sq`` are a batch; with ``indexed`` its last axis indexes
    ``where`` ("position 3"). ``overflow(what)``, if given, makes the error for a non-finite ``‖a‖²`` from finite
    inputs (an overflow of a low-precision dtype) instead."""
    nsq = np.asarray(a_norm_sq, dtype=np.float64)
    bad = ~(np.isfinite(nsq) & (nsq > 0))
    if not bad.any():
        return
    flat = int(np.flatnonzero(bad)[0])
    value = float(nsq.reshape(-1)[flat])
    index = np.unravel_index(flat, bad.shape) if bad.ndim else ()
    position, batch = (index[-1], index[:-1]) if indexed and bad.ndim else (None, index)
    at = where if position is None else f"{where} {int(position)}"
    if batch:
        at += f" of batch element {tuple(int(i) for i in batch)}"
    if overflow is not None and not np.isfinite(value):
        raise overflow(f"‖a‖² for {at}")
    raise ZeroNormError(
        f"‖a‖² = {value!r} for {at}: the tap {TAP_NAMES[kind]} is zero or non-finite, so ΔW = u aᵀ/‖a‖² is "
        "undefined (P1 Thm 2.2 assumes a ≠ 0). The query may lie in the null space of the attention's "
        "value/output maps.")


def _check_norm(a: np.ndarray, cfg: BlockConfig, where: str) -> None:
    """:func:`check_norm` of a NumPy tap ``a`` (…, d_model); a stack of taps is indexed by ``where``."""
    check_norm((a * a).sum(-1), cfg.kind, where, indexed=True)


def implicit_update(params: dict, cfg: BlockConfig, context, query, remove=None, positions=None) -> Update:
    """The update that removes the tokens ``Y = context[remove]`` (default: all of C) at the query.

    P1 Thm 2.2: ``T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x)`` with ``ΔW(Y) = W ΔA(Y) A(C\\Y,x)ᵀ / ‖A(C\\Y,x)‖²``,
    generalised to every block kind through its taps (P1 App. A; P2, THEORY §3b): ``u = W(a_C − a_x)``,
    ``a = a_x`` and ``Δb_out = r_C − r_x``. ``C\\Y`` keeps its tokens' positions (``positions`` of ``[C, x]``,
    default ``0..n``): removal is a mask, which rotary and sliding-window blocks see.
    """
    params = params_like(params, cfg)
    context, query = check_context_query(cfg, context, query)
    n = context.shape[0]
    if positions is not None:
        positions = check_positions(positions, n + 1)
    kept = np.delete(np.arange(n), check_remove(remove, n))         # indices of C \\ Y, order kept
    a_C, r_C = (t[-1] for t in taps(params, cfg, sequence(context, query), positions))
    a_x, r_x = (t[-1] for t in taps(params, cfg, sequence(context[kept], query), kept_positions(kept, n, positions)))
    _check_norm(a_x, cfg, "the query")
    return update_from_taps(params["mlp.W"], a_C, r_C, a_x, r_x)    # u (d_mlp,), a and delta_b (d_model,)


def bias_key(params: dict) -> str:
    """Where ``Δb`` goes: ``"mlp.b_post"`` in a block that has it (Gemma 2's ``post_norms``: the bias after the
    post-MLP norm, THEORY §11), else ``"mlp.b_out"``. The one choice of every backend and caller."""
    return "mlp.b_post" if "mlp.b_post" in params else "mlp.b_out"


def check_single_update(update: Update, M: int, D: int) -> None:
    """A ``ValueError`` unless ``update`` is one update of a ``(M, D)`` matrix (``u`` (M,), ``a`` and ``delta_b``
    (D,)): what ``apply_update`` adds, on every backend."""
    shapes = tuple(tuple(getattr(update, f).shape) for f in ("u", "a", "delta_b"))
    if shapes != ((M,), (D,), (D,)):
        raise ValueError(f"update must be a single Update with u ({M},), a and delta_b ({D},); got u {shapes[0]}, "
                         f"a {shapes[1]}, delta_b {shapes[2]} (index a batch first)")


def apply_update(params: dict, update: Update) -> dict:
    """New params with ``mlp.W += ΔW`` and ``Δb`` added to the block's bias (:func:`bias_key`: ``mlp.b_out``, or
    ``mlp.b_post`` after a post-MLP norm); the input dict is not modified.

    An ``Update`` of another backend (torch tensors) or any object with ``u``, ``a`` and ``delta_b`` is read as
    float64 NumPy first."""
    if not all(hasattr(update, f) for f in ("u", "a", "delta_b")):
        raise ValueError(f"update must be an Update (u, a, delta_b), got {type(update).__module__}."
                         f"{type(update).__qualname__}")
    update = Update(**{f: as_array(getattr(update, f), f"update.{f}", (None,), allow_batch=True)
                       for f in ("u", "a", "delta_b")})
    W = np.asarray(params["mlp.W"])
    check_single_update(update, *W.shape)
    new = dict(params)
    new["mlp.W"] = W + update.delta_W
    key = bias_key(params)
    new[key] = np.asarray(params[key]) + update.delta_b
    return new


def check_positions_input(Z, query: str):
    """``Z`` (..., T, d_model) and ``query`` checked for ``position_updates``: at least one token, and "own" or "last"."""
    if query not in ("own", "last"):
        raise ValueError(f"query must be 'own' or 'last', got {query!r}")
    if Z.shape[-2] == 0:
        raise ValueError("Z must hold at least one token, got shape (0, d_model)")
    return Z


def position_updates(params: dict, cfg: BlockConfig, Z, query: str = "own") -> Update:
    """One update per position of ``Z`` (P2, THEORY §3b), stacked: ``u`` ``(T, d_mlp)``, ``a``, ``delta_b`` ``(T, d)``.

    ``query="own"`` (our convention): position i's update maps the token ``Z_i`` run *alone* onto ``block(Z)_i``.
    ``query="last"`` (P2's convention): it maps the last token ``x = Z_T`` run alone onto ``block(Z)_i``,
    so it also absorbs the swap ``Z_i → x`` (``Δz_i = Z_i − x`` enters the bias update).
    """
    params = params_like(params, cfg)
    Z = check_positions_input(as_array(Z, "Z", (None, cfg.d_model)), query)
    a, r = taps(params, cfg, Z)                                                     # (T, d) each
    if query == "own":
        alone = [taps(params, cfg, Z[i : i + 1]) for i in range(Z.shape[0])]       # T length-1 runs
        a_x = np.concatenate([t[0] for t in alone])                                 # (T, d)
        r_x = np.concatenate([t[1] for t in alone])                                 # (T, d)
        _check_norm(a_x, cfg, "position")
    else:
        a_last, r_last = taps(params, cfg, Z[-1:])                                  # (1, d) each
        _check_norm(a_last[0], cfg, "the last token")
        a_x = np.repeat(a_last, Z.shape[0], axis=0)                                 # (T, d)
        r_x = np.repeat(r_last, Z.shape[0], axis=0)
    return update_from_taps(params["mlp.W"], a, r, a_x, r_x)                        # u (T, d_mlp)
