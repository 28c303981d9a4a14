"""The ``torch`` backend: the core API on PyTorch tensors (cpu, cuda, mps; float64, float32, bfloat16).

Every function accepts any leading batch dimensions on ``context``, ``query`` and ``Z`` and returns tensors on the
backend's device and dtype. Params may be NumPy arrays (a reference params dict) or tensors; they are checked like
the reference (same error types, messages naming the argument) and converted.

Result types. ``implicit_update``/``position_updates`` return :class:`Update` and ``trajectory`` a
:class:`Trajectory`: this module's own dataclasses with the *same field names, properties and methods* as the
reference's (``.delta_W``, ``.norm``, ``.h``, ``[i]``, ``update(i)``, ``W(i)``, ``gradient(i)``, …). They are
separate classes because the reference's methods call NumPy (which would copy CUDA tensors to the host, or fail on
them and on bfloat16), and because the torch trajectory keeps ``u``, ``grad_u`` and the predictions *lazy*: a
million-token trajectory stores ``O(n·d_model)`` numbers and forms ``(n+1, d_mlp)`` arrays only when asked.
``to_numpy`` turns either into the reference's own ``Update``/``Trajectory``.

``trajectory`` is the O(n·d) scan of ``torch_scan`` (one pass over the context in slabs, running-max softmax),
not a re-run of every prefix. ``model_trajectory`` gives the per-block prefix updates of a stack of causal blocks
with one chunked causal attention pass per block (O(n²·d) time, O(n·d) memory).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from implicit_icl import reference as ref
from implicit_icl.reference.config import BlockConfig, param_shapes
from implicit_icl.reference.model import normalise_stack
from implicit_icl.reference.update import TAP_NAMES
from implicit_icl.reference.validation import OPTIONAL_KEYS, ZeroNormError, check_remove

from . import torch_ops
from .torch_scan import prefix_softmax_means

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "double": torch.float64, "float": torch.float32, "float16": torch.float16, "half": torch.float16}
SLAB = 1 << 13          # context tokens per slab of the trajectory scan on CPU (bounds its temporaries; cache-sized)
SLAB_GPU = 1 << 18      # … on GPUs, where fewer, larger kernels win
ELEMENTS = 1 << 23      # logits per chunk of the chunked causal attention in ``model_trajectory``


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype) -> torch.dtype:
    """``None`` → float32; a string such as ``"bfloat16"`` or a ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    try:
        return DTYPES[np.dtype(dtype).name]
    except (TypeError, KeyError):
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch dtype, got {dtype!r}") from None


def _all_finite(t: torch.Tensor) -> bool:
    """No nan or inf in ``t``: min and max propagate nan and show ±inf, in one pass without a temporary."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


_DEVICE_FORM = re.compile(r"(cpu|cpu:0|cuda|cuda:(0|[1-9][0-9]{0,3})|mps|mps:0)")      # no "cuda:01", no 20-digit index
_DEVICES = "'cpu', 'cpu:0', 'cuda', 'cuda:<i>', 'mps' or 'mps:0' (or None, or the equivalent torch.device)"


def resolve_device(device) -> torch.device:
    """``None`` → cpu; ``"cpu"`` (``"cpu:0"``), ``"cuda"``, ``"cuda:<i>"``, ``"mps"``, ``"mps:0"`` or the equivalent
    ``torch.device``. Anything else (a typo such as ``"gpu"``, an integer, a device type torch knows but the backend
    cannot compute on such as ``"meta"`` or ``"xla"``) and a device this machine lacks raise ``ValueError``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        ok = (device.type == "cpu" and device.index in (None, 0)) or device.type == "cuda" or (
            device.type == "mps" and device.index in (None, 0))
    else:
        ok = isinstance(device, str) and _DEVICE_FORM.fullmatch(device) is not None
    if not ok:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:                       # a form the pattern let through but torch cannot parse
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r} ({exc})") from None
    if dev.type == "cpu":
        return torch.device("cpu")                    # "cpu:0" is the one CPU device: one name for it
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available on this machine: {device!r} asked for, but CUDA is not")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device must be available on this machine: {device!r} asked for, but there are only "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device must be available on this machine: {device!r} asked for, but MPS is not")
    return dev


# ---------------------------------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Update:
    """A rank-1 update kept factored, as the reference's ``Update``: ``ΔW = u aᵀ/‖a‖²``, ``Δb_out = delta_b``.

    ``u`` (..., d_mlp); ``a``, ``delta_b`` (..., d_model); leading dimensions are batch/positions/prefixes.
    """

    u: torch.Tensor
    a: torch.Tensor
    delta_b: torch.Tensor

    @property
    def a_norm_sq(self) -> torch.Tensor:
        """``‖a‖²``, the denominator of the update."""
        return (self.a * self.a).sum(-1)

    @property
    def h(self) -> torch.Tensor:
        """Step size ``h = 1/‖a‖²`` (P1 Prop. 3.1)."""
        return 1.0 / self.a_norm_sq

    @property
    def delta_W(self) -> torch.Tensor:
        """The rank-1 matrix ``u aᵀ/‖a‖²``, ``(..., d_mlp, d_model)``; formed on request only."""
        return self.u[..., :, None] * self.a[..., None, :] / self.a_norm_sq[..., None, None]

    @property
    def norm(self) -> torch.Tensor:
        """``‖ΔW‖_F = ‖ΔW‖_2 = ‖u‖/‖a‖`` (THEORY §10.4)."""
        return torch.linalg.vector_norm(self.u, dim=-1) / torch.sqrt(self.a_norm_sq)

    def __len__(self) -> int:
        if self.u.ndim < 2:
            raise TypeError("a single Update has no length")
        return self.u.shape[0]

    def __getitem__(self, i) -> "Update":
        if self.u.ndim < 2:
            raise TypeError("a single Update cannot be indexed")
        return Update(self.u[i], self.a[i], self.delta_b[i])


