"""glibc settings for extraction: fast large tensors, and memory handed back.

Crops, frame batches, activations and feature chunks are large and short-lived, allocated
by several threads. Two things matter, measured on ``avx extract``:

- :func:`tune_allocator` raises glibc's mmap and trim thresholds, so large blocks are
  reused from the heap instead of mapped and page-faulted in anew on every batch.
- :func:`release_free_heap` runs ``malloc_trim`` between crop windows, at most every
  :data:`MIN_INTERVAL_S` seconds, so the free memory the arenas keep is returned. Once a
  second cost 10-20% of the forward (its buffers are faulted in again after each trim);
  pinning a *low* mmap threshold instead made RSS flat but cut mobilenetv2's CPU forward
  from 50 to 28 frames/s. Figures: docs/extract.md, "Performance on small machines".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

MMAP_THRESHOLD = 256 * 2**20
"""Blocks below this come from the heap arenas, reused without page faults."""
TRIM_THRESHOLD = 512 * 2**20
"""Free memory at a heap's top kept before it is returned (``malloc_trim`` still runs)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
_USER_SET = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

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


def tune_allocator(not_user_set: Mapping[str, str] | None = None) -> bool:
    """Serve large tensors from the heap instead of fresh mappings; True when applied.

    glibc maps every block above its mmap threshold (32 MiB at most when dynamic) anew and
    unmaps it when freed, so each backbone batch whose activations exceed it (mobilenetv2
    at batch 16: 77 MiB layers) is page-faulted in from zero: 3.4 million minor faults
    and 8.6 s of system time in a 21 s extraction of 24 demo clips. With the thresholds
    raised the same run took 17.3 s (2.9 s system) at the same peak RSS. A no-op off
    glibc and when the user tuned malloc through the environment; a variable whose value
    equals its entry in ``not_user_set`` (what Dask's nanny sets in every worker) was not
    the user's choice and is overridden.
    """
    lib = _load()
    theirs = not_user_set or {}
    if not lib or any(k in os.environ and os.environ[k] != theirs.get(k) for k in _USER_SET):
        return False
    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.mallopt.restype = ctypes.c_int
    ok = lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


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
