"""``scripts/gpu_check.sh``, the one prepared GPU check, proven here without a GPU.

Its verdict (``scripts/gpu_check_summary.py``) is checked on made-up reports: every way a device run can go wrong
must turn ``ok`` false. Then the whole script is rehearsed on the CPU at small sizes, through the same package shim
the GPU machine uses (``GPU_CHECK_FORCE_SHIM=1``: the package linked into a temporary folder, not imported from the
install), so that the one scarce GPU run does not fail on plumbing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

_spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "scripts" / "gpu_check_summary.py")
summary_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary_mod)

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch_and_bash = pytest.mark.skipif(not HAS_TORCH or shutil.which("bash") is None,
                                          reason="the GPU check script needs torch and bash")


def _junit(cases) -> str:
    """A JUnit report with ``cases`` = [(name, outcome, skip reason)]."""
    body = []
    for name, outcome, reason in cases:
        inner = {"passed": "", "failed": '<failure message="boom"/>', "error": '<error message="boom"/>',
                 "skipped": f'<skipped message="{reason}"/>'}[outcome]
        body.append(f'<testcase classname="tests.conformance.test_conformance" name="{name}">{inner}</testcase>')
    return f'<testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>'


GOOD_CASES = [
    ("test_scenario_matches_reference[attention/plain-relu-h1-torch-cuda-float32]", "passed", ""),
    ("test_scenario_matches_reference[attention/plain-relu-h1-torch-cuda-bfloat16]", "passed", ""),
    ("test_scenario_matches_reference[attention/plain-relu-h1-torch-cpu-float32]", "skipped",
     "not selected: IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda"),
    ("test_scenario_matches_reference[attention/plain-relu-h1-torch-mps-float32]", "skipped",
     "MPS is not available on this machine"),
    ("test_cuda_trajectory_matches_cpu", "passed", ""),
]
GOOD_BENCH = {"complete": True, "targets": {}, "ratios": [],
              "trajectory": [{"op": "scan", "n": 1 << 20, "wall_s": 0.1, "finite": True},
                             {"op": "per_prefix_update", "n": 1 << 20, "wall_s": 99.0}],
              "float32_error": {"max_rel_err_delta_W_norm": 1e-7, "float64_scan_vs_reference_max": 1e-15},
              "position_updates": {"Ts": [{"T": 256, "torch": {"position_updates_s": 1e-3, "block_s": 1e-3,
                                                                "eager_block_s": 5e-4}}]},
              "model_updates": {"layers": 24, "batch": 16, "T": 2048, "updates_s": 0.3, "forward_s": 0.1}}


GOOD_MARGINS = {"device": "cuda", "dtypes": {d: {"scenarios": 154, "max_fraction": f, "worst": {"identity/x": f}}
                                             for d, f in (("float32", 0.09), ("bfloat16", 0.12))}}


GOOD_ENV = {"device": "cuda", "compile": "ok", "deselected": []}
GOOD_COMPILED = []          # the compiled cases' report (conformance_compiled.xml); its twin test fills it


def _write(out: Path, cases=GOOD_CASES, bench=GOOD_BENCH, device="cuda", margins=GOOD_MARGINS, env=GOOD_ENV,
           compiled=GOOD_COMPILED):
    out.mkdir(exist_ok=True)
    if env is not None:
        (out / "gpu_env.json").write_text(json.dumps(env))
    if compiled is not None:
        (out / "conformance_compiled.xml").write_text(_junit(compiled))
    if margins is not None:
        (out / "conformance_margins.json").write_text(json.dumps(margins))
    if cases is not None:
        (out / "conformance.xml").write_text(_junit(cases))
    if bench is not None:
        (out / f"bench_{device}.json").write_text(json.dumps(bench))
    return out


def test_a_clean_run_is_ok_and_counts_every_skip_reason(tmp_path):
    s = summary_mod.summarize(str(_write(tmp_path)), 0, 0, 100)
    assert s["ok"] is True and s["problems"] == []
    assert s["conformance"]["cuda_passed"] == 3            # the two scenarios and test_cuda_… itself
    assert s["skip_reasons"] == {"not selected: IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda": 1,
                                 "MPS is not available on this machine": 1}


@pytest.mark.parametrize("cases, bench, rcs, says", [
    (GOOD_CASES[:-1] + [("test_cuda_trajectory_matches_cpu", "skipped", "CUDA is not available")], GOOD_BENCH,
     (0, 0), "cuda test cases were skipped"),
    (GOOD_CASES + [("test_scenario_matches_reference[x-torch-cuda-float64]", "skipped", "some reason")],
     GOOD_BENCH, (0, 0), "cuda test cases were skipped"),
    (GOOD_CASES + [("test_scenario_matches_reference[x-torch-cuda-float64]", "failed", "")], GOOD_BENCH, (1, 0),
     "tests failed"),
    (GOOD_CASES + [("test_golden", "error", "")], GOOD_BENCH, (1, 0), "tests failed"),
    ([c for c in GOOD_CASES if c[1] != "passed"], GOOD_BENCH, (0, 0), "no cuda test case passed"),
    (GOOD_CASES, GOOD_BENCH, (124, 0), "pytest exited with 124"),
    (None, GOOD_BENCH, (124, 0), "no conformance.xml"),
    (GOOD_CASES, None, (0, 124), "no bench_cuda.json"),
    (GOOD_CASES, dict(GOOD_BENCH, complete=False), (0, 0), "did not finish"),
    (GOOD_CASES, dict(GOOD_BENCH, trajectory=[{"op": "scan", "n": 16, "error": "CUDA out of memory"}]), (0, 1),
     "bench errors"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={"error": "timed out after 180 s"}), (0, 1), "bench errors"),
    (GOOD_CASES, dict(GOOD_BENCH, model_updates={"error": "CUDA out of memory"}), (0, 1), "bench errors"),
    (GOOD_CASES, dict(GOOD_BENCH, position_updates={"Ts": [], "error": "T = 65536: OOM"}), (0, 1), "bench errors"),
    (GOOD_CASES, dict(GOOD_BENCH, trajectory=[{"op": "scan", "n": 16, "wall_s": 1.0, "finite": False}]), (0, 0),
     "non-finite"),
    (GOOD_CASES, GOOD_BENCH, (0, 1), "bench exited with 1"),
    ([c for c in GOOD_CASES if "cuda-float32" not in c[0]], GOOD_BENCH, (0, 0), "have no passed cuda twin"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={"max_rel_err_delta_W_norm": float("nan")}), (0, 0),
     "float32 scan against float64"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={"max_rel_err_delta_W_norm": 3e-3}), (0, 0),
     "float32 scan against float64"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={}), (0, 0), "float32 scan against float64"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={"max_rel_err_delta_W_norm": 1e-7}), (0, 0),
     "float64 scan against the reference"),
    (GOOD_CASES, dict(GOOD_BENCH, float32_error={"max_rel_err_delta_W_norm": 1e-7,
                                                 "float64_scan_vs_reference_max": 3e-6}), (0, 0),
     "float64 scan against the reference"),
    (GOOD_CASES, [GOOD_BENCH], (0, 0), "unexpected layout"),
    (GOOD_CASES, dict(GOOD_BENCH, trajectory=GOOD_BENCH["trajectory"] + [
        {"op": "scan", "n": 1 << 20, "wall_s": 0.1, "finite": True, "compile_requested": True, "path": "eager",
         "compile_failures": {"scan on cuda": "BackendCompilerFailed: no C compiler"}}]), (0, 0),
     "no C compiler"),
    (GOOD_CASES, dict(GOOD_BENCH, position_updates={"Ts": [dict(
        GOOD_BENCH["position_updates"]["Ts"][0],
        torch_compiled={"position_updates_s": 1e-3, "block_s": 1e-3, "path": "mixed"})]}), (0, 0),
     "the updates at every position at T = 256: mixed"),
    (GOOD_CASES, dict(GOOD_BENCH, model_updates=dict(GOOD_BENCH["model_updates"], compiled={
        "updates_s": 0.3, "forward_s": 0.1, "path": "eager"})), (0, 0), "the whole model: eager"),
])
def test_every_way_a_device_run_goes_wrong_fails_the_check(tmp_path, cases, bench, rcs, says):
    s = summary_mod.summarize(str(_write(tmp_path, cases, bench)), *rcs, 100)
    assert s["ok"] is False
    assert any(says in p for p in s["problems"]), s["problems"]


@pytest.mark.parametrize("margins, says", [
    (None, "margins step did not finish"),
    ({"dtypes": {"bfloat16": {"scenarios": 3, "max_fraction": 1.5, "worst": {"x": 1.5}}}}, "more than their tolerance"),
    ({"dtypes": {"float32": {"scenarios": 3, "max_fraction": float("nan"), "worst": {}}}}, "more than their tolerance"),
    ({"device": "cuda"}, "unreadable"),
])
def test_a_missing_or_exceeded_tolerance_margin_fails_the_check(tmp_path, margins, says):
    s = summary_mod.summarize(str(_write(tmp_path, margins=margins)), 0, 0, 100)
    assert s["ok"] is False
    assert any(says in p for p in s["problems"]), s["problems"]


def test_the_compiled_report_joins_the_eager_one_and_its_absence_fails_where_compile_runs(tmp_path):
    """The compiled cases run in a second pytest (``conformance_compiled.xml``): a CPU case deselected in one report
    finds its device twin in the other; where gpu_env.json says torch.compile runs, a missing compiled report is a
    problem, and where it cannot run on the GPU, that is one too (the compiled paths went unchecked)."""
    twin = "test_torch_compiled_scan_matches_reference[trajectory/x-torch-{}-float32]"
    out = _write(tmp_path, cases=GOOD_CASES + [(twin.format("cpu"), "skipped",
                                                 "not selected: IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda")],
                 compiled=[(twin.format("cuda"), "passed", "")])
    (out / "steps.json").write_text(json.dumps({"conformance": {"exit_code": 0, "seconds": 80, "limit_s": 260}}))
    s = summary_mod.summarize(str(out), 0, 0, 100)
    assert s["ok"] is True, s["problems"]
    assert s["conformance"]["cuda_passed"] == 4 and s["conformance"]["cpu_deselected_with_twin"] == 2
    assert s["steps"]["conformance"]["limit_s"] == 260 and s["environment"]["compile"] == "ok"
    (out / "conformance_compiled.xml").unlink()
    s = summary_mod.summarize(str(out), 0, 0, 100)
    assert "no conformance_compiled.xml: the compiled conformance step did not finish" in " ".join(s["problems"])
    assert "have no passed cuda twin" in " ".join(s["problems"])
    (out / "gpu_env.json").write_text(json.dumps({"compile": "RuntimeError: Failed to find C compiler"}))
    s = summary_mod.summarize(str(out), 0, 0, 100)
    assert "torch.compile cannot run on cuda here (RuntimeError: Failed to find C compiler)" in " ".join(s["problems"])
    cpu = summary_mod.environment_summary(str(out), "cpu")          # a CPU rehearsal without a C++ compiler: a note
    assert cpu[1] == [] and cpu[0]["environment"]["compile"].startswith("RuntimeError")
    (out / "gpu_env.json").write_text(json.dumps({"compile": "torch.compile is not used on mps: the backend runs "
                                                             "eagerly there"}))
    assert summary_mod.environment_summary(str(out), "mps")[1] == []   # by design: MPS runs eagerly
    (out / "gpu_env.json").unlink()                                   # on CUDA, no answer is a problem
    assert "no gpu_env.json" in " ".join(summary_mod.environment_summary(str(out), "cuda")[1])


def test_what_was_deselected_is_said_in_the_verdict_and_under_the_table(tmp_path):
    why = "tests/test_hf_torch.py's tiny gpt_neox and gemma2 on cuda: transformers is not installed (it builds them)"
    out = _write(tmp_path, bench=dict(GOOD_BENCH, config={"sizes": []}), env=dict(GOOD_ENV, deselected=[why]))
    s = summary_mod.summarize(str(out), 0, 0, 100)
    assert s["ok"] is True and s["deselected"] == [why]
    assert f"Not run here: {why}." in s["readme_table"]


def test_the_margins_are_reported_per_dtype(tmp_path):
    s = summary_mod.summarize(str(_write(tmp_path)), 0, 0, 100)
    assert s["tolerance_margins"]["bfloat16"] == {"max_fraction": 0.12, "scenarios": 154,
                                                  "worst_scenario": "identity/x"}


def test_an_unmet_performance_target_is_listed_and_tabled_but_does_not_fail_the_check(tmp_path):
    scan = {"op": "scan", "n": 1 << 20, "wall_s": 0.02, "finite": True, "peak_device_bytes": 2.5e9,
            "floors": {"kv_matmul": {"wall_s": 0.0005}, "read_write": {"wall_s": 0.0002}}}
    targets = {"trajectory_1M_within_5x_kv_matmul": {"value": 40.0, "target": 5, "op": "<=", "unit": "×",
                                                     "met": False, "path": "eager"},
               "trajectory_1M_within_3x_kv_matmul": {"value": 40.0, "target": 3, "op": "<=", "unit": "×",
                                                     "met": None, "reason": "a CPU target; this run is on cuda"}}
    compiled = dict(scan, wall_s=0.004, compile_requested=True, path="compiled", peak_device_bytes=1e9)
    bench = dict(GOOD_BENCH, config={"sizes": [1 << 20]}, targets=targets,
                 trajectory=[dict(scan, compile_requested=False, path="eager"), compiled, GOOD_BENCH["trajectory"][1]])
    s = summary_mod.summarize(str(_write(tmp_path, bench=bench)), 0, 0, 100)
    assert s["ok"] is True and s["bench_targets_not_met"] == ["trajectory_1M_within_5x_kv_matmul"]
    table = s["readme_table"]
    # each path's scan against its floor, and the re-run baseline against that row's scan (99 s / 20 ms, / 4 ms)
    assert "| 1,048,576 tokens | eager | 20 ms | 0.5 ms (40.0×) | 2.50 GB | 99 s, measured (4,950×) |" in table
    assert "| 1,048,576 tokens | compiled | 4 ms | 0.5 ms (8.0×) | 1.00 GB | 99 s, measured (24,750×) |" in table
    assert "| trajectory_1M_within_5x_kv_matmul | 40 × | ≤ 5 × | no |" in table
    assert "| — (a CPU target; this run is on cuda) |" in table
    assert "| T = 256 | eager | 1 ms | 1 ms | 1.0× | 0.5 ms |" in table
    assert "24 layers × 16 × 2,048 tokens: 0.3 s, 3.0× one forward" in table and "None" not in table


def test_a_figure_that_cannot_be_formatted_is_a_note_not_a_crash(tmp_path):
    bench = dict(GOOD_BENCH, config={"sizes": [16]}, trajectory=[{"op": "scan", "n": 16, "wall_s": 0.0},
                                                              {"op": "per_prefix_update", "n": 16, "wall_s": 1.0}])
    s = summary_mod.summarize(str(_write(tmp_path, bench=bench)), 0, 0, 1)
    assert s["ok"] is True and "ZeroDivisionError" in s["readme_table_error"]


def test_unreadable_reports_are_problems_not_crashes(tmp_path):
    (tmp_path / "conformance.xml").write_text("<testsuites><testsuite")
    (tmp_path / "bench_cuda.json").write_text("{not json")
    s = summary_mod.summarize(str(tmp_path), 0, 0, 1)
    assert s["ok"] is False
    assert any("not a readable JUnit report" in p for p in s["problems"])
    assert any("not valid JSON" in p for p in s["problems"])


def test_the_summary_script_writes_json_and_exits_with_the_verdict(tmp_path):
    script = ROOT / "scripts" / "gpu_check_summary.py"
    good = subprocess.run([sys.executable, str(script), str(_write(tmp_path / "good")), "0", "0", "5"],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "good" / "gpu_check.json").read_text())["ok"] is True
    bad = subprocess.run([sys.executable, str(script), str(_write(tmp_path / "bad")), "1", "0", "5"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    usage = subprocess.run([sys.executable, str(script), "only-one-argument"], capture_output=True, text=True)
    assert usage.returncode == 2 and "OUTDIR" in usage.stderr


def _run_script(out: Path, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1", **env)
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=full_env,
                          timeout=400)


@needs_torch_and_bash
def test_rehearsal_on_the_cpu_runs_every_step_through_the_package_shim(tmp_path):
    # the compiled conformance cases are this suite's own (test_conformance): the rehearsal need not compile them again
    # 8,192 tokens: two CPU slabs, so the bench's compiled-trajectory child runs too (torch_backend.SLAB)
    proc = _run_script(tmp_path, GPU_CHECK_DEVICE="cpu", GPU_CHECK_SIZES="8192", GPU_CHECK_POSITIONS="128 256",
                       GPU_CHECK_MODEL="2 1 64", GPU_CHECK_BUDGET="0.3", GPU_CHECK_FORCE_SHIM="1",
                       IMPLICIT_ICL_COMPILED="none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "linking the checkout's package layout" in proc.stderr      # the path the GPU machine takes
    verdict = json.loads((tmp_path / "gpu_check.json").read_text())
    assert verdict["ok"] is True and verdict["device"] == "cpu"
    assert verdict["conformance"]["cpu_passed"] > 500 and verdict["conformance"]["failed"] == 0
    bench = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert bench["complete"] and bench["config"]["sizes"] == [8192]
    assert bench["config"]["positions"] == [128, 256] and bench["config"]["model"] == [2, 1, 64]
    assert all(isinstance(t, dict) and "met" in t for t in verdict["bench_targets"].values())
    assert bench["float32_error"]["max_rel_err_delta_W_norm"] < 1e-4
    env = json.loads((tmp_path / "gpu_env.json").read_text())
    assert env["device"] == "cpu" and env["available"] is True
    margins = verdict["tolerance_margins"]                          # every dtype measured, inside its tolerance
    assert set(margins) == {"float64", "float32", "bfloat16"}
    assert all(0 < m["max_fraction"] < 1 and m["scenarios"] > 100 for m in margins.values()), margins
    for name in ("conformance.log", "conformance.xml", "bench.log"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "gpu_check.md").read_text()                 # README's table, ready to paste
    assert "| 8,192 tokens | eager |" in table and ("fitted" in table or "measured" in table)
    steps = json.loads((tmp_path / "steps.json").read_text())       # every step, its limit from the one deadline
    assert list(steps) == ["conformance", "margins", "conformance_compiled", "bench"] or \
        (list(steps) == ["conformance", "margins", "bench"] and env["compile"] != "ok")
    assert all(s["exit_code"] == 0 and 10 <= s["limit_s"] <= 570 and s["seconds"] <= s["limit_s"]
               for s in steps.values()), steps
    assert "| T = 128 | eager |" in table and "| model_updates_within_1.3x_forward |" in table
    from implicit_icl.backends.torch_compile import compile_available
    if compile_available("cpu"):                                    # the compiled block calls beside the eager ones
        assert env["compile"] == "ok" and (tmp_path / "conformance_compiled.xml").stat().st_size > 0
        assert "| T = 128 | compiled |" in table and "path: compiled" in table
        assert "| 8,192 tokens | compiled |" in table


@needs_torch_and_bash
def test_the_gpu_check_refuses_a_machine_without_the_device(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    proc = _run_script(tmp_path)
    assert proc.returncode == 3
    assert "FAIL: cuda is not available" in proc.stderr
    bad = _run_script(tmp_path, GPU_CHECK_DEVICE="tpu")
    assert bad.returncode == 2 and "GPU_CHECK_DEVICE must be cuda, cpu or mps" in bad.stderr


def _conformance_tests() -> list[str]:
    """The test files the script runs on the device, read from the script itself (one source of truth)."""
    for line in SCRIPT.read_text().splitlines():
        if line.startswith("CONFORMANCE_TESTS="):
            return line.split("=", 1)[1].strip('"').split()
    raise AssertionError("scripts/gpu_check.sh has no CONFORMANCE_TESTS= line")


@needs_torch_and_bash
def test_the_real_suite_selected_for_cuda_passes_the_verdict_once_its_cuda_cases_pass(tmp_path):
    """A dress rehearsal of the verdict on the real suite, not on made-up reports: collect exactly what the script
    runs with ``IMPLICIT_ICL_CONFORMANCE_DEVICES=cuda`` on this CPU machine, count each case skipped only for want
    of CUDA as passed (what a working GPU does), and the verdict must be ok. This caught the NumPy reference's
    bad-input cases being deselected as "cpu" cases that can never have a cuda twin."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/gpu_check.sh runs the real thing")
    xml = tmp_path / "conformance.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_conformance_tests(),
                           f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, IMPLICIT_ICL_CONFORMANCE_DEVICES="cuda"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    import xml.etree.ElementTree as ET
    tree = ET.parse(xml)
    made_to_pass = 0
    for case in tree.getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None and "CUDA is not available" in skipped.get("message", ""):
            case.remove(skipped)
            made_to_pass += 1
    tree.write(xml)
    (tmp_path / "bench_cuda.json").write_text(json.dumps(GOOD_BENCH))
    (tmp_path / "conformance_margins.json").write_text(json.dumps(GOOD_MARGINS))   # the rehearsal runs the real one
    (tmp_path / "gpu_env.json").write_text(json.dumps(GOOD_ENV))     # the compiled cases are in conformance.xml here
    (tmp_path / "conformance_compiled.xml").write_text(_junit([]))
    s = summary_mod.summarize(str(tmp_path), 0, 0, 100)
    assert s["problems"] == [] and s["ok"] is True
    assert made_to_pass > 500 and s["conformance"]["cuda_passed"] >= made_to_pass   # + cpu tests named "cuda…"
    assert s["conformance"]["cpu_deselected_with_twin"] > 500       # every cpu case left out has its cuda twin


