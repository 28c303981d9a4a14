"""Golden fixtures: each scenario's inputs and the float64 reference's outputs in one versioned ``.npz``.

Layout of ``golden/v<VERSION>/<scenario>.npz`` (no pickle; ``np.load(..., allow_pickle=False)`` reads it):

- ``meta``: a JSON string: ``{"version", "name", "op", "cfg": BlockConfig fields, "stack": bool,
  "inputs": [names in call order], "kwargs": {...}, "outputs": [names], "layout": {array: [offset, shape]}}``;
- ``data``: every array, float64, raveled and concatenated (one array per file keeps the fixtures small); the
  layout names them ``param.<key>`` (one block) or ``param.<l>.<key>`` (a stack), ``input.<name>`` and
  ``output.<name>`` (the reference's outputs, ``scenarios.flatten`` names).

A backend can be checked from these files alone (``load`` needs only NumPy and ``BlockConfig``).
Regenerate with ``python tests/conformance/make_golden.py`` after a deliberate change of the reference, and bump
``VERSION`` when the layout changes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from implicit_icl.reference.config import BlockConfig

from .scenarios import Scenario

VERSION = 1
ROOT = Path(__file__).parent / "golden" / f"v{VERSION}"


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".npz"


def save(path: Path, sc: Scenario, outputs: dict) -> None:
    stack = isinstance(sc.params, list)
    arrays = {}
    if stack:
        for l, p in enumerate(sc.params):
            arrays.update({f"param.{l}.{k}": np.asarray(v) for k, v in p.items()})
    else:
        arrays.update({f"param.{k}": np.asarray(v) for k, v in sc.params.items()})
    arrays.update({f"input.{k}": np.asarray(v) for k, v in sc.inputs.items()})
    arrays.update({f"output.{k}": np.asarray(v) for k, v in outputs.items()})
    kwargs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in sc.kwargs.items()}
    meta = {"version": VERSION, "name": sc.name, "op": sc.op, "cfg": sc.cfg.to_dict(), "stack": stack,
            "inputs": list(sc.inputs), "kwargs": kwargs, "outputs": list(outputs)}
    layout, offset = {}, 0
    for k, v in arrays.items():
        layout[k] = [offset, list(v.shape)]
        offset += v.size
    meta["layout"] = layout
    data = np.concatenate([np.ravel(v).astype(np.float64) for v in arrays.values()])
    np.savez_compressed(path, meta=np.asarray(json.dumps(meta)), data=data)


def load(path: Path) -> tuple[Scenario, dict]:
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta["version"] != VERSION:
            raise ValueError(f"{path}: golden version {meta['version']} != {VERSION}")
        flat = f["data"]
    data = {k: flat[off:off + int(np.prod(shape))].reshape(shape) for k, (off, shape) in meta["layout"].items()}
    if meta["stack"]:
        n_blocks = 1 + max(int(k.split(".")[1]) for k in data if k.startswith("param."))
        params = [{k.split(".", 2)[2]: v for k, v in data.items() if k.startswith(f"param.{l}.")}
                  for l in range(n_blocks)]
    else:
        params = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("param.")}
    inputs = {name: data[f"input.{name}"] for name in meta["inputs"]}                    # float64
    kwargs = {k: (np.asarray(v, dtype=np.int64) if k == "remove" else v) for k, v in meta["kwargs"].items()}
    outputs = {name: data[f"output.{name}"] for name in meta["outputs"]}
    sc = Scenario(meta["name"], meta["op"], BlockConfig.from_dict(meta["cfg"]), params, inputs, kwargs)
    return sc, outputs


def files() -> list[Path]:
    return sorted(ROOT.glob("*.npz"))
