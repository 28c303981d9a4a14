#!/usr/bin/env bash
# One prepared GPU check (issue 3): the conformance suite on CUDA (float64, float32, bfloat16) and the benchmark at
# 1M and 16M context tokens, JSON written to $OUT (or the folder given as $1). Meant to finish in under 5 minutes
# on one H200: each step has its own time limit (conformance 130 s, bench 160 s) and what it wrote is kept.
#
#   scripts/gpu_check.sh [OUTDIR]
#
# Needs, and installs nothing: a Python with torch (CUDA), numpy, scipy, pytest and hypothesis: $PYTHON if set,
# else the first of .venv/bin/python, python3, python that imports torch (the lent H200 machine's python3 has all
# of them). It reaches no network. If that Python has no installed implicit-icl, the package layout of
# pyproject.toml ([tool.setuptools] package-dir) is linked into a temporary folder put on PYTHONPATH, with
# PYTHONSAFEPATH=1 so that the checkout's own implicit_icl/ folder does not shadow it (Python >= 3.11).
#
# Writes OUTDIR/gpu_env.json, conformance.xml (JUnit), conformance.log, bench_cuda.json, bench.log and
# gpu_check.json (the summary). Exits non-zero if CUDA is missing, a test fails, a CUDA case was skipped, or the
# benchmark reports an error. Nothing is skipped silently: every skip is listed in conformance.log and in
# gpu_check.json with its reason (the CPU targets are deselected on purpose with IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda
# and say so; the bench JSON lists the NumPy reference as CPU-only under "skipped").
set -euo pipefail

cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUTDIR"
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" >&2; }

# 0. a Python with torch
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
  "$PY" -c "import torch" || { log "FAIL: PYTHON=$PY cannot import torch"; exit 2; }
else
  PY=""
  for cand in .venv/bin/python python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
  [ -n "$PY" ] || { log "FAIL: no Python with torch (tried .venv/bin/python, python3, python; or set PYTHON)"; exit 2; }
fi
log "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"

# 1. the package, without installing it if it is not installed
if ! "$PY" -c "import implicit_icl.backends.torch_backend" >/dev/null 2>&1; then
  SHIM="$(mktemp -d)"
  log "implicit_icl is not installed for $PY: linking the checkout's package layout into $SHIM"
  "$PY" - "$SHIM" <<'PYEOF' || { log "FAIL: could not link the package layout (needs Python >= 3.11)"; exit 2; }
import os, sys, tomllib
shim, root = sys.argv[1], os.getcwd()
with open("pyproject.toml", "rb") as f:
    dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
for pkg, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):     # parents before their subpackages
    src, dest = os.path.join(root, folder), os.path.join(shim, *pkg.split("."))
    if "." not in pkg:                        # a top package: a real folder of links, so subpackages can be added
        os.makedirs(dest)
        for name in os.listdir(src):
            os.symlink(os.path.join(src, name), os.path.join(dest, name))
    else:
        if os.path.lexists(dest):
            os.remove(dest)
        os.symlink(src, dest)
PYEOF
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
  "$PY" -c "import implicit_icl.backends.torch_backend" || { log "FAIL: implicit_icl does not import"; exit 2; }
fi
"$PY" -c "import numpy, scipy, pytest, hypothesis" \
  || { log "FAIL: numpy, scipy, pytest and hypothesis are needed (pip install 'implicit-icl[torch,dev]')"; exit 2; }

# 2. the machine
set +e
"$PY" - "$OUTDIR/gpu_env.json" <<'PYEOF'
import json, sys, torch
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info), file=sys.stderr)
sys.exit(0 if info["cuda_available"] else 3)
PYEOF
status=$?
set -e
if [ $status -ne 0 ]; then log "FAIL: CUDA is not available to torch on this machine"; exit 3; fi

