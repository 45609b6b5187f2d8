"""How many CPU threads torch and BLAS use, chosen once per command.

Torch starts one intra-op thread per core and BLAS one more pool of its own. When cores
are shared (Dask workers on one machine, a second job, CI) those pools oversubscribe
the machine and small kernels spend their time waiting on each other: a GRU batch took
49 s with 2 threads and 6.4 s with 1 on a loaded 2-core machine. So every command
that computes sets the count explicitly: ``--threads``, else ``OMP_NUM_THREADS``, else
physical cores ÷ worker processes, and prints what it chose once the work starts
(:func:`announce`), so that a usage error stays the only line on the screen.
"""

from __future__ import annotations

import os
from typing import Any

_PENDING: list[str] = []


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads do not add compute for
    these kernels; a CPU affinity mask or container limit lowers the count)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil comes with distributed; be safe without it
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


def choose_threads(threads: int | None = None, workers: int = 0) -> tuple[int, str]:
    """``(n, why)``: ``threads`` if given, else ``OMP_NUM_THREADS``, else physical
    cores ÷ ``workers`` (at least 1); ``why`` says which, for the printed line."""
    if threads is not None:
        if threads < 1:
            from avx.errors import AvxError

            raise AvxError(f"--threads must be at least 1, got {threads}")
        return threads, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = physical_cores()
    if workers > 0:
        return max(1, cores // workers), f"{cores} physical cores ÷ {workers} workers"
    return cores, f"{cores} physical cores"


def set_threads(threads: int | None = None, workers: int = 0) -> str:
    """Apply :func:`choose_threads` to torch and BLAS in this process (and, through
    ``OMP_NUM_THREADS``, to processes it starts); return the line to print."""
    import torch
    from threadpoolctl import threadpool_limits

    n, why = choose_threads(threads, workers)
    torch.set_num_threads(n)
    threadpool_limits(n)  # BLAS/OpenMP pools of numpy and librosa; kept for the process
    os.environ["OMP_NUM_THREADS"] = str(n)
    per = " per worker" if workers > 0 else ""
    return f"threads: {n}{per} ({why}; change with --threads or OMP_NUM_THREADS)"


def defer_announcement(line: str) -> None:
    """Keep ``line`` for :func:`announce` (the CLI sets threads before it knows whether
    the command's inputs are valid)."""
    _PENDING[:] = [line]


def announce(console: Any) -> None:
    """Print the deferred thread line once, where the work starts (extraction planned,
    training data loaded, run loaded); nothing when none is pending."""
    if _PENDING and console is not None:
        console.print(_PENDING.pop(), highlight=False, soft_wrap=True)
