"""COLD vs context fusion under test-time visual corruption, on streams whose
reliability is known.

Copies a store with per-frame arousal labels (the demo store: ``avx demo`` or
``avx extract --corpus avx-demo``), adds two synthetic 10 Hz streams at the label times:
``audio/synth`` = arousal x u_a + N(0, a_noise²) and ``video/synth`` = arousal x u_v +
N(0, 0.15²); in a fraction ``--degraded`` of clips the whole video is naturally
unreliable (0.2 x signal + N(0, 1)), so training sees visual reliability vary. Then, per
seed, trains ``cold`` and ``context`` (unimodal branches on, as in the paper) with the
``cold-paper`` recipe and evaluates clean and with ``--noise video[:P]``. Prints each
method's score drop, the ratio of the drops (COLD / context; < 1 means COLD loses
less) and COLD's mean visual weight clean vs corrupted.

    python benchmarks/cold_robustness.py avx-demo/demo.zarr --seeds 3 --noise video:0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr

from avx.fuse.data import DataConfig
from avx.fuse.presets import apply_preset
from avx.fuse.robustness import evaluate_run
from avx.fuse.train import TrainConfig, train
from avx.store_schema import open_store
from avx.store_schema.writer import StreamSpec, StreamWriter


def add_streams(src: Path, dst: Path, degraded: float, a_noise: float, seed: int, dim: int = 8) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    store = open_store(dst)
    cont = store.continuous
    rng = np.random.default_rng(seed)
    ua, uv = rng.standard_normal(dim), rng.standard_normal(dim)
    g = zarr.open_group(str(dst), mode="r+")
    prov = {"backbone": "synthetic"}
    wa = StreamWriter(g, StreamSpec("audio/synth", (dim,), "float32", 10.0, provenance=prov), part_size=16)
    wv = StreamWriter(g, StreamSpec("video/synth", (dim,), "float32", 10.0, provenance=prov), part_size=16)
    for row in range(len(store.sample_ids)):
        y, t = cont.values[row][:, cont.names.index("arousal")], cont.times[row]
        n = len(y)
        a = y[:, None] * ua + a_noise * rng.standard_normal((n, dim))
        v = y[:, None] * uv + 0.15 * rng.standard_normal((n, dim))
        if rng.random() < degraded:
            v = 0.2 * y[:, None] * uv + rng.standard_normal((n, dim))
        wa.add(row, a.astype(np.float32), t)
        wv.add(row, v.astype(np.float32), t)
    wa.close()
    wv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path, help="a store with per-frame arousal labels (avx-demo)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=31)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--degraded", type=float, default=0.3)
    ap.add_argument("--audio-noise", type=float, default=0.5)
    ap.add_argument("--noise", default="video", help="the eval corruption, e.g. video or video:0.5")
    ap.add_argument("--set", action="append", default=[], help="COLD option KEY=JSON, e.g. lambda_intra=1")
    args = ap.parse_args()
    extra = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    work = Path(tempfile.mkdtemp(prefix="cold-robustness-"))
    drops: dict[str, list[float]] = {"cold": [], "context": []}
    weights = []
    for seed in range(args.seeds):
        store = work / "synth.zarr"
        add_streams(args.store, store, args.degraded, args.audio_noise, seed)
        data = DataConfig(
            streams=("audio/synth", "video/synth"), labels="arousal", task="regression", level="frame"
        )
        for method in drops:
            base = TrainConfig(store=str(store), method=method, data=data, seed=seed, bootstrap=0)
            cfg = replace(apply_preset(base, "cold-paper"), method=method, epochs=args.epochs)
            mc = {"hidden": args.hidden, "unimodal_weight": 1.0}
            cfg = replace(cfg, method_config={**mc, **(extra if method == "cold" else {})})
            run = work / f"{method}-{seed}"
            train(cfg, run)
            ev = evaluate_run(run, noise=[args.noise], seed=seed)["settings"]
            clean, noisy = ev["clean"], ev[next(k for k in ev if k != "clean")]
            drops[method].append(clean["ccc"] - noisy["ccc"])
            print(
                f"seed {seed} {method:8s} CCC clean {clean['ccc']:.3f} corrupted {noisy['ccc']:.3f}",
                flush=True,
            )
            if method == "cold":
                weights.append(
                    (clean["mean_fusion_weight"]["video/synth"], noisy["mean_fusion_weight"]["video/synth"])
                )
    c, x = np.mean(drops["cold"]), np.mean(drops["context"])
    print(f"mean CCC drop: cold {c:.3f}, context {x:.3f}; ratio cold/context {c / max(x, 1e-9):.2f}")
    w = np.asarray(weights)
    print(f"cold mean visual weight: clean {w[:, 0].mean():.3f}, corrupted {w[:, 1].mean():.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
