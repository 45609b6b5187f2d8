"""Fusion-phase speed: data loading and seconds per epoch per method.

Loading: ``FusionData`` (one contiguous read per part, the fast path) against the plain
baseline a user would write first, ``stream[id]`` for every sample (one read per
sample), both on the same store in the same run. Streamed mode (``memory_gb=0``, block
reads every epoch) is timed for one pass over the training split.

Epochs: each baseline method trained for a few epochs with its default size; the
trainer's own per-epoch timing (training + dev prediction) is reported.

Usage: uv run python benchmarks/fuse_throughput.py [--store avx-demo/demo.zarr]
       [--epochs 3] [--device cpu] [--methods late,context,mult]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from avx.fuse.data import DataConfig, FusionData
from avx.fuse.train import TrainConfig, train
from avx.store_schema import open_store

STREAMS = ("audio/mfcc", "video/mobilenetv2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="avx-demo/demo.zarr", help="run `avx demo` first for the default")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="unimodal,early,late,context,mult,tav")
    args = ap.parse_args()
    store = open_store(args.store)

    t = time.perf_counter()
    for s in STREAMS:
        st = store.stream(s)
        _ = [np.asarray(st[sid]) for sid in st.committed_ids]
    naive = time.perf_counter() - t
    t = time.perf_counter()
    data = FusionData(store, DataConfig(streams=STREAMS))
    fast = time.perf_counter() - t
    t = time.perf_counter()
    streamed = FusionData(store, DataConfig(streams=STREAMS, memory_gb=0))
    n = sum(len(b) for b in streamed.batches("train", 32))
    stream_s = time.perf_counter() - t
    mib = data.selected_bytes() / 2**20
    print(f"store {args.store}: {len(data.ids)} labelled clips, {mib:.1f} MiB selected")
    print(f"per-sample reads (baseline)      {naive:7.3f} s")
    print(f"FusionData in memory (avx)       {fast:7.3f} s   ratio {naive / fast:5.2f}x faster")
    print(f"streamed: init + one train pass  {stream_s:7.3f} s   ({n} samples)")

    print(f"\nseconds per epoch ({args.device}, {args.epochs} epochs, align rate:10, defaults)")
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.methods.split(","):
            streams = STREAMS[:1] if m == "unimodal" else STREAMS
            cfg = TrainConfig(
                store=args.store,
                method=m,
                data=DataConfig(streams=streams, align="rate:10"),
                epochs=args.epochs,
                device=args.device,
                bootstrap=0,
            )
            res = train(cfg, Path(tmp) / m)
            per = [h["seconds"] for h in res["history"]]
            print(f"  {m:9s} {np.mean(per):6.2f} s/epoch  (test macro-F1 {res['test']['macro_f1']:.3f})")


if __name__ == "__main__":
    main()
