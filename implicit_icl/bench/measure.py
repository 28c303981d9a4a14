"""The child side of ``implicit-icl bench``: one measurement per process, with its floors timed in the same process.

``worker(spec)`` runs the measurement ``spec["op"]`` names and returns its figures as a JSON-ready dict. Floors are
the work a figure cannot avoid, timed in the same process and interleaved with the figure's own repetitions (these
machines are noisy, DESIGN "Performance stance"):

- the trajectory: the K/V projection matmul over the same context (``C [W_k; W_v]ᵀ`` into a preallocated output),
  one read and write of the context (a copy into a preallocated buffer), and the scan's own matmuls (the ones its
  exact form cannot avoid: about 2.5 times the K/V matmul's arithmetic, so the issue's 3× target leaves the
  element-wise work half a K/V matmul);
- the updates at every position: one forward of the block through the same backend, on the same input;
- the library's block forward: the same forward in plain eager torch ops (``torch_ops.block``, no argument checks);
- a whole model's updates at every layer and position: one forward of the model through the same backend.

Which path ran (``"eager"`` or ``"compiled"``) is what the backend says in a ``path`` attribute if it has one, else
``"compiled"`` when TorchDynamo compiled a graph in this process, else ``"eager"``. Time spent on the first calls
beyond the steady state is reported as ``first_call_overhead_s``; ``compile_s`` repeats it where the path is
compiled (a compiled path's first calls are its compilation).
"""
from __future__ import annotations

import time

from .baselines import float32_error, numpy_reference, per_prefix
from .common import (PeakMemory, calls, first_calls, peak_rss, prepared, ran_compiled, setup,
                     start_measurement, sync, timed, with_path)


# ---------------------------------------------------------------------------------------------------------------
# the trajectory and its floors
# ---------------------------------------------------------------------------------------------------------------

def scan(spec) -> dict:
    """The O(n·d) trajectory over the whole context (only the norms read), its extra memory on the first full-size
    call, and its two floors, each the best of the same number of interleaved repetitions."""
    import torch

    from implicit_icl.backends import get_backend

    from implicit_icl.backends.torch_backend import slab_for
    from implicit_icl.backends.torch_scan import SLABS

    cfg, params, context, query = setup(spec)
    device = spec["device"]
    tb = get_backend("torch", device=device, dtype=spec["dtype"], compile=spec.get("compile", False))
    C, x = tb.asarray(context), tb.asarray(query)
    P, how = prepared(tb, params, cfg)
    del context

    def run():
        tr = tb.trajectory(P, cfg, C, x)
        return tr.delta_W_norm                                        # the only field read: the norms

    # two full slabs: a compiled path compiles its step here, before the memory and the timed calls
    warm = first_calls(lambda: tb.trajectory(P, cfg, C[:2 * slab_for(device)], x), device)
    slabs = dict(SLABS)
    memory = PeakMemory(device)
    t0 = time.perf_counter()
    norms = run()
    sync(device)
    first_full = time.perf_counter() - t0
    extra = memory.extra_bytes()
    finite = bool(torch.isfinite(norms).all())
    del norms
    floors, walls, cpus = _floors(P, C, device, cfg.n_heads), [], []
    reps = 3 if C.shape[0] <= 65536 else 2
    for _ in range(reps):                                             # interleaved: the same noise for all three
        c0 = time.process_time()
        walls.append(timed(run, device))
        cpus.append(time.process_time() - c0)
        for f in floors.values():
            f["times"].append(timed(f["_fn"], device))
    out = {"wall_s": min(walls), "cpu_s": min(cpus), "reps": reps, "first_full_call_s": first_full,
           "compile_requested": bool(spec.get("compile", False)),
           "dtype": spec["dtype"], "backend": "torch", "extrapolated": False, "finite": finite,
           "method": "O(n·d) scan (trajectory; only delta_W_norm read), best of reps",
           "input_bytes": C.numel() * C.element_size(), "extra_bytes": extra, "extra_memory": memory.what,
           "params": how,
           "floors": {k: {"wall_s": min(f["times"]), "what": f["what"]} for k, f in floors.items()}}
    out.update(peak_rss_bytes=peak_rss())
    if str(device).startswith("cuda"):
        out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    overhead = (warm[0] - warm[1]) + max(0.0, first_full - out["wall_s"])
    out["slabs"] = {k: SLABS[k] - slabs.get(k, 0) for k in ("compiled", "rescued", "eager")}
    ran = ("compiled" if out["slabs"]["compiled"] else "eager", "the slabs the timed calls ran (torch_scan.SLABS)")
    return with_path(out, tb, overhead, ran)


