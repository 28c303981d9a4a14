"""What every ``implicit-icl bench`` measurement shares: its inputs, timing on a synchronised device, the path that
ran (eager or compiled) and the memory a call adds beyond what was resident before it."""
from __future__ import annotations

import collections

import sys
import time


def setup(spec):
    """The block, its params and the measurement's inputs (drawn on the device, in float32)."""
    import torch

    from implicit_icl import reference as ref

    cfg = ref.BlockConfig(d_model=spec["d_model"], d_mlp=spec["d_mlp"], n_heads=spec["n_heads"], kind=spec["kind"])
    params = ref.init_block(cfg, 0, bias_std=0.1, ln_std=0.1)
    n = spec.get("n", 0)
    # drawn on the measured device in float32, the dtype the timed runs use: no float64 copy in the process peak,
    # no 8 s of serial host RNG for 16M × 64 numbers on a GPU run, and float32 and float64 runs see the same inputs
    g = torch.Generator(device=spec["device"]).manual_seed(1)
    context = torch.randn(n, cfg.d_model, generator=g, dtype=torch.float32, device=spec["device"])
    query = torch.randn(cfg.d_model, generator=g, dtype=torch.float32, device=spec["device"])
    return cfg, params, context, query


def sync(device) -> None:
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Wall seconds of ``fn()``, the device synchronised after it."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


_GRAPHS_AT_START = [0]


def dynamo_graphs() -> int:
    """Graphs TorchDynamo has compiled in this process (0 if it was never imported: nothing was compiled)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return int(utils.counters["stats"].get("unique_graphs", 0)) if utils is not None else 0


def start_measurement() -> None:
    """Mark the start of a measurement: graphs compiled from here on are this measurement's."""
    _GRAPHS_AT_START[0] = dynamo_graphs()


def path_of(backend) -> tuple[str, str]:
    """``(path, how we know)``: the backend's own ``path`` attribute if it has one, else ``"compiled"`` when
    TorchDynamo compiled a graph since the measurement started (in a child process: since it started; an in-process
    ``--quick`` run misses code compiled before the measurement), else ``"eager"``."""
    declared = getattr(backend, "path", None)
    if isinstance(declared, str) and declared:
        return declared, "the backend's path attribute"
    compiled = dynamo_graphs() > _GRAPHS_AT_START[0]
    return ("compiled" if compiled else "eager"), "graphs TorchDynamo compiled during the measurement"


def prepared(backend, params, cfg):
    """``(params, how)``: checked and converted once with ``backend.prepare`` where the backend has it (what a user
    who calls it repeatedly does), else converted with ``backend.asarray``."""
    if callable(getattr(backend, "prepare", None)):
        return backend.prepare(params, cfg), "prepared once (backend.prepare)"
    return backend.asarray(params), "converted once (backend.asarray), checked on every call"


def first_calls(fn, device, calls: int = 2) -> list[float]:
    """Run ``fn`` ``calls`` times, timing each (the first includes loading, allocation and any compilation)."""
    return [timed(fn, device) for _ in range(calls)]


def calls() -> collections.Counter:
    """The torch backend's calls so far by ``(what, path)`` (a copy of ``torch_compile.CALLS``; empty without
    torch)."""
    try:
        from implicit_icl.backends.torch_compile import CALLS
    except ImportError:
        return collections.Counter()
    return collections.Counter(CALLS)


def calls_on(path: str) -> int:
    """How many of the torch backend's calls took ``path`` (``"compiled"`` or ``"eager"``) so far."""
    return sum(n for (_, p), n in calls().items() if p == path)


def ran_compiled(before: collections.Counter) -> tuple[str, str]:
    """``(path, how we know)`` of the calls made since :func:`calls` was ``before``: ``"compiled"`` if they all ran
    compiled, ``"mixed"`` if some fell back to eager code (a compile failure; the targets do not judge such an
    entry), else ``"eager"``."""
    new = calls() - before
    compiled, eager = (sum(n for (_, p), n in new.items() if p == path) for path in ("compiled", "eager"))
    path = "compiled" if compiled and not eager else "mixed" if compiled else "eager"
    return path, "the calls that ran compiled or fell back to eager code (torch_compile.CALLS)"


def with_path(out: dict, backend, overhead_s: float, ran=None) -> dict:
    """Add the path that ran, the first-call overhead and (compiled paths only) the compile time to ``out``;
    ``ran``, where the measurement knows it, is ``(path, how we know)`` and wins over :func:`path_of`."""
    path, source = ran or path_of(backend)
    out.update(path=path, path_source=source, first_call_overhead_s=max(0.0, overhead_s))
    out["compile_s"] = out["first_call_overhead_s"] if path != "eager" else None
    return out


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (Unix ``ru_maxrss`` is KiB on Linux)."""
    import resource                                          # Unix only: imported here so the CLI loads anywhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` in bytes (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Memory added beyond what was resident at construction, at its peak until ``extra_bytes()``.

    On CUDA the caching allocator's peak over what was allocated before. On the CPU the process's resident set:
    its high-water mark is reset (Linux ``/proc/self/clear_refs``, value 5), so the peak is this call's; where that
    cannot be done, the growth of ``ru_maxrss`` (an undercount when an earlier peak was higher). ``what`` says which.
    """

    def __init__(self, device):
        self.device = str(device)
        sync(self.device)
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.what = "device memory: the allocator's peak beyond what was allocated before the call"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base, self.what = _status_bytes("VmRSS"), "process memory: peak resident set (VmHWM, reset " \
                                                           "before the call) beyond the resident set before it"
        except OSError:
            self.base = None
        if self.base is None:
            self.base, self.what = peak_rss(), "process memory: growth of the peak resident set (ru_maxrss)"

    def extra_bytes(self) -> int:
        sync(self.device)
        if self.device.startswith("cuda"):
            import torch
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_bytes("VmHWM") if "VmHWM" in self.what else peak_rss()
        return max(0, int(peak) - int(self.base))
