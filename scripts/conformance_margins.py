"""How much of its tolerance each conformance scenario uses, per dtype, on one device (JSON out).

    python scripts/conformance_margins.py [DEVICE] [OUT.json]        # DEVICE: cpu (default), cuda, mps

For every scenario of the conformance suite (the long ones included) the torch backend's largest error relative
to scale is divided by the dtype's ``K·eps`` (tests/conformance/tolerances.py): a fraction of 1 is the tolerance
used up, so the largest fraction per dtype says how much room the suite's ``K`` leaves (the measured figures and
the reasoning behind each ``K`` are in that module's docstring). A scenario over its tolerance stops the script
with the suite's own error. Run from the checkout's root; needs torch, numpy and scipy.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from conformance.suite import check_scenario, offers  # noqa: E402
from conformance.scenarios import long_scenarios, scenarios  # noqa: E402
from conformance.tolerances import GROWTH, eps  # noqa: E402

from implicit_icl.backends import get_backend  # noqa: E402


def margins(device: str, dtype: str) -> dict:
    """``{scenario: largest fraction of K·eps·scale used over its outputs}`` for the torch backend."""
    backend = get_backend("torch", device=device, dtype=dtype)
    budget = GROWTH[dtype] * eps(dtype)
    out = {}
    for sc in scenarios() + long_scenarios():
        if offers(backend, sc.op):
            rel = check_scenario(backend, sc)            # raises if any output is out of tolerance
            out[sc.name] = max(rel.values(), default=0.0) / budget
    return out


def main(argv: list[str]) -> int:
    device = argv[0] if argv else "cpu"
    dtypes = ["float32", "bfloat16"] + ([] if device.startswith("mps") else ["float64"])
    report = {"device": device, "growth": {d: GROWTH[d] for d in dtypes}, "dtypes": {}}
    for dtype in dtypes:
        t0 = time.perf_counter()
        fr = margins(device, dtype)
        if not fr:
            raise SystemExit(f"no conformance scenario ran for torch on {device} ({dtype})")
        worst = sorted(fr.items(), key=lambda kv: -kv[1])[:5]
        report["dtypes"][dtype] = {"scenarios": len(fr), "max_fraction": worst[0][1],
                                   "median_fraction": sorted(fr.values())[len(fr) // 2],
                                   "worst": dict(worst), "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{device} {dtype}: {len(fr)} scenarios, worst {worst[0][1]:.3f} of K·eps·scale "
              f"({worst[0][0]})", file=sys.stderr)
    text = json.dumps(report, indent=2)
    if len(argv) > 1:                                    # atomic: a reader never sees half a report
        tmp = argv[1] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, argv[1])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
