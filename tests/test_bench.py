"""``implicit-icl bench``: the JSON schema of a --quick run, and the extrapolation arithmetic."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmark measures the torch backend")

from implicit_icl import bench  # noqa: E402
from implicit_icl.cli import main  # noqa: E402

OPS = {"scan", "per_prefix_update", "prefix_forward", "numpy_reference"}


def test_quick_bench_writes_the_documented_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sizes", "64", "300", "--positions", "128", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "[bench] scan n=64" in captured.err and "[bench] scan n=64" not in captured.out   # progress: stderr
    assert "targets" in captured.out and "scan(s)" in captured.out        # the result table: stdout
    res = json.loads(path.read_text())
    assert res["schema"] == bench.SCHEMA and res["quick"] is True and res["complete"] is True
    assert res["config"]["sizes"] == [64, 300] and res["config"]["d_model"] == 64
    rows = res["trajectory"]
    assert {(r["op"], r["n"]) for r in rows} == {(op, n) for op in OPS for n in (64, 300)}
    for r in rows:
        assert "error" not in r, r
        assert r["wall_s"] > 0 and isinstance(r["extrapolated"], bool) and r["peak_rss_bytes"] > 0
        if r.get("estimated"):                                             # says so, with what it measured
            assert r["measured_prefixes"] and len(r["fit_abc"]) == 3 and "fitted" in r["method"]
    scan = [r for r in rows if r["op"] == "scan"]
    assert all(r["extrapolated"] is False and r["finite"] for r in scan)
    for ratio in res["ratios"]:
        assert ratio["per_prefix_update_over_scan"] > 0 and "prefix_forward_extrapolated" in ratio
    err32 = res["float32_error"]
    assert err32["n"] == 300 and 0 <= err32["max_rel_err_delta_W_norm"] < 1e-4
    assert set(err32["float64_scan_vs_reference_update"]) == {"1", "300"}          # prefixes min(n, …)
    assert err32["float64_scan_vs_reference_max"] < 1e-12 and res["elapsed_s"] > 0
    pos = res["position_updates"]
    assert pos["T"] == 128 and pos["torch"]["ratio"] > 0 and pos["numpy"]["ratio"] > 0
    assert set(res["targets"]) == {
        "scan_vs_per_prefix_update_at_8k_ge_100x", "scan_1M_float32_under_10s", "scan_1M_float32_peak_rss_under_2GB",
        "float32_rel_err_delta_W_norm_under_1e-4", "float64_scan_matches_reference_update_1e-10",
        "position_updates_at_most_2x_block"}
    assert res["targets"]["scan_1M_float32_under_10s"] is None                # not measured in this run: None


def test_fit_total_sums_the_fitted_quadratic():
    a, b, c, n = 1e-4, 2e-7, 3e-10, 1000
    points = [(L, a + b * L + c * L * L) for L in (1, 4, 16, 64, 256)]
    total, coef = bench._fit_total(points, n)
    want = sum(a + b * L + c * L * L for L in range(1, n + 2))
    np.testing.assert_allclose(coef, [a, b, c], rtol=1e-6)
    assert total == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "0"], "--sizes must be positive"),
    (["--positions", "0"], "--positions must be a positive integer"),       # 0 used to mean the default
    (["--positions", "-5"], "--positions must be a positive integer"),
    (["--threads", "0"], "--threads must be from 1 to"),
    (["--threads", "100000"], "--threads must be from 1 to"),              # crashed torch (exit 139)
    (["--budget", "-1"], "--budget must be a positive number"),
    (["--budget", "nan"], "--budget must be a positive number"),
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


def test_the_accuracy_figure_comes_right_after_the_scans(monkeypatch):
    """A run cut short by a time limit (the GPU check gives the bench 160 s) must still hold the float32 error:
    it is measured after the scans and before any budgeted baseline."""
    order = []

    def fake_worker(spec):
        order.append(spec["op"])
        return {"op": spec["op"], "n": spec.get("n"), "wall_s": 1.0, "extrapolated": False, "peak_rss_bytes": 1,
                "max_rel_err_delta_W_norm": 0.0, "torch": {"ratio": 1.0}}

    monkeypatch.setattr(bench, "worker", fake_worker)
    bench.bench((64, 128), quick=True, budget=0.1, positions=16)
    assert order[:3] == ["scan", "scan", "float32_error"]
    assert order[-1] == "position_updates" and set(order[3:-1]) == OPS - {"scan"}


@pytest.mark.parametrize("device, expected", [("cpu", True), ("cuda", None)])
def test_the_host_memory_target_is_a_cpu_target(device, expected):
    """On a GPU the process's host memory is mostly the CUDA libraries: the 2 GB target is left unmeasured."""
    res = {"config": {"device": device}, "trajectory": [{"op": "scan", "n": 1 << 20, "wall_s": 1.0,
                                                          "peak_rss_bytes": 1 << 30}],
           "ratios": [], "float32_error": {}, "position_updates": {}}
    assert bench._targets(res)["scan_1M_float32_peak_rss_under_2GB"] is expected
