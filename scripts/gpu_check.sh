#!/usr/bin/env bash
# One prepared GPU check (issue 3): the conformance suite on CUDA (float64, float32, bfloat16) and the benchmark at
# 1M and 16M context tokens with its floors and issue 16's targets, JSON written to $OUT (or the folder given as
# $1). Meant to finish within one 600 s command on one H200: every step's time limit is taken from one deadline
# (GPU_CHECK_DEADLINE_S, 570 s after the start), less what the later steps are promised, so a step that finishes
# early leaves its time to the next. The order puts what matters most first: the eager conformance cases (about
# 1,500 on CUDA), the tolerance margins, the compiled conformance cases (Triton compiles their graphs cold), then
# the bench. What a step wrote is kept when its limit stops it (the bench writes its JSON after every measurement;
# pytest, stopped by SIGINT, its JUnit report of the tests that ran), and steps.json says each step's exit code,
# seconds and limit.
#
#   scripts/gpu_check.sh [OUTDIR]
#
# Needs, and installs nothing: a Python with torch (CUDA), numpy, scipy, pytest and hypothesis: $PYTHON if set,
# else the first of .venv/bin/python, python3, python whose torch reaches the device (else the first that imports
# torch; the lent H200 machine's python3 has all of them). It reaches no network. If that Python has no installed implicit-icl, the package layout of
# pyproject.toml ([tool.setuptools] package-dir) is linked into a temporary folder put on PYTHONPATH, with
# PYTHONSAFEPATH=1 so that the checkout's own implicit_icl/ folder does not shadow it (Python >= 3.11).
#
# Writes OUTDIR/gpu_env.json (the machine, whether torch.compile runs there: a tiny function compiled and run, and
# what is deselected), conformance.xml and conformance_compiled.xml (JUnit), conformance.log,
# conformance_margins.json (the largest fraction of its tolerance each dtype used, scripts/conformance_margins.py),
# bench_cuda.json, bench.log, steps.json, gpu_check.json (the verdict, by scripts/gpu_check_summary.py) and
# gpu_check.md (README's table of the figures). Exits non-zero if CUDA is missing, a test fails, a CUDA case was
# skipped, torch.compile cannot run on CUDA, a compiled path fell back to eager code, or the benchmark reports an
# error. Nothing is skipped silently: every skip is counted with its reason in gpu_check.json (the CPU targets are
# deselected on purpose with IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda and say so; the bench JSON lists the NumPy
# reference as CPU-only under "skipped"); where transformers cannot build the tiny gpt_neox and gemma2 of
# tests/test_hf_torch.py (missing, or older than the dev extra asks: tests/transformers_oracle.py) their CUDA cases
# are deselected, and gpu_env.json and gpu_check.md say so.
#
# Rehearsal on a machine without a GPU (CI does this, tests/test_gpu_check_script.py): the same steps on the CPU at
# small sizes, through the same package shim the GPU machine uses:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZES="8192" GPU_CHECK_POSITIONS=256 GPU_CHECK_MODEL="2 1 64" \
#     GPU_CHECK_BUDGET=0.5 GPU_CHECK_FORCE_SHIM=1 scripts/gpu_check.sh /tmp/rehearsal
# Settings (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_SIZES ("1048576 16777216"), GPU_CHECK_POSITIONS (the
# bench's default for the device: T = 256 … 65,536 on a GPU), GPU_CHECK_MODEL ("LAYERS BATCH T"; the bench's default:
# 24 × 16 × 2,048 on a GPU), GPU_CHECK_BUDGET (5 s per baseline), GPU_CHECK_FORCE_SHIM (0: link the package only if
# not installed), GPU_CHECK_DEADLINE_S (570). A performance target not met is listed in gpu_check.json and gpu_check.md; it does not fail the check.
set -euo pipefail

OUTDIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"                  # absolute: the steps below run from the checkout's root
# a reused folder: what an earlier run wrote must not be read as this run's
rm -f "$OUTDIR"/gpu_env.json "$OUTDIR"/conformance*.xml "$OUTDIR"/conformance.log "$OUTDIR"/bench_*.json \
  "$OUTDIR"/conformance_margins.json "$OUTDIR"/steps.json \
  "$OUTDIR"/bench.log "$OUTDIR"/gpu_check.json "$OUTDIR"/gpu_check.md
cd "$(dirname "$0")/.."
START=$(date +%s)
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SIZES="${GPU_CHECK_SIZES:-1048576 16777216}"
POSITIONS="${GPU_CHECK_POSITIONS:-}"
MODEL="${GPU_CHECK_MODEL:-}"
BUDGET="${GPU_CHECK_BUDGET:-5}"
DEADLINE_S="${GPU_CHECK_DEADLINE_S:-570}"
case "$DEVICE" in cuda|cpu|mps) ;; *) echo "GPU_CHECK_DEVICE must be cuda, cpu or mps, got '$DEVICE'" >&2; exit 2;; esac
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" >&2; }
# a step's time limit: the seconds left before the deadline less RESERVE (promised to the later steps), at most CAP,
# at least 10
limit() { local t=$(( START + DEADLINE_S - $(date +%s) - $1 )); [ "$t" -gt "$2" ] && t=$2; [ "$t" -ge 10 ] || t=10; echo "$t"; }
STEPS=""
# record NAME EXIT_CODE STARTED LIMIT: a line of steps.json
record() { STEPS="$STEPS\"$1\": {\"exit_code\": $2, \"seconds\": $(( $(date +%s) - $3 )), \"limit_s\": $4}, "; }

# 0. a Python with torch
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
  "$PY" -c "import torch" || { log "FAIL: PYTHON=$PY cannot import torch"; exit 2; }
else
  PY=""
  # first a Python whose torch reaches $DEVICE (a checkout's .venv may hold a CPU-only torch while python3 has
  # CUDA), else the first with any torch (the CUDA step below then says that CUDA is missing)
  case "$DEVICE" in
    cuda) PROBE="import torch; assert torch.cuda.is_available()";;
    mps) PROBE="import torch; assert torch.backends.mps.is_available()";;
    *) PROBE="import torch";;
  esac
  for probe in "$PROBE" "import torch"; do
    for cand in .venv/bin/python python3 python; do
      if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "$probe" >/dev/null 2>&1; then PY="$cand"; break 2; fi
    done
  done
  [ -n "$PY" ] || { log "FAIL: no Python with torch (tried .venv/bin/python, python3, python; or set PYTHON)"; exit 2; }
fi
log "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"

# 1. the package, without installing it if it is not installed
if [ "${GPU_CHECK_FORCE_SHIM:-0}" = 1 ] || ! "$PY" -c "import implicit_icl.backends.torch_backend" >/dev/null 2>&1; then
  SHIM="$(mktemp -d)"
  trap 'rm -rf "$SHIM"' EXIT                   # links only: the checkout itself is untouched
  if [ "${GPU_CHECK_FORCE_SHIM:-0}" = 1 ]; then why="GPU_CHECK_FORCE_SHIM=1"; else why="implicit_icl is not installed for $PY"; fi
  log "$why: linking the checkout's package layout into $SHIM"
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
  log "implicit_icl from $("$PY" -c 'import implicit_icl, os; print(os.path.dirname(implicit_icl.__file__))')"
fi
"$PY" -c "import numpy, scipy, pytest, hypothesis" \
  || { log "FAIL: numpy, scipy, pytest and hypothesis are needed (pip install 'implicit-icl[torch,dev]')"; exit 2; }

