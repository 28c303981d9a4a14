"""``implicit-icl bench``: the O(n) prefix scan against re-running every prefix, all-position updates against one
forward pass, torch against numpy, float32 against float64 — each figure a ratio measured in one run.

Every measurement runs in its own child process (``python -m implicit_icl.bench <spec>``), so its peak memory is
that process's peak resident set (``ru_maxrss``; on CUDA the allocator's peak), not polluted by the others.
Baselines that would take minutes or hours (re-running 1M prefixes) are timed on a geometric grid of prefix lengths
until a time budget is spent; the cost per prefix is fitted as ``a + b·L + c·L²`` (non-negative least squares) and
summed over all prefixes, and the JSON says ``"extrapolated": true`` with the points it measured.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

HELP = "benchmark the O(n) prefix scan, all-position updates and float32 accuracy (JSON with --json)"
DESCRIPTION = """\
Single-block trajectories (d_model 64, d_mlp 256, 4 heads, pre-LN by default) at n = 1k, 8k, 64k and 1M context
tokens: time and peak memory of the torch O(n·d) scan (float32), of re-running every prefix the way a user would
without the library (the torch block forward on each prefix; the library's own single-query update on each
prefix), and of the NumPy reference (which re-runs every prefix). Baselines stop past --budget seconds and are
extrapolated from the prefixes they measured (said so in the JSON). Also: position_updates for all T = 4096
positions relative to one plain block forward, the float32 scan's error against float64 at the largest n,
and the float64 scan against the NumPy reference's own update at prefixes up to 2^20 tokens.
Progress goes to stderr, the summary table to stdout; --json PATH writes the results ('-' for stdout, and the
table then goes to stderr). Timings on shared machines are noisy: compare the ratios, which are measured in one
run, and the CPU seconds next to the wall seconds.

Examples:
  implicit-icl bench --quick                         small sizes, seconds: does it run here?
  implicit-icl bench --json bench.json               the full table of README (~1.5-2 min on a 2-core CPU)
  implicit-icl bench --device cuda --sizes 1048576 16777216 --json gpu.json

Exit status: 0 every measurement ran; 1 one failed (listed with its error) or torch is missing; 2 a bad argument.
"""

SCHEMA = "implicit-icl-bench/1"
FULL_SIZES = (1024, 8192, 65536, 1 << 20)
QUICK_SIZES = (256, 1024)


def add_arguments(parser) -> None:
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes {QUICK_SIZES}, T = 256, a 0.5 s budget, in-process (seconds, for tests)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N", help=f"context lengths (default {FULL_SIZES})")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, mps")
    parser.add_argument("--budget", type=float, metavar="S",
                        help="seconds per re-run-every-prefix baseline before extrapolating (default 20; quick 0.5)")
    parser.add_argument("--kind", default="pre-ln", help="block kind (default pre-ln)")
    parser.add_argument("--positions", type=int, metavar="T", help="sequence length for position_updates (4096)")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="torch CPU threads in each measurement (default 1 on cpu: on a shared machine "
                             "OpenMP threads spin-wait for descheduled peers and 2 threads run 5-20x slower; "
                             "pass 2 on an idle 2-core machine)")


# ---------------------------------------------------------------------------------------------------------------
# the child process: one measurement
# ---------------------------------------------------------------------------------------------------------------

def _setup(spec):
    import numpy as np
    import torch

    from implicit_icl import reference as ref
    from implicit_icl.backends import get_backend

    cfg = ref.BlockConfig(d_model=spec["d_model"], d_mlp=spec["d_mlp"], n_heads=spec["n_heads"], kind=spec["kind"])
    params = ref.init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    n = spec.get("n", 0)
    # drawn on the measured device in float32, the dtype the timed runs use: no float64 copy in the process peak,
    # no 8 s of serial host RNG for 16M × 64 numbers on a GPU run, and float32 and float64 runs see the same inputs
    g = torch.Generator(device=spec["device"]).manual_seed(1)
    context = torch.randn(n, cfg.d_model, generator=g, dtype=torch.float32, device=spec["device"])
    query = torch.randn(cfg.d_model, generator=g, dtype=torch.float32, device=spec["device"])
    return np, torch, ref, get_backend, cfg, params, context, query


def _sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> int:
    """This process's peak resident set so far, in bytes (Unix ``ru_maxrss`` is KiB on Linux)."""
    import resource                                          # Unix only: imported here so the CLI loads anywhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak(torch, device, rss_before):
    out = {"peak_rss_bytes": _rss()}
    out["peak_extra_rss_bytes"] = max(0, out["peak_rss_bytes"] - rss_before)
    if str(device).startswith("cuda"):
        out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _fit_total(points, n):
    """Fit ``t(L) = a + b L + c L²`` (non-negative, relative least squares) and sum it over L = 1..n+1."""
    import numpy as np
    from scipy.optimize import nnls

    L = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    X = np.stack([np.ones_like(L), L, L * L], 1) / t[:, None]
    coef, _ = nnls(X, np.ones_like(t))
    N = n + 1.0
    total = coef[0] * N + coef[1] * N * (N + 1) / 2 + coef[2] * N * (N + 1) * (2 * N + 1) / 6
    return float(total), [float(c) for c in coef]


