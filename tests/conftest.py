import os

from hypothesis import HealthCheck, settings

# Property tests build random blocks: no wall-clock deadline (CI machines are slow and shared);
# the example counts keep the whole suite within its time budget.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
