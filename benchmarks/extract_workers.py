"""``avx extract --workers 2`` against ``--workers 1`` on the same corpus.

Both sides are full ``avx extract`` runs in fresh processes (worker start-up, model
building, decode, MTCNN, backbone, commits all included) on the demo corpus; each run
writes a new store. Repeats are interleaved (1, 2, 1, 2, ...) and the best of each is
kept. Threads: the coordinator gives each worker cores ÷ workers.

Usage: uv run python benchmarks/extract_workers.py [--clips 24] [--backbone faces,mobilenetv2]
       [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avx.demo.corpus import make_demo_corpus


def run(corpus: Path, store: Path, backbone: str, workers: int) -> float:
    cmd = [sys.executable, "-m", "avx", "extract", "--corpus", "cremad", "--root", str(corpus),
           "--store", str(store), "--backbone", backbone, "--weights", "none", "--min-face-size", "40",
           "--fps", "25", "--workers", str(workers)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--backbone", default="faces,mobilenetv2")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        for r in range(args.repeats):
            for w in (1, 2):
                times[w].append(run(corpus, Path(tmp) / f"w{w}r{r}.zarr", args.backbone, w))
    one, two = min(times[1]), min(times[2])
    print(f"avx extract {args.backbone}, {args.clips} clips, {os.cpu_count()} CPUs, best of {args.repeats}")
    print(f"  --workers 1 (baseline): {one:6.1f} s   runs {', '.join(f'{t:.1f}' for t in times[1])}")
    print(f"  --workers 2:            {two:6.1f} s   runs {', '.join(f'{t:.1f}' for t in times[2])}")
    print(f"  speed-up {one / two:.2f}×")


if __name__ == "__main__":
    main()
