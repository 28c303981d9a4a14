#!/usr/bin/env bash
# One prepared GPU check (issue 3): the conformance suite on CUDA (float64, float32, bfloat16) and the benchmark at
# 1M and 16M context tokens, JSON written to $OUT (or the folder given as $1). Under 5 minutes on one H200.
#
#   scripts/gpu_check.sh [OUTDIR]
#
# Writes OUTDIR/gpu_env.json, conformance.xml (JUnit), conformance.log, bench_cuda.json, bench.log and
# gpu_check.json (the summary). Exits non-zero if CUDA is missing, a test fails, a CUDA case was skipped, or the
# benchmark reports an error. Nothing is skipped silently: every skip is listed in conformance.log with its reason
# (the CPU targets are deselected on purpose with IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda and say so).
set -euo pipefail

cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUTDIR"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" >&2; }

# 0. the package and the test tools must import; install the checkout (editable, offline) if needed
if ! "$PY" -c "import implicit_icl.backends" 2>/dev/null; then
  log "implicit_icl not importable with $PY: installing this checkout (pip install -e . --no-deps --no-build-isolation)"
  "$PY" -m pip install -q -e . --no-deps --no-build-isolation
fi
"$PY" -c "import pytest, hypothesis" || { log "FAIL: pytest and hypothesis are needed (pip install 'implicit-icl[dev]')"; exit 2; }

# 1. the machine
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

# 2. conformance on CUDA (≈ 1–2 min): scenarios, golden fixtures, and the torch backend's own CUDA test
log "conformance suite on cuda"
set +e
IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/conformance/test_conformance.py tests/conformance/test_golden.py tests/test_backend_torch.py \
  --junitxml="$OUTDIR/conformance.xml" > "$OUTDIR/conformance.log" 2>&1
TEST_RC=$?
set -e
tail -n 5 "$OUTDIR/conformance.log" >&2

# 3. the benchmark at 1M and 16M tokens on CUDA (≈ 2 min; baselines budgeted to 5 s each, then extrapolated)
log "bench on cuda at 1M and 16M tokens"
set +e
timeout 170 "$PY" -m implicit_icl.cli bench --device cuda --sizes 1048576 16777216 --budget 5 --positions 4096 \
  --json "$OUTDIR/bench_cuda.json" > "$OUTDIR/bench.log" 2>&1
BENCH_RC=$?
set -e
tail -n 8 "$OUTDIR/bench.log" >&2

# 4. the summary: counts per outcome, every skip with its reason, CUDA skips are failures
"$PY" - "$OUTDIR" "$TEST_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" <<'PYEOF'
import json, os, sys
import xml.etree.ElementTree as ET
out, test_rc, bench_rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary = {"tests_exit_code": test_rc, "bench_exit_code": bench_rc, "seconds": seconds, "problems": []}
xml_path = os.path.join(out, "conformance.xml")
if os.path.exists(xml_path):
    counts, skips, cuda_skipped = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}, {}, []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "")
        kinds = [c.tag for c in case]
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["error"] += 1
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
    failed = [c.get("name") for c in ET.parse(xml_path).getroot().iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
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
    summary["bench_targets"] = bench.get("targets")
    summary["bench_scan"] = [{k: r.get(k) for k in ("n", "wall_s", "peak_device_bytes", "error")}
                             for r in bench["trajectory"] if r.get("op") == "scan"]
    summary["float32_error"] = bench.get("float32_error")
    errors = [r for r in bench["trajectory"] if "error" in r]
    if errors:
        summary["problems"].append(f"bench errors: {errors}")
else:
    summary["problems"].append("no bench_cuda.json (see bench.log)")
if bench_rc != 0:
    summary["problems"].append(f"bench exited with {bench_rc} (124 = timed out)")
summary["ok"] = not summary["problems"]
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(json.dumps(summary, indent=2), file=sys.stderr)
sys.exit(0 if summary["ok"] else 1)
PYEOF
