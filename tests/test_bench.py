"""``implicit-icl bench``: the JSON schema of a --quick run, and the extrapolation arithmetic."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmark measures the torch backend")

from implicit_icl.bench import baselines as bench_baselines, format as bench_format, report  # noqa: E402
from implicit_icl.commands import bench  # noqa: E402
from implicit_icl.cli import main  # noqa: E402

OPS = {"scan", "per_prefix_update", "prefix_forward", "numpy_reference"}


def test_quick_bench_writes_the_documented_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sizes", "64", "300", "--positions", "128", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "[bench] scan n=64" in captured.err and "[bench] scan n=64" not in captured.out   # progress: stderr
    for header in ("figure", "floor (same run)", "ratio", "target", "met", "why not decided"):   # the tables: stdout
        assert header in captured.out
    assert "None" not in captured.out + captured.err and "{" not in captured.out + captured.err   # no raw dicts
    res = json.loads(path.read_text())
    assert res["schema"] == bench.SCHEMA and res["quick"] is True and res["complete"] is True
    assert res["config"]["sizes"] == [64, 300] and res["config"]["d_model"] == 64
    assert res["config"]["positions"] == [128] and res["config"]["model"] == list(bench.QUICK_MODEL)
    rows = res["trajectory"]
    assert {(r["op"], r["n"]) for r in rows} == {(op, n) for op in OPS for n in (64, 300)}
    for r in rows:
        assert "error" not in r, r
        assert r["wall_s"] > 0 and isinstance(r["extrapolated"], bool) and r["peak_rss_bytes"] > 0
        if r.get("estimated"):                                             # says so, with what it measured
            assert r["measured_prefixes"] and len(r["fit_abc"]) == 3 and "fitted" in r["method"]
    scan = [r for r in rows if r["op"] == "scan"]
    for r in scan:
        assert r["extrapolated"] is False and r["finite"] and r["path"] in ("eager", "compiled")
        assert set(r["floors"]) == {"kv_matmul", "read_write", "scan_matmuls"}
        assert all(f["wall_s"] > 0 for f in r["floors"].values())
        assert r["input_bytes"] == r["n"] * 64 * 4 and r["extra_bytes"] >= 0
    for ratio in res["ratios"]:
        assert ratio["per_prefix_update_over_scan"] > 0 and "prefix_forward_extrapolated" in ratio
    err32 = res["float32_error"]
    assert err32["n"] == 300 and 0 <= err32["max_rel_err_delta_W_norm"] < 1e-4
    assert set(err32["float64_scan_vs_reference_update"]) == {"1", "300"}          # prefixes min(n, …)
    assert err32["float64_scan_vs_reference_max"] < 1e-12 and res["elapsed_s"] > 0
    (pos,) = res["position_updates"]["Ts"]
    assert pos["T"] == 128 and pos["torch"]["block_s"] > 0 and pos["torch"]["eager_block_s"] > 0
    assert pos["numpy"]["position_updates_s"] > 0
    model = res["model_updates"]
    assert (model["layers"], model["batch"], model["T"]) == bench.QUICK_MODEL and model["forward_s"] > 0
    assert set(res["targets"]) == {t.key for t in report.TARGETS}
    for key, t in res["targets"].items():                                  # {value, target, met}, a reason if null
        assert {"value", "target", "met", "path"} <= set(t) and (t["met"] is not None or t["reason"]), key
    assert res["targets"]["trajectory_1M_within_3x_kv_matmul"]["reason"] == "not measured in this run"
    assert "GPU target" in res["targets"]["position_updates_within_1.2x_forward_T256_to_65536"]["reason"]
    assert res["targets"]["float32_rel_err_delta_W_norm_under_1e-4"]["met"] is True


def test_fit_total_sums_the_fitted_quadratic():
    a, b, c, n = 1e-4, 2e-7, 3e-10, 1000
    points = [(L, a + b * L + c * L * L) for L in (1, 4, 16, 64, 256)]
    total, coef = bench_baselines.fit_total(points, n)
    want = sum(a + b * L + c * L * L for L in range(1, n + 2))
    np.testing.assert_allclose(coef, [a, b, c], rtol=1e-6)
    assert total == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "0"], "--sizes must be positive"),
    (["--positions", "0"], "--positions must be positive integers"),        # 0 used to mean the default
    (["--positions", "256", "-5"], "--positions must be positive integers"),
    (["--model", "24", "0", "512"], "--model LAYERS BATCH T must be positive"),
    (["--threads", "0"], "--threads must be from 1 to"),
    (["--threads", "100000"], "--threads must be from 1 to"),              # crashed torch (exit 139)
    (["--budget", "-1"], "--budget must be a positive number"),
    (["--budget", "nan"], "--budget must be a positive number"),
    (["--time-limit", "0"], "--time-limit must be a positive number"),
    (["--kind", "transformer"], "--kind must be one of"),
    (["--device", "no-such-device"], "--device"),
    (["--device", "cuda:99"], "--device"),                                  # no CUDA here, or no 100th GPU
    (["--device", "cuda:01"], "--device"),                                  # torch cannot parse it
])
def test_bad_arguments_are_refused_before_measuring(argv, message, capsys, monkeypatch):
    """Each bad argument gives exit code 2 and a message naming it, at once: before the fix they ran every
    measurement (minutes) and reported only ``nan`` and an exit code of 1."""
    monkeypatch.setattr(bench, "worker", lambda spec: pytest.fail("measured despite a bad argument"))
    assert main(["bench", "--quick", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_json_is_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "worker", lambda spec: pytest.fail("measured although --json cannot be written"))
    (tmp_path / "file").write_text("")
    assert main(["bench", "--quick", "--json", str(tmp_path / "file" / "bench.json")]) == 2
    assert "implicit-icl bench: --json: cannot write" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["bench", "--quick", "--json", str(tmp_path / "folder")]) == 2
    err = capsys.readouterr().err
    assert "--json: " in err and "is a folder" in err and ".tmp" not in err    # no temporary file's name


def test_a_failed_measurement_is_reported(capsys, monkeypatch):
    """A measurement that raises is listed in the summary with its error (and the exit code is 1), not only in the
    JSON: the summary table alone showed ``nan``."""
    def worker(spec):
        if spec["op"] == "scan":
            raise RuntimeError("CUDA out of memory (simulated)")
        return {"op": spec["op"], "n": spec.get("n"), "wall_s": 1.0, "extrapolated": False}
    monkeypatch.setattr(bench, "worker", worker)
    assert main(["bench", "--quick", "--sizes", "8"]) == 1
    assert "FAILED scan n=8: RuntimeError: CUDA out of memory (simulated)" in capsys.readouterr().out


def test_the_accuracy_and_update_figures_come_right_after_the_scans(monkeypatch):
    """A run cut short by a time limit (the GPU check gives the bench what its deadline leaves) must still hold the
    float32 error and the update figures: they are measured after the scans and before any budgeted baseline."""
    order = []

    def fake_worker(spec):
        order.append(spec["op"])
        return {"op": spec["op"], "n": spec.get("n"), "wall_s": 1.0, "extrapolated": False}

    monkeypatch.setattr(bench, "worker", fake_worker)
    bench.bench((64, 128), quick=True, budget=0.1, positions=(16,), model=(1, 1, 8))
    assert order[:5] == ["scan", "scan", "float32_error", "position_updates", "model_updates"]
    assert set(order[5:]) == OPS - {"scan"}


def test_a_time_limit_leaves_out_the_baselines_it_has_no_time_for_and_says_so(monkeypatch):
    """With ``time_limit`` the bench starts no re-run baseline that fewer than ``2·budget + 30`` s are left for: the
    run still completes with every other figure, and the baselines left out are named with the seconds left.
    Each fake measurement here "takes" 10 s of a fake clock."""
    clock, order = [0.0], []

    def fake_worker(spec):
        clock[0] += 10.0
        order.append((spec["op"], spec.get("n")))
        return {"op": spec["op"], "n": spec.get("n"), "wall_s": 1.0, "extrapolated": False}

    monkeypatch.setattr(bench, "worker", fake_worker)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    # 5 measurements before the baselines (50 s), then baselines need 2·1 + 30 = 32 s each: at a 100 s limit two fit
    # (50 → 60 → 70 s; at 70 s 30 s are left)
    res = bench.bench((64, 128), quick=True, budget=1.0, positions=(16,), model=(1, 1, 8), time_limit=100.0)
    assert res["complete"] is True and len(order) == 7
    assert order[5:] == [("per_prefix_update", 64), ("prefix_forward", 64)]
    assert res["skipped"][-1] == ("numpy_reference n=64 and the re-run baselines after it: 30 s were left of "
                                  "--time-limit 100 s, and one needs about 32 s")
    assert "Not measured: numpy_reference n=64" in report.summary(res)
    clock[0], order[:] = 0.0, []                                      # no limit: every baseline
    unlimited = bench.bench((64, 128), quick=True, budget=1.0, positions=(16,), model=(1, 1, 8))
    assert len(order) == 5 + 6 and not any("baselines after it" in why for why in unlimited["skipped"])


# ---- the report's logic, on made-up results: every figure below is computed by hand here, none is timed

M = 1 << 20


def _result(device="cpu", gpu=None, scans=(), Ts=(), model=None):
    """A bench result with ``scans`` = [(n, wall_s, kv_matmul_s, read_write_s, extra_bytes)] and ``Ts`` =
    [(T, position_updates_s, block_s, eager_block_s)]."""
    res = {"config": {"device": device, "sizes": [s[0] for s in scans]}, "machine": {"gpu": gpu},
           "trajectory": [{"op": "scan", "n": n, "wall_s": w, "path": "eager", "input_bytes": n * 256,
                           "extra_bytes": extra, "floors": {"kv_matmul": {"wall_s": kv}, "read_write": {"wall_s": rw}}}
                          for n, w, kv, rw, extra in scans],
           "ratios": [], "float32_error": {}, "model_updates": model or {},
           "position_updates": {"Ts": [{"T": T, "torch": {"position_updates_s": p, "block_s": b, "eager_block_s": e,
                                                          "path": "eager"}} for T, p, b, e in Ts]}}
    res["targets"] = report.targets(res)
    return res


def test_trajectory_targets_are_ratios_to_the_kv_matmul_decided_on_their_own_device():
    scans = [(65536, 0.2, 0.1, 0.01, 5e6), (M, 3.0, 0.5, 0.04, 150e6)]
    cpu = _result("cpu", scans=scans)["targets"]
    assert cpu["trajectory_64k_within_3x_kv_matmul"]["value"] == pytest.approx(2.0)
    assert cpu["trajectory_64k_within_3x_kv_matmul"]["met"] is True
    assert cpu["trajectory_1M_within_3x_kv_matmul"]["value"] == pytest.approx(6.0)
    assert cpu["trajectory_1M_within_3x_kv_matmul"]["met"] is False
    gpu_target = cpu["trajectory_1M_within_5x_kv_matmul"]                 # measured here, decided on a GPU only
    assert gpu_target["value"] == pytest.approx(6.0) and gpu_target["met"] is None
    assert gpu_target["reason"] == "a GPU target; this run is on cpu"
    assert cpu["trajectory_1M_extra_memory_at_most_100MB"]["value"] == pytest.approx(150.0)
    assert cpu["trajectory_1M_extra_memory_at_most_100MB"]["met"] is False
    assert cpu["trajectory_16M_within_5x_kv_matmul"] == {
        "value": None, "target": 5, "op": "<=", "unit": "×", "met": None, "path": None,
        "what": report.BY_KEY["trajectory_16M_within_5x_kv_matmul"].what, "reason": "not measured in this run"}
    cuda = _result("cuda:0", scans=scans)["targets"]                      # "cuda:0" is a GPU run too
    assert cuda["trajectory_1M_within_5x_kv_matmul"]["met"] is False
    assert cuda["trajectory_1M_within_3x_kv_matmul"]["reason"] == "a CPU target; this run is on cuda"
    memory = cuda["trajectory_1M_extra_memory_at_most_100MB"]             # issue 16 lists it under "CPU"
    assert memory["met"] is None and memory["reason"] == "a CPU target; this run is on cuda"


def test_updates_at_every_position_are_judged_at_their_worst_t_and_only_with_every_t():
    Ts = [(T, 1.1e-3 * (1 + i / 10), 1e-3, 0.5e-3) for i, T in enumerate(report.GPU_POSITIONS)]
    worst = max(p / b for _, p, b, _ in Ts)                                # 1.1 × 1.4 = 1.54
    t = _result("cuda", Ts=Ts)["targets"]["position_updates_within_1.2x_forward_T256_to_65536"]
    assert t["value"] == pytest.approx(worst) and t["met"] is False
    fine = _result("cuda", Ts=[(T, 1e-3, 1e-3, 1e-3) for T in report.GPU_POSITIONS])["targets"]
    assert fine["position_updates_within_1.2x_forward_T256_to_65536"]["met"] is True
    short = _result("cuda", Ts=[(T, 1e-3, 1e-3, 1e-3) for T in report.GPU_POSITIONS[:-1]])["targets"]
    assert short["position_updates_within_1.2x_forward_T256_to_65536"]["met"] is None
    assert short["position_updates_within_1.2x_forward_T256_to_65536"]["reason"] == "not measured at T = 65,536"
    forward = fine["block_forward_T1024_at_most_0.3ms"]                  # an absolute GPU time, in ms
    assert forward["value"] == pytest.approx(1.0) and forward["unit"] == "ms" and forward["met"] is False


def test_the_p2_comparison_needs_an_h200_and_its_three_sizes():
    half = [(T, s / 2, s, s) for T, s in report.P2_JAX_H200_S.items()]   # ours at half of P2's times
    t = _result("cuda", gpu="NVIDIA H200", Ts=half)["targets"]["position_updates_faster_than_p2_jax"]
    assert t["value"] == pytest.approx(0.5) and t["met"] is True
    other = _result("cuda", gpu="NVIDIA A100", Ts=half)["targets"]["position_updates_faster_than_p2_jax"]
    assert other["met"] is None and "H200" in other["reason"] and "A100" in other["reason"]
    some = _result("cuda", gpu="NVIDIA H200", Ts=half[:2])["targets"]["position_updates_faster_than_p2_jax"]
    assert some["met"] is None and "every T" in some["reason"]
    on_cpu = _result("cpu", Ts=half)["targets"]["position_updates_faster_than_p2_jax"]
    assert on_cpu["value"] is None and on_cpu["met"] is None                # host times are not set against a GPU's


def test_the_whole_model_target_on_a_gpu_is_at_the_issues_size():
    small = {"layers": 2, "batch": 1, "T": 64, "updates_s": 2.6, "forward_s": 2.0, "path": "eager"}
    assert _result("cpu", model=small)["targets"]["model_updates_within_1.3x_forward"]["met"] is True
    t = _result("cuda", model=small)["targets"]["model_updates_within_1.3x_forward"]
    assert t["value"] == pytest.approx(1.3) and t["met"] is None and "24 × 16 × 2,048" in t["reason"]
    big = dict(small, layers=24, batch=16, T=2048, updates_s=3.0)
    assert _result("cuda", model=big)["targets"]["model_updates_within_1.3x_forward"]["met"] is False


def test_every_figure_is_its_value_over_its_floor_with_the_target_of_this_device():
    res = _result("cpu", scans=[(65536, 0.2, 0.1, 0.01, 5e6)], Ts=[(4096, 0.05, 0.04, 0.02)],
                  model={"layers": 24, "batch": 2, "T": 512, "updates_s": 0.6, "forward_s": 0.3})
    figs = {(f["figure"], f["floor"]): f for f in report.figures(res)}
    kv = figs[("trajectory, 65,536 tokens (eager)", "K/V matmul")]
    assert kv["ratio"] == pytest.approx(2.0) and kv["target"] == "trajectory_64k_within_3x_kv_matmul"
    assert kv["met"] is True
    assert figs[("trajectory, 65,536 tokens (eager)", "read+write of C")]["ratio"] == pytest.approx(20.0)
    assert figs[("trajectory's extra memory, 65,536 tokens (eager)", "its input")]["ratio"] == \
        pytest.approx(5e6 / 65536 / 256)
    pos = figs[("updates at every position, T = 4,096 (eager)", "block forward")]
    assert pos["ratio"] == pytest.approx(1.25) and pos["target"] is None   # a GPU target: none on this device
    assert figs[("block forward (library), T = 4,096 (eager)", "eager torch ops")]["ratio"] == pytest.approx(2.0)
    model = figs[("updates, every layer and position (24 layers × 2 × 512)", "model forward")]
    assert model["ratio"] == pytest.approx(2.0) and model["met"] is False
    assert not any("compile time" in name for name, _ in figs)           # nothing compiled: no compile rows
    res["trajectory"][0].update(path="compiled", compile_s=12.5)
    assert any(f["figure"] == "compile time, trajectory (65,536 tokens)" and f["value"] == 12.5
               for f in report.figures(res))


def test_with_both_paths_measured_the_targets_judge_the_compiled_one_and_the_baselines_the_eager_one():
    """The targets are for the fast path: where the compiled trajectory was measured at n its ratio is judged; the
    eager row stays in the figures (no target on it), and re-running every prefix is set against the eager scan."""
    res = _result("cpu", scans=[(65536, 0.2, 0.1, 0.01, 5e6)])
    res["trajectory"].append(dict(res["trajectory"][0], wall_s=0.25, path="compiled", compile_requested=True,
                                  compile_s=9.0, floors={"kv_matmul": {"wall_s": 0.1}}))
    res["trajectory"].append({"op": "per_prefix_update", "n": 65536, "wall_s": 40.0, "extrapolated": True})
    res["targets"] = report.targets(res)
    t = res["targets"]["trajectory_64k_within_3x_kv_matmul"]
    assert t["value"] == pytest.approx(2.5) and t["path"] == "compiled"    # 0.25 / 0.1, not the eager 0.2 / 0.1
    figs = {(f["figure"], f["floor"]): f for f in report.figures(res)}
    assert figs[("trajectory, 65,536 tokens (eager)", "K/V matmul")]["target"] is None
    compiled = figs[("trajectory, 65,536 tokens (compiled)", "K/V matmul")]
    assert compiled["target"] == "trajectory_64k_within_3x_kv_matmul" and compiled["ratio"] == pytest.approx(2.5)
    assert figs[("compile time, trajectory (65,536 tokens)", None)]["value"] == 9.0
    res["ratios"] = report.ratios(res["trajectory"], [65536])
    assert res["ratios"][0]["per_prefix_update_over_scan"] == pytest.approx(200.0)
    row = next(line for line in report.speedup_table(res).splitlines() if line.startswith("65,536"))
    assert row.split()[1:3] == ["200", "ms"]                              # the eager time its ratios divide


def test_the_tables_are_aligned_columns_with_dashes_for_what_was_not_measured():
    res = _result("cpu", scans=[(65536, 0.2, 0.1, 0.01, 5e6)])
    res["ratios"] = [{"n": 65536}]
    for text in (report.figures_table(res), report.targets_table(res), report.speedup_table(res)):
        header, rule, *rows = text.splitlines()
        starts = [i for i in range(len(rule)) if rule[i] == "-" and (i == 0 or rule[i - 1] == " ")]
        for line in [header] + rows:                                      # every cell starts at its column
            assert all(i == 0 or line[i - 2:i] == "  " for i in starts if i < len(line)), line
        assert "None" not in text and "nan" not in text and "{" not in text
    targets = report.targets_table(res)
    row = next(line for line in targets.splitlines() if line.startswith("trajectory_64k"))
    assert row.split()[1:5] == ["2×", "≤", "3×", "yes"]
    row = next(line for line in targets.splitlines() if line.startswith("trajectory_16M"))
    assert row.split()[1:4] == ["—", "≤", "5×"] and row.endswith("not measured in this run")
    assert "—" in report.speedup_table(res)                                # no baseline measured at 64k


@pytest.mark.parametrize("fn, value, text", [
    (bench_format.seconds_text, 0.0236, "23.6 ms"), (bench_format.seconds_text, 2.04, "2.04 s"),
    (bench_format.seconds_text, 1957.0, "33 min"), (bench_format.seconds_text, 515425.8, "143 h"),
    (bench_format.seconds_text, 1.0138e9, "11,734 days"),
    (bench_format.seconds_text, 3.55e-5, "35.5 µs"), (bench_format.seconds_text, None, "—"),
    (bench_format.bytes_text, 841601024, "842 MB"), (bench_format.bytes_text, 1.41e9, "1.41 GB"),
    (bench_format.ratio_text, 1183.6, "1,184×"), (bench_format.ratio_text, 0.9254, "0.925×"),
    (bench_format.ratio_text, float("nan"), "—"), (bench_format.ratio_text, True, "—"),
])
def test_numbers_read_at_a_glance(fn, value, text):
    assert fn(value) == text


def test_plain_numbers_and_target_bounds():
    assert bench_format.value_text(1e-4, "") == "1.0e-4" and bench_format.value_text(3.9e-7, "") == "3.9e-7"
    assert bench_format.value_text(100, "MB") == "100 MB" and bench_format.value_text(0.3, "ms") == "0.3 ms"
    assert report._target_text("trajectory_1M_extra_memory_at_most_100MB") == "≤ 100 MB"
    assert report._target_text("scan_vs_per_prefix_update_at_8k_at_least_100x") == "≥ 100×"


# ---- the measuring helpers, on facts they can be checked against

def test_the_memory_a_call_adds_is_counted_from_the_resident_set_before_it():
    import torch

    from implicit_icl.bench.common import PeakMemory
    memory = PeakMemory("cpu")
    x = torch.ones(16 * M)                                               # 64 MiB, every page touched
    extra = memory.extra_bytes()
    del x
    assert 64 * M <= extra < 64 * M + 32 * M


def test_the_floors_compute_the_k_and_v_projections_and_the_scans_own_products():
    import torch

    from implicit_icl.bench.measure import _floors
    g = torch.Generator().manual_seed(0)
    P = {"attn.W_k": torch.randn(64, 64, generator=g), "attn.W_v": torch.randn(64, 64, generator=g)}
    C = torch.randn(100, 64, generator=g)
    floors = _floors(P, C, "cpu", n_heads=4)
    kv = floors["kv_matmul"]["_fn"]()
    torch.testing.assert_close(kv, torch.cat([C @ P["attn.W_k"].T, C @ P["attn.W_v"].T], 1))
    torch.testing.assert_close(floors["read_write"]["_fn"](), C)
    own = floors["scan_matmuls"]["_fn"]()                                # the logits, then five D × D products
    assert [tuple(t.shape) for t in own] == [(100, 4)] + [(100, 64)] * 5
    torch.testing.assert_close(own[-1], C.sum(1, keepdim=True).expand(100, 64))    # C times a matrix of ones


def test_the_path_is_the_backends_word_else_whether_dynamo_compiled_a_graph():
    import torch

    from implicit_icl.bench.common import path_of, start_measurement

    class Declares:
        path = "compiled (triton)"
    assert path_of(Declares())[0] == "compiled (triton)"
    start_measurement()
    assert path_of(object())[0] == "eager"
    torch.compile(lambda t: t * 2 + 1, backend="eager")(torch.ones(3))   # a graph compiled after the start
    assert path_of(object()) == ("compiled", "graphs TorchDynamo compiled during the measurement")
    start_measurement()
    assert path_of(object())[0] == "eager"


@pytest.mark.parametrize("returncode, stderr, says", [
    (-9, "", "killed by SIGKILL (signal 9): the kernel's out-of-memory killer, most likely"),
    (-11, "", "killed by signal 11"), (3, "", "exit code 3"),
    (1, "Traceback …\nMemoryError: Unable to allocate 14.2 GiB\n", "MemoryError: Unable to allocate 14.2 GiB"),
])
def test_a_failed_child_is_one_line_saying_how_it_ended(returncode, stderr, says):
    assert bench._failure(returncode, stderr) == says


def test_the_compiled_trajectory_is_measured_after_its_compilation_and_says_so():
    """Two full CPU slabs (2 × SLAB tokens): the warm-up compiles the step, so the timed calls are steady-state, the
    row says the compiled path ran and reports the compile time apart; the bench plans that row only where
    torch.compile can run and the context has two full slabs."""
    from implicit_icl.backends import torch_compile
    from implicit_icl.backends.torch_backend import SLAB
    from implicit_icl.bench.measure import worker

    if not torch_compile.compile_available("cpu"):
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    spec = {"op": "scan", "n": 2 * SLAB, "d_model": 64, "d_mlp": 256, "n_heads": 4, "kind": "pre-ln",
            "device": "cpu", "dtype": "float32", "compile": True, "threads": 1}
    out = worker(spec)
    assert out["path"] == "compiled" and out["compile_requested"] is True and out["finite"] is True
    assert out["compile_s"] is not None and out["compile_s"] > 0
    assert out["first_full_call_s"] < 10 * out["wall_s"] + 1.0       # no compilation left for the timed calls
    plan, quick = {}, {}
    assert bench._compiles("cpu", False, plan) and "skipped" not in plan
    assert bench._compiled_sizes([SLAB, 2 * SLAB], "cpu") == [2 * SLAB]
    assert not bench._compiles("cpu", True, quick) and "--quick" in quick["skipped"][0]   # said, not silent


def test_the_compiled_block_calls_are_measured_beside_the_eager_ones(monkeypatch):
    """With ``compile`` in the spec, each T and the whole model are measured on both paths in one child, the path
    each ran read from ``torch_compile.CALLS`` (here a stand-in compiler that runs the eager function: the
    plumbing, in a second; the compiled numbers themselves are the conformance suite's)."""
    pytest.importorskip("torch")
    from implicit_icl.backends import torch_compile
    from implicit_icl.bench.measure import worker

    monkeypatch.setattr(torch_compile, "compiled", lambda key, fn, static, **options: functools.partial(fn, **static))
    monkeypatch.setattr(torch_compile, "compile_available", lambda device: True)
    base = {"d_model": 16, "d_mlp": 32, "n_heads": 2, "kind": "pre-ln", "device": "cpu", "compile": True}
    pos = worker(dict(base, op="position_updates", Ts=[32], reps=1))["Ts"][0]
    assert pos["torch"]["path"] == "eager" and pos["torch_compiled"]["path"] == "compiled"
    assert pos["torch_compiled"]["compile_s"] is not None and pos["torch"]["compile_s"] is None
    model = worker(dict(base, op="model_updates", layers=2, batch=1, T=16, reps=1))
    assert model["path"] == "eager" and model["compiled"]["path"] == "compiled"


def test_the_targets_judge_the_compiled_block_calls_where_they_ran():
    """Where both paths were measured, the position and whole-model targets read the compiled entries and only
    their figures carry the targets; a compiled entry that fell back to eager code is not judged."""
    res = _result("cuda", gpu="NVIDIA H200", Ts=[(1024, 2e-3, 1e-3, 1e-3)],
                  model={"layers": 24, "batch": 16, "T": 2048, "updates_s": 3.0, "forward_s": 2.0, "path": "eager"})
    res["position_updates"]["Ts"][0]["torch_compiled"] = {"position_updates_s": 0.3e-3, "block_s": 0.25e-3,
                                                          "eager_block_s": 1e-3, "path": "compiled"}
    res["model_updates"]["compiled"] = {"updates_s": 2.4, "forward_s": 2.0, "path": "compiled"}
    t = report.targets(res)
    assert t["block_forward_T1024_at_most_0.3ms"]["value"] == pytest.approx(0.25)
    assert t["block_forward_T1024_at_most_0.3ms"]["met"] is True and t["block_forward_T1024_at_most_0.3ms"]["path"] \
        == "compiled"
    assert t["position_updates_faster_than_p2_jax"]["value"] == pytest.approx(0.3 / 0.9)
    assert t["model_updates_within_1.3x_forward"]["value"] == pytest.approx(1.2)
    res["targets"] = t
    figs = {f["figure"]: f for f in report.figures(res) if f["floor"]}
    assert figs["block forward (library), T = 1,024 (compiled)"]["target"] == "block_forward_T1024_at_most_0.3ms"
    assert figs["block forward (library), T = 1,024 (eager)"]["target"] is None
    assert figs["updates, every layer and position (24 layers × 16 × 2,048) (compiled)"]["met"] is True
    assert figs["updates, every layer and position (24 layers × 16 × 2,048) (eager)"]["target"] is None
    res["model_updates"]["compiled"]["path"] = "eager"                   # compiling failed: the eager code ran
    assert report.targets(res)["model_updates_within_1.3x_forward"]["value"] == pytest.approx(1.5)


def test_an_entry_whose_calls_fell_back_to_eager_code_is_mixed_and_not_judged(monkeypatch):
    """``ran_compiled``: all the calls since ``before`` compiled → "compiled"; some fell back to eager code (a
    compile failure) → "mixed", which no target judges; none compiled → "eager"."""
    import collections

    from implicit_icl.backends import torch_compile
    from implicit_icl.bench.common import calls, ran_compiled

    monkeypatch.setattr(torch_compile, "CALLS", collections.Counter())
    before = calls()
    torch_compile.CALLS["block", "compiled"] += 3
    assert ran_compiled(before)[0] == "compiled"
    torch_compile.CALLS["position_updates", "eager"] += 1
    assert ran_compiled(before)[0] == "mixed"
    assert ran_compiled(calls())[0] == "eager"
    res = _result("cuda", Ts=[(1024, 2e-3, 1e-3, 1e-3)])
    res["position_updates"]["Ts"][0]["torch_compiled"] = {"position_updates_s": 0.3e-3, "block_s": 0.25e-3,
                                                          "eager_block_s": 1e-3, "path": "mixed"}
    assert report.targets(res)["block_forward_T1024_at_most_0.3ms"]["value"] == pytest.approx(1.0)   # the eager one


def test_a_compiling_measurement_gets_time_to_compile_beyond_its_budgeted_limit(monkeypatch):
    """Compiling does not scale with --budget (Triton compiles cold on a fresh GPU machine): a measurement that
    compiles is given ``COMPILE_S`` more than the others before it is stopped."""
    import subprocess

    seen = []

    def stopped(cmd, **kw):
        seen.append(kw["timeout"])
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(bench.subprocess, "run", stopped)
    compiling = bench._child({"op": "scan", "n": 8, "device": "cpu", "compile": True}, 90.0)
    bench._child({"op": "scan", "n": 8, "device": "cpu", "compile": False}, 90.0)
    assert seen == [90.0 + bench.COMPILE_S, 90.0] and bench.COMPILE_S >= 60
    assert compiling["error"] == f"timed out after {90 + bench.COMPILE_S:.0f} s"


def test_a_compile_failure_during_a_measurement_is_in_its_json_with_why(broken_compiler):
    """A compiled path that fell back says why in its measurement's JSON (the warning goes to the child's stderr,
    which the bench reads only when the child fails); a failure from before the measurement is not its own."""
    from implicit_icl.bench.measure import worker

    broken_compiler.FAILED[("earlier",), "cpu"] = "RuntimeError: from before"
    spec = {"op": "position_updates", "Ts": [16], "reps": 1, "compile": True, "d_model": 8, "d_mlp": 16,
            "n_heads": 2, "kind": "pre-ln", "device": "cpu", "threads": None}
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler in this test"):
        out = worker(spec)
    assert out["Ts"][0]["torch_compiled"]["path"] == "eager"
    assert set(out["compile_failures"]) == {"position_updates on cpu", "block on cpu"}
    assert all(why == "RuntimeError: no C++ compiler in this test" for why in out["compile_failures"].values())