def _per_prefix(run_prefix, n, budget, warm):
    """Time ``run_prefix(L)`` (L context tokens) for every L if that fits the budget, else on a geometric grid."""
    for L in (0, 1, min(n, 8), min(n, 8)):                  # warm-up: allocate, load kernels
        run_prefix(L)
    t_max = min(_timed(run_prefix, n) for _ in range(2)) if warm(n) else None
    if t_max is not None and t_max * (n + 1) <= budget:
        t0, c0 = time.perf_counter(), time.process_time()
        for L in range(n + 1):
            run_prefix(L)
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "estimated": False,
                "extrapolated": False, "method": "ran every prefix"}
    points, spent, L = [], 0.0, 1
    while L <= n:
        predicted = points[-1][1] * 4.5 if points else 0.0   # cost grows at most ~quadratically per doubling
        if len(points) >= 3 and spent + 3 * predicted > budget:
            break
        reps = 5 if (not points or points[-1][1] < 0.05) else 1
        ts = [_timed(run_prefix, L) for _ in range(reps)]
        points.append((L, min(ts)))
        spent += sum(ts)
        L *= 2
    total, coef = _fit_total(points, n)
    return {"wall_s": total, "cpu_s": None, "estimated": True, "extrapolated": points[-1][0] < n,
            "method": "timed prefixes of lengths L on a geometric grid within the budget; fitted t(L) = a + b·L + "
                      "c·L² (nnls, relative) and summed over L = 1..n+1 (estimated: the sum is the fit's; "
                      "extrapolated: the grid stopped before L = n)",
            "measured_prefixes": [[int(a), b] for a, b in points], "fit_abc": coef, "budget_s": budget}


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def worker(spec: dict) -> dict:
    """Run one measurement described by ``spec`` and return its figures."""
    np, torch, ref, get_backend, cfg, params, context, query = _setup(spec)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, op = spec["device"], spec["op"]
    rss_before = _rss()
    out = {"op": op, "n": spec.get("n"), "device": device}
    if op == "scan":
        tb = get_backend("torch", device=device, dtype=spec["dtype"])
        C, x = tb.asarray(context), tb.asarray(query)
        del context
        for _ in range(2):
            tb.trajectory(params, cfg, C[:4096], x)                                  # warm-up
        _sync(torch, device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        rss_before = _rss()
        reps = 3 if C.shape[0] <= 65536 else 1
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            tr = tb.trajectory(params, cfg, C, x)
            _sync(torch, device)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out.update(wall_s=min(walls), cpu_s=min(cpus), reps=reps, dtype=spec["dtype"],
                   backend="torch", extrapolated=False, method="O(n·d) scan (trajectory), best of reps")
        out.update(_peak(torch, device, rss_before))
        out["input_bytes"] = C.numel() * C.element_size()
        out["finite"] = bool(torch.isfinite(tr.delta_W_norm).all())
    elif op in ("per_prefix_update", "prefix_forward"):
        tb = get_backend("torch", device=device, dtype="float32")
        C, x = tb.asarray(context), tb.asarray(query)
        P = tb.asarray(params)
        from implicit_icl.backends import torch_ops

        def run_prefix(L):
            if op == "per_prefix_update":      # the library's single-query update on each prefix: O(L·d)
                tb.implicit_update(P, cfg, C[:L], x)
            else:                              # a user's block forward on [c_1..c_L, x]: O(L²·d)
                torch_ops.block(P, cfg, torch.cat([C[:L], x[None]], 0))
            _sync(torch, device)

        out.update(_per_prefix(run_prefix, spec["n"], spec["budget"], warm=lambda n: n <= 4096), backend="torch",
                   dtype="float32")
        out.update(_peak(torch, device, rss_before))
    elif op == "numpy_reference":
        C, x = context.double().cpu().numpy(), query.double().cpu().numpy()
        from implicit_icl.reference.blocks import head, sequence, taps

        def run_prefix(L):
            a, r = taps(params, cfg, sequence(C[:L], x))
            head(params, cfg, a[-1], r[-1])

        n = spec["n"]
        res = _per_prefix(run_prefix, n, spec["budget"], warm=lambda n: n <= 2048)
        if not res["extrapolated"] and res["method"] == "ran every prefix":   # then time the real call
            t0, c0 = time.perf_counter(), time.process_time()
            ref.trajectory(params, cfg, C, x)
            res.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                       method="reference trajectory (re-runs every prefix)")
        out.update(res, backend="numpy", dtype="float64")
        out.update(_peak(torch, device, rss_before))
    elif op == "float32_error":
        t32 = get_backend("torch", device=device, dtype="float32")
        t64 = get_backend("torch", device=device, dtype="float64")
        a = t32.trajectory(params, cfg, t32.asarray(context), t32.asarray(query))
        norms32, steps32 = a.delta_W_norm.double().cpu(), a.step_norm.double().cpu()
        del a
        b = t64.trajectory(params, cfg, t64.asarray(context), t64.asarray(query))
        norms64, steps64 = b.delta_W_norm.cpu(), b.step_norm.cpu()
        rel = ((norms32 - norms64).abs() / norms64)[1:]
        step_rel = (steps32 - steps64).abs() / steps64
        ok = steps64 > 1e-30 * steps64.max()
        # the float64 scan itself against the NumPy reference's update at a few prefixes, computed independently
        # (reference.subsets: the query's own attention row over the prefix, O(i·d); the plain reference forms
        # every row's attention, O(i²)); prefixes up to 2^20 tokens, which the host handles in seconds
        from implicit_icl.reference.subsets import subset_updates
        n = spec["n"]
        direct = {}
        for i in sorted({1, min(n, 1000), min(n, 123457), min(n, 1 << 20)}):
            upd = subset_updates(params, cfg, context[:i].double().cpu().numpy(), query.double().cpu().numpy(),
                                 np.zeros((1, i), dtype=bool))                      # keep none: remove all of C
            norm = float(upd.norm[0])
            direct[str(i)] = abs(norms64[i].item() - norm) / norm
        out.update(max_rel_err_delta_W_norm=rel.max().item(), median_rel_err_delta_W_norm=rel.median().item(),
                   max_rel_err_step_norm=step_rel[ok].max().item(),
                   reference="torch float64 scan on the same device (the conformance suite checks it against the "
                             "NumPy reference's re-run of every prefix, O(n³) at this n); the float64 scan itself "
                             "against the reference's update at a few prefixes: float64_scan_vs_reference_update",
                   float64_scan_vs_reference_update=direct,
                   float64_scan_vs_reference_max=max(direct.values()))
    elif op == "position_updates":
        T = spec["T"]
        g = torch.Generator().manual_seed(2)
        Z = torch.randn(T, cfg.d_model, generator=g, dtype=torch.float64)
        res = {}
        for name in ("torch", "numpy"):
            be = get_backend(name, device=device if name == "torch" else None,
                             dtype="float32" if name == "torch" else None)
            P, Zb = be.asarray(params), be.asarray(Z)
            reps = spec["reps"] if name == "torch" else max(1, spec["reps"] // 5)

            def best(fn):
                fn()
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    _sync(torch, device)
                    times.append(time.perf_counter() - t0)
                return min(times)
            t_pos = best(lambda: be.position_updates(P, cfg, Zb, query="own"))
            t_blk = best(lambda: be.block(P, cfg, Zb))
            res[name] = {"position_updates_s": t_pos, "block_s": t_blk, "ratio": t_pos / t_blk, "reps": reps,
                         "dtype": be.dtype}
        out.update(res, T=T)
    else:
        raise ValueError(f"op must be a known measurement, got {op!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# the parent: plan, run children, assemble the JSON
# ---------------------------------------------------------------------------------------------------------------

def _child(spec: dict, timeout: float, isolate: bool = True) -> dict:
    print(f"[bench] {spec['op']} n={spec.get('n', spec.get('T'))} {spec.get('dtype', '')} on {spec['device']} …",
          file=sys.stderr, flush=True)
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
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"op": spec["op"], "n": spec.get("n"), "error": last[0]}
    res = dict(json.loads(proc.stdout.strip().splitlines()[-1]), memory_isolated=True)
    print(f"[bench]   done in {time.perf_counter() - t0:.1f} s: "
          f"{ {k: res[k] for k in ('wall_s', 'extrapolated', 'peak_rss_bytes') if k in res} }",
          file=sys.stderr, flush=True)
    return res


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


def bench(sizes, device="cpu", budget=20.0, kind="pre-ln", positions=4096, quick=False, threads=None,
          on_progress=None) -> dict:
    """Run every measurement; ``on_progress(partial_result)`` is called after each (so a killed run leaves JSON)."""
    base = {"d_model": 64, "d_mlp": 256, "n_heads": 4, "kind": kind, "device": device, "threads": threads}
    child_timeout = max(60.0, 6 * budget + 60)            # per measurement; 180 s at the default budget
    result = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick,
        "complete": False, "machine": _machine(device),
        "config": dict(base, sizes=list(sizes), budget_s=budget, positions=positions),
        "trajectory": [], "ratios": [], "float32_error": {}, "position_updates": {},
    }
    rows = result["trajectory"]
    started = time.perf_counter()

    def progress():
        result["elapsed_s"] = round(time.perf_counter() - started, 1)          # the whole run so far
        result["ratios"] = _ratios(rows, sizes)
        result["targets"] = _targets(result)
        if on_progress:
            on_progress(result)

    progress()                                                 # the skeleton first: an unwritable --json fails now
    scans = [dict(base, op="scan", n=n, dtype="float32") for n in sizes]   # the scan first: the headline figures
    baselines = []
    for n in sizes:
        baselines += [dict(base, op="per_prefix_update", n=n, budget=budget),
                      dict(base, op="prefix_forward", n=n, budget=budget)]
        if device == "cpu":
            baselines.append(dict(base, op="numpy_reference", n=n, budget=budget))
    if device != "cpu":                                        # said in the JSON, not skipped silently
        result["skipped"] = [f"numpy_reference: the NumPy reference runs on the CPU only, not on {device} "
                             "(run the bench with --device cpu for it)"]
    isolate = not quick                                        # --quick runs in-process
    for spec in scans:
        rows.append(_child(spec, child_timeout, isolate))
        progress()
    # the accuracy figure before the budgeted baselines: a run cut short by a time limit still has it
    result["float32_error"] = _child(dict(base, op="float32_error", n=max(sizes)), child_timeout, isolate)
    progress()
    for spec in baselines:
        rows.append(_child(spec, child_timeout, isolate))
        progress()
    result["position_updates"] = _child(dict(base, op="position_updates", T=positions, reps=3 if quick else 10),
                                        child_timeout, isolate)
    result["complete"] = True
    progress()
    return result


