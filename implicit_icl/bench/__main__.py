"""A child process of ``implicit-icl bench``: one measurement, its spec as JSON in argv[1], its result as JSON on
the last line of stdout."""
from __future__ import annotations

import json
import os
import sys

from implicit_icl.bench.measure import worker


def _limit_host_memory(spec: dict) -> None:
    """In a CPU child, cap the address space at the machine's memory, so that an allocation no machine here can hold
    is a MemoryError with its size, not the kernel killing this process (or a neighbour's). Not on a GPU: CUDA maps
    address space far beyond the host's memory."""
    if not str(spec.get("device", "")).startswith("cpu"):
        return
    try:
        import resource
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft > total:
            resource.setrlimit(resource.RLIMIT_AS, (total, hard))
    except (ImportError, ValueError, OSError):                # not Unix, or not allowed: run without the cap
        pass


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    _limit_host_memory(_spec)
    print(json.dumps(worker(_spec)))
