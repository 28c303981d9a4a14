"""Regenerate the golden fixtures from the float64 reference: ``python tests/conformance/make_golden.py``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))       # make ``conformance`` importable

from conformance.golden import ROOT, file_name, save  # noqa: E402
from conformance.scenarios import run, scenarios  # noqa: E402
from conformance.suite import REFERENCE  # noqa: E402


def main() -> int:
    ROOT.mkdir(parents=True, exist_ok=True)
    for old in ROOT.glob("*.npz"):
        old.unlink()
    total = 0
    for sc in scenarios():
        path = ROOT / file_name(sc.name)
        save(path, sc, run(REFERENCE, sc))
        total += path.stat().st_size
    print(f"wrote {len(list(ROOT.glob('*.npz')))} fixtures to {ROOT} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
