"""Checkpoints without pickle: an ``.npz`` of the params dict plus a JSON metadata record.

Layout: every params key is an array of the archive; ``__meta__`` is the UTF-8 bytes of a JSON object holding
``format`` (``"implicit-icl-checkpoint"``), ``format_version``, ``config`` (``BlockConfig.to_dict()``),
``n_blocks`` (0 for a single block whose keys are ``attn.W_q`` …; L for a stack keyed ``blocks.<l>.…``),
``code_version`` and any extra fields (seed, step, metrics). Files are written atomically.
Loading never unpickles (``allow_pickle=False``) and every problem names the file.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from implicit_icl import __version__
from implicit_icl.reference.config import BlockConfig
from implicit_icl.reference.model import split_stack
from implicit_icl.reference.validation import check_params

FORMAT = "implicit-icl-checkpoint"
FORMAT_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent / "data"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not one of ours; the message names the file."""


def is_optim_key(key: str) -> bool:
    """Whether ``key`` holds optimizer state that a training checkpoint keeps beside the model (``optim.<slot>.<name>``,
    in a stack ``blocks.<l>.optim.<slot>.<name>``: see experiments.train.optim_key), not a model parameter."""
    return key.startswith("optim.") or (key.startswith("blocks.") and key.count(".") >= 2
                                        and key.split(".", 2)[2].startswith("optim."))


def default_checkpoint_path() -> Path:
    """The bundled ``p1`` model (trained by ``implicit-icl train --preset p1``)."""
    return DATA_DIR / "p1.npz"