def test_the_test_a_sigint_stopped_is_not_counted_as_passed(tmp_path):
    """At its time limit the conformance step is stopped by SIGINT; pytest then writes the test it stopped as a
    nameless, empty testcase, which is not a pass (the exit code 124 already fails the check)."""
    good = _write(tmp_path)
    xml = good / "conformance.xml"
    xml.write_text(xml.read_text().replace("</testsuite>", '<testcase time="0.000" /></testsuite>'))
    counts, _, _ = summary_mod.conformance_summary(str(xml), "cuda")
    s = summary_mod.summarize(str(good), 124, 0, 100)
    assert s["conformance"]["passed"] == counts["passed"] == len(GOOD_CASES) - sum(
        1 for c in GOOD_CASES if c[1] != "passed")
    assert "pytest exited with 124 (124 = timed out)" in s["problems"]


def test_the_tiny_models_need_the_transformers_the_dev_extra_names(monkeypatch):
    """One rule, read by the tests' fixtures and by the script's probe (tests/transformers_oracle.py): missing, or
    older than pyproject.toml's ``transformers>=X.Y``, means the tiny models cannot be built (they use ``dtype=``)."""
    import types

    from transformers_oracle import minimum, transformers_unusable

    assert minimum() >= (4, 56)                                       # dtype= (4.56), rope_parameters (5.0)
    monkeypatch.setitem(sys.modules, "transformers", None)            # import fails: not installed
    assert transformers_unusable() == "transformers is not installed"
    old = f"{minimum()[0] - 1}.99.3"
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(__version__=old))
    assert transformers_unusable() == f"transformers {old} is older than {'.'.join(map(str, minimum()))}"
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(__version__="9.0.0.dev0"))
    assert transformers_unusable() is None


def _collected(*k) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_hf_torch.py", *k], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, IMPLICIT_ICL_CONFORMANCE_DEVICES="cuda"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


@needs_torch_and_bash
def test_without_transformers_the_script_deselects_exactly_the_tiny_models_cuda_cases():
    """The script's ``-k`` for a GPU machine whose transformers cannot build the tiny models (read from the script,
    with ``$DEVICE`` = cuda) leaves out exactly the gpt_neox and gemma2 CUDA cases of tests/test_hf_torch.py: a
    renamed test id would otherwise match nothing there, and those cases would skip and fail the one GPU run."""
    line = next(x for x in SCRIPT.read_text().splitlines() if x.strip().startswith('KEEP=" and not'))
    keep = line.split('"')[1].replace("$DEVICE", "cuda")
    everything, kept = _collected(), _collected("-k", f"not compiled{keep}")
    left_out = {t for t in everything - kept if "compile" not in t}
    assert left_out == {f"tests/test_hf_torch.py::test_cuda_model_within_K_eps_scale_and_split_over_cpu_and_cuda"
                        f"[{name}-hf-cuda-{dtype}]" for name in ("gpt_neox", "gemma2")
                        for dtype in ("float32", "bfloat16")}
