"""Training (implicit-icl train): learning, determinism, kill-and-resume, checkpoint errors, the bundled model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from implicit_icl.checkpoint import CheckpointError, default_checkpoint_path, load_checkpoint
from implicit_icl.experiments.evaluate import checkpoint_validation
from implicit_icl.experiments.presets import get_preset
from implicit_icl.experiments.train import is_optim_key, model_only, optim_key

torch = pytest.importorskip("torch", reason="training needs the torch extra")

# A tiny recipe: same code path as the presets, seconds of CPU.
TINY = dict(n_points=10, batch_size=16, val_prompts=8, eval_every=20, checkpoint_every=20)
CLI = [sys.executable, "-m", "implicit_icl", "train", "--preset", "p1", "--no-progress", "--n-points", "10",
       "--batch-size", "16", "--val-prompts", "8", "--eval-every", "20", "--checkpoint-every", "20"]


def _train(tmp_path, name="run", preset="p1", **kw):
    from implicit_icl.experiments.train import train

    p = get_preset(preset).with_overrides(**{**TINY, **kw})
    return train(p, tmp_path / name, seed=0, progress=False, log=lambda m: None)


def test_bundled_p1_checkpoint_loss_matches_recorded_value_without_torch():
    """The bundled model's recorded float64 validation loss is recomputed from scratch with the NumPy reference.

    Same float64 code and prompts, so only BLAS summation order can differ: 1e-10 relative is generous.
    The recomputation runs in a fresh interpreter that must not import torch.
    """
    path = default_checkpoint_path()
    assert path.is_file(), f"bundled checkpoint {path} is missing"
    assert path.stat().st_size < 1_000_000, "the bundled checkpoint must stay well under 5 MB"
    code = (
        "import sys, json\n"
        "from implicit_icl.checkpoint import load_checkpoint, default_checkpoint_path\n"
        "from implicit_icl.experiments.evaluate import checkpoint_validation\n"
        "p, c, m = load_checkpoint(default_checkpoint_path())\n"
        "v = checkpoint_validation(p, c, m)\n"
        "print(json.dumps([v.loss, v.loss_zero, v.max_abs_diff, m['val_loss'], m['val_loss_zero'], "
        "'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loss, loss_zero, max_diff, recorded, recorded_zero, torch_loaded = json.loads(out.stdout)
    assert not torch_loaded
    assert loss == pytest.approx(recorded, rel=1e-10)
    assert loss_zero == pytest.approx(recorded_zero, rel=1e-12)
    # The model learns in context: at the full prompt length its loss is at most 1/10 of predicting 0.
    assert loss <= loss_zero / 10
    # Its validation "via ΔW" agrees to float64 round-off (outputs are O(1); 1e-12 is ~5000 ulps).
    assert max_diff < 1e-12


def test_bundled_checkpoint_is_a_clean_p1_model():
    params, cfg, meta = load_checkpoint(default_checkpoint_path())
    assert cfg == get_preset("p1").cfg
    assert meta["preset"] == get_preset("p1").to_dict()
    assert meta["step"] == get_preset("p1").steps
    assert not any(is_optim_key(k) for k in params), "the bundled model must not carry optimizer state"


def test_short_training_learns_and_records_e1_metrics(tmp_path):
    result = _train(tmp_path, steps=120, n_points=20, batch_size=32, val_prompts=32, eval_every=40)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 40, 80, 120]
    first, last = lines[0], lines[-1]
    # Measured: ~1.9 → ~0.3 in 120 steps; a factor 2 leaves room for BLAS differences across machines.
    assert last["val_loss_f64"] < 0.5 * first["val_loss_f64"]
    for r in lines:
        # float32 (torch) vs float64 (reference) losses of the same weights: float32 round-off.
        assert r["val_loss"] == pytest.approx(r["val_loss_f64"], rel=1e-5)
        assert r["max_abs_diff_f32"] < 1e-5      # predictions O(1): ~100 float32 ulps
        assert r["max_abs_diff_f64"] < 1e-12     # ~5000 float64 ulps
    assert result.validation.loss == pytest.approx(last["val_loss_f64"], rel=1e-12)
    params, cfg, meta = load_checkpoint(tmp_path / "run" / "model.npz")
    assert meta["val_loss"] == result.validation.loss and meta["seed"] == 0


def test_training_is_deterministic_and_stop_then_resume_is_bit_identical(tmp_path):
    from implicit_icl.experiments.train import train

    full = _train(tmp_path, "full", steps=60)
    p = get_preset("p1").with_overrides(**TINY, steps=60)
    part = train(p, tmp_path / "part", seed=0, progress=False, stop_after=30, log=lambda m: None)
    assert part.step == 30 and not (tmp_path / "part" / "model.npz").exists()
    resumed = train(p, tmp_path / "part", seed=0, resume=True, progress=False, log=lambda m: None)
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], resumed.params[k], err_msg=k)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "part" / "metrics.jsonl").read_text()


def test_resume_keeps_the_recorded_thread_count_and_says_when_it_changes(tmp_path):
    from implicit_icl.experiments.train import train

    p = get_preset("p1").with_overrides(**TINY, steps=40)
    before = torch.get_num_threads()
    train(p, tmp_path / "run", seed=0, progress=False, threads=before + 1, stop_after=20, log=lambda m: None)
    assert torch.get_num_threads() == before                            # the caller's setting is restored
    n = before + 1
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[2]["threads"] == n
    said = []
    train(p, tmp_path / "run", seed=0, resume=True, progress=False, stop_after=10, log=said.append)
    assert any(f"on {n} torch thread(s)" in m for m in said) and not any("note:" in m for m in said), said
    said.clear()
    train(p, tmp_path / "run", seed=0, resume=True, progress=False, threads=n + 1, log=said.append)
    assert any(f"written on {n} torch thread(s), this run uses {n + 1}" in m for m in said), said
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[2]["threads"] == n + 1


def test_resume_of_a_checkpoint_without_a_recorded_thread_count_says_so(tmp_path):
    from implicit_icl.checkpoint import save_checkpoint
    from implicit_icl.experiments.train import train

    p = get_preset("p1").with_overrides(**TINY, steps=30)
    train(p, tmp_path / "run", seed=0, progress=False, stop_after=20, log=lambda m: None)
    path = tmp_path / "run" / "checkpoint.npz"
    arrays, cfg, meta = load_checkpoint(path)
    old = {k: v for k, v in meta.items() if k not in ("threads", "format", "format_version", "config", "n_blocks")}
    save_checkpoint(path, arrays, cfg, **old)                            # as an older version wrote it
    assert "threads" not in load_checkpoint(path)[2]
    said = []
    train(p, tmp_path / "run", seed=0, resume=True, progress=False, log=said.append)
    assert any("does not record its torch thread count" in m for m in said), said


def _ckpt_step(path: Path) -> int:
    try:
        return load_checkpoint(path)[2]["step"]
    except CheckpointError:
        return -1


def test_killed_training_subprocess_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real `implicit-icl train` mid-run, rerun with --resume, compare with an uninterrupted run."""
    # ~7 ms a step here: the kill lands a few ms after the checkpoint at step >= 100, ~500 steps (seconds) before
    # the end, and the three runs take ~12 s instead of ~23 s at 1500 steps.
    steps = "600"
    ref = subprocess.run(CLI + ["--steps", steps, "--out", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(CLI + ["--steps", steps, "--out", str(run_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and _ckpt_step(run_dir / "checkpoint.npz") < 100:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = _ckpt_step(run_dir / "checkpoint.npz")
    assert 100 <= killed_at < int(steps), f"the run was not interrupted mid-way (checkpoint at {killed_at})"
    assert not (run_dir / "model.npz").exists()

    again = subprocess.run(CLI + ["--steps", steps, "--out", str(run_dir), "--resume"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming {run_dir / 'checkpoint.npz'} at step {killed_at}" in again.stderr
    a, _, meta_a = load_checkpoint(tmp_path / "ref" / "checkpoint.npz")
    b, _, meta_b = load_checkpoint(run_dir / "checkpoint.npz")
    assert sorted(a) == sorted(b) and any(is_optim_key(k) for k in a)
    for k in a:  # model and Adam moments, bit for bit
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_a["adam_step"] == meta_b["adam_step"] == int(steps)
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()


def test_resume_rejects_corrupt_foreign_and_mismatched_checkpoints(tmp_path):
    from implicit_icl.experiments.train import train

    p = get_preset("p1").with_overrides(**TINY, steps=20)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = run_dir / "checkpoint.npz"
    ckpt.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(CheckpointError, match=str(ckpt).replace("\\", "\\\\") + ".*not"):
        train(p, run_dir, resume=True, progress=False)
    np.savez(ckpt, weights=np.zeros(3))                                   # someone else's npz
    with pytest.raises(CheckpointError, match=f"{ckpt}.*not an implicit-icl checkpoint"):
        train(p, run_dir, resume=True, progress=False)
    ckpt.unlink()
    _train(tmp_path, "run", steps=20)
    model = run_dir / "model.npz"
    os.replace(model, ckpt)                                               # a model, not a training state
    with pytest.raises(CheckpointError, match=f"{ckpt}: not a training checkpoint"):
        train(p, run_dir, resume=True, progress=False)
    _train(tmp_path, "other", steps=20)
    with pytest.raises(CheckpointError, match="different preset.*lr"):
        train(p.with_overrides(lr=0.5), tmp_path / "other", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="seed 0, not 3"):
        train(p, tmp_path / "other", seed=3, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="pass `resume` to continue it, or choose another `out`"):
        train(p, tmp_path / "other", progress=False)


def test_cli_reports_a_corrupt_checkpoint_by_name(tmp_path):
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    (run_dir / "checkpoint.npz").write_bytes(b"\x00" * 64)
    out = subprocess.run(CLI + ["--steps", "20", "--out", str(run_dir), "--resume"], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"checkpoint {run_dir / 'checkpoint.npz'}: not an .npz archive" in out.stderr
    assert "Traceback" not in out.stderr


def test_diverging_training_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path):
    """Adam at lr 1e4 overflows float32 within a few steps: a clear error naming lr, no non-finite state saved."""
    from implicit_icl.experiments.train import TrainingError

    with pytest.raises(TrainingError, match=r"diverged at step \d+.*lower `lr`\. The last checkpoint in .* is kept"):
        _train(tmp_path, "div", steps=40, lr=1e4, checkpoint_every=1)
    params, _, meta = load_checkpoint(tmp_path / "div" / "checkpoint.npz")    # loads: every array is finite
    assert 0 < meta["step"] < 40 and all(np.isfinite(v).all() for v in params.values())
    assert not (tmp_path / "div" / "model.npz").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path):
    """Issue 17 item 6: lr 1e39 made torch's Adam raise a RuntimeError (a traceback) and left checkpoint.npz and
    metrics.jsonl behind. A runtime failure is one TrainingError line; a failed start removes what it wrote."""
    from implicit_icl.experiments.train import TrainingError

    with pytest.raises(TrainingError, match=r"training failed at step 1 \(Adam lr 1e\+39\): .*overflow.*"
                                            r"No training step was checkpointed, so the run.s files were removed"):
        _train(tmp_path, "big", steps=40, lr=1e39)
    assert not (tmp_path / "big").exists()
    with pytest.raises(TrainingError, match="diverged at step 2.*files were removed"):     # lr 1e4, see above
        _train(tmp_path, "div", steps=40, lr=1e4)
    assert not (tmp_path / "div").exists()
    (tmp_path / "mine").mkdir()                                           # a folder of the user's is kept
    with pytest.raises(TrainingError):
        _train(tmp_path, "mine", steps=40, lr=1e39)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("implicit-icl train: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, option", [
    (["--batch-size", "100000000"], "--batch-size 100000000 with --n-points 50"),
    (["--n-points", "1000000"], "--batch-size 64 with --n-points 1000000"),
    (["--val-prompts", "100000000000"], "--val-prompts 100000000000 with --n-points 50"),
])
def test_train_refuses_sizes_that_cannot_fit_in_memory_before_any_file(tmp_path, capsys, argv, option):
    """Issue 17 item 7: `--batch-size 100000000` (and --n-points, --val-prompts) ended in NumPy's
    _ArrayMemoryError traceback; now an up-front memory estimate refuses them (exit 2, one line, no files)."""
    from implicit_icl.cli import main

    assert main(["train", "--out", str(tmp_path / "x"), "--steps", "2", *argv]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"error: {option}: " in line and "GiB of memory, more than this machine's" in line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["train", "--out", "OUT", "--steps", "1"], ["bench", "--quick"]])
def test_threads_has_an_upper_bound(tmp_path, capsys, monkeypatch, command):
    """Issue 17 item 5: `--threads 100000` crashed torch (exit 139, no message) in train and bench."""
    from implicit_icl.cli import main
    from implicit_icl.commands.options import threads_limit

    monkeypatch.chdir(tmp_path)
    assert main([*command, "--threads", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--threads must be from 1 to {threads_limit()} " in err and "got 100000" in err
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_folder_it_did_not_create(tmp_path, capsys, monkeypatch):
    """Issue 17 item 1: `train --out w` replaced w/model.npz and w/metrics.jsonl of the user's; `--out ""` trained
    into the current folder. A new run needs a new or empty folder, unless --overwrite (or --resume)."""
    from implicit_icl.cli import main

    w = tmp_path / "w"
    w.mkdir()
    (w / "model.npz").write_text("MINE")
    (w / "metrics.jsonl").write_text("notes")
    argv = ["train", "--no-progress", "--steps", "2", "--n-points", "10", "--batch-size", "16", "--val-prompts", "8"]
    assert main([*argv, "--out", str(w)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out: {w} is not empty (it holds metrics.jsonl, model.npz); pass --overwrite" in line
    assert (w / "model.npz").read_text() == "MINE" and (w / "metrics.jsonl").read_text() == "notes"
    assert main([*argv, "--out", str(w), "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite exclude each other" in _one_line(capsys.readouterr().err)
    monkeypatch.chdir(w)
    assert main([*argv, "--out", ""]) == 2
    assert _one_line(capsys.readouterr().err).endswith("--out is empty: give a folder name\n")
    assert sorted(p.name for p in w.iterdir()) == ["metrics.jsonl", "model.npz"]
    assert main([*argv, "--out", str(w), "--overwrite"]) == 0                # said explicitly: a fresh run
    assert load_checkpoint(w / "model.npz")[2]["step"] == 2
    capsys.readouterr()
    assert main([*argv, "--out", str(w)]) == 2                               # a run is there: --resume is the hint
    assert "pass --resume to continue the run in it, or --overwrite" in _one_line(capsys.readouterr().err)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--out", str(empty)]) == 0                           # an empty folder is fine


def test_resume_refuses_a_run_whose_metrics_were_deleted_or_truncated(stopped_run):
    """Issue 17 item 12: a resume after metrics.jsonl was deleted went on and kept only the new lines."""
    from implicit_icl.experiments.train import train

    p, run_dir, *_ = stopped_run
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)                  # steps 0 and 20
    metrics.write_text(lines[0])
    with pytest.raises(CheckpointError, match=f"metrics file {metrics} lacks the evaluations at step 20: the "
                                              "checkpoint at step 20 needs"):
        train(p, run_dir, seed=0, resume=True, progress=False, log=lambda m: None)
    metrics.unlink()
    with pytest.raises(CheckpointError, match=f"metrics file {metrics} is missing: .*`overwrite`"):
        train(p, run_dir, seed=0, resume=True, progress=False, log=lambda m: None)


@pytest.mark.parametrize("key", ["mlp.W", "optim.exp_avg_sq.mlp.W"])
def test_resume_refuses_a_checkpoint_re_saved_in_another_dtype(stopped_run, key):
    """Issue 17 item 12: a checkpoint whose mlp.W was re-saved as float16 resumed without complaint. A float64
    copy holding the float32 values (what load_checkpoint gives) is lossless and still resumes."""
    from implicit_icl.checkpoint import save_checkpoint
    from implicit_icl.experiments.train import train

    p, run_dir, arrays, cfg, meta = stopped_run
    path = run_dir / "checkpoint.npz"
    save_checkpoint(path, arrays, cfg, **meta)                              # float64, float32 values: fine
    train(p, run_dir, seed=0, resume=True, progress=False, stop_after=1, log=lambda m: None)
    _, _, meta = load_checkpoint(path)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "n_blocks")}
    arrays = {k: v.astype(np.float32) for k, v in load_checkpoint(path)[0].items()}
    arrays[key] = arrays[key].astype(np.float16)
    save_checkpoint(path, arrays, cfg, **meta)
    what = "Adam's state" if key.startswith("optim") else "the parameter"
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: {what} '{key}' is stored as float16, expected "
                                              "float32"):
        train(p, run_dir, seed=0, resume=True, progress=False, log=lambda m: None)
    arrays[key] = arrays[key].astype(np.float64) + 1e-12                    # wider, but not float32 values
    save_checkpoint(path, arrays, cfg, **meta)
    with pytest.raises(CheckpointError, match=f"'{key}' is stored as float64 with values that are not float32"):
        train(p, run_dir, seed=0, resume=True, progress=False, log=lambda m: None)


def test_progress_into_a_log_file_is_lines_without_carriage_returns(tmp_path):
    """Issue 17: with stderr redirected, the bar wrote a carriage-return update per step (54 KB from reproduce,
    which trains through the same bar). Now: plain lines, at the start and the end (and one per 10 s)."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([a for a in CLI if a != "--no-progress"] + ["--steps", "40", "--out", str(tmp_path / "run")],
                       stderr=f, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text
    bars = [line for line in text.splitlines() if line.startswith("train p1")]
    assert 2 <= len(bars) <= 4 and bars[-1].startswith("train p1: 100%") and "40/40" in bars[-1], text


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be from 0 to 2**64 - 1, got -1"),
    (["--seed", str(2**64)], "--seed must be from 0 to 2**64 - 1, got 18446744073709551616"),
    (["--lr", "inf"], "--lr must be a number > 0 and at most 1 (Adam's learning rate), got inf"),
    (["--lr", "nan"], "--lr must be a number > 0 and at most 1 (Adam's learning rate), got nan"),
    (["--lr", "1e39"], "--lr must be a number > 0 and at most 1 (Adam's learning rate), got 1e+39"),  # torch crashed
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
])
def test_train_cli_rejects_bad_numbers_by_name(tmp_path, capsys, argv, message):
    """A bad argument exits with status 2 (as argparse's own errors and `reproduce` do), one line naming it."""
    from implicit_icl.cli import main

    assert main(["train", "--out", str(tmp_path / "x"), "--steps", "2", *argv]) == 2
    assert capsys.readouterr().err == f"implicit-icl train: error: {message}\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_cli_reports_an_unusable_out_directory(tmp_path, capsys, command):
    from implicit_icl.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    extra = ["--steps", "2"] if command == "train" else ["--quick"]
    assert main([command, "--out", str(blocker / "run"), "--no-progress", *extra]) == 2   # before any work
    err = capsys.readouterr().err
    assert f"implicit-icl {command}: error: --out: cannot create {blocker / 'run'}: {blocker} is a file" in err
    assert main([command, "--out", str(blocker), "--no-progress", *extra]) == 2
    assert f"implicit-icl {command}: error: --out: {blocker} is a file, not a folder" in capsys.readouterr().err


def test_p2_stack_training_checkpoint_is_a_valid_stack_with_adam_state(tmp_path):
    result = _train(tmp_path, "p2", preset="p2", steps=20)
    params, cfg, meta = load_checkpoint(tmp_path / "p2" / "checkpoint.npz")
    assert meta["n_blocks"] == 3 and cfg == get_preset("p2").cfg
    assert set(model_only(params)) == set(result.params)
    assert {optim_key(k, "exp_avg") for k in result.params} <= set(params)
    val = checkpoint_validation(*load_checkpoint(tmp_path / "p2" / "model.npz"))
    assert val.loss == pytest.approx(result.validation.loss, rel=1e-12)


names = st.from_regex(r"(blocks\.[0-9]{1,2}\.)?(attn|mlp|ln1)\.[A-Za-z_]{1,6}", fullmatch=True)


@given(names, st.sampled_from(["exp_avg", "exp_avg_sq"]))
def test_optimizer_keys_are_recognised_and_never_model_keys(name, slot):
    key = optim_key(name, slot)
    assert is_optim_key(key) and not is_optim_key(name)
    assert key.startswith("blocks.") == name.startswith("blocks.")   # stays inside its block in a stack


# ---- Regression tests for review findings: interrupts, damaged training state, what a resume may change.
def test_interrupt_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys, monkeypatch):
    """Review: an interrupt before the first checkpoint said "the last checkpoint is kept; rerun with --resume"."""
    from implicit_icl.cli import main
    from implicit_icl.experiments import train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"no checkpoint was written in {out} yet; rerun the same command without --resume" in err
    assert "is kept" not in err
    monkeypatch.undo()
    train_module.train(get_preset("p1").with_overrides(**TINY, steps=40), out, progress=False, stop_after=20,
                       log=lambda m: None)
    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(["train", "--out", str(out), "--no-progress", "--resume"]) == 130
    assert f"the checkpoint in {out} (step 20) is kept; rerun the same command with --resume" in capsys.readouterr().err


@pytest.fixture
def stopped_run(tmp_path):
    """A 40-step TINY run stopped at step 20 (Adam has stepped): ``(preset, run dir, arrays, cfg, meta)``."""
    from implicit_icl.experiments.train import train

    p = get_preset("p1").with_overrides(**TINY, steps=40)
    train(p, tmp_path / "run", seed=0, progress=False, stop_after=20, log=lambda m: None)
    arrays, cfg, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "n_blocks")}
    return p, tmp_path / "run", arrays, cfg, meta


def _nan_at_0(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


@pytest.mark.parametrize("damage, message", [
    (lambda a, m: a.pop("optim.exp_avg.mlp.W"), r"Adam's state 'optim.exp_avg.mlp.W' is missing"),
    (lambda a, m: a.update({"optim.exp_avg_sq.mlp.W": a["optim.exp_avg_sq.mlp.W"][:, :2]}),
     r"Adam's state 'optim.exp_avg_sq.mlp.W' has shape \(128, 2\), expected finite values of shape \(128, 3\)"),
    (lambda a, m: a.update({"optim.exp_avg.mlp.b": _nan_at_0(a["optim.exp_avg.mlp.b"])}),
     r"Adam's state 'optim.exp_avg.mlp.b' holds non-finite values"),
    (lambda a, m: a.update({"optim.exp_avg_sq.attn.W_q": -a["optim.exp_avg_sq.attn.W_q"] - 1}),
     r"'optim.exp_avg_sq.attn.W_q' holds negative values"),
    (lambda a, m: m.update(step="20"), r"its meta 'step' must be a whole number >= 0, got '20'"),
    (lambda a, m: m.update(train_loss_sum=None), r"its meta 'train_loss_sum' must be a finite number, got None"),
    (lambda a, m: m.update(threads=0), r"its meta 'threads' must be a whole number >= 1, got 0"),
    (lambda a, m: m.update(preset=[1]), r"its meta 'preset' must be a record"),
    (lambda a, m: m.update(adam_step=19), r"its meta 'adam_step' 19 differs from 'step' 20"),
    (lambda a, m: a.update({"mlp.W": a["mlp.W"][:, :2]}), r"params\['mlp.W'\] must have shape \(128, 3\), got \(128, 2\)"),
    (lambda a, m: m.update(train_loss_sum=True), r"its meta 'train_loss_sum' must be a finite number, got True"),
    (lambda a, m: m.update(train_loss_count=21), r"its meta 'train_loss_count' must be at most the step, 20"),
])
def test_resume_rejects_a_damaged_training_state_by_name(stopped_run, damage, message):
    """Review: these reached torch (KeyError, RuntimeError in Adam, TypeError, or a false "diverged, lower --lr")."""
    from implicit_icl.checkpoint import save_checkpoint
    from implicit_icl.experiments.train import train

    p, run_dir, arrays, cfg, meta = stopped_run
    damage(arrays, meta)
    path = save_checkpoint(run_dir / "checkpoint.npz", arrays, cfg, **meta)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: .*{message}"):
        train(p, run_dir, seed=0, resume=True, progress=False, log=lambda m: None)


def test_resume_mismatch_shows_the_recorded_and_the_given_values(stopped_run):
    from implicit_icl.experiments.train import train

    p, run_dir, *_ = stopped_run
    with pytest.raises(CheckpointError) as info:
        train(p.with_overrides(lr=0.5, eval_every=10), run_dir, resume=True, progress=False, log=lambda m: None)
    assert "`eval_every`: recorded 20, given 10; `lr`: recorded 0.001, given 0.5" in str(info.value)


def test_the_train_command_names_the_resume_checks_arguments_as_its_options(stopped_run, capsys):
    """The library names ``Preset`` fields and ``train``'s arguments; the command speaks of its options."""
    from implicit_icl.cli import main

    p, run_dir, *_ = stopped_run
    argv = ["train", "--no-progress", "--out", str(run_dir), "--resume", "--steps", "40", "--n-points", "10",
            "--batch-size", "16", "--val-prompts", "8"]
    assert main([*argv, "--eval-every", "10", "--checkpoint-every", "20", "--lr", "0.5"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "(--eval-every: recorded 20, given 10; --lr: recorded 0.001, given 0.5); resume with the recorded " \
           "values (on resume only --checkpoint-every may change, and --steps may be raised)" in err
    assert main([*argv, "--eval-every", "20", "--checkpoint-every", "10", "--steps", "20"]) == 1
    assert "--steps: recorded 40, given 20: --steps can be raised on resume, not lowered" in capsys.readouterr().err
    assert main([*argv, "--eval-every", "20", "--checkpoint-every", "10"]) == 0
    err = capsys.readouterr().err
    assert "\n--checkpoint-every 10 from now on (recorded 20); the weights do not depend on it\n" in err
    assert "`" not in err


def test_resume_may_change_checkpoint_every_and_raise_steps_with_the_same_result(tmp_path):
    """Neither changes the weights or the metrics: the run ends as an uninterrupted run with the final options."""
    from implicit_icl.experiments.train import train

    full = _train(tmp_path, "full", steps=80)
    p = get_preset("p1").with_overrides(**TINY, steps=40)
    train(p, tmp_path / "part", progress=False, stop_after=20, log=lambda m: None)
    said = []
    train(p.with_overrides(checkpoint_every=10), tmp_path / "part", resume=True, progress=False, log=said.append)
    assert any("`checkpoint_every` 10 from now on (recorded 20)" in m for m in said), said
    assert (tmp_path / "part" / "model.npz").exists()                    # a finished 40-step run, extended:
    done = train(p.with_overrides(steps=80, checkpoint_every=10), tmp_path / "part", resume=True, progress=False,
                 log=said.append)
    assert any("extending the run from 40 to 80 steps" in m for m in said), said
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], done.params[k], err_msg=k)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "part" / "metrics.jsonl").read_text()


def test_resume_refuses_steps_it_cannot_continue_exactly(tmp_path):
    from implicit_icl.experiments.train import train

    _train(tmp_path, "r", steps=30)                       # ends with an extra evaluation at 30 (eval_every 20)
    p = get_preset("p1").with_overrides(**TINY, steps=30)
    with pytest.raises(CheckpointError, match=r"`steps`: recorded 30, given 60: .*off the `eval_every` 20 grid"):
        train(p.with_overrides(steps=60), tmp_path / "r", resume=True, progress=False, log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"`steps`: recorded 30, given 20: `steps` can be raised on resume, "
                                              "not lowered"):
        train(p.with_overrides(steps=20), tmp_path / "r", resume=True, progress=False, log=lambda m: None)


def test_resume_from_a_checkpoint_written_before_the_first_evaluation(tmp_path):
    """Every training loss since the last evaluation is still in the running sum there (count == step): a valid
    state, which a stricter count check would refuse. The resumed run ends as the uninterrupted one."""
    from implicit_icl.experiments.train import train

    p = get_preset("p1").with_overrides(**dict(TINY, eval_every=25, checkpoint_every=10), steps=30)
    train(p, tmp_path / "cut", seed=0, progress=False, stop_after=10, log=lambda m: None)
    meta = load_checkpoint(tmp_path / "cut" / "checkpoint.npz")[2]
    assert meta["step"] == meta["train_loss_count"] == 10
    train(p, tmp_path / "cut", seed=0, resume=True, progress=False, log=lambda m: None)
    train(p, tmp_path / "whole", seed=0, progress=False, log=lambda m: None)
    cut, whole = (load_checkpoint(tmp_path / d / "model.npz")[0] for d in ("cut", "whole"))
    assert all(np.array_equal(cut[k], whole[k]) for k in whole)
