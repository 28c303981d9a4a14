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
