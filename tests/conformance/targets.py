"""Which backend × device × dtype combinations the conformance suite runs, as pytest params.

Built-in: ``torch`` on cpu (float64, float32, bfloat16), cuda (float64, float32, bfloat16) and mps (float32,
bfloat16; MPS has no float64); the cuda/mps ones are always listed and *skip with a reason* where the machine lacks
the device. Third-party backends found through the entry-point group ``implicit_icl.backends`` contribute their
``conformance_targets`` (``[(device, dtype), …]``, default ``[(None, None)]``). The ``numpy`` backend *is* the
reference: it is checked against the golden fixtures (``test_golden.py``) and in the bad-input tests, not against
itself.

``IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda`` (comma-separated) keeps only targets on those device types (the GPU
check script uses it); the others are then reported as skipped, with that reason. The ``numpy`` reference is
never dropped: it has no device, and the GPU check requires a passed device twin for every case it deselects.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

from implicit_icl.backends import _load, factories

TORCH_TARGETS = [("cpu", "float64"), ("cpu", "float32"), ("cpu", "bfloat16"),
                 ("cuda", "float64"), ("cuda", "float32"), ("cuda", "bfloat16"),
                 ("mps", "float32"), ("mps", "bfloat16")]


def _device_missing(device: str | None, dtype: str | None = None) -> str | None:
    if device is None or device == "cpu":
        return None
    import torch
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (run scripts/gpu_check.sh on a GPU machine)"
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return "MPS is not available on this machine"
    if kind == "mps" and dtype == "bfloat16":
        try:                                           # bfloat16 on MPS needs macOS 14 or later
            torch.ones(1, dtype=torch.bfloat16, device="mps") + 1
        except (RuntimeError, TypeError) as exc:
            return f"this machine's MPS has no bfloat16 ({exc})"
    return None


def _selected(device: str | None) -> str | None:
    wanted = os.environ.get("IMPLICIT_ICL_CONFORMANCE_DEVICES")
    if not wanted:
        return None
    kinds = {w.strip() for w in wanted.split(",") if w.strip()}
    if (device or "cpu").split(":")[0] not in kinds:
        return f"not selected: IMPLICIT_ICL_CONFORMANCE_DEVICES={wanted}"
    return None


def targets(include_numpy: bool = False) -> list:
    """``pytest.param((backend, device, dtype))`` for every target, with skip marks where needed."""
    out = []
    for name, factory in factories().items():
        if name == "numpy":
            pairs = [("cpu", "float64")] if include_numpy else []
        elif name == "torch":
            if importlib.util.find_spec("torch") is None:
                out.append(pytest.param(("torch", "cpu", "float32"), id="torch-missing",
                                        marks=pytest.mark.skip(reason="torch is not installed")))
                continue
            pairs = TORCH_TARGETS
        else:
            loaded = _load(factory) if isinstance(factory, str) else (
                factory.load() if hasattr(factory, "load") and hasattr(factory, "name") else factory)
            pairs = list(getattr(loaded, "conformance_targets", [(None, None)]))
        for device, dtype in pairs:
            reason = _device_missing(device, dtype) if name == "torch" else None
            if name != "numpy":               # the reference is the CPU oracle: a device selection never drops it
                reason = reason or _selected(device)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            out.append(pytest.param((name, device, dtype), id=f"{name}-{device}-{dtype}", marks=marks))
    return out
