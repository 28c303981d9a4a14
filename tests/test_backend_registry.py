"""get_backend, the registry and third-party backends through the entry-point group ``implicit_icl.backends``."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import implicit_icl.backends as backends
from implicit_icl import reference as ref
from implicit_icl.backends import Backend, available_backends, get_backend
from implicit_icl.backends.numpy_backend import NumpyBackend

sys.path.insert(0, str(Path(__file__).parent))
from conformance.suite import check_backend  # noqa: E402


class TinyBackend(NumpyBackend):
    """A third-party backend in miniature: the reference under another name."""

    name = "tiny"


class BrokenBackend(TinyBackend):
    """Like TinyBackend but its implicit update is off by 1e-6 relative: the suite must catch it."""

    name = "broken"

    @staticmethod
    def implicit_update(params, cfg, context, query, remove=None):
        upd = ref.implicit_update(params, cfg, context, query, remove)
        return ref.Update(u=upd.u * (1 + 1e-6), a=upd.a, delta_b=upd.delta_b)


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points(group=...)`` yields: a name and ``load()``."""

    def __init__(self, name, factory):
        self.name, self._factory = name, factory

    def load(self):
        return self._factory


def _factory(cls):
    def make(device=None, dtype=None):
        return cls(device=device, dtype=dtype)
    make.conformance_targets = [("cpu", "float64")]
    return make


@pytest.fixture
def plugins(monkeypatch):
    eps = [FakeEntryPoint("tiny", _factory(TinyBackend)), FakeEntryPoint("broken", _factory(BrokenBackend))]
    monkeypatch.setattr(backends, "_entry_points", lambda: eps)
    return eps


def test_builtin_backends():
    assert "numpy" in available_backends()
    nb = get_backend("numpy")
    assert (nb.name, nb.device, nb.dtype) == ("numpy", "cpu", "float64")
    assert isinstance(nb, Backend)


def test_builtin_torch_backend():
    pytest.importorskip("torch", reason="the torch extra is not installed")
    assert "torch" in available_backends()
    tb = get_backend("torch", device="cpu", dtype="bfloat16")
    assert (tb.name, tb.device, tb.dtype) == ("torch", "cpu", "bfloat16")
    assert isinstance(tb, Backend)


def test_unknown_backend_and_bad_options_raise_value_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        get_backend("jax-that-is-not-here")
    with pytest.raises(ValueError, match="dtype must be 'float64'"):
        get_backend("numpy", dtype="float32")
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        get_backend("numpy", device="cuda")


def test_torch_backend_bad_dtype_raises_value_error():
    pytest.importorskip("torch", reason="the torch extra is not installed")
    with pytest.raises(ValueError, match="dtype must be one of"):
        get_backend("torch", dtype="int8-please")


def test_entry_point_backend_is_discovered_and_passes_the_suite(plugins):
    assert {"tiny", "broken"} <= set(available_backends())
    tiny = get_backend("tiny")
    assert tiny.name == "tiny"
    errors = check_backend(tiny)                       # every scenario and every bad input
    assert len(errors) > 100 and max(max(e.values()) for e in errors.values()) == 0.0


def test_the_suite_catches_a_broken_entry_point_backend(plugins):
    with pytest.raises(AssertionError, match="exceeds K·eps·scale"):
        check_backend(get_backend("broken"))


def test_conformance_targets_include_entry_points(plugins):
    from conformance.targets import targets
    ids = [p.id for p in targets()]
    assert "tiny-cpu-float64" in ids and "broken-cpu-float64" in ids
    if "torch" in available_backends():
        assert "torch-cpu-float64" in ids and "torch-cuda-float32" in ids


def test_register_backend_in_process(monkeypatch):
    monkeypatch.setattr(backends, "_registered", {})
    backends.register_backend("mine", _factory(TinyBackend))
    assert get_backend("mine").name == "tiny"
    with pytest.raises(ValueError, match="factory must be callable"):
        backends.register_backend("x", 3)


def test_numpy_backend_is_the_reference():
    nb = get_backend("numpy")
    cfg = ref.BlockConfig(4, 8)
    p = nb.init_block(cfg, 3)
    Z = np.random.default_rng(0).standard_normal((5, 4))
    assert np.array_equal(nb.block(p, cfg, Z), ref.block(p, cfg, Z))
    assert nb.implicit_update is ref.implicit_update and nb.trajectory is ref.trajectory


def test_get_backend_requires_every_core_method(monkeypatch):
    """A backend without, say, ``block`` is refused by name at get_backend, and a hand-made object lacking a core
    method fails the suite instead of skipping it (only extensions such as ``model_trajectory`` may skip)."""
    assert set(backends.CORE) >= {"block", "position_updates", "model_updates", "apply_update", "asarray"}

    class NoBlock:
        name, device, dtype = "noblock", "cpu", "float64"

        def __getattr__(self, attr):                  # the reference for everything but ``block``
            if attr == "block":
                raise AttributeError(attr)
            return getattr(NumpyBackend(), attr)

    monkeypatch.setattr(backends, "_registered", {"noblock": lambda device=None, dtype=None: NoBlock()})
    with pytest.raises(ValueError, match=r"lacks \['block'\]"):
        get_backend("noblock")
    with pytest.raises(AssertionError, match="has no 'block', a method of the core API"):
        check_backend(NoBlock())


def test_an_entry_point_named_like_a_builtin_is_said_not_dropped(monkeypatch):
    monkeypatch.setattr(backends, "_entry_points", lambda: [FakeEntryPoint("numpy", _factory(TinyBackend))])
    with pytest.warns(UserWarning, match="'numpy' is a built-in backend"):
        found = backends.factories()
    assert found["numpy"] == backends.BUILTIN["numpy"]          # the built-in reference stays the reference


def test_a_backend_with_only_the_core_methods_passes_the_suite():
    """Extensions (``model_trajectory``, …) are optional: a third party offering exactly ``CORE`` gets every
    scenario, long context and bad input of the core API checked, and nothing of the extensions held against it."""

    class CoreOnly:
        def __getattr__(self, attr):
            if attr not in backends.CORE:
                raise AttributeError(attr)
            return getattr(NumpyBackend(), attr)

    errors = check_backend(CoreOnly())
    assert len(errors) > 100 and not any(name.startswith("model_trajectory") for name in errors)
