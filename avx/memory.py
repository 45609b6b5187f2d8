"""Keep a long extraction's resident memory flat.

Crops, frame batches and feature chunks are large and short-lived, allocated by several
threads. glibc serves them from per-thread heap arenas once its dynamic mmap threshold
has risen (it rises each time a large block is freed), and freed arena memory in the
middle of a heap is not given back: the arenas fragment, and peak RSS of ``avx
extract`` (faces + mobilenetv2, 25 fps) grew 1.49 / 1.87 / 2.12 GiB at 10 / 60 / 240 s.

Pinning the mmap threshold (``M_MMAP_THRESHOLD``) made it flat but cost 45% of the
backbone's CPU throughput (every conv buffer became a fresh mapping, page-faulted in
again). Instead the runner calls :func:`release_free_heap` between crop windows: one
``malloc_trim(0)`` returns the free pages of every arena (``benchmarks/extract_memory.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from typing import Any

MIN_INTERVAL_S = 1.0
"""At most one trim per this many seconds: a trim walks every arena (~ms)."""

_libc: Any = None
_last = 0.0


def _load() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):  # not glibc (musl): nothing to trim
                pass
    return _libc


def release_free_heap(force: bool = False) -> bool:
    """Give freed heap pages back to the system (glibc only); True when a trim ran.

    Rate-limited to one call per :data:`MIN_INTERVAL_S` unless ``force``; a no-op on
    macOS, Windows and musl, whose allocators return large blocks by themselves.
    """
    global _last
    lib = _load()
    now = time.monotonic()
    if not lib or (not force and now - _last < MIN_INTERVAL_S):
        return False
    _last = now
    lib.malloc_trim(0)
    return True