def output_path_problem(path: str | os.PathLike, what: str, own_kind: tuple[str, object] | None = None,
                        force: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (``what`` names the option), or None; checked before long work.

    Missing parent folders are fine (``atomic_write_bytes`` creates them); an empty path, a folder at ``path``, a
    file where a parent folder should be, and a place inside the installed package (``package_problem``) are not.
    ``own_kind = (description, is_own)``: a file already at ``path`` is replaced only when ``is_own(path)`` says it
    is one the command wrote (a report, an export), or with ``force`` (the commands' ``--force``).
    """
    if os.fspath(path) == "":                                   # Path("") is ".", the current folder
        return f"{what} is empty: give a file name"
    path = Path(path)
    if problem := package_problem(path, what):
        return problem
    if path.is_dir():
        return f"{what}: {path} is a folder; give a file name"
    parent = _nearest_existing_parent(path)
    if parent is not None and not parent.is_dir():
        return f"{what}: cannot write {path}: {parent} is a file, not a folder"
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        return f"{what}: cannot write {path}: no permission to write in {parent}"
    if own_kind is not None and not force and (path.exists() or path.is_symlink()):
        description, is_own = own_kind
        if not _is_own(is_own, path):
            return (f"{what}: {path} exists and is not {description}: not overwritten (pass --force to replace it, "
                    "or choose another name)")
    return None


def _is_own(is_own, path: Path) -> bool:
    """``is_own(path)``, with a file that cannot be read counted as not ours."""
    try:
        return bool(is_own(path))
    except (OSError, ValueError):
        return False


def is_json_object_with(*keys: str):
    """A test for ``output_path_problem``'s ``own_kind``: the file is a JSON object holding every one of ``keys``
    (a command's own report)."""
    def test(path: Path) -> bool:
        if path.stat().st_size > 100_000_000:                       # no report of ours is that large
            return False
        record = json.loads(path.read_bytes().decode("utf-8"))
        return isinstance(record, dict) and all(k in record for k in keys)
    return test


def output_dir_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why ``path`` cannot be (or become) an output folder (``what`` names the option), or None."""
    if os.fspath(path) == "":                                   # Path("") is ".", the current folder
        return f"{what} is empty: give a folder name"
    path = Path(path)
    if problem := package_problem(path, what):
        return problem
    if path.exists() and not path.is_dir():
        return f"{what}: {path} is a file, not a folder"
    parent = _nearest_existing_parent(path)
    if parent is not None and not parent.is_dir():
        return f"{what}: cannot create {path}: {parent} is a file, not a folder"
    return None


# The folders of the installed package: (in this project's checkout, in an installed package); pyproject.toml's
# package-dir maps one onto the other. A checkout's docs/ is left out: it is where the project's documentation
# figures are regenerated (walkthrough --export docs/walkthrough.svg, reproduce --out docs/figures).
PACKAGE_FOLDERS = (("implicit_icl", "."), ("reference", "reference"), ("backends", "backends"), ("tui", "tui"),
                   ("experiments", "experiments"), ("models", "models"), ("exercises", "course"))


def package_dirs() -> list[Path]:
    """The folders of the installed package (its code and data), resolved."""
    from implicit_icl import shipped

    package = Path(__file__).resolve().parent
    dirs = [shipped(__file__, in_checkout, installed).resolve() for in_checkout, installed in PACKAGE_FOLDERS]
    if not (package.parent / "pyproject.toml").is_file():
        dirs.append(package / "docs")                               # an installed package's docs are its data
    return [d for d in dirs if d.exists()]


def package_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why ``path`` must not be written: it lies inside the installed package (its code, its bundled model), or
    None. Followed through symlinks."""
    target = Path(os.path.realpath(path))
    for folder in package_dirs():
        if target == folder or folder in target.parents:
            return (f"{what}: {path} is inside the installed implicit-icl package ({folder}): not written there; "
                    "choose a place outside it")
    return None


def _nearest_existing_parent(path: Path) -> Path | None:
    """The first of ``path``'s parents that exists: the folder the missing ones would be created in (or a file
    standing where a folder should be)."""
    return next((parent for parent in path.parents if parent.exists()), None)


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` and rename it into place.

    Like a plain ``open(path, "w")`` but all-or-nothing: a symlink is followed (its target is replaced, the link
    stays), a read-only file is refused (``PermissionError``), and the new file gets the permission bits of the one
    it replaces, else 0666 less the umask (the temporary file is created 0666 and the kernel applies the umask; the
    process umask is never changed, and never ``mkstemp``'s private 0600).
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_mode = None
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only: not overwritten")
        keep_mode = path.stat().st_mode & 0o777                       # no setuid/setgid/sticky on new contents
    for _ in range(100):
        tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None:
                os.chmod(tmp, keep_mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, params: dict, cfg: BlockConfig, **meta) -> Path:
    """Write ``params`` (a block dict or a stack keyed ``blocks.<l>.…``) and ``cfg`` plus ``meta`` to ``path``."""
    arrays = {k: np.asarray(v) for k, v in params.items()}
    if any(k.startswith("__") for k in arrays):
        raise ValueError("params keys must not start with '__'")
    n_blocks = len(split_stack(arrays)) if any(k.startswith("blocks.") for k in arrays) else 0
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
              "n_blocks": n_blocks, "code_version": __version__, **meta}
    arrays["__meta__"] = np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return Path(path)


def stored_dtypes(path) -> dict[str, np.dtype]:
    """The dtype each array of the archive at ``path`` is stored in (``load_checkpoint`` returns float64 arrays);
    read from the ``.npy`` headers alone. Raises ``CheckpointError`` naming the file if it cannot be read."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    out[name[:-len(".npy")]] = np.dtype(read_header(f)[2])
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz archive ({exc})") from None
    return out


def load_checkpoint(path) -> tuple[dict, BlockConfig, dict]:
    """``(params, cfg, meta)`` from ``path``; raises ``CheckpointError`` naming the file on any problem."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder, not an .npz file (a training run's folder holds "
                              "model.npz and checkpoint.npz)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path}: not an .npz archive (the file has no zip header; corrupt or foreign)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz archive ({exc})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path}: no __meta__ record, so it is not an implicit-icl checkpoint")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its __meta__ record is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                              f"expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {meta.get('format_version')!r} is not supported "
                              f"(this code reads {FORMAT_VERSION})")
    try:
        cfg = BlockConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config record ({exc})") from None
    params = {k: v.astype(np.float64) for k, v in arrays.items()}
    model = {k: v for k, v in params.items() if not is_optim_key(k)}       # a training state keeps Adam's too
    try:
        blocks = split_stack(model) if meta.get("n_blocks") else [model]
        for p in blocks:
            check_params(p, cfg)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: params do not match its config ({exc})") from None
    return params, cfg, meta
