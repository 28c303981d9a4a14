import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests build random blocks: no wall-clock deadline (CI machines are slow and shared); the example
# counts keep the whole suite within its time budget. The default profile is derandomized so that CI is
# reproducible; HYPOTHESIS_PROFILE=explore searches fresh examples on every run.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("explore", **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread while a module's tests run: on a busy 2-core machine OpenBLAS's spinning threads make the
    384/1536-wide products (and SVDs) of the real-model tests 5-10× slower. Without threadpoolctl nothing changes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def broken_compiler(monkeypatch):
    """``torch.compile`` as if it could run here but every compile raised "no C++ compiler in this test", with a
    fresh record of failures and warnings: the one fall-back of every compiled path (``torch_compile.try_compiled``).
    Yields the ``torch_compile`` module."""
    from implicit_icl.backends import torch_compile

    def compiled(key, fn, static, **options):
        def call(*args):
            raise RuntimeError("no C++ compiler in this test")
        return call

    monkeypatch.setattr(torch_compile, "compiled", compiled)
    monkeypatch.setattr(torch_compile, "compile_available", lambda device: True)
    monkeypatch.setattr(torch_compile, "FAILED", {})
    monkeypatch.setattr(torch_compile, "_WARNED", set())
    return torch_compile
