"""``implicit-icl bench``: the O(n) prefix scan against its floors (the K/V projection matmul and one read and write
of the context) and against re-running every prefix, all-position updates against one forward pass, a whole
model's updates against one forward of the model, float32 against float64 — each figure a ratio measured in one run,
with the targets of issue 16 as ``{value, target, met}``.

This module is the command (arguments, the plan, the JSON, the printed report). Every measurement runs in its own
child process (``python -m implicit_icl.bench <spec>``, ``implicit_icl.bench.measure.worker``), so its memory
figures are that process's own; ``implicit_icl.bench.report`` turns the results into ratios, targets and tables.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from implicit_icl.bench.format import seconds_text
from implicit_icl.bench.measure import worker
from implicit_icl.bench.report import GPU_MODEL, GPU_POSITIONS, ratios, summary, targets
from implicit_icl.commands import fail

HELP = "benchmark the O(n) prefix scan and the updates against their floors, with issue 16's targets (JSON with --json)"
DESCRIPTION = """\
Single-block trajectories (d_model 64, d_mlp 256, 4 heads, pre-LN by default) at n = 1k, 8k, 64k and 1M context
tokens (float32), each against its floors timed in the same process: the K/V projection matmul over the same
context (the work the scan cannot avoid) and one read and write of the context; the memory the trajectory adds
beyond its input when only the norms are read. Re-running every prefix the way a user would without the library
(the torch block forward on each prefix; the library's single-query update on each prefix; the NumPy reference),
budgeted by --budget seconds and extrapolated past it (said so in the JSON). Updates at every position against one
forward of the block for each --positions T, the library's forward against plain eager torch ops, and a whole
model's updates at every layer and position against one forward of the model (--model LAYERS BATCH T). The float32
scan's error against float64 at the largest n, and the float64 scan against the NumPy reference's own update.
Where torch.compile can run (a C++ compiler on the CPU, Triton on CUDA; not with --quick), the trajectory (n with
two full slabs), the updates at every position and the whole model are measured on the compiled path too
(get_backend("torch", compile=True)), beside the eager one; the targets judge the compiled figures where they ran
compiled. Each of issue 16's targets is in the JSON as {value, target, met}, met null with a reason where this
device cannot decide it (GPU targets on a CPU), with the path that ran (eager or compiled); compile time is reported
apart from the steady-state time.
Progress goes to stderr, the tables to stdout; --json PATH writes the results ('-' for stdout, and the tables then
go to stderr). Timings on shared machines are noisy: compare the ratios, which are measured in one run.

Examples:
  implicit-icl bench --quick                         small sizes, seconds: does it run here?
  implicit-icl bench --json bench.json               the full table of README (~2-3 min on a 2-core CPU)
  implicit-icl bench --device cuda --sizes 1048576 16777216 --json gpu.json

Exit status: 0 every measurement ran; 1 one failed (listed with its error) or torch is missing; 2 a bad argument.
"""

SCHEMA = "implicit-icl-bench/2"
FULL_SIZES = (1024, 8192, 65536, 1 << 20)
QUICK_SIZES = (256, 1024)
COMPILE_S = 120.0   # a compiling measurement's extra time limit: compiling does not scale with --budget (Triton, cold)
CPU_POSITIONS, QUICK_POSITIONS = (256, 4096), (256,)
CPU_MODEL, QUICK_MODEL = (24, 2, 512), (2, 1, 64)      # layers, batch, tokens (the GPU's: bench.report.GPU_MODEL)


def add_arguments(parser) -> None:
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes {QUICK_SIZES}, T = 256, a 2-layer model, a 0.5 s budget, in-process "
                             "(seconds, for tests)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N", help=f"context lengths (default {FULL_SIZES})")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, mps")
    parser.add_argument("--budget", type=float, metavar="S",
                        help="seconds per re-run-every-prefix baseline before extrapolating (default 20; quick 0.5)")
    parser.add_argument("--kind", default="pre-ln", help="block kind (default pre-ln)")
    parser.add_argument("--positions", type=int, nargs="+", metavar="T",
                        help=f"sequence lengths for the updates at every position (default {CPU_POSITIONS} on cpu, "
                             f"{GPU_POSITIONS} on a GPU; quick {QUICK_POSITIONS})")
    parser.add_argument("--model", type=int, nargs=3, metavar=("LAYERS", "BATCH", "T"),
                        help=f"the stack for the whole-model figure (default {CPU_MODEL} on cpu, {GPU_MODEL} on a "
                             f"GPU; quick {QUICK_MODEL})")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="seconds this run may take: the re-run baselines (measured last) are not started once "
                             "too little of S is left for one, and are listed under 'skipped' (scripts/gpu_check.sh "
                             "sets it from its deadline); default: no limit")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="torch CPU threads in each measurement (default 1 on cpu: on a shared machine "
                             "OpenMP threads spin-wait for descheduled peers and 2 threads run 5-20x slower; "
                             "pass 2 on an idle 2-core machine)")


# ---------------------------------------------------------------------------------------------------------------
# the parent: plan, run children, assemble the JSON
# ---------------------------------------------------------------------------------------------------------------

def _label(spec: dict) -> str:
    """What a measurement measures, for the progress lines: ``n=1024 float32``, ``T=256 4096``, ``24x2x512``."""
    if "Ts" in spec:
        return "T=" + " ".join(str(T) for T in spec["Ts"])
    if "layers" in spec:
        return f"{spec['layers']} layers x {spec['batch']} x {spec['T']}"
    return f"n={spec.get('n')}" + (f" {spec['dtype']}" if "dtype" in spec else "")


def _child(spec: dict, timeout: float, isolate: bool = True) -> dict:
    """One measurement, in a child process (``isolate``) stopped after ``timeout`` s (plus ``COMPILE_S`` where it
    compiles), or in this one; its error, not an exception, where it fails."""
    timeout += COMPILE_S if spec.get("compile") else 0.0
    print(f"[bench] {spec['op']} {_label(spec)} on {spec['device']} …", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if not isolate:                                            # --quick: in this process (peaks are not isolated)
        import torch
        threads = torch.get_num_threads()
        try:
            return dict(worker(spec), memory_isolated=False)
        except Exception as exc:                               # noqa: BLE001 - reported in the JSON
            return {"op": spec["op"], "n": spec.get("n"), "error": f"{type(exc).__name__}: {exc}"}
        finally:
            torch.set_num_threads(threads)                     # leave the caller's setting as it was
    try:
        proc = subprocess.run([sys.executable, "-m", "implicit_icl.bench", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"op": spec["op"], "n": spec.get("n"), "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"op": spec["op"], "n": spec.get("n"), "error": _failure(proc.returncode, proc.stderr)}
    res = dict(json.loads(proc.stdout.strip().splitlines()[-1]), memory_isolated=True)
    timed = f", measured {seconds_text(res['wall_s'])}" if "wall_s" in res else ""
    print(f"[bench]   done in {time.perf_counter() - t0:.1f} s{timed}"
          f"{' (extrapolated)' if res.get('extrapolated') else ''}", file=sys.stderr, flush=True)
    return res


def _failure(returncode: int, stderr: str) -> str:
    """A failed child in one line: its last line of stderr, else how it ended (SIGKILL is what the kernel's
    out-of-memory killer sends)."""
    last = stderr.strip().splitlines()[-1:]
    if last:
        return last[0]
    if returncode == -9:
        return "killed by SIGKILL (signal 9): the kernel's out-of-memory killer, most likely"
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"


def _machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        # TF32 matmuls (if a user or an image turned them on) would make "float32" figures 10-bit-mantissa ones
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        info["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    except ImportError:
        info["torch"] = None
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def bench(sizes, device="cpu", budget=20.0, kind="pre-ln", positions=CPU_POSITIONS, quick=False, threads=None,
          on_progress=None, model=CPU_MODEL, time_limit=None) -> dict:
    """Run every measurement; ``on_progress(partial_result)`` is called after each (so a killed run leaves JSON).
    ``positions``: the T of the all-position figures; ``model``: (layers, batch, T) of the whole-model figure;
    ``time_limit``: the seconds the run may take (:func:`_time_left_for`)."""
    base = {"d_model": 64, "d_mlp": 256, "n_heads": 4, "kind": kind, "device": device, "threads": threads}
    child_timeout = max(60.0, 6 * budget + 60)            # per measurement; 180 s at the default budget
    result = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick,
        "complete": False, "machine": _machine(device),
        "config": dict(base, sizes=list(sizes), budget_s=budget, positions=list(positions), model=list(model)),
        "trajectory": [], "ratios": [], "float32_error": {}, "position_updates": {}, "model_updates": {},
    }
    started = time.perf_counter()

    def progress():
        result["elapsed_s"] = round(time.perf_counter() - started, 1)          # the whole run so far
        result["ratios"] = ratios(result["trajectory"], sizes)
        result["targets"] = targets(result)
        if on_progress:
            on_progress(result)

    progress()                                                 # the skeleton first: an unwritable --json fails now
    isolate = not quick                                        # --quick runs in-process
    compiles = _compiles(device, quick, result)
    compiled = _compiled_sizes(sizes, device) if compiles else []
    for n in sizes:                                            # the scan and its floors first: the headline figures
        for compile in (False, True) if n in compiled else (False,):
            result["trajectory"].append(_child(dict(base, op="scan", n=n, dtype="float32", compile=compile),
                                               child_timeout, isolate))
            progress()
    # the accuracy and the update figures before the budgeted baselines: a run cut short by a time limit has them
    later = [("float32_error", dict(base, op="float32_error", n=max(sizes))),
             ("position_updates", dict(base, op="position_updates", Ts=list(positions), reps=3 if quick else 10,
                                       compile=compiles)),
             ("model_updates", dict(base, op="model_updates", layers=model[0], batch=model[1], T=model[2],
                                    reps=2 if quick else 3, compile=compiles))]
    for key, spec in later:
        result[key] = _child(spec, child_timeout, isolate)
        progress()
    for spec in _baselines(base, sizes, budget, device, result):
        left = _time_left_for(spec, time_limit, time.perf_counter() - started, result)
        if left is None:
            break
        result["trajectory"].append(_child(spec, min(child_timeout, left), isolate))
        progress()
    result["complete"] = True
    progress()
    return result


def _compiles(device: str, quick: bool, result: dict) -> bool:
    """Whether the compiled paths are measured beside the eager ones: where torch.compile can run, and not in a
    ``--quick`` run (in-process, seconds long: compiling would take most of it); why not, said in
    ``result["skipped"]``."""
    from implicit_icl.backends.torch_compile import compile_unavailable

    why = "--quick measures the eager paths only" if quick else compile_unavailable(device)
    if why:
        result.setdefault("skipped", []).append(f"the compiled paths: {why}")
    return not why


def _compiled_sizes(sizes, device: str) -> list[int]:
    """The n whose trajectory is measured on the compiled path too: those with two full slabs or more (a shorter
    context runs the eager step only)."""
    from implicit_icl.backends.torch_backend import slab_for

    return [n for n in sizes if n >= 2 * slab_for(device)]


def _time_left_for(spec: dict, time_limit, elapsed: float, result: dict) -> float | None:
    """The seconds left of ``time_limit`` for the baseline ``spec`` (infinite without a limit), or ``None`` where
    fewer than it needs are left (its budget twice, and 30 s to start and extrapolate): then it and the baselines
    after it are not started, said in ``result["skipped"]``."""
    if time_limit is None:
        return float("inf")
    left, need = time_limit - elapsed, 2 * spec["budget"] + 30
    if left >= need:
        return left
    result.setdefault("skipped", []).append(
        f"{spec['op']} n={spec['n']} and the re-run baselines after it: {max(left, 0):.0f} s were left of "
        f"--time-limit {time_limit:g} s, and one needs about {need:.0f} s")
    return None


def _baselines(base, sizes, budget, device, result) -> list[dict]:
    """Re-running every prefix, per n (the NumPy reference on the CPU only, said so in ``result["skipped"]``)."""
    specs = []
    for n in sizes:
        specs += [dict(base, op="per_prefix_update", n=n, budget=budget),
                  dict(base, op="prefix_forward", n=n, budget=budget)]
        if device == "cpu":
            specs.append(dict(base, op="numpy_reference", n=n, budget=budget))
    if device != "cpu":                                        # said in the JSON, not skipped silently
        result.setdefault("skipped", []).append(f"numpy_reference: the NumPy reference runs on the CPU only, not on "
                                                f"{device} (run the bench with --device cpu for it)")
    return specs


class _CannotWrite(Exception):
    pass


def _check_args(args) -> str | None:
    """The first bad argument, as a message naming it (``None`` if all are fine)."""
    from implicit_icl.reference import KINDS

    if args.sizes is not None and any(n < 1 for n in args.sizes):
        return f"--sizes must be positive integers, got {list(args.sizes)}"
    if args.positions is not None and any(T < 1 for T in args.positions):
        return f"--positions must be positive integers, got {list(args.positions)}"
    if args.model is not None and any(k < 1 for k in args.model):
        return f"--model LAYERS BATCH T must be positive integers, got {list(args.model)}"
    from implicit_icl.commands.options import threads_problem
    if problem := threads_problem(args.threads):
        return problem
    if args.budget is not None and not 0 < args.budget < float("inf"):
        return f"--budget must be a positive number of seconds, got {args.budget}"
    if args.time_limit is not None and not 0 < args.time_limit < float("inf"):
        return f"--time-limit must be a positive number of seconds, got {args.time_limit}"
    if args.kind not in KINDS:
        return f"--kind must be one of {list(KINDS)}, got {args.kind!r}"
    if args.json is not None and args.json != "-":          # "" is refused there, not taken as no --json
        from implicit_icl.checkpoint import output_path_problem
        if problem := output_path_problem(args.json, "--json"):
            return problem
    # without torch this import raises ModuleNotFoundError, which the CLI reports like every missing extra (exit 1)
    from implicit_icl.backends.torch_backend import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        return f"--device: {exc}"
    return None


def run(args) -> int:
    problem = _check_args(args)
    if problem:
        return fail("bench", problem)
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 20.0)
    gpu = not args.device.startswith("cpu")
    positions = tuple(args.positions or (QUICK_POSITIONS if args.quick else GPU_POSITIONS if gpu else CPU_POSITIONS))
    model = tuple(args.model or (QUICK_MODEL if args.quick else GPU_MODEL if gpu else CPU_MODEL))
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)

    def save(res):
        if args.json and args.json != "-":
            from implicit_icl.checkpoint import atomic_write_bytes
            text = json.dumps(res, indent=2)
            try:
                atomic_write_bytes(args.json, lambda f: f.write(text.encode()))
            except OSError as exc:
                raise _CannotWrite(f"implicit-icl bench: --json: cannot write {args.json}: {exc.strerror or exc}") \
                    from None

    try:
        result = bench(sizes, device=args.device, budget=budget, kind=args.kind, positions=positions,
                       quick=args.quick, threads=threads, on_progress=save, model=model, time_limit=args.time_limit)
    except _CannotWrite as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    print(summary(result), file=sys.stderr if args.json == "-" else sys.stdout)   # stdout, unless the JSON is
    failed = [r for r in result["trajectory"] + [result[k] for k in ("float32_error", "position_updates",
                                                                       "model_updates")] if "error" in r]
    return 1 if failed else 0