# 2. the machine (an image-wide TF32 override would quietly lower float32 matmuls to TF32: not for this check), what
# it can run: torch.compile (a tiny function compiled and run: Triton needs a C compiler and Python's headers, not
# only to be importable) and whether transformers can build the tiny gpt_neox and gemma2 of tests/test_hf_torch.py
if [ -n "${TORCH_ALLOW_TF32_CUBLAS_OVERRIDE:-}" ]; then
  log "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=$TORCH_ALLOW_TF32_CUBLAS_OVERRIDE was set: unset for this check"
  export GPU_CHECK_TF32_OVERRIDE_WAS="$TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
fi
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE
set +e
"$PY" - "$OUTDIR/gpu_env.json" "$DEVICE" <<'PYEOF'
import json, os, platform, sys, torch
device = sys.argv[2]
available = {"cpu": True, "cuda": torch.cuda.is_available(),
             "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available()}[device]
info = {"device": device, "available": available, "python": platform.python_version(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        # TF32 matmuls would turn every float32 case into a 10-bit-mantissa one (and fail it): say what is set
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "tf32_override_env_unset": os.environ.get("GPU_CHECK_TF32_OVERRIDE_WAS"), "deselected": [],
        "compile": "not probed"}
sys.path.insert(0, "tests")
from transformers_oracle import transformers_unusable   # the rule the tests skip by (tests/transformers_oracle.py)
why = transformers_unusable()
if why is not None:
    info["deselected"].append(f"tests/test_hf_torch.py's tiny gpt_neox and gemma2 on {device}: {why} (it builds them)")
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info), file=sys.stderr)
sys.exit(0 if available else 3)
PYEOF
status=$?
set -e
case $status in
  0) ;;
  3) log "FAIL: $DEVICE is not available to torch on this machine"; exit 3;;
  *) log "FAIL: the environment probe crashed (exit $status; its error is above)"; exit 2;;
esac
env_field() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$OUTDIR/gpu_env.json" "$1"; }
# 2b. can torch.compile run here: compile and run a tiny function, under a time limit (a cold Triton start, a hung
# compile worker); the answer goes into gpu_env.json's "compile" ("ok", or why not)
set +e
COMPILE="$(timeout -k 10 180 "$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
from implicit_icl.backends.torch_compile import compile_unavailable
device = sys.argv[1]
why = compile_unavailable(device)
if why is None:
    try:
        x = torch.linspace(-1, 1, 64, device=device)
        got = torch.compile(lambda t: torch.tanh(t) * 2 + t.sum(), fullgraph=True, dynamic=False)(x)
        want = torch.tanh(x) * 2 + x.sum()                   # float32: sums in another order, so 1e-5 apart
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), "the compiled function's numbers are wrong"
    except Exception as exc:                 # noqa: BLE001 - said: the compiled steps then are not run
        why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
print(why or "ok")
PYEOF
)"
rc=$?
set -e
COMPILE="${COMPILE##*$'\n'}"                       # its last line: the answer, whatever a library printed before
[ $rc -eq 0 ] || COMPILE="the compile probe did not finish (exit $rc; 124: its 180 s limit)"
"$PY" -c "import json, sys; p = sys.argv[1]; d = json.load(open(p)); d['compile'] = sys.argv[2]; json.dump(d, open(p, 'w'), indent=2)" \
  "$OUTDIR/gpu_env.json" "$COMPILE"
[ "$COMPILE" = ok ] || log "torch.compile cannot run on $DEVICE here ($COMPILE): the compiled steps are left out"
# pytest -k: the tiny-model cases that need transformers, where it is missing (gpu_env.json's "deselected" says why)
KEEP=""
if [ "$(env_field deselected)" != "[]" ]; then
  log "deselected: $(env_field deselected)"
  KEEP=" and not (gpt_neox-hf-$DEVICE or gemma2-hf-$DEVICE)"
fi