# the fields of a Trajectory that carry the batch dimensions in front (W0, params and cfg are shared)
BATCHED_FIELDS = ("a", "delta", "delta_b", "delta_W_norm", "step_norm", "relative_change", "h", "loss", "grad_norm",
                  "steps", "r")


@dataclass(frozen=True)
class Trajectory:
    """The reference's ``Trajectory`` (same fields and methods) with ``u``, ``grad_u``, ``pred_context`` and
    ``pred_update`` computed lazily from the factors (``u_i = W_0 δ_i``), in slabs.

    Extra fields: ``steps`` (..., n, D) = ``a_{i+1} − a_i`` computed without cancellation (the right factor of
    every step, ``ΔW_{i+1} − ΔW_i = W_0 steps_i aᵀ/‖a‖²``) and ``r`` (..., D), the residual tap of the query alone.
    """

    W0: torch.Tensor
    a: torch.Tensor
    delta: torch.Tensor
    delta_b: torch.Tensor
    delta_W_norm: torch.Tensor
    step_norm: torch.Tensor
    relative_change: torch.Tensor
    h: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor
    steps: torch.Tensor
    r: torch.Tensor
    params: dict = field(repr=False, default=None)
    cfg: BlockConfig | None = None

    @property
    def n(self) -> int:
        """Context length (the number of steps)."""
        return self.delta.shape[-2] - 1

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading batch dimensions, ``()`` for one context."""
        return tuple(self.a.shape[:-1])

    def __getitem__(self, index) -> "Trajectory":
        """One context (or a sub-batch) of a batched trajectory: ``tr[1]``, ``tr[0, 2]``, ``tr[1:3]``. Indexes the
        batch dimensions only; a prefix is ``update(i)``."""
        if not self.batch_shape:
            raise IndexError("this Trajectory holds one context (no batch dimensions); a prefix is update(i)")
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > len(self.batch_shape) or any(i is Ellipsis or i is None for i in idx):
            raise IndexError(f"index must address the batch dimensions {self.batch_shape} only, got {index!r}")
        return replace(self, **{f: getattr(self, f)[idx] for f in BATCHED_FIELDS})

    @cached_property
    def u(self) -> torch.Tensor:
        """``u_i = W_0 δ_i``, (..., n+1, d_mlp): formed on first access."""
        return self.delta @ self.W0.T

    @cached_property
    def grad_u(self) -> torch.Tensor:
        """``grad_u_i = u_i − u_{i+1} = −W_0 (a_{i+1} − a_i)``, (..., n, d_mlp): ``Δ_i = grad_u_i aᵀ``."""
        return -(self.steps @ self.W0.T)

    def update(self, i: int) -> Update:
        """The update that absorbs the first ``i`` context tokens."""
        return Update(u=self.delta[..., i, :] @ self.W0.T, a=self.a, delta_b=self.delta_b[..., i, :])

    def delta_W(self, i: int) -> torch.Tensor:
        """``ΔW_i`` as a matrix ``(..., M, D)``."""
        return self.update(i).delta_W

    def W(self, i: int) -> torch.Tensor:
        """``W_i = W_0 + ΔW_i``."""
        return self.W0 + self.delta_W(i)

    def gradient(self, i: int) -> torch.Tensor:
        """``Δ_i = ∇_W L_i`` as a matrix (P1 Prop. 3.1); ``W_{i+1} = W_i − h Δ_i``."""
        g = -(self.steps[..., i, :] @ self.W0.T)
        return g[..., :, None] * self.a[..., None, :]

    def _slabbed(self, fn) -> torch.Tensor:
        n1 = self.delta.shape[-2]
        return torch.cat([fn(s, min(s + SLAB, n1)) for s in range(0, n1, SLAB)], dim=-2)

    @cached_property
    def pred_context(self) -> torch.Tensor:
        """``T_{W_0}(c_1..c_i, x)`` (..., n+1, D): the head applied to every prefix's taps ``(a + δ_i, r + Δb_i)``."""
        P, cfg = self.params, self.cfg
        return self._slabbed(lambda s, e: torch_ops.head(
            P, cfg, self.a[..., None, :] + self.delta[..., s:e, :], self.r[..., None, :] + self.delta_b[..., s:e, :]))

    @cached_property
    def pred_update(self) -> torch.Tensor:
        """``T_{W_i}(x)`` (..., n+1, D): the query alone through ``W_i = W_0 + ΔW_i``, ``b_out + Δb_i``.

        ``W_i a = W_0 a + u_i`` (``ΔW_i a = u_i aᵀa/‖a‖² = u_i``), so no ``(M, D)`` matrix per prefix is formed.
        """
        P, cfg = self.params, self.cfg

        def slab(s, e):
            pre = (self.a @ self.W0.T)[..., None, :] + self.delta[..., s:e, :] @ self.W0.T + P["mlp.b"]  # (..., S, M)
            out = self.r[..., None, :] + F.linear(torch_ops.activation(cfg, pre), P["mlp.W_out"]) \
                + P["mlp.b_out"] + self.delta_b[..., s:e, :]                                              # (..., S, D)
            if cfg.kind == "post-ln":
                out = torch_ops.layer_norm(out, P["ln2.g"], P["ln2.b"], cfg.ln_eps)
            return out
        return self._slabbed(slab)

    @property
    def prediction_error(self) -> torch.Tensor:
        """``max |pred_context_i − pred_update_i|`` per prefix: round-off, by the theorem."""
        return (self.pred_context - self.pred_update).abs().amax(-1)


# ---------------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------------