def _floors(P, C, device, n_heads: int) -> dict:
    """The trajectory's floors over context ``C`` (n, D): callables with preallocated outputs, each run once."""
    import torch

    W_kv = torch.cat([P["attn.W_k"], P["attn.W_v"]]).T.contiguous()                # (D, 2·d_kv)
    kv = torch.empty(C.shape[0], W_kv.shape[1], dtype=C.dtype, device=C.device)
    copy = torch.empty_like(C)
    n, D = C.shape
    square, logits = (torch.empty(n, k, dtype=C.dtype, device=C.device) for k in (D, n_heads))
    own = [(torch.ones(D, n_heads, dtype=C.dtype, device=C.device), logits)] + \
        [(torch.ones(D, D, dtype=C.dtype, device=C.device), square)] * 5       # values do not matter, shapes do
    floors = {
        "kv_matmul": {"_fn": lambda: torch.matmul(C, W_kv, out=kv),
                      "what": f"the K/V projection matmul C [W_k; W_v]ᵀ over the same context, ({C.shape[0]}, "
                              f"{C.shape[1]}) × ({W_kv.shape[0]}, {W_kv.shape[1]}) into a preallocated output"},
        "read_write": {"_fn": lambda: copy.copy_(C),
                       "what": "one read and one write of the context (a copy into a preallocated buffer)"},
        "scan_matmuls": {"_fn": lambda: [torch.matmul(C, W, out=out) for W, out in own],
                         "what": "the scan's own matmuls over the same context, none of them avoidable in its exact "
                                 "form: the logits C qkᵀ (D × H), the values C W_vᵀ, W_o on the means and on their "
                                 "increments, the Gram matrix G on δ_i and on the steps (D × D each)"},
    }
    for f in floors.values():
        f["_fn"]()                                                    # warm: first touch of the output pages
        f["times"] = []
    sync(device)
    return floors


# ---------------------------------------------------------------------------------------------------------------
# updates at every position against one forward, and a whole model
# ---------------------------------------------------------------------------------------------------------------

def best_of(fn, device, reps: int) -> float:
    return min(timed(fn, device) for _ in range(reps))


def position_updates(spec) -> dict:
    """For each T: updates at every position against one forward of the block (torch and, for T ≤ 4,096, NumPy),
    and the library's forward against the same forward in plain eager ops."""
    out = {"Ts": [], "numpy_max_T": 4096}
    for T in spec["Ts"]:
        try:
            out["Ts"].append(_position_updates_at(spec, T))
        except Exception as exc:                                      # noqa: BLE001 - one T failing (OOM) is listed
            out["Ts"].append({"T": T, "error": f"{type(exc).__name__}: {exc}"})
    failed = [r for r in out["Ts"] if "error" in r]
    if failed:
        out["error"] = "; ".join(f"T = {r['T']}: {r['error']}" for r in failed)
    return out