# 3. conformance on the device: scenarios, golden fixtures, the torch backend's own tests (its CUDA test included)
# and a loaded model on torch (tests/test_hf_torch.py: the bundled few-shot model, and a tiny gpt_neox and gemma2,
# float32 and bfloat16); first every case that compiles nothing, then (3c) the compiled ones, whose graphs Triton
# compiles cold: a slow compile cannot starve the others
CONFORMANCE_TESTS="tests/conformance/test_conformance.py tests/conformance/test_golden.py tests/test_backend_torch.py tests/test_hf_torch.py"
# conformance STEP JUNIT K CAP RESERVE: one pytest run, stopped by SIGINT at its limit (pytest then still writes the
# JUnit report of what ran)
conformance() {
  local t0 lim rc
  t0=$(date +%s); lim=$(limit "$5" "$4")
  log "conformance on $DEVICE ($1, limit ${lim} s)"
  set +e
  # shellcheck disable=SC2086  # CONFORMANCE_TESTS is a list of paths
  IMPLICIT_ICL_CONFORMANCE_DEVICES="$DEVICE" timeout -s INT -k 20 "$lim" "$PY" -m pytest -q -rs -p no:cacheprovider \
    $CONFORMANCE_TESTS -k "$3" --junitxml="$OUTDIR/$2" >> "$OUTDIR/conformance.log" 2>&1
  rc=$?
  set -e
  tail -n 3 "$OUTDIR/conformance.log" >&2
  record "$1" "$rc" "$t0" "$lim"
  return "$rc"
}
TEST_RC=0
conformance conformance conformance.xml "not compiled$KEEP" 260 300 || TEST_RC=$?

# 3b. how much of its tolerance each scenario uses per dtype on $DEVICE (the figures behind tolerances.py's K)
T0=$(date +%s); LIM=$(limit 260 60)
log "tolerance margins on $DEVICE (limit ${LIM} s)"
set +e
timeout -k 20 "$LIM" "$PY" scripts/conformance_margins.py "$DEVICE" "$OUTDIR/conformance_margins.json" \
  > /dev/null 2>> "$OUTDIR/conformance.log"
MARGINS_RC=$?
set -e
record margins "$MARGINS_RC" "$T0" "$LIM"
[ $MARGINS_RC -eq 0 ] || log "the margins step exited with $MARGINS_RC (see conformance.log)"

# 3c. the compiled conformance cases (where torch.compile runs here)
if [ "$COMPILE" = ok ]; then
  conformance conformance_compiled conformance_compiled.xml "compiled$KEEP" 200 200 || { rc=$?; [ $TEST_RC -ne 0 ] || TEST_RC=$rc; }
else
  export TORCH_COMPILE_DISABLE=1                # the bench then measures the eager paths and says why
fi

# 4. the benchmark at 1M and 16M tokens: the scan against its floors, the updates against one forward (block and a
# 24-layer stack), the targets; baselines budgeted to 5 s each, then extrapolated; whatever time is left (the bench
# starts no baseline it has no time left for, and says so)
T0=$(date +%s); LIM=$(limit 30 100000)         # 20 s for a kill after the limit, 10 s for the summary
log "bench on $DEVICE at $SIZES tokens (limit ${LIM} s)"
set +e
# shellcheck disable=SC2086  # SIZES, POSITIONS and MODEL are lists of numbers
timeout -k 20 "$LIM" "$PY" -m implicit_icl.cli bench --device "$DEVICE" --sizes $SIZES --budget "$BUDGET" \
  --time-limit "$(( LIM > 40 ? LIM - 10 : LIM ))" \
  ${POSITIONS:+--positions $POSITIONS} ${MODEL:+--model $MODEL} --json "$OUTDIR/bench_$DEVICE.json" \
  > "$OUTDIR/bench.log" 2>&1
BENCH_RC=$?
set -e
record bench "$BENCH_RC" "$T0" "$LIM"
tail -n 24 "$OUTDIR/bench.log" >&2
echo "{${STEPS%, }}" > "$OUTDIR/steps.json"

# 5. the summary: counts per outcome, every skip with its reason; a skipped case on $DEVICE is a failure
"$PY" scripts/gpu_check_summary.py "$OUTDIR" "$TEST_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" "$DEVICE"
