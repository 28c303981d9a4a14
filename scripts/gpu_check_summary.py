"""The verdict of ``scripts/gpu_check.sh``: read what its steps wrote and say, in ``gpu_check.json``, whether the
device check passed and why not.

    python scripts/gpu_check_summary.py OUTDIR TEST_EXIT_CODE BENCH_EXIT_CODE SECONDS [DEVICE]

It reads ``OUTDIR/conformance.xml`` and ``conformance_compiled.xml`` (pytest's JUnit reports of the cases that
compile nothing and of the compiled ones), ``OUTDIR/bench_<device>.json`` (``implicit-icl bench``), ``gpu_env.json``
and ``steps.json``, and fails the check (exit 1) when: a test failed or errored; a test case on DEVICE was skipped for any
reason other than being deselected on purpose; a CPU case deselected on purpose has no passed twin on DEVICE (same
test id with the device swapped), or no case on DEVICE passed at all; pytest or the bench exited non-zero (124 is
``timeout``'s code); the bench reported an error, did not finish, produced non-finite norms, its float32 scan
missed the float64 one by more than the target (1e-4 relative on ‖ΔW_i‖), or its float64 scan missed the NumPy
reference's own update at a few prefixes by more than round-off (1e-10), or a measurement that asked for the
compiled path ran (some of) its calls eagerly; on CUDA, ``gpu_env.json`` is missing or says torch.compile cannot
run there, or it can and the compiled conformance step left no report; the margins step
(``OUTDIR/conformance_margins.json``) did not finish or found a scenario over its tolerance; a file is missing or
unreadable. A performance target of issue 16 that is not met (the bench's ``targets``) is listed in
``bench_targets_not_met`` and shown in ``gpu_check.md``, but does not fail the check: the check is about correctness.
Every skip reason is counted in the JSON, so nothing is skipped silently. Plain Python (no project imports): it
also runs where the package does not import.
"""
from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

DESELECTED = "not selected"        # targets.py's reason for a device left out by IMPLICIT_ICL_CONFORMANCE_DEVICES
REPORTS = ("conformance.xml", "conformance_compiled.xml")    # the cases that compile nothing, then the compiled ones


def _on_device(test_name: str, device: str) -> bool:
    """Whether a pytest case targets DEVICE: a parameter id ``…-torch-cuda-float32…`` or a test named
    ``test_cuda_…`` (not ``test_cuda_trajectory_matches_cpu`` for the cpu: that one is a CUDA test)."""
    return f"-{device}-" in test_name or test_name.startswith(f"test_{device}_")