def _ratios(rows, sizes) -> list[dict]:
    """Baseline time over scan time per n (what the figures are: ratios measured in one run)."""
    ratios = []
    for n in sizes:
        by = {r["op"]: r for r in rows if r.get("n") == n and "wall_s" in r}
        scan = by.get("scan", {}).get("wall_s")
        entry = {"n": n}
        for op in ("per_prefix_update", "prefix_forward", "numpy_reference"):
            if scan and op in by:
                entry[f"{op}_over_scan"] = by[op]["wall_s"] / scan
                entry[f"{op}_extrapolated"] = by[op]["extrapolated"]
                entry[f"{op}_estimated"] = by[op].get("estimated", False)
        ratios.append(entry)
    return ratios


def _targets(res) -> dict:
    """The issue's targets, evaluated on this run (``None`` where this run did not measure the size)."""
    rows = {(r.get("op"), r.get("n")): r for r in res["trajectory"]}
    ratios = {r["n"]: r for r in res["ratios"]}
    big = rows.get(("scan", 1 << 20))
    pos = res["position_updates"].get("torch", {})
    err = res["float32_error"]
    return {
        "scan_vs_per_prefix_update_at_8k_ge_100x": (ratios[8192].get("per_prefix_update_over_scan", 0) >= 100)
        if 8192 in ratios else None,
        "scan_1M_float32_under_10s": (big["wall_s"] < 10) if big and "wall_s" in big else None,
        # a CPU target: on a GPU the process's host memory is mostly the CUDA libraries (device memory is
        # reported per row as peak_device_bytes)
        "scan_1M_float32_peak_rss_under_2GB": (big["peak_rss_bytes"] < 2 * 1024 ** 3)
        if big and "wall_s" in big and res["config"]["device"] == "cpu" else None,
        "float32_rel_err_delta_W_norm_under_1e-4": (err["max_rel_err_delta_W_norm"] < 1e-4)
        if "max_rel_err_delta_W_norm" in err else None,
        "float64_scan_matches_reference_update_1e-10": (err["float64_scan_vs_reference_max"] < 1e-10)
        if "float64_scan_vs_reference_max" in err else None,
        "position_updates_at_most_2x_block": (pos["ratio"] <= 2) if "ratio" in pos else None,
    }


