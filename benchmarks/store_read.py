"""Read throughput of a stream: grouped reads (``read_many``) vs one read per sample.

Usage: uv run python benchmarks/store_read.py STORE [STREAM]
"""

from __future__ import annotations

import sys
import time

from avx import open_store


def main() -> None:
    url = sys.argv[1]
    store = open_store(url)
    name = sys.argv[2] if len(sys.argv) > 2 else store.streams[-1]
    stream = store.stream(name)
    ids = stream.committed_ids
    t0 = time.perf_counter()
    per_sample = [stream[i] for i in ids]
    t1 = time.perf_counter()
    grouped = store.stream(name).read_many(ids)
    t2 = time.perf_counter()
    assert all((a == b).all() for a, b in zip(per_sample, grouped, strict=True))
    frames = sum(len(a) for a in grouped)
    print(f"{name}: {len(ids)} samples, {frames} frames")
    print(f"per-sample reads (baseline): {t1 - t0:.3f} s")
    print(f"read_many:                   {t2 - t1:.3f} s  ({(t1 - t0) / max(t2 - t1, 1e-9):.1f}x)")


if __name__ == "__main__":
    main()