class TorchBackend:
    """The core API in PyTorch on ``device`` with ``dtype`` (default cpu, float32)."""

    name = "torch"

    def __init__(self, device=None, dtype=None):
        self.torch_device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype)
        # the scan's logits, exponentials and sums run in at least float32 (as fused attention kernels do);
        # bfloat16/float16 inputs and outputs keep their dtype
        self.acc_dtype = torch.float32 if self.torch_dtype in (torch.bfloat16, torch.float16) else self.torch_dtype
        if self.torch_device.type == "mps" and self.torch_dtype == torch.float64:
            raise ValueError("dtype must be float32 or bfloat16 on device 'mps' (MPS has no float64), got float64")
        self._slab = SLAB if self.torch_device.type == "cpu" else SLAB_GPU

    @property
    def device(self) -> str:
        return str(self.torch_device)

    @property
    def dtype(self) -> str:
        return _dtype_name(self.torch_dtype)

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device!r}, dtype={self.dtype!r})"

    # conversions ---------------------------------------------------------------------------------------------
    def asarray(self, x):
        """An array-like, a params dict (e.g. the reference's), a list of them, or a reference ``Update``
        → tensors on this backend's device and dtype."""
        if isinstance(x, dict):
            return {k: self.asarray(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], (dict, ref.Update, Update)):
            return type(x)(self.asarray(v) for v in x)
        if isinstance(x, (ref.Update, Update)):
            return Update(self.asarray(x.u), self.asarray(x.a), self.asarray(x.delta_b))
        if isinstance(x, (ref.Trajectory, Trajectory)):
            raise ValueError("x is a Trajectory: asarray converts arrays, params dicts and Updates; compute the "
                             "trajectory with this backend (trajectory(params, cfg, context, query)) instead")
        if isinstance(x, torch.Tensor):
            return x.to(device=self.torch_device, dtype=self.torch_dtype)
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype == np.bool_ or not (
                np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"x must be a real floating-point (or integer) array, got dtype {arr.dtype}")
        return torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float64)).to(self.torch_device, self.torch_dtype)

    def to_numpy(self, x):
        """Tensors (or dicts, lists, ``Update``, ``Trajectory``) → NumPy; bfloat16/float16 become float64 (NumPy
        has no bfloat16); a ``Trajectory`` becomes the reference's (forming its lazy fields)."""
        if isinstance(x, dict):
            return {k: self.to_numpy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self.to_numpy(v) for v in x)
        if isinstance(x, (ref.Update, ref.Trajectory)):
            return x
        if isinstance(x, Update):
            return ref.Update(u=self.to_numpy(x.u), a=self.to_numpy(x.a), delta_b=self.to_numpy(x.delta_b))
        if isinstance(x, Trajectory):                 # forms the lazy fields (u, grad_u, predictions)
            return ref.Trajectory.of(x, self.to_numpy, "one context, to_numpy(tr[b]), or its fields, "
                                                       "to_numpy(tr.delta_W_norm)")
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.double()
            return x.numpy()
        return np.asarray(x)

    # checks ------------------------------------------------------------------------------------------------
    def _tensor(self, x, name: str, shape: tuple, batch: bool = True) -> torch.Tensor:
        """``x`` as a finite tensor of this backend with trailing dimensions ``shape`` (``None`` = any size)."""
        expected = "(" + ("..., " if batch else "") + ", ".join("n" if s is None else str(s) for s in shape) \
            + ("," if len(shape) == 1 and not batch else "") + ")"
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(f"{name} must be a real floating-point (or integer) array, got dtype {x.dtype}")
            t = x
        else:
            arr = np.asarray(x)
            if arr.dtype == object or arr.dtype == np.bool_ or not (
                    np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"{name} must be a real floating-point (or integer) array, got dtype {arr.dtype}")
            t = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float64))
        core = tuple(t.shape[t.ndim - len(shape):]) if t.ndim >= len(shape) else None
        ok = core is not None and (t.ndim == len(shape) or batch) and all(
            s is None or s == c for s, c in zip(shape, core))
        if not ok:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
        t = t.to(device=self.torch_device, dtype=self.torch_dtype)
        if not _all_finite(t):
            raise ValueError(f"{name} contains non-finite values (nan or inf)")
        return t

    def _params(self, params, cfg: BlockConfig) -> dict:
        """Check ``params`` against ``cfg`` like the reference, then convert them to this backend's tensors."""
        if not isinstance(cfg, BlockConfig):
            raise ValueError(f"cfg must be a BlockConfig, got {type(cfg).__name__}")
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict of named arrays, got {type(params).__name__}")
        out = {}
        for key, shape in param_shapes(cfg, include_attn_bias=True).items():
            if key not in params:
                if key in OPTIONAL_KEYS:
                    continue
                raise ValueError(f"params is missing {key!r} (expected shape {shape}) for a {cfg.kind!r} block")
            value = params[key]
            got = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
            if got != shape:
                raise ValueError(f"params[{key!r}] must have shape {shape}, got {got}")
            t = self.asarray(value)
            if not _all_finite(t):
                raise ValueError(f"params[{key!r}] contains non-finite values")
            out[key] = t
        return out

    def _context_query(self, cfg, context, query):
        context = self._tensor(context, "context", (None, cfg.d_model))
        query = self._tensor(query, "query", (cfg.d_model,))
        try:
            batch = torch.broadcast_shapes(context.shape[:-2], query.shape[:-1])
        except RuntimeError:
            raise ValueError(f"context and query must have broadcastable batch dimensions, got context "
                             f"{tuple(context.shape)} and query {tuple(query.shape)}") from None
        return context.expand(*batch, *context.shape[-2:]), query.expand(*batch, query.shape[-1])

    @staticmethod
    def _overflow(what: str, dtype: torch.dtype) -> ValueError:
        """The error for a non-finite value that finite inputs produced: an overflow of ``dtype`` on the way."""
        return ValueError(f"{what} overflowed in {_dtype_name(dtype)}: finite inputs gave nan or inf (a value beyond "
                          f"±{torch.finfo(dtype).max:.3g} on the way: from very large inputs, or h = 1/‖a‖² from very "
                          "small ones); rescale the inputs or use dtype='float64'")

    def _finite(self, op: str, **results: torch.Tensor) -> None:
        """A ValueError if finite inputs gave a non-finite value in one of ``results`` (an overflow of this dtype:
        e.g. a LayerNorm variance past float32's 3.4e38, or float16's 65504); never a silent nan or inf. One
        min/max pass per tensor (no temporary) and a single host sync for all of them."""
        flags = []
        for t in results.values():
            if t.numel():
                lo, hi = torch.aminmax(t)
                flags.append(torch.isfinite(lo) & torch.isfinite(hi))
        if not flags or bool(torch.stack(flags).all()):
            return
        bad = next(name for name, t in results.items() if not _all_finite(t))
        raise self._overflow(f"{op}'s {bad}", self.torch_dtype)

    @staticmethod
    def _check_norm(a: torch.Tensor, cfg: BlockConfig, where: str, indexed: bool = False) -> None:
        dtype = a.dtype
        a = a.float() if a.dtype in (torch.bfloat16, torch.float16) else a      # float64 is not on every device
        nsq = (a * a).sum(-1)
        bad = ~(torch.isfinite(nsq) & (nsq > 0))
        if bool(bad.any()):
            flat = bad.reshape(-1).nonzero()[0, 0].item()
            value = nsq.reshape(-1)[flat].item()
            index = np.unravel_index(flat, tuple(bad.shape)) if bad.dim() else ()
            position, batch = (index[-1], index[:-1]) if indexed else (None, index)
            at = where if position is None else f"{where} {position}"
            if batch:
                at += f" of batch element {tuple(int(i) for i in batch)}"
            if not math.isfinite(value):              # the inputs were checked finite: an overflow on the way
                raise TorchBackend._overflow(f"‖a‖² for {at}", dtype)
            raise ZeroNormError(
                f"‖a‖² = {value!r} for {at}: the tap {TAP_NAMES[cfg.kind]} is zero or non-finite, "
                "so ΔW = u aᵀ/‖a‖² is undefined (P1 Thm 2.2 assumes a ≠ 0). The query may lie in the null space "
                "of the attention's value/output maps.")

    # the core API ----------------------------------------------------------------------------------------------
    def init_block(self, cfg: BlockConfig, seed: int = 0, **kw) -> dict:
        """The reference's random params (same numbers for the same seed), as tensors."""
        return self.asarray(ref.init_block(cfg, seed, **kw))

    def init_model(self, cfg: BlockConfig, n_blocks: int, seed: int = 0, **kw) -> list[dict]:
        return self.asarray(ref.init_model(cfg, n_blocks, seed, **kw))

    def attention(self, params, cfg, Z) -> torch.Tensor:
        """The block's contextual layer at every position, ``(..., T, d_model)`` (``A(LN1 Z)`` for pre-ln)."""
        P = self._params(params, cfg)
        return torch_ops.attention(P, cfg, self._tensor(Z, "Z", (None, cfg.d_model)))

    def taps(self, params, cfg, Z):
        """``(a, r)`` at every position, each ``(..., T, d_model)``."""
        P = self._params(params, cfg)
        return torch_ops.taps(P, cfg, self._tensor(Z, "Z", (None, cfg.d_model)))

    def block(self, params, cfg, Z) -> torch.Tensor:
        """The block output at every position, ``(..., T, d_model)``."""
        P = self._params(params, cfg)
        out = torch_ops.block(P, cfg, self._tensor(Z, "Z", (None, cfg.d_model)))       # (..., T, D)
        self._finite("block", output=out)
        return out

    def _query_taps(self, P, cfg, context, query):
        """Taps ``(a, r)`` of the query (the last position of ``[C, x]``), ``(..., d_model)`` each: one query row
        against ``n + 1`` keys, O(n·d) (the causal mask never hides anything from the last position)."""
        X = torch.cat([context, query[..., None, :]], dim=-2)                       # (..., n+1, D)
        if cfg.kind == "pre-ln":
            X = torch_ops.layer_norm(X, P["ln1.g"], P["ln1.b"], cfg.ln_eps)
        H, dh = cfg.n_heads, cfg.head_dim
        *batch, T, _ = X.shape
        q = F.linear(X[..., -1:, :], P["attn.W_q"], P.get("attn.b_q"))               # (..., 1, H*dh)
        k = F.linear(X, P["attn.W_k"], P.get("attn.b_k"))                            # (..., T, H*dh)
        v = F.linear(X, P["attn.W_v"], P.get("attn.b_v"))
        q = q.reshape(*batch, 1, H, dh).transpose(-3, -2)                            # (..., H, 1, dh)
        k, v = (m.reshape(*batch, T, H, dh).transpose(-3, -2) for m in (k, v))        # (..., H, T, dh)
        heads = F.scaled_dot_product_attention(q, k, v)                              # (..., H, 1, dh)
        heads = heads.transpose(-3, -2).reshape(*batch, H * dh)                      # (..., H*dh)
        A = F.linear(heads, P["attn.W_o"], P.get("attn.b_o"))                        # (..., D)
        return torch_ops.taps_from_attention(P, cfg, query, A)

    @staticmethod
    def _alone_attention(P, cfg, X):
        """``A([x])`` for every token of ``X`` run alone, ``(..., T, D)``: softmax over one logit is exactly 1,
        so ``A([x]) = W_o (W_v x + b_v) + b_o`` (THEORY §10.7), LN1 first for pre-ln."""
        if cfg.kind == "pre-ln":
            X = torch_ops.layer_norm(X, P["ln1.g"], P["ln1.b"], cfg.ln_eps)
        return F.linear(F.linear(X, P["attn.W_v"], P.get("attn.b_v")), P["attn.W_o"], P.get("attn.b_o"))

    def block_output(self, params, cfg, context, query) -> torch.Tensor:
        """``T_W(C, x)``: the block output at the query's position, ``(..., d_model)``; ``context`` may be empty."""
        P = self._params(params, cfg)
        context, query = self._context_query(cfg, context, query)
        out = torch_ops.head(P, cfg, *self._query_taps(P, cfg, context, query))         # (..., D)
        self._finite("block_output", output=out)
        return out

    def implicit_update(self, params, cfg, context, query, remove=None) -> Update:
        """P1 Thm 2.2 / App. A / P2: ``u = W(a_C − a_x)``, ``a = a_x``, ``Δb_out = r_C − r_x``, where ``x`` sees
        ``C \\ Y`` with ``Y = context[..., remove, :]`` (default: all of C)."""
        P = self._params(params, cfg)
        context, query = self._context_query(cfg, context, query)
        n = context.shape[-2]
        if isinstance(remove, torch.Tensor):
            remove = remove.detach().cpu().numpy()
        if remove is None:                       # Y = C: the query alone (no O(n log n) index arithmetic on the host)
            kept = context[..., :0, :]
        else:
            keep = np.setdiff1d(np.arange(n), check_remove(remove, n))
            kept = context.index_select(-2, torch.as_tensor(keep, dtype=torch.long, device=self.torch_device))
        a_C, r_C = self._query_taps(P, cfg, context, query)
        a_x, r_x = self._query_taps(P, cfg, kept, query)                             # (..., D) each
        self._check_norm(a_x, cfg, "the query")
        u = F.linear(a_C - a_x, P["mlp.W"])                                          # (..., d_mlp)
        delta_b = r_C - r_x
        self._finite("implicit_update", u=u, delta_b=delta_b)
        return Update(u=u, a=a_x, delta_b=delta_b)

    def apply_update(self, params, update) -> dict:
        """New params with ``mlp.W += ΔW`` and ``mlp.b_out += Δb`` (the input dict is not modified)."""
        if not isinstance(update, (Update, ref.Update)):
            raise ValueError(f"update must be an Update, got {type(update).__name__}")
        update = self.asarray(update)
        new = self.asarray(dict(params))                 # every entry on this backend (not only the two updated)
        M, D = new["mlp.W"].shape
        if tuple(update.u.shape) != (M,) or tuple(update.a.shape) != (D,) or tuple(update.delta_b.shape) != (D,):
            raise ValueError(
                f"update must be a single Update with u ({M},), a and delta_b ({D},); got u {tuple(update.u.shape)}, "
                f"a {tuple(update.a.shape)}, delta_b {tuple(update.delta_b.shape)} (index a batch first)")
        new["mlp.W"] = new["mlp.W"] + update.delta_W
        new["mlp.b_out"] = new["mlp.b_out"] + update.delta_b
        return new

    def position_updates(self, params, cfg, Z, query: str = "own") -> Update:
        """P2 Thm 1, every position in one batched pass: ``u`` (..., T, d_mlp), ``a``/``delta_b`` (..., T, D).

        ``"own"``: position i's own token run alone; ``"last"``: the last token (P2's convention).
        """
        if query not in ("own", "last"):
            raise ValueError(f"query must be 'own' or 'last', got {query!r}")
        P = self._params(params, cfg)
        Z = self._tensor(Z, "Z", (None, cfg.d_model))
        if Z.shape[-2] == 0:
            raise ValueError("Z must hold at least one token, got shape (0, d_model)")
        a, r = torch_ops.taps(P, cfg, Z)                                              # (..., T, D) each
        if query == "own":
            a_x, r_x = torch_ops.taps_from_attention(P, cfg, Z, self._alone_attention(P, cfg, Z))
            self._check_norm(a_x, cfg, "position", indexed=True)
        else:
            last = Z[..., -1:, :]
            a_x, r_x = torch_ops.taps_from_attention(P, cfg, last, self._alone_attention(P, cfg, last))
            self._check_norm(a_x, cfg, "the last token")
            a_x, r_x = a_x.expand_as(a), r_x.expand_as(r)
        u, delta_b = F.linear(a - a_x, P["mlp.W"]), r - r_x                          # (..., T, d_mlp), (..., T, D)
        self._finite("position_updates", u=u, delta_b=delta_b)
        return Update(u=u, a=a_x, delta_b=delta_b)

    # the O(n·d) trajectory ---------------------------------------------------------------------------------
    def trajectory(self, params, cfg, context, query, *, slab: int | None = None) -> Trajectory:
        """P1 Prop. 3.1 over every prefix ``c_1..c_i`` (i = 0..n) of ``context`` for one ``query``, in O(n·d).

        The query's attention over prefix i is a running softmax mean (``torch_scan``); the taps follow
        position-wise; ``‖u_i‖² = δ_iᵀ G δ_i`` with the Gram matrix ``G = W_0ᵀW_0`` (DESIGN "Updates stay
        factored"); steps ``a_{i+1} − a_i`` come from the exact increment ``o_{i+1} − o_i = p_{i+1}(v_{i+1} − o_i)``
        (``p`` the new token's weight), pushed through ``W_o`` and, for LayerNorm taps, through an exact LN
        difference, so they carry no cancellation even when they are 1e-6 of ``a``.
        """
        slab = self._slab_size(slab)
        P0 = self._params(params, cfg)
        context, query = self._context_query(cfg, context, query)
        out_dtype, acc = self.torch_dtype, self.acc_dtype
        P = {k: v.to(acc) for k, v in P0.items()}
        x = query.to(acc)                                                            # (..., D)
        batch, n, D = x.shape[:-1], context.shape[-2], cfg.d_model
        scan = self._prefix_scan(P, cfg, x, context, slab)
        A0 = next(scan)                                                              # (..., D): the query alone
        a0, r0 = torch_ops.taps_from_attention(P, cfg, x, A0)
        self._check_norm(a0, cfg, "the query")
        a_norm_sq = (a0 * a0).sum(-1)                                                # (...)
        a_norm = torch.sqrt(a_norm_sq)
        W0 = P["mlp.W"]
        G = W0.T @ W0                                                                # (D, D) Gram matrix

        # outputs, filled slab by slab (row 0 of delta/delta_b/dW_sq is the query alone: exactly 0)
        delta = torch.empty(*batch, n + 1, D, dtype=out_dtype, device=x.device)
        delta_b = torch.zeros_like(delta) if cfg.kind == "plain" else torch.empty_like(delta)
        steps = torch.empty(*batch, n, D, dtype=out_dtype, device=x.device)
        dW_n = torch.empty(*batch, n + 1, dtype=acc, device=x.device)
        step_n = torch.empty(*batch, n, dtype=acc, device=x.device)
        loss = torch.empty(*batch, n, dtype=acc, device=x.device)
        delta[..., 0, :] = 0
        delta_b[..., 0, :] = 0
        dW_n[..., 0] = 0
        pre_prev = x + A0                                                            # LN input of the previous prefix
        a_prev = a0
        for s0, A, dA in scan:
            a, r = torch_ops.taps_from_attention(P, cfg, x[..., None, :].expand_as(A), A)
            da = self._tap_increments(P, cfg, x, A, dA, pre_prev)                    # (..., S, D)
            pre_prev = x + A[..., -1, :]
            S = A.shape[-2]
            d = a - a0[..., None, :]
            delta[..., s0 + 1:s0 + 1 + S, :] = d
            if cfg.kind != "plain":                                                  # plain: r ≡ 0, Δb ≡ 0
                delta_b[..., s0 + 1:s0 + 1 + S, :] = r - r0[..., None, :]
            steps[..., s0:s0 + S, :] = da
            dW_n[..., s0 + 1:s0 + 1 + S] = gram_norm(d, G)[0]                      # ‖u_i‖ = √(δ_iᵀ G δ_i)
            step_n[..., s0:s0 + S], daG = gram_norm(da, G)
            a_before = torch.cat([a_prev[..., None, :], a[..., :-1, :]], -2)         # a_i for step i → i+1
            loss[..., s0:s0 + S] = -(daG * a_before).sum(-1)                         # tr(Δ_iᵀW_i) = −stepᵀ G a_i
            a_prev = a[..., -1, :]
        delta_W_norm = dW_n / a_norm[..., None]
        step_norm = step_n / a_norm[..., None]
        prev = delta_W_norm[..., :-1]
        relative_change = torch.where(prev > 0, step_norm / torch.where(prev > 0, prev, 1), torch.nan)
        grad_norm = step_norm * a_norm_sq[..., None]                                 # ‖Δ_i‖_F = ‖grad_u_i‖ ‖a‖
        cast = lambda t: t.to(out_dtype)                                             # noqa: E731
        out = {"a": cast(a0), "r": cast(r0), "delta_W_norm": cast(delta_W_norm), "step_norm": cast(step_norm),
               "loss": cast(loss), "grad_norm": cast(grad_norm), "h": cast(1.0 / a_norm_sq)}
        # in the output dtype (float16 overflows at 65504); relative_change is nan at i = 0 by definition, and a
        # plain block's delta_b is zero by construction
        self._finite("trajectory", **out, **({} if cfg.kind == "plain" else {"delta_b": delta_b}))
        return Trajectory(
            W0=P0["mlp.W"], delta=delta, delta_b=delta_b, relative_change=cast(relative_change), steps=steps,
            params=P0, cfg=cfg, **out)

    def _slab_size(self, slab) -> int:
        """``slab`` (context tokens per step of the scan) checked; ``None`` is the device's default."""
        if slab is None:
            return self._slab
        if isinstance(slab, bool) or not isinstance(slab, (int, np.integer)) or slab < 1:
            raise ValueError(f"slab must be a positive integer (context tokens per scan step), got {slab!r}")
        return int(slab)

    @staticmethod
    def _prefix_scan(P, cfg, x, context, slab):
        """Generator: first the query-alone attention output ``A_0`` (..., D), then for each slab of the context
        ``(s0, A, dA)``: the query's attention output over the prefixes ``s0+1 .. s0+S`` (..., S, D) and its
        exact increments ``A_i − A_{i−1}`` (..., S, D). O(n·d) time, O(slab·d) working memory."""
        D = cfg.d_model
        H, dh = cfg.n_heads, cfg.head_dim
        scale = 1.0 / math.sqrt(dh)

        def normed(X):
            return torch_ops.layer_norm(X, P["ln1.g"], P["ln1.b"], cfg.ln_eps) if cfg.kind == "pre-ln" else X

        def heads(X, key):                                                           # (..., S, D) → (..., H, S, dh)
            y = F.linear(X, P[f"attn.W_{key}"], P.get(f"attn.b_{key}"))
            return y.reshape(*y.shape[:-1], H, dh).transpose(-3, -2)

        xn = normed(x)[..., None, :]                                                 # (..., 1, D)
        q = heads(xn, "q")[..., 0, :] * scale                                        # (..., H, dh)
        v_x = heads(xn, "v")[..., 0, :]                                              # (..., H, dh)
        s_x = (q * heads(xn, "k")[..., 0, :]).sum(-1)                                # (..., H): the query's own logit
        # logits s_j = q_h·(W_k^h x_j + b_k^h) = (W_k^hᵀ q_h)·x_j + q_h·b_k^h: one (D × H) product per token
        qk = (q[..., :, :, None] * P["attn.W_k"].reshape(H, dh, D)).sum(-2)          # (..., H, D)
        qb = (q * P["attn.b_k"].reshape(H, dh)).sum(-1) if "attn.b_k" in P else None  # (..., H)
        carry = (s_x, v_x, torch.ones_like(s_x))                                     # the query alone: o_0 = v_x
        o_prev = v_x                                                                 # (..., H, dh)

        def attn_out(o, bias=True):                                                  # (..., H, S, dh) → (..., S, D)
            flat = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], H * dh)
            return F.linear(flat, P["attn.W_o"], P.get("attn.b_o") if bias else None)

        yield attn_out(v_x[..., None, :])[..., 0, :]                                 # (..., D)
        for s0 in range(0, context.shape[-2], slab):
            C = normed(context[..., s0:s0 + slab, :].to(x.dtype))                   # (..., S, D)
            s = (C @ qk.transpose(-1, -2)).transpose(-1, -2)                         # (..., H, S) logits
            if qb is not None:
                s = s + qb[..., None]
            v = heads(C, "v")                                                        # (..., H, S, dh)
            o, p, carry = prefix_softmax_means(s, v, carry)                          # (..., H, S, dh), (..., H, S)
            o_before = torch.cat([o_prev[..., None, :], o[..., :-1, :]], -2)        # o_{i−1}
            inc = p[..., None] * (v - o_before)                                      # o_i − o_{i−1}, exact form
            o_prev = o[..., -1, :]
            yield s0, attn_out(o), attn_out(inc, bias=False)                         # (..., S, D) each

    def prefix_attention(self, params, cfg, context, query, *, slab: int | None = None) -> torch.Tensor:
        """The query's attention output ``A(c_1..c_i, x)`` for every prefix i = 0..n, ``(..., n+1, d_model)``,
        by the O(n·d) scan (``A(LN1 ·)`` for pre-ln): what ``trajectory`` builds its taps from."""
        slab = self._slab_size(slab)
        P = {k: v.to(self.acc_dtype) for k, v in self._params(params, cfg).items()}
        context, query = self._context_query(cfg, context, query)
        scan = self._prefix_scan(P, cfg, query.to(self.acc_dtype), context, slab)
        return torch.cat([next(scan)[..., None, :]] + [A for _, A, _ in scan], -2).to(self.torch_dtype)

    @staticmethod
    def _tap_increments(P, cfg, x, A, dA, pre_prev):
        """``a_i − a_{i−1}`` for every prefix of the slab from ``ΔA_i = A_i − A_{i−1}`` without subtracting taps.

        Linear taps (plain, p1-skip, residual) move by ``ΔA``; LayerNorm taps by :func:`layer_norm_increment`.
        """
        if cfg.kind in ("plain", "p1-skip", "residual"):
            return dA
        pre = x[..., None, :] + A                                                    # (..., S, D): the LN input
        before = torch.cat([pre_prev[..., None, :], pre[..., :-1, :]], -2)
        g = P["ln2.g"] if cfg.kind == "pre-ln" else P["ln1.g"]
        return layer_norm_increment(before, dA, g, cfg.ln_eps)

    # stacks ----------------------------------------------------------------------------------------------------
    def _stack(self, model_params, model_cfg):
        blocks, cfgs = normalise_stack(model_params, model_cfg)
        return [self._params(p, c) for p, c in zip(blocks, cfgs)], cfgs

    def model_forward(self, model_params, model_cfg, Z) -> list[torch.Tensor]:
        """Hidden states ``[H^0 = Z, H^1, …, H^L]``, each ``(..., T, d_model)``."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        Hs = [self._tensor(Z, "tokens", (None, cfgs[0].d_model))]
        for p, c in zip(blocks, cfgs):
            Hs.append(torch_ops.block(p, c, Hs[-1]))
        return Hs

    def model_updates(self, model_params, model_cfg, tokens) -> list[Update]:
        """The last-token update of every block (P2 §3c), from its input ``H^{ℓ−1}`` computed with context."""
        blocks, cfgs = self._stack(model_params, model_cfg)
        tokens = self._tensor(tokens, "tokens", (None, cfgs[0].d_model))
        if tokens.shape[-2] == 0:
            raise ValueError("tokens must hold at least the query, got shape (0, d_model)")
        Hs = self.model_forward(blocks, cfgs, tokens)
        return [self.implicit_update(p, c, Hs[l][..., :-1, :], Hs[l][..., -1, :])
                for l, (p, c) in enumerate(zip(blocks, cfgs))]

    def apply_model_updates(self, model_params, updates) -> list[dict]:
        blocks = ref.split_stack(model_params) if isinstance(model_params, dict) else list(model_params)
        if len(updates) != len(blocks):
            raise ValueError(f"updates must hold one Update per block ({len(blocks)}), got {len(updates)}")
        return [self.apply_update(p, u) for p, u in zip(blocks, updates)]

    def model_trajectory(self, model_params, model_cfg, context, query, *, elements: int = ELEMENTS) -> list[Update]:
        """For a stack of causal blocks, block ℓ's last-token update on every prefix ``[c_1..c_i, x]``, i = 0..n:
        one stacked ``Update`` per block, ``u`` (..., n+1, d_mlp), ``a``/``delta_b`` (..., n+1, D).

        Causality makes the context's hidden states the same for every prefix, so block ℓ sees the context
        ``H^{ℓ−1}_{1..n}`` once and ``n + 1`` queries ``x^{ℓ−1}_i`` (the query's hidden state with i tokens):
        query i attends to the context tokens before it plus itself. That is one causal attention pass, done in
        chunks of about ``elements`` logits so memory stays O(n·d); block 1's queries are all ``x`` and its
        prefix outputs are also what the O(n·d) scan gives.
        """
        blocks, cfgs = self._stack(model_params, model_cfg)
        if not all(c.causal for c in cfgs[:-1]):            # the last block's context states feed no block
            raise ValueError("model_cfg must be causal in every block but the last for a stack's prefix dynamics "
                             "(a non-causal block lets later tokens change the context's hidden states)")
        context, query = self._context_query(cfgs[0], context, query)
        n = context.shape[-2]
        Hc = context                                                                  # (..., n, D) context states
        Xq = query[..., None, :].expand(*query.shape[:-1], n + 1, query.shape[-1])   # (..., n+1, D) queries
        updates = []
        for l, (P, cfg) in enumerate(zip(blocks, cfgs)):
            A = self._prefix_attention(P, cfg, Hc, Xq, elements)                     # (..., n+1, D)
            a, r = torch_ops.taps_from_attention(P, cfg, Xq, A)
            a_x, r_x = torch_ops.taps_from_attention(P, cfg, Xq, self._alone_attention(P, cfg, Xq))
            self._check_norm(a_x, cfg, "prefix", indexed=True)
            updates.append(Update(u=F.linear(a - a_x, P["mlp.W"]), a=a_x, delta_b=r - r_x))
            if l + 1 < len(blocks):
                Xq = torch_ops.head(P, cfg, a, r)                                     # next block's queries
                Hc = self._causal_block(P, cfg, Hc, elements)                         # next block's context
        return updates

    @staticmethod
    def _chunked_attention(q, k, v, offset: int, own=None, elements: int = ELEMENTS):
        """Row i of ``q`` (..., H, Tq, dh) attends to keys ``j < i + offset`` of ``k, v`` (..., H, Tk, dh) plus,
        if given, its own extra key/value ``own = (k_own, v_own)`` (..., H, Tq, dh); chunks of query rows
        keep the logits at about ``elements`` numbers. Returns (..., H, Tq, dh)."""
        Tq, Tk = q.shape[-2], k.shape[-2]
        rows = max(1, elements // max(1, Tk * int(np.prod(q.shape[:-2]))))
        scale = 1.0 / math.sqrt(q.shape[-1])
        outs = []
        for i0 in range(0, Tq, rows):
            i1 = min(Tq, i0 + rows)
            kmax = max(0, min(Tk, i1 - 1 + offset))                                  # keys any row here can see
            logits = q[..., i0:i1, :] @ k[..., :kmax, :].transpose(-1, -2) * scale    # (..., H, R, K)
            seen = (torch.arange(kmax, device=q.device)[None, :]
                    < (torch.arange(i0, i1, device=q.device)[:, None] + offset))       # (R, K)
            logits = torch.where(seen, logits, -torch.inf)
            if own is not None:
                s_own = (q[..., i0:i1, :] * own[0][..., i0:i1, :]).sum(-1, keepdim=True) * scale  # (..., H, R, 1)
                w = torch.softmax(torch.cat([logits, s_own], -1), -1)                # (..., H, R, K+1)
                outs.append(w[..., :kmax] @ v[..., :kmax, :] + w[..., kmax:] * own[1][..., i0:i1, :])
            else:
                outs.append(torch.softmax(logits, -1) @ v[..., :kmax, :])
        return torch.cat(outs, -2)

    def _prefix_attention(self, P, cfg, Hc, Xq, elements):
        """Attention output of query ``Xq_i`` over ``[Hc_1..Hc_i, Xq_i]`` for i = 0..n, ``(..., n+1, D)``."""
        H, dh = cfg.n_heads, cfg.head_dim

        def proj(X, key):
            if cfg.kind == "pre-ln":
                X = torch_ops.layer_norm(X, P["ln1.g"], P["ln1.b"], cfg.ln_eps)
            y = F.linear(X, P[f"attn.W_{key}"], P.get(f"attn.b_{key}"))
            return y.reshape(*y.shape[:-1], H, dh).transpose(-3, -2)                   # (..., H, T, dh)

        o = self._chunked_attention(proj(Xq, "q"), proj(Hc, "k"), proj(Hc, "v"), offset=0,
                                    own=(proj(Xq, "k"), proj(Xq, "v")), elements=elements)
        o = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], H * dh)
        return F.linear(o, P["attn.W_o"], P.get("attn.b_o"))

    def _causal_block(self, P, cfg, Hc, elements):
        """``block(Hc)`` with the causal attention done in chunks (O(n·d) memory)."""
        if Hc.shape[-2] == 0:
            return Hc
        H, dh = cfg.n_heads, cfg.head_dim
        X = torch_ops.layer_norm(Hc, P["ln1.g"], P["ln1.b"], cfg.ln_eps) if cfg.kind == "pre-ln" else Hc
        q, k, v = (F.linear(X, P[f"attn.W_{key}"], P.get(f"attn.b_{key}")) for key in "qkv")
        q, k, v = (t.reshape(*t.shape[:-1], H, dh).transpose(-3, -2) for t in (q, k, v))
        o = self._chunked_attention(q, k, v, offset=1, elements=elements)
        o = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], H * dh)
        A = F.linear(o, P["attn.W_o"], P.get("attn.b_o"))
        return torch_ops.head(P, cfg, *torch_ops.taps_from_attention(P, cfg, Hc, A))


def gram_norm(y: torch.Tensor, G: torch.Tensor):
    """``(‖W y‖, G y)`` rowwise from the Gram matrix ``G = WᵀW`` (``‖W y‖² = yᵀ G y``), never forming ``W y``.

    Each row is scaled by its largest entry first, so tiny rows (steps of 1e-23 in float32) do not underflow
    when squared. ``y`` (..., D) → (...), (..., D).
    """
    s = y.abs().amax(-1, keepdim=True)                                              # (..., 1)
    s = torch.where(s > 0, s, 1)
    z = y / s
    zG = z @ G                                                                      # (..., D)
    return torch.sqrt((zG * z).sum(-1).clamp_min(0)) * s[..., 0], zG * s


def layer_norm_increment(y: torch.Tensor, dy: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``LN(y + dy) − LN(y)`` without subtracting two LayerNorm outputs (the shift ``b`` cancels).

    With ``c = y − mean y``, ``dc = dy − mean dy``, ``σ² = mean c² + eps`` and
    ``σ'² = σ² + 2 mean(c·dc) + mean(dc²)``:
    ``LN(y+dy) − LN(y) = g ⊙ (dc/σ' + c (1/σ' − 1/σ))`` and ``1/σ' − 1/σ = −(σ'² − σ²)/(σ σ' (σ + σ'))``;
    every term is proportional to ``dy``, so the result has relative (not absolute) round-off.
    """
    c = y - y.mean(-1, keepdim=True)
    dc = dy - dy.mean(-1, keepdim=True)
    var = (c * c).mean(-1, keepdim=True) + eps                                       # σ²
    dvar = 2 * (c * dc).mean(-1, keepdim=True) + (dc * dc).mean(-1, keepdim=True)    # σ'² − σ²
    sd, sd_new = torch.sqrt(var), torch.sqrt(var + dvar)
    return g * (dc / sd_new - c * dvar / (sd * sd_new * (sd + sd_new)))


def make_backend(device=None, dtype=None) -> TorchBackend:
    """Factory used by ``get_backend("torch")``."""
    return TorchBackend(device=device, dtype=dtype)


def _targets():
    out = [("cpu", "float64"), ("cpu", "float32"), ("cpu", "bfloat16")]
    if torch.cuda.is_available():
        out += [("cuda", "float64"), ("cuda", "float32"), ("cuda", "bfloat16")]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        out += [("mps", "float32"), ("mps", "bfloat16")]
    return out


conformance_targets = _targets()