# 3. conformance on CUDA: scenarios, golden fixtures, and the torch backend's own tests (its CUDA test included)
log "conformance suite on cuda"
set +e
IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda timeout 130 "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/conformance/test_conformance.py tests/conformance/test_golden.py tests/test_backend_torch.py \
  --junitxml="$OUTDIR/conformance.xml" > "$OUTDIR/conformance.log" 2>&1
TEST_RC=$?
set -e
tail -n 5 "$OUTDIR/conformance.log" >&2

# 4. the benchmark at 1M and 16M tokens on CUDA (baselines budgeted to 5 s each, then extrapolated)
log "bench on cuda at 1M and 16M tokens"
set +e
timeout 160 "$PY" -m implicit_icl.cli bench --device cuda --sizes 1048576 16777216 --budget 5 --positions 4096 \
  --json "$OUTDIR/bench_cuda.json" > "$OUTDIR/bench.log" 2>&1
BENCH_RC=$?
set -e
tail -n 8 "$OUTDIR/bench.log" >&2

# 5. the summary: counts per outcome, every skip with its reason, CUDA skips are failures
"$PY" - "$OUTDIR" "$TEST_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" <<'PYEOF'
import json, os, sys
import xml.etree.ElementTree as ET
out, test_rc, bench_rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary = {"tests_exit_code": test_rc, "bench_exit_code": bench_rc, "seconds": seconds, "problems": []}
xml_path = os.path.join(out, "conformance.xml")
if os.path.exists(xml_path):
    counts, skips, cuda_skipped, failed = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}, {}, [], []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "")
        kinds = [c.tag for c in case]
        if "failure" in kinds or "error" in kinds:
            counts["failed" if "failure" in kinds else "error"] += 1
            failed.append(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = case.find("skipped").get("message", "")
            skips[reason] = skips.get(reason, 0) + 1
            if "cuda" in name and "not selected" not in reason:
                cuda_skipped.append(f"{name}: {reason}")
        else:
            counts["passed"] += 1
            if "cuda" in name:
                counts["cuda_passed"] = counts.get("cuda_passed", 0) + 1
    summary["conformance"] = counts
    summary["skip_reasons"] = skips
    if cuda_skipped:
        summary["problems"].append(f"{len(cuda_skipped)} CUDA cases skipped, e.g. {cuda_skipped[:3]}")
    if failed:
        summary["problems"].append(f"{len(failed)} tests failed, e.g. {failed[:5]} (see conformance.log)")
    if not counts.get("cuda_passed"):
        summary["problems"].append("no CUDA test case passed")
else:
    summary["problems"].append("no conformance.xml: the test run did not finish (see conformance.log)")
if test_rc != 0:
    summary["problems"].append(f"pytest exited with {test_rc} (124 = timed out)")
bench_path = os.path.join(out, "bench_cuda.json")
if os.path.exists(bench_path):
    bench = json.load(open(bench_path))
    summary["bench_complete"] = bench.get("complete")
    summary["bench_targets"] = bench.get("targets")
    summary["bench_skipped"] = bench.get("skipped", [])
    summary["bench_scan"] = [{k: r.get(k) for k in ("n", "wall_s", "peak_device_bytes", "error")}
                             for r in bench["trajectory"] if r.get("op") == "scan"]
    summary["bench_ratios"] = bench.get("ratios")
    summary["float32_error"] = bench.get("float32_error")
    summary["position_updates"] = bench.get("position_updates")
    errors = [r for r in bench["trajectory"] + [bench.get("float32_error", {}), bench.get("position_updates", {})]
              if "error" in r]
    if errors:
        summary["problems"].append(f"bench errors: {errors}")
    if not bench.get("complete"):
        summary["problems"].append("the bench did not finish (see bench.log)")
else:
    summary["problems"].append("no bench_cuda.json (see bench.log)")
if bench_rc != 0:
    summary["problems"].append(f"bench exited with {bench_rc} (124 = timed out)")
summary["ok"] = not summary["problems"]
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(json.dumps(summary, indent=2), file=sys.stderr)
sys.exit(0 if summary["ok"] else 1)
PYEOF
