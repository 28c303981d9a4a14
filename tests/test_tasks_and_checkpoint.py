"""The regression task, the least-squares baseline, and pickle-free atomic checkpoints."""
import json
import os

import numpy as np
import pytest

from implicit_icl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from implicit_icl.reference import BlockConfig, init_block, init_model, join_stack
from implicit_icl.reference.tasks import least_squares_predictions, prediction, regression_prompts


def test_regression_prompts_layout_and_seed():
    r = regression_prompts(4, 10, 3, seed=7)
    assert r.Z.shape == (4, 11, 4)
    np.testing.assert_array_equal(r.Z[:, :-1, :3], r.x)
    np.testing.assert_allclose(r.Z[:, :-1, 3], np.einsum("bnd,bd->bn", r.x, r.w), atol=1e-14)
    np.testing.assert_array_equal(r.query[:, 3], 0.0)
    np.testing.assert_allclose(r.target, np.einsum("bd,bd->b", r.x_query, r.w), atol=1e-14)
    np.testing.assert_array_equal(regression_prompts(4, 10, 3, seed=7).Z, r.Z)
    assert not np.array_equal(regression_prompts(4, 10, 3, seed=8).Z, r.Z)
    assert prediction(r.Z).shape == (4, 11)


def test_least_squares_is_exact_once_determined():
    r = regression_prompts(3, 8, 2, seed=0)
    ls = least_squares_predictions(r.x, r.y, r.x_query)
    assert ls.shape == (3, 9) and np.all(ls[:, 0] == 0)
    np.testing.assert_allclose(ls[:, 2:], np.repeat(r.target[:, None], 7, axis=1), atol=1e-10)  # d = 2 examples suffice
    assert np.all(np.abs(ls[:, 1] - r.target) > 1e-6)                                           # one does not


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="n_prompts must be a positive int"):
        regression_prompts(0, 5, 2)
    with pytest.raises(ValueError, match="expected x"):
        least_squares_predictions(np.zeros((2, 3)), np.zeros(2), np.zeros(2))


def test_checkpoint_round_trip_block_and_stack(tmp_path):
    cfg = BlockConfig(d_model=3, d_mlp=8, n_heads=1, kind="pre-ln")
    p = init_block(cfg, 0, ln_std=0.1)
    path = save_checkpoint(tmp_path / "b.npz", p, cfg, seed=5, val_loss=0.25)
    q, cfg2, meta = load_checkpoint(path)
    assert cfg2 == cfg and meta["seed"] == 5 and meta["n_blocks"] == 0 and meta["val_loss"] == 0.25
    assert all(np.array_equal(q[k], p[k]) for k in p)
    stack = join_stack(init_model(cfg, 3, seed=1))
    _, _, meta = load_checkpoint(save_checkpoint(tmp_path / "s.npz", stack, cfg))
    assert meta["n_blocks"] == 3
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]   # nothing left behind by the atomic write


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.npz: no such file"):
        load_checkpoint(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="junk.npz: not an .npz archive"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.zeros(3))
    with pytest.raises(CheckpointError, match="foreign.npz: no __meta__ record"):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.npz"
    cfg = BlockConfig(d_model=3, d_mlp=8)
    save_checkpoint(truncated, init_block(cfg, 0), cfg)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.npz"):
        load_checkpoint(truncated)
    wrong = tmp_path / "wrong.npz"
    save_checkpoint(wrong, init_block(BlockConfig(d_model=4, d_mlp=8), 0), cfg)
    with pytest.raises(CheckpointError, match=r"wrong.npz: params do not match its config"):
        load_checkpoint(wrong)
    other = tmp_path / "other.npz"
    np.savez(other, __meta__=np.frombuffer(json.dumps({"format": "else"}).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="other.npz: format is 'else'"):
        load_checkpoint(other)


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, __meta__=np.array([{"format": "implicit-icl-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        load_checkpoint(path)


def test_atomic_write_behaves_like_open_for_links_modes_and_read_only_files(tmp_path):
    """A symlink is followed (the target gets the new bytes, the link stays a link); setuid does not survive onto new
    contents; a file plain `open(path, "w")` may not write is not replaced either."""
    from implicit_icl.checkpoint import atomic_write_bytes

    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    atomic_write_bytes(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_text() == "new"

    tool = tmp_path / "tool"
    tool.write_text("old")
    tool.chmod(0o4755)
    atomic_write_bytes(tool, lambda f: f.write(b"new"))
    assert tool.stat().st_mode & 0o7777 == 0o755

    frozen = tmp_path / "frozen.json"
    frozen.write_text("mine")
    frozen.chmod(0o444)
    if os.access(frozen, os.W_OK):                   # root: open() could write it too, and so may we
        atomic_write_bytes(frozen, lambda f: f.write(b"new"))
        assert frozen.read_text() == "new"
    else:
        with pytest.raises(PermissionError, match="read-only"):
            atomic_write_bytes(frozen, lambda f: f.write(b"new"))
        assert frozen.read_text() == "mine"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_atomic_write_permissions_when_not_root(tmp_path, monkeypatch):
    """As root every file is writable, so the read-only refusal and the folder-permission check are exercised here
    with os.access answering as it would for a normal user; and a new file is 0666 less the umask (not 0600)."""
    from implicit_icl import checkpoint

    frozen = tmp_path / "frozen.json"
    frozen.write_text("mine")
    real_access = os.access
    monkeypatch.setattr(checkpoint.os, "access", lambda p, mode: False if str(p) in (str(frozen), str(tmp_path))
                        else real_access(p, mode))
    with pytest.raises(PermissionError, match="read-only: not overwritten"):
        checkpoint.atomic_write_bytes(frozen, lambda f: f.write(b"new"))
    assert frozen.read_text() == "mine"
    assert "no permission to write in" in checkpoint.output_path_problem(tmp_path / "new.json", "--json")
    monkeypatch.undo()
    umask = os.umask(0o027)
    try:
        checkpoint.atomic_write_bytes(tmp_path / "fresh.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(umask)
    assert (tmp_path / "fresh.json").stat().st_mode & 0o777 == 0o640
