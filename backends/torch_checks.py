"""The torch backend's input checks: device and dtype names, tensors and params checked like the reference's
(the same messages, written once in ``reference.validation`` and ``reference.update``), and overflow errors.

:class:`Checks` holds a device and dtype and turns user input into finite tensors there, or raises a ``ValueError``
naming the argument. Results are checked with :meth:`Checks.finite` and :meth:`Checks.updates`: one sum per tensor
(a nan or inf makes it non-finite; only where it is not are the values looked at one by one), one host sync per call.
"""
from __future__ import annotations

import functools
import re
from contextlib import contextmanager

import numpy as np
import torch

from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.update import check_norm
from implicit_icl.reference.validation import params_like, real_array, real_dtype_problem, shape_problem

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "double": torch.float64, "float": torch.float32, "float16": torch.float16, "half": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
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


def finite_flag(t: torch.Tensor) -> torch.Tensor:
    """No nan or inf in ``t``, as a boolean tensor on its device (no host sync): min and max propagate nan and show
    ±inf, in one pass without a temporary. Exact, and slower than :func:`sum_flag`: the look behind its alarms."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def total(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t``'s entries, in float32 for half dtypes (float16's 65504 would overflow on a long sum):
    non-finite if ``t`` holds a nan or inf (a nan propagates, ±inf stays or meets its opposite as a nan), and
    otherwise only if finite entries overflow it."""
    return t.sum(dtype=torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else t.dtype)


def sum_flag(t: torch.Tensor) -> torch.Tensor:
    """``isfinite(total(t))``: true proves ``t`` finite, false says it may not be (confirm with
    :func:`finite_flag`). One sum, several times faster than the min/max pass on a CPU."""
    return torch.isfinite(total(t))


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


