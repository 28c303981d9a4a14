"""Backends: the same core API (DESIGN.md "Core API") on NumPy (the reference) and on PyTorch.

``get_backend("numpy" | "torch" | <third-party name>, device=None, dtype=None)`` returns an object with the core
API as methods plus ``name``, ``device``, ``dtype``, ``asarray(x)`` and ``to_numpy(x)``.

Third-party backends plug in through the entry-point group ``implicit_icl.backends``. In your package's
``pyproject.toml``::

    [project.entry-points."implicit_icl.backends"]
    mybackend = "my_package.backend:make_backend"

where ``make_backend(device=None, dtype=None)`` returns an object satisfying :class:`Backend`. It may also carry an
attribute ``conformance_targets``: a list of ``(device, dtype)`` pairs that the conformance suite in
``tests/conformance/`` runs (default: one run with ``device=None, dtype=None``). Once the package is installed,
``pytest tests/conformance`` checks your backend against the float64 reference like the built-in ones.
"""
from __future__ import annotations

import importlib
import warnings
from importlib import metadata
from typing import Any, Callable, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "implicit_icl.backends"

# built-in backends: name -> "module:factory" (imported lazily, so torch is only imported when asked for)
BUILTIN = {
    "numpy": "implicit_icl.backends.numpy_backend:make_backend",
    "torch": "implicit_icl.backends.torch_backend:make_backend",
}

_registered: dict[str, Callable[..., Any]] = {}


@runtime_checkable
class Backend(Protocol):
    """What every backend offers (DESIGN.md "Core API"); arrays are the backend's own (ndarray, Tensor, …)."""

    name: str
    device: str
    dtype: str

    def asarray(self, x): """An array, a params dict or an Update (another backend's too) → the backend's arrays."""
    def to_numpy(self, x): """The inverse: the backend's arrays (or dicts, Updates, one unbatched Trajectory) → NumPy."""
    def init_block(self, cfg, seed: int = 0, **kw) -> dict: """Random params; the same numbers as the reference."""
    def attention(self, params, cfg, Z): """``(…, T, d_model)`` contextual layer at every position."""
    def block(self, params, cfg, Z): """``(…, T, d_model)`` block output at every position."""
    def block_output(self, params, cfg, context, query, positions=None): """``T_W(C, x)``, ``(…, d_model)``."""
    def implicit_update(self, params, cfg, context, query, remove=None, positions=None):
        """P1 Thm 2.2: ``Update(u, a, delta_b)``; removal is a mask (``positions`` of ``[C, x]``)."""
    def apply_update(self, params, update) -> dict: """``mlp.W += ΔW``, ``Δb`` on the bias ``bias_key`` names."""
    def position_updates(self, params, cfg, Z, query: str = "own"): """P2 (THEORY §3b): one update per position."""
    def trajectory(self, params, cfg, context, query): """P1 Prop. 3.1 over every prefix: a ``Trajectory``."""
    def model_forward(self, model_params, model_cfg, Z) -> list: """Hidden states ``[H^0 … H^L]``."""
    def model_updates(self, model_params, model_cfg, tokens) -> list: """Per-block last-token updates (ours, THEORY §3c)."""


# what get_backend requires of every backend: the attributes and methods of ``Backend`` above
CORE = ("name", "device", "dtype", "asarray", "to_numpy", "init_block", "attention", "block", "block_output",
        "implicit_update", "apply_update", "position_updates", "trajectory", "model_forward", "model_updates")


def register_backend(name: str, factory: Callable[..., Any]) -> None:
    """Register a backend factory in this process (the entry-point group does the same across installs)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory must be callable (device=None, dtype=None) -> Backend, got {factory!r}")
    _registered[name] = factory


def _entry_points() -> list:
    """The installed entry points of group ``implicit_icl.backends`` (tests monkeypatch this)."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def factories() -> dict[str, Callable[..., Any] | str]:
    """Every known backend name → its factory (or a ``"module:attr"`` string, loaded on use)."""
    found: dict[str, Any] = dict(BUILTIN)
    for ep in _entry_points():
        if ep.name in BUILTIN:                      # said, not dropped silently
            warnings.warn(f"the entry point {ep.name!r} = {getattr(ep, 'value', ep)!r} of group "
                          f"{ENTRY_POINT_GROUP!r} is ignored: {ep.name!r} is a built-in backend (give yours "
                          "another name, or call register_backend to replace it in this process)", stacklevel=2)
            continue
        found.setdefault(ep.name, ep)
    found.update(_registered)
    return found


def available_backends() -> list[str]:
    """The names of all backends whose dependencies import (torch is checked without importing it)."""
    names = []
    for name in factories():
        if name == "torch":
            import importlib.util
            if importlib.util.find_spec("torch") is None:
                continue
        names.append(name)
    return names


def get_backend(name: str = "numpy", device=None, dtype=None, **options) -> Backend:
    """The backend ``name`` on ``device`` (e.g. ``"cpu"``, ``"cuda"``, ``"mps"``) with ``dtype``
    (a string such as ``"float32"`` or the framework's dtype); ``None`` means the backend's default. ``options``
    go to the backend as they are (``get_backend("torch", compile=True)``)."""
    known = factories()
    if name not in known:
        raise ValueError(f"name must be one of the known backends {sorted(known)}, got {name!r}")
    factory = known[name]
    if isinstance(factory, str):
        factory = _load(factory)
    elif hasattr(factory, "load") and hasattr(factory, "name"):      # an entry point: load it on use
        factory = factory.load()
    try:
        backend = factory(device=device, dtype=dtype, **options)
    except TypeError as exc:
        if not any(f"unexpected keyword argument '{k}'" in str(exc) for k in options):   # not about the options
            raise
        raise ValueError(f"backend {name!r} takes no option {sorted(options)}: {exc}") from None
    missing = [m for m in CORE if not hasattr(backend, m)]
    if missing:
        raise ValueError(f"backend {name!r} from {factory!r} lacks {missing}: it does not satisfy the Backend protocol")
    return backend


__all__ = ["BUILTIN", "CORE", "ENTRY_POINT_GROUP", "Backend", "available_backends", "factories", "get_backend",
           "register_backend"]