def conformance_summary(xml_paths, device: str) -> tuple[dict, dict, list[str]]:
    """Counts per outcome, skip reasons with their counts, and the problems found in one JUnit report or several
    (``xml_paths``, a path or a list: the parts of one run, a CPU case's device twin may be in another part)."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, f"{device}_passed": 0, f"{device}_skipped": 0}
    skips: dict[str, int] = {}
    device_skipped, failed, problems, deselected, passed = [], [], [], [], set()
    paths = [xml_paths] if isinstance(xml_paths, str) else xml_paths
    for case in (c for path in paths for c in ET.parse(path).getroot().iter("testcase")):
        name = case.get("name", "")
        if not name:                                # the test a SIGINT stopped: pytest writes it nameless and empty
            continue
        tags = [child.tag for child in case]
        if "failure" in tags or "error" in tags:
            counts["failed" if "failure" in tags else "error"] += 1
            failed.append(f"{case.get('classname', '')}::{name}")
        elif "skipped" in tags:
            counts["skipped"] += 1
            reason = case.find("skipped").get("message", "")
            skips[reason] = skips.get(reason, 0) + 1
            if _on_device(name, device) and DESELECTED not in reason:
                counts[f"{device}_skipped"] += 1
                device_skipped.append(f"{name}: {reason}")
            elif DESELECTED in reason and "-cpu-" in name and device != "cpu":
                deselected.append(name)
        else:
            counts["passed"] += 1
            passed.add(name)
            if _on_device(name, device):
                counts[f"{device}_passed"] += 1
    if device_skipped:
        problems.append(f"{len(device_skipped)} {device} test cases were skipped, e.g. {device_skipped[:3]}")
    if failed:
        problems.append(f"{len(failed)} tests failed, e.g. {failed[:5]} (see conformance.log)")
    if not counts[f"{device}_passed"]:
        problems.append(f"no {device} test case passed")
    missing = [n for n in deselected if n.replace("-cpu-", f"-{device}-") not in passed]
    if missing:                                     # every CPU case left out on purpose must have run on the device
        problems.append(f"{len(missing)} cpu cases deselected on purpose have no passed {device} twin, e.g. "
                        f"{missing[:3]}")
    counts["cpu_deselected_with_twin"] = len(deselected) - len(missing)
    return counts, skips, problems


def bench_summary(bench: dict) -> tuple[dict, list[str]]:
    """The bench figures worth reading at a glance, and the problems in them. A performance target that is not met
    is reported (``bench_targets_not_met``), not a problem: this check is about correctness."""
    targets = bench.get("targets") or {}
    out = {
        "bench_complete": bench.get("complete"), "bench_targets": targets,
        "bench_targets_not_met": sorted(k for k, t in targets.items() if isinstance(t, dict) and t.get("met") is False),
        "bench_skipped": bench.get("skipped", []), "bench_ratios": bench.get("ratios"),
        "bench_scan": [{k: r.get(k) for k in ("n", "wall_s", "floors", "path", "compile_s", "extra_bytes",
                                              "peak_device_bytes", "peak_rss_bytes", "error") if k in r}
                       for r in bench.get("trajectory", []) if r.get("op") == "scan"],
        "float32_error": bench.get("float32_error"), "position_updates": bench.get("position_updates"),
        "model_updates": bench.get("model_updates"),
    }
    problems = []
    rows = bench.get("trajectory", []) + [bench.get(k) or {} for k in ("float32_error", "position_updates",
                                                                       "model_updates")]
    errors = [r for r in rows if "error" in r]
    if errors:
        problems.append(f"bench errors: {errors}")
    not_finite = [r.get("n") for r in bench.get("trajectory", []) if r.get("op") == "scan" and r.get("finite") is False]
    if not_finite:
        problems.append(f"the scan produced non-finite norms at n = {not_finite}")
    if not bench.get("complete"):
        problems.append("the bench did not finish (see bench.log)")
    fell, why = _fell_back(bench)
    if fell:
        problems.append(f"compiled paths ran (some of) their calls eagerly: {fell}; why: {why or 'not recorded'}")
    acc = bench.get("float32_error") or {}
    err = acc.get("max_rel_err_delta_W_norm")
    if "error" not in acc and not (isinstance(err, (int, float)) and err < 1e-4):
        problems.append(f"float32 scan against float64: max relative error of ‖ΔW_i‖ is {err!r}, target < 1e-4")
    ref = acc.get("float64_scan_vs_reference_max")
    if "error" not in acc and not (isinstance(ref, (int, float)) and ref < 1e-10):
        problems.append(f"float64 scan against the reference's own update at a few prefixes: max relative error "
                        f"of ‖ΔW_i‖ is {ref!r}, expected < 1e-10 (round-off)")
    return out, problems


def _fell_back(bench: dict) -> tuple[list[str], dict]:
    """The measurements that asked for the compiled path and did not run all of their calls compiled (``path``
    "eager" or "mixed"), and the compile failures the bench recorded (``compile_failures``)."""
    fell, why = [], {}
    for r in bench.get("trajectory", []):
        if r.get("compile_requested") and "wall_s" in r and r.get("path") != "compiled":
            fell.append(f"the scan at n = {r.get('n')}: {r.get('path')}")
    for p in (bench.get("position_updates") or {}).get("Ts", []):
        t = p.get("torch_compiled") or {}
        if "position_updates_s" in t and t.get("path") != "compiled":
            fell.append(f"the updates at every position at T = {p.get('T')}: {t.get('path')}")
    m = (bench.get("model_updates") or {}).get("compiled") or {}
    if "updates_s" in m and m.get("path") != "compiled":
        fell.append(f"the whole model: {m.get('path')}")
    for r in bench.get("trajectory", []) + [bench.get(k) or {} for k in ("position_updates", "model_updates")]:
        why.update(r.get("compile_failures") or {})
    return fell, why


def environment_summary(out: str, device: str) -> tuple[dict, list[str]]:
    """What ``gpu_env.json`` and ``steps.json`` say (whether torch.compile runs on the device, what was deselected
    and why, each step's exit code, seconds and limit), and the problems in it: on CUDA, no answer of the compile
    probe, or torch.compile unable to run there (the compiled paths then went unchecked); torch.compile able to run
    and no report of the compiled cases."""
    info, problems = {}, []
    for name, key in (("gpu_env.json", "environment"), ("steps.json", "steps")):
        try:
            with open(os.path.join(out, name)) as f:
                info[key] = json.load(f)
        except FileNotFoundError:
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{name} is not valid JSON: {exc}")
    env = info.get("environment") or {}
    info["deselected"] = env.get("deselected", [])
    compiles = env.get("compile")
    if device == "cuda" and compiles is None:                  # the compiled paths are checked on CUDA only
        problems.append("no gpu_env.json with the compile probe's answer: whether the compiled paths ran is unknown")
    elif device == "cuda" and compiles != "ok":
        problems.append(f"torch.compile cannot run on {device} here ({compiles}): the compiled paths went unchecked")
    if compiles == "ok" and not os.path.exists(os.path.join(out, REPORTS[1])):
        problems.append(f"no {REPORTS[1]}: the compiled conformance step did not finish (see conformance.log)")
    return info, problems


def margins_summary(path: str) -> tuple[dict, list[str]]:
    """Per dtype, the largest fraction of ``K·eps·scale`` a scenario used (``scripts/conformance_margins.py``)."""
    if not os.path.exists(path):
        return {}, ["no conformance_margins.json: the margins step did not finish (see conformance.log)"]
    try:
        with open(path) as f:
            dtypes = json.load(f)["dtypes"]
        out = {d: {"max_fraction": v["max_fraction"], "scenarios": v["scenarios"],
                   "worst_scenario": next(iter(v["worst"]), None)} for d, v in dtypes.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        return {}, [f"conformance_margins.json is unreadable: {exc!r}"]
    over = {d: v["max_fraction"] for d, v in out.items()
            if not (isinstance(v["max_fraction"], (int, float)) and v["max_fraction"] < 1)}
    return out, [f"scenarios used more than their tolerance: {over}"] if over else []


def _seconds(t) -> str:
    if not isinstance(t, (int, float)):
        return "—"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if t >= 10 * size:
            return f"~{t / size:,.0f} {unit}"
    return f"{t:.3g} s" if t >= 0.1 else f"{t * 1e3:.3g} ms"


def _ratio(a, b) -> str:
    return f"{a / b:,.1f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else "—"


def markdown_table(bench: dict, device: str, notes=()) -> str:
    """The README's tables for this device: per n and path (eager, and compiled where measured), the scan's time
    against its K/V-matmul floor, its peak memory and the re-run baseline; the updates against one forward; then
    every target with its value and verdict, and ``notes`` (what was deselected, and why)."""
    rows = {(r.get("op"), r.get("n"), bool(r.get("compile_requested"))): r for r in bench.get("trajectory", [])}
    gpu = (bench.get("machine") or {}).get("gpu") or device
    lines = [f"| context ({gpu}, float32) | path | O(n) scan | the K/V matmul floor (scan / floor) | peak "
             f"{'device' if device != 'cpu' else 'process'} memory | the single-query update re-run on every prefix |",
             "|---|---|---|---|---|---|"]
    for n, compiled in ((n, c) for n in (bench.get("config") or {}).get("sizes", []) for c in (False, True)):
        scan, base = rows.get(("scan", n, compiled)), rows.get(("per_prefix_update", n, False), {})
        if scan is None and compiled:                 # not measured compiled (torch.compile off, or under two slabs)
            continue
        path = (scan or {}).get("path", "compiled" if compiled else "eager")
        if "wall_s" not in (scan or {}):
            lines.append(f"| {n:,} tokens | {path} | failed: {(scan or {}).get('error', 'not measured')} | | | |")
            continue
        peak = scan.get("peak_device_bytes", scan.get("peak_rss_bytes"))
        kv = ((scan.get("floors") or {}).get("kv_matmul") or {}).get("wall_s")
        floor = f"{_seconds(kv)} ({_ratio(scan['wall_s'], kv)})" if kv else "—"
        how = "fitted" if base.get("estimated") else "measured"
        how += ", extrapolated" if base.get("extrapolated") else ""
        baseline = (f"{_seconds(base['wall_s'])}, {how} ({base['wall_s'] / scan['wall_s']:,.0f}×)"
                    if "wall_s" in base else base.get("error", "not measured"))
        lines.append(f"| {n:,} tokens | {path} | {_seconds(scan['wall_s'])} | {floor} | {peak / 1e9:.2f} GB | "
                     f"{baseline} |")
    lines += _updates_lines(bench)
    err = bench.get("float32_error") or {}
    if "max_rel_err_delta_W_norm" in err:
        lines.append(f"\nfloat32 against float64 at {err.get('n', 0):,} tokens: ‖ΔW_i‖ within "
                     f"{err['max_rel_err_delta_W_norm']:.2g} relative.")
    if "float64_scan_vs_reference_max" in err:
        lines.append(f"The float64 scan against the NumPy reference's update at prefixes up to "
                     f"{max(int(i) for i in err.get('float64_scan_vs_reference_update', {'0': 0})):,} tokens: "
                     f"{err['float64_scan_vs_reference_max']:.2g} relative.")
    lines += _targets_lines(bench) + (["", *(f"Not run here: {note}." for note in notes)] if notes else [])
    return "\n".join(lines) + "\n"


def _updates_lines(bench: dict) -> list[str]:
    """Updates at every position against one forward of the block, and a whole model's against its forward, on each
    path measured (eager, and compiled where ``torch.compile`` ran)."""
    lines = ["", "| updates at every position | path | time | one block forward | ratio | the forward in eager ops |",
             "|---|---|---|---|---|---|"]
    for p in (bench.get("position_updates") or {}).get("Ts", []):
        if "position_updates_s" not in (p.get("torch") or {}):
            lines.append(f"| T = {p.get('T', 0):,} | | failed: {p.get('error', 'not measured')} | | | |")
            continue
        for t in filter(None, (p["torch"], p.get("torch_compiled"))):
            lines.append(f"| T = {p['T']:,} | {t.get('path', 'eager')} | {_seconds(t['position_updates_s'])} | "
                         f"{_seconds(t['block_s'])} | {_ratio(t['position_updates_s'], t['block_s'])} | "
                         f"{_seconds(t.get('eager_block_s'))} |")
    m = bench.get("model_updates") or {}
    for e in filter(lambda e: "updates_s" in e, (m, m.get("compiled") or {})):
        lines.append(f"\nEvery layer's updates at every position, {m['layers']} layers × {m['batch']} × {m['T']:,} "
                     f"tokens: {_seconds(e['updates_s'])}, {_ratio(e['updates_s'], e['forward_s'])} one forward of "
                     f"the model ({_seconds(e['forward_s'])}; path: {e.get('path', 'eager')}).")
    return lines


def _targets_lines(bench: dict) -> list[str]:
    lines = ["", "| target | value | target | met |", "|---|---|---|---|"]
    for key, t in (bench.get("targets") or {}).items():
        if not isinstance(t, dict):
            continue
        value = t.get("value")
        shown = f"{value:.3g} {t.get('unit', '')}".strip() if isinstance(value, (int, float)) else "—"
        met = {True: "yes", False: "no"}.get(t.get("met"), f"— ({t.get('reason', 'not decided')})")
        bound = f"{t.get('op', '').replace('<=', '≤').replace('>=', '≥')} {t.get('target')} {t.get('unit', '')}"
        lines.append(f"| {key} | {shown} | {bound.strip()} | {met} |")
    return lines


def summarize(out: str, test_rc: int, bench_rc: int, seconds: int, device: str = "cuda") -> dict:
    """Everything above, as the dict written to ``OUTDIR/gpu_check.json`` (``"ok"``: the check passed)."""
    summary = {"device": device, "tests_exit_code": test_rc, "bench_exit_code": bench_rc, "seconds": seconds,
               "problems": []}
    xml_paths = [os.path.join(out, name) for name in REPORTS if os.path.exists(os.path.join(out, name))]
    if os.path.exists(os.path.join(out, REPORTS[0])):
        try:
            counts, skips, problems = conformance_summary(xml_paths, device)
            summary.update(conformance=counts, skip_reasons=skips)
            summary["problems"] += problems
        except ET.ParseError as exc:
            summary["problems"].append(f"a conformance report is not a readable JUnit report: {exc}")
    else:
        summary["problems"].append(f"no {REPORTS[0]}: the test run did not finish (see conformance.log)")
    if test_rc != 0:
        summary["problems"].append(f"pytest exited with {test_rc} (124 = timed out)")
    env, problems = environment_summary(out, device)
    summary.update(env)
    summary["problems"] += problems
    margins, problems = margins_summary(os.path.join(out, "conformance_margins.json"))
    summary["tolerance_margins"] = margins
    summary["problems"] += problems
    bench_path = os.path.join(out, f"bench_{device}.json")
    if os.path.exists(bench_path):
        try:
            with open(bench_path) as f:
                bench = json.load(f)
            figures, problems = bench_summary(bench)
            summary.update(figures)
            summary["problems"] += problems
        except json.JSONDecodeError as exc:
            summary["problems"].append(f"{os.path.basename(bench_path)} is not valid JSON: {exc}")
        except (AttributeError, KeyError, TypeError) as exc:
            summary["problems"].append(f"{os.path.basename(bench_path)} has an unexpected layout: {exc!r}")
        else:
            try:                                      # presentation only: a figure that cannot be shown is a note
                summary["readme_table"] = markdown_table(bench, device, summary["deselected"])
            except (ArithmeticError, AttributeError, KeyError, TypeError, ValueError) as exc:
                summary["readme_table_error"] = repr(exc)
    else:
        summary["problems"].append(f"no bench_{device}.json (see bench.log)")
    if bench_rc != 0:
        summary["problems"].append(f"bench exited with {bench_rc} (124 = timed out)")
    summary["ok"] = not summary["problems"]
    return summary


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    out, test_rc, bench_rc, seconds = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    summary = summarize(out, test_rc, bench_rc, seconds, argv[4] if len(argv) == 5 else "cuda")
    tmp = os.path.join(out, ".gpu_check.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(out, "gpu_check.json"))
    if summary.get("readme_table"):                  # ready to paste into README's table of measured figures
        with open(os.path.join(out, "gpu_check.md"), "w") as f:
            f.write(summary["readme_table"])
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