def synced(method):
    """A backend method whose checks settle in one host sync at its end (``Checks.one_sync``)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self.check.one_sync():
            return method(self, *args, **kwargs)
    return call


def overflow_error(what: str, dtype: torch.dtype) -> ValueError:
    """The error for a non-finite value that finite inputs produced: an overflow of ``dtype`` on the way."""
    return ValueError(f"{what} overflowed in {dtype_name(dtype)}: finite inputs gave nan or inf (a value beyond "
                      f"±{torch.finfo(dtype).max:.3g} on the way: from very large inputs, or h = 1/‖a‖² from very "
                      "small ones); rescale the inputs or use dtype='float64'")


class CheckedParams(dict):
    """A params dict already checked against ``cfg`` and converted to a backend's device and dtype
    (``TorchBackend.prepare``): every call of that backend with this config takes it as it is, with no check and no
    host sync. Read-only, so that it stays what was checked."""

    def __init__(self, params: dict, cfg: BlockConfig, device: torch.device, dtype: torch.dtype):
        super().__init__(params)
        self.cfg, self.device, self.dtype = cfg, device, dtype

    def _refuse(self, *args, **kwargs):
        raise TypeError("prepared params are read-only: change a copy (dict(prepared)) and prepare it again")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = clear = setdefault = _refuse

    def __reduce__(self):                      # copy, deepcopy and pickle give a plain (writable) dict of the tensors
        return (dict, (dict(self),))


class Checks:
    """User input → finite tensors on ``device`` in ``dtype``, or a ``ValueError`` that names the argument.

    Inside :meth:`one_sync` the finiteness and ``‖a‖²`` checks queue a flag on the device instead of reading it back
    at once; the call reads them all in one host sync at its end and raises the first failed check's error (inputs
    are queued first, so a bad input is named before what it caused). A flag is cheap and may raise a false alarm
    (a sum of finite values that overflows); its error callback then looks exactly and returns ``None``: no error."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._pending: list | None = None

    @contextmanager
    def one_sync(self):
        """Collect the checks of one backend call and settle them with a single host sync when it ends."""
        if self._pending is not None:                  # nested: the outermost call settles
            yield
            return
        self._pending = []
        try:
            yield
            pending = self._pending
            if pending:
                flags = torch.stack([flag.reshape(()) for flag, _ in pending])
                if not bool(flags.all()):
                    for i in (~flags).nonzero()[:, 0].tolist():      # in order; a false alarm gives None
                        exc = pending[i][1]()
                        if exc is not None:
                            raise exc
        finally:
            self._pending = None

    def expect(self, flag: torch.Tensor, error) -> None:
        """``error()`` unless the boolean tensor ``flag`` is true: now, or at the end of ``one_sync``. ``error()``
        returns the exception to raise, or ``None`` where an exact look finds the flag's alarm false."""
        if self._pending is None:
            if not bool(flag):
                exc = error()
                if exc is not None:
                    raise exc
        else:
            self._pending.append((flag, error))

    def expect_finite(self, t: torch.Tensor, error) -> None:
        """``error()`` (an exception) if ``t`` holds a nan or inf: one sum (:func:`sum_flag`), exact on an alarm."""
        self.expect(sum_flag(t), lambda: None if bool(finite_flag(t)) else error())

    def convert(self, name: str, x) -> torch.Tensor:
        """``x`` (a tensor or an array-like of real numbers) as a tensor on this device and dtype."""
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(real_dtype_problem(name, x.dtype))
            return x.to(device=self.device, dtype=self.dtype)
        arr = real_array(name, x)
        return torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float64)).to(self.device, self.dtype)

    def tensor(self, x, name: str, shape: tuple, batch: bool = True) -> torch.Tensor:
        """``x`` as a finite tensor with trailing dimensions ``shape`` (``None`` = any size), any leading ones if
        ``batch``."""
        t = self.convert(name, x)
        problem = shape_problem(name, t.shape, shape, batch, show_batch=True)
        if problem:
            raise ValueError(problem)
        self.expect_finite(t, lambda: ValueError(f"{name} contains non-finite values (nan or inf)"))
        return t

    def params(self, params, cfg: BlockConfig) -> dict:
        """``params`` checked against ``cfg`` like the reference's (``reference.validation.params_like``), as tensors
        (:class:`CheckedParams`, so that the calls this one makes take them as they are); params this backend
        prepared for ``cfg`` pass as they are."""
        if isinstance(params, CheckedParams) and (params.cfg, params.device, params.dtype) == (cfg, self.device,
                                                                                              self.dtype):
            return params
        checked = params_like(params, cfg, convert=self.convert,
                              expect_finite=lambda t, problem: self.expect_finite(t, lambda: ValueError(problem)))
        return CheckedParams(checked, cfg, self.device, self.dtype)

    def context_query(self, cfg: BlockConfig, context, query):
        """``context`` (..., n, D) and ``query`` (..., D) checked and broadcast to one batch shape."""
        context = self.tensor(context, "context", (None, cfg.d_model))
        query = self.tensor(query, "query", (cfg.d_model,))
        try:
            batch = torch.broadcast_shapes(context.shape[:-2], query.shape[:-1])
        except RuntimeError:
            raise ValueError(f"context and query must have broadcastable batch dimensions, got context "
                             f"{tuple(context.shape)} and query {tuple(query.shape)}") from None
        return context.expand(*batch, *context.shape[-2:]), query.expand(*batch, query.shape[-1])

    def finite(self, op: str, **results: torch.Tensor) -> None:
        """A ValueError if finite inputs gave a non-finite value in one of ``results`` (an overflow of this dtype:
        e.g. a LayerNorm variance past float32's 3.4e38, or float16's 65504); never a silent nan or inf. One sum per
        tensor, one flag for them all."""
        self.updates(op, [(None, None, "", False, results)])

    def norm(self, a: torch.Tensor, cfg: BlockConfig, where: str, indexed: bool = False) -> None:
        """``reference.update.check_norm`` of the taps ``a`` (..., D), read back from the device only on failure."""
        self.updates("", [(a, cfg, where, indexed, {})])

    def updates(self, op: str, checks, reductions=None) -> None:
        """One deferred check for the updates of a block or of a whole stack: ``checks`` holds, block by block,
        ``(a, cfg, where, indexed, results)``: the taps ``a`` (..., D) whose ``‖a‖²`` must be positive and finite
        (:meth:`norm`; ``a=None``: none) and the tensors ``results`` that must be finite (:meth:`finite`, errors
        naming ``op``). One flag from a few sums and minima per block (``reductions``: each check's
        :meth:`reductions`, taken when it was formed; default: now); on an alarm the first failing check, in order
        (each block's ``‖a‖²`` before its results), is found exactly and raised."""
        sums, minima = [], []
        for s, m in (reductions if reductions is not None else map(self.reductions, checks)):
            sums += s
            minima += m
        if not sums:
            return
        flag = torch.isfinite(torch.stack(sums)).all()
        if minima:
            flag = flag & (torch.stack(minima).amin() > 0)
        self.expect(flag, lambda: self._first_failure(op, checks))

    @classmethod
    def reductions(cls, check) -> tuple[list, list]:
        """``(sums, minima)`` of one check of :meth:`updates`, as scalar tensors: a caller that forms a stack's
        results block by block takes them as each block's are written (still in cache) and settles them all at the
        end. A sum is non-finite if a nan or inf is summed (or, a false alarm, if finite values overflow it); the
        minimum of ``‖a‖²`` is zero (or nan) where a tap is."""
        a, _, _, _, results = check
        sums, minima = [], []
        if a is not None:
            nsq, own = cls._norm_sq(a)
            if nsq.numel():
                sums.append(nsq.sum())
                minima.append(nsq.amin())
                if own is not None:
                    sums.append(own.float().sum())
        return sums + [total(t) for t in results.values()], minima

    @staticmethod
    def _norm_sq(a: torch.Tensor):
        """``(‖a‖², ‖a‖² in float16)`` per row: the first in float32 for half dtypes (float64 is not on every
        device); the second only for float16, whose ``Update.a_norm_sq`` sums ``a·a`` in its own dtype."""
        af = a.float() if a.dtype in (torch.bfloat16, torch.float16) else a
        return (af * af).sum(-1), ((a * a).sum(-1) if a.dtype == torch.float16 else None)

    def _first_failure(self, op: str, checks):
        """The error of the first failing check of :meth:`updates`, found exactly; ``None`` for a false alarm."""
        for a, cfg, where, indexed, results in checks:
            if a is not None:
                nsq, own = self._norm_sq(a)
                try:
                    check_norm(nsq.detach().cpu().double().numpy(), cfg.kind, where, indexed=indexed,
                               overflow=lambda what: overflow_error(what, a.dtype))
                except ValueError as exc:
                    return exc
                if own is not None and not bool(torch.isfinite(own).all()):
                    return overflow_error(f"‖a‖² for {where}", a.dtype)
            for name, t in results.items():
                if not bool(finite_flag(t)):
                    return overflow_error(f"{op}'s {name}", self.dtype)
        return None