def _position_updates_at(spec, T: int) -> dict:
    """One T of :func:`position_updates`: ``"torch"`` (eager), ``"torch_compiled"`` (with ``spec["compile"]``) and,
    for T ≤ 4,096, ``"numpy"``, each the best of its repetitions after its first calls."""
    import torch

    cfg, params, _, _ = setup(dict(spec, n=0))
    Z = torch.randn(T, cfg.d_model, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = {"T": T}
    for name in ("torch", "torch_compiled", "numpy"):
        if name == "numpy" and T > 4096:                              # O(T²) float64 attention on the host
            continue
        if name == "torch_compiled" and not spec.get("compile"):
            continue
        res[name] = _position_updates_of(spec, name, cfg, params, Z)
    return res


def _position_updates_of(spec, name: str, cfg, params, Z) -> dict:
    """Updates at every position and one block forward through one backend (``name`` as in
    :func:`_position_updates_at`); for torch also the forward in plain eager ops and the path that ran."""
    from implicit_icl.backends import get_backend, torch_ops

    device, reps = spec["device"], spec["reps"]
    on_torch = name != "numpy"
    be = get_backend("torch" if on_torch else "numpy", device=device if on_torch else None,
                     dtype="float32" if on_torch else None, **({"compile": True} if name == "torch_compiled" else {}))
    (P, how), Zb = prepared(be, params, cfg), be.asarray(Z)
    r = reps if on_torch else max(1, reps // 5)
    pos, blk = (lambda: be.position_updates(P, cfg, Zb, query="own")), (lambda: be.block(P, cfg, Zb))
    before = calls()
    # torch: first calls timed apart (a compiled path compiles both here); NumPy: one warm-up call, nothing to
    # compile (its updates are O(T²) in float64: seconds at T = 4,096)
    warm = [first_calls(f, device) for f in (pos, blk)] if on_torch else blk()
    entry = {"position_updates_s": best_of(pos, device, r), "block_s": best_of(blk, device, r), "reps": r,
             "dtype": be.dtype, "params": how}
    if on_torch:
        entry["eager_block_s"] = best_of(lambda: torch_ops.block(P, cfg, Zb), device, r)
        overhead = (warm[0][0] - entry["position_updates_s"]) + (warm[1][0] - entry["block_s"])
        with_path(entry, be, overhead, ran_compiled(before))
    return entry


def model_updates(spec) -> dict:
    """Every layer's updates at every position of a stack against one forward of the stack, both through the
    backend: ``model_position_updates`` if the backend has it, else ``model_forward`` and ``position_updates`` on
    each block's input (what a user of today's API writes); with ``spec["compile"]`` the same through the compiled
    backend too, under ``"compiled"``."""
    import torch

    from implicit_icl import reference as ref
    from implicit_icl.backends import get_backend

    cfg, _, _, _ = setup(dict(spec, n=0))
    layers, batch, T, device = spec["layers"], spec["batch"], spec["T"], spec["device"]
    g = torch.Generator(device=device).manual_seed(3)
    Z = torch.randn(batch, T, cfg.d_model, generator=g, dtype=torch.float32, device=device)
    params = ref.init_model(cfg, layers, 0, bias_std=0.1, ln_std=0.1)
    out = {"layers": layers, "batch": batch, "T": T, "kind": cfg.kind}
    out.update(_model_updates_of(get_backend("torch", device=device, dtype="float32"), params, cfg, Z, spec))
    if spec.get("compile"):
        tb = get_backend("torch", device=device, dtype="float32", compile=True)
        out["compiled"] = _model_updates_of(tb, params, cfg, Z, spec)
    return out


def _model_updates_of(tb, params, cfg, Z, spec) -> dict:
    """:func:`model_updates`' figures through the backend ``tb``, the updates and forwards interleaved."""
    device = spec["device"]
    blocks = [prepared(tb, p, cfg) for p in params]
    how, blocks = blocks[0][1], [p for p, _ in blocks]
    fused = getattr(tb, "model_position_updates", None)
    if fused is not None:
        updates, method = (lambda: fused(blocks, cfg, Z)), "the backend's model_position_updates"
    else:
        def updates():
            Hs = tb.model_forward(blocks, cfg, Z)
            return [tb.position_updates(p, cfg, H) for p, H in zip(blocks, Hs[:-1])]
        method = "model_forward, then position_updates on each block's input (no fused call in this backend)"
    forward = lambda: tb.model_forward(blocks, cfg, Z)                # noqa: E731
    before = calls()
    warm = [first_calls(f, device) for f in (updates, forward)]        # a compiled path compiles both here
    walls, fwds = [], []
    for _ in range(spec["reps"]):                                     # interleaved
        walls.append(timed(updates, device))
        fwds.append(timed(forward, device))
    out = {"updates_s": min(walls), "forward_s": min(fwds), "reps": spec["reps"], "method": method, "params": how}
    overhead = (warm[0][0] - out["updates_s"]) + (warm[1][0] - out["forward_s"])
    return with_path(out, tb, overhead, ran_compiled(before))


OPS = {"scan": scan, "position_updates": position_updates, "model_updates": model_updates,
       "per_prefix_update": per_prefix, "prefix_forward": per_prefix, "numpy_reference": numpy_reference,
       "float32_error": float32_error}


def worker(spec: dict) -> dict:
    """Run one measurement described by ``spec`` and return its figures."""
    op = spec["op"]
    if op not in OPS:
        raise ValueError(f"op must be a known measurement, got {op!r}")
    if spec.get("threads"):
        import torch
        torch.set_num_threads(spec["threads"])
    out = {"op": op, "n": spec.get("n"), "device": spec["device"]}
    start_measurement()
    failed_before = set(_compile_failures())
    out.update(OPS[op](spec))
    failures = {k: v for k, v in _compile_failures().items() if k not in failed_before}
    if failures:                              # why a compiled path ran eagerly: its warning goes to a discarded stderr
        out["compile_failures"] = failures
    return out


def _compile_failures() -> dict:
    """``torch_compile.FAILED`` as ``{"<what> on <device type>": why}`` (empty where torch is not installed)."""
    try:
        from implicit_icl.backends.torch_compile import FAILED
    except ImportError:
        return {}
    return {f"{key[0]} on {kind}": why for (key, kind), why in FAILED.items()}
