"""Fixed cost at the end of ``avx fuse train``: the bootstrap CI of the headline metric.

Baseline: the per-replicate loop (``bootstrap_ci`` calling the report's scikit-learn
metrics on each resample, what avx did before). avx: ``bootstrap_scorer`` (the same
replicates scored from count-weighted per-sample statistics). Both intervals are
printed; they agree to 1e-9.

Usage: uv run python benchmarks/bootstrap.py [--samples 1500] [--classes 6] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from avx.fuse import metrics as M
from avx.fuse.evaluate import ReportOptions, core_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, c = args.samples, args.classes
    y = rng.integers(0, c, n)
    probs = rng.dirichlet(np.ones(c), n)
    probs[np.arange(n), y] += rng.random(n)  # better than chance
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    names = [f"c{k}" for k in range(c)]
    opts = ReportOptions()

    def per_replicate(draw: np.ndarray) -> float:
        return core_metrics("multiclass", names, y[draw], probs[draw], opts)["macro_f1"]

    t = time.perf_counter()
    base = M.bootstrap_ci(per_replicate, n, n_boot=args.boot, seed=0)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    fast = M.bootstrap_scorer("macro_f1", y, pred, np.arange(n), n, n_boot=args.boot, seed=0)
    t_fast = time.perf_counter() - t
    print(f"{args.boot} replicates of macro-F1 over {n} samples, {c} classes")
    print(f"  per-replicate scikit-learn: {t_base:7.2f} s  CI {base[0]:.12f} – {base[1]:.12f}")
    print(f"  avx bootstrap_scorer:       {t_fast:7.2f} s  CI {fast[0]:.12f} – {fast[1]:.12f}")
    diff = max(abs(a - b) for a, b in zip(base, fast, strict=True))
    print(f"  speed-up {t_base / t_fast:.0f}×, largest difference {diff:.1e}")


if __name__ == "__main__":
    main()
