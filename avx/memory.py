"""Keep a long extraction's resident memory flat.

Crops, frame batches and feature chunks are large and short-lived, allocated by several
threads. glibc serves them from per-thread heap arenas once its dynamic mmap threshold
has risen (it rises each time a large block is freed), and freed arena memory in the
middle of a heap is not given back: the arenas fragment, and peak RSS of ``avx
extract`` (faces + mobilenetv2, 25 fps) grew 1.49 / 1.87 / 2.12 GiB at 10 / 60 / 240 s.

Two cheaper-looking fixes cost throughput: pinning the mmap threshold
(``M_MMAP_THRESHOLD``) made RSS flat but cut mobilenetv2's CPU forward from 50 to 28
frames/s (every conv buffer became a fresh mapping), and a ``malloc_trim`` every second
cost 10-20% of the forward (its buffers are faulted in again after each trim). So the
runner calls :func:`release_free_heap` between crop windows and it trims at most every
:data:`MIN_INTERVAL_S` seconds: 1.64 / 1.80 / 1.97 GiB at 10 / 60 / 240 s, the visual
backbone at the bare forward's speed (docs/extract.md, "Performance on small machines").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from typing import Any

MIN_INTERVAL_S = 10.0
"""At most one trim per this many seconds: each costs ~70 ms of page faults as the
freed buffers are touched again (a trim per second cost 10-20% of the forward)."""

_libc: Any = None
_last: float | None = None


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

    Trims when ``force`` or when :data:`MIN_INTERVAL_S` have passed since the last trim
    (the first call only starts the clock); a no-op on macOS, Windows and musl, whose
    allocators return large blocks by themselves.
    """
    global _last
    lib = _load()
    if not lib:
        return False
    now = time.monotonic()
    if _last is None:
        _last = now
    if not force and now - _last < MIN_INTERVAL_S:
        return False
    lib.malloc_trim(0)
    _last = time.monotonic()
    return True
