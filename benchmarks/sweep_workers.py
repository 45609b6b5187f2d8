"""``avx fuse sweep --workers 2`` against ``--workers 1`` on the same spec.

Both are full ``avx fuse sweep`` runs in fresh processes (Dask cluster start-up, every
cell trained and evaluated) into new folders; the ratio is the 1-worker wall time over
the 2-worker one. Each local worker runs one cell with cores ÷ workers torch threads,
so on 2 cores the gain comes from running two cells at once (training, evaluation and
process start-up overlap), not from more threads.

Usage: uv run python benchmarks/sweep_workers.py docs/sweeps/sfav-table2.toml \
           --override 'sweep.stores=["demo.zarr"]' --override sweep.trials=1 [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(spec: str, out: Path, workers: int, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "avx", "fuse", "sweep", spec, "--out", str(out), "--workers", str(workers)]
    for o in overrides:
        cmd += ["--override", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"sweep failed:\n{proc.stdout}\n{proc.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            out = Path(tmp) / f"w{w}"
            walls[w] = run(args.spec, out, w, args.override)
            cells = len(json.loads((out / "sweep.json").read_text())["cells"])
            line = f"--workers {w}: {cells} cells in {walls[w]:.1f} s ({walls[w] / cells:.2f} s/cell)"
            print(line, flush=True)
    base = walls[args.workers[0]]
    for w, t in walls.items():
        print(f"--workers {w}: {base / t:.2f}x the speed of --workers {args.workers[0]}")


if __name__ == "__main__":
    main()