class _CannotWrite(Exception):
    pass


def _check_args(args) -> str | None:
    """The first bad argument, as a message naming it (``None`` if all are fine)."""
    from implicit_icl.reference import KINDS

    if args.sizes is not None and any(n < 1 for n in args.sizes):
        return f"--sizes must be positive integers, got {list(args.sizes)}"
    if args.positions is not None and args.positions < 1:
        return f"--positions must be a positive integer, got {args.positions}"
    from implicit_icl.options import threads_problem
    if problem := threads_problem(args.threads):
        return problem
    if args.budget is not None and not 0 < args.budget < float("inf"):
        return f"--budget must be a positive number of seconds, got {args.budget}"
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
        print(f"implicit-icl bench: {problem}", file=sys.stderr)
        return 2
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 20.0)
    positions = args.positions if args.positions is not None else (256 if args.quick else 4096)
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
                       quick=args.quick, threads=threads, on_progress=save)
    except _CannotWrite as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    _summary(result, sys.stderr if args.json == "-" else sys.stdout)    # the result table: stdout, unless JSON is
    failed = [r for r in result["trajectory"] + [result["float32_error"], result["position_updates"]] if "error" in r]
    return 1 if failed else 0


def _summary(res, w) -> None:
    print("[bench] n        scan(s)   per-prefix/scan   forward/scan   numpy/scan   (* fitted, ** extrapolated)", file=w)
    rows = {(r.get("op"), r.get("n")): r for r in res["trajectory"]}
    for r in res["ratios"]:
        scan = rows.get(("scan", r["n"]), {})

        def cell(op):
            v = r.get(f"{op}_over_scan")
            mark = "**" if r.get(f"{op}_extrapolated") else "*" if r.get(f"{op}_estimated") else ""
            return "—" if v is None else f"{v:,.0f}{mark}"
        print(f"[bench] {r['n']:<8} {scan.get('wall_s', float('nan')):<9.3f} {cell('per_prefix_update'):<17} "
              f"{cell('prefix_forward'):<14} {cell('numpy_reference')}", file=w)
    print(f"[bench] targets: {res['targets']}", file=w)
    for r in res["trajectory"] + [res["float32_error"], res["position_updates"]]:
        if "error" in r:
            print(f"[bench] FAILED {r.get('op')} n={r.get('n')}: {r['error']}", file=w)


if __name__ == "__main__":                                     # child process: one measurement
    print(json.dumps(worker(json.loads(sys.argv[1]))))
