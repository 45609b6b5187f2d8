"""``avx extract --workers 2`` against ``--workers 1`` on the same corpus.

Both sides are full ``avx extract`` runs in fresh processes (worker start-up, model
building, decode, MTCNN, backbone, commits all included) on the demo corpus; each run
writes a new store. Repeats are interleaved (1, 2, 1, 2, ...) and the best of each is
kept. Threads: the coordinator gives each worker cores ÷ workers.

Also printed, because they bound the ratio: the same extraction in one process (no
``--workers``), and the CPU seconds each run used (its own and its worker processes'),
as cores kept busy. When one worker already keeps ``b`` of the ``n`` cores busy, two
workers can be at most ``n / b`` times faster.

Usage: uv run python benchmarks/extract_workers.py [--clips 24] [--backbone faces,mobilenetv2]
       [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avx.demo.corpus import make_demo_corpus


def run(corpus: Path, store: Path, backbone: str, workers: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the run and every process it waited for)."""
    cmd = [sys.executable, "-m", "avx", "extract", "--corpus", "cremad", "--root", str(corpus),
           "--store", str(store), "--backbone", backbone, "--weights", "none", "--min-face-size", "40",
           "--fps", "25"] + (["--workers", str(workers)] if workers else [])  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--backbone", default="faces,mobilenetv2")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    runs: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        for r in range(args.repeats):
            for w in (1, 2, 0):
                runs[w].append(run(corpus, Path(tmp) / f"w{w}r{r}.zarr", args.backbone, w))
    best = {w: min(rs) for w, rs in runs.items()}
    n = os.cpu_count() or 1
    print(f"avx extract {args.backbone}, {args.clips} clips, {n} CPUs, best of {args.repeats}")
    for w, label in ((1, "--workers 1 (baseline)"), (2, "--workers 2"), (0, "one process (no --workers)")):
        wall, cpu = best[w]
        print(f"  {label:27s} {wall:6.1f} s, {cpu:5.1f} CPU s ({cpu / wall:.2f} cores busy)"
              f"   runs {', '.join(f'{t:.1f}' for t, _ in runs[w])}")  # fmt: skip
    one, two = best[1][0], best[2][0]
    busy = best[1][1] / best[1][0]
    print(f"  speed-up {one / two:.2f}× (at most {n / busy:.2f}× when one worker keeps {busy:.2f}"
          f" of {n} cores busy)")  # fmt: skip


if __name__ == "__main__":
    main()
