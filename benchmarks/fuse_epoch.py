"""A training epoch from the store against the same epoch from tensors in memory.

Both sides train the same model (``context`` fusion by default, on ``wavlm@all`` + a
visual stream, the heaviest selection: every layer of every audio frame) with the same
optimiser and objective through ``model.training_step``. avx's side is
``Trainer.train_epoch``: shuffled batches of ``FusionData`` (features in memory,
normalised and padded per batch). The baseline replays batches collated once before
timing (what a hand-written loop over pre-made tensors costs): the ratio is the price of
avx's data path. Epochs are interleaved (avx, baseline, avx, ...) after a warm-up each.

The store is built first: the demo corpus, a randomly initialised WavLM of base size
(saved locally, no download) and MobileNetV2 (random weights) at ``--fps``.

Usage: uv run python benchmarks/fuse_epoch.py [--clips 96] [--layers 12] [--epochs 3]
       [--method context] [--store existing.zarr --streams audio/wavlm@all,video/mobilenetv2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console

from avx.demo.corpus import make_demo_corpus
from avx.extract.run import ExtractOptions, extract
from avx.fuse.data import DataConfig
from avx.fuse.train import TrainConfig, Trainer


def build_store(tmp: Path, clips: int, layers: int, fps: float) -> Path:
    from avx.extract.backbones.hf_audio import save_random_model
    from avx.extract.faces import FaceConfig
    from avx.extract.media import FrameSampling

    corpus = make_demo_corpus(tmp / "corpus", n_clips=clips, seed=0)
    save_random_model("wavlm", tmp / "wavlm", num_hidden_layers=layers)
    opts = ExtractOptions(
        backbones=("wavlm", "mobilenetv2"),
        weights=(f"wavlm={tmp / 'wavlm'}", "none"),
        faces=FaceConfig(min_face_size=40, sampling=FrameSampling("fps", fps=fps)),
    )
    extract("cremad", corpus, tmp / "bench.zarr", opts, console=Console(quiet=True))
    return tmp / "bench.zarr"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", default="context")
    ap.add_argument("--store", default=None)
    ap.add_argument("--streams", default="audio/wavlm@all,video/mobilenetv2")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or build_store(Path(tmp), args.clips, args.layers, args.fps)
        cfg = TrainConfig(
            store=str(store),
            method=args.method,
            data=DataConfig(streams=tuple(args.streams.split(","))),
            epochs=1,
            bootstrap=0,
        )
        tr = Trainer(cfg, Path(tmp) / "run", Console(quiet=True))
        n_train = len(tr.data.indices("train"))
        made = list(tr.data.batches("train", cfg.batch_size, shuffle=True, generator=tr.gen))

        def baseline() -> float:
            tr.model.train()
            t0 = time.perf_counter()
            for b in made:
                b = tr.dropout(b.to(cfg.device), tr.gen)
                tr.model.training_step(b, tr.objective, tr.optimizers, tr._step, tr._autocast)
            return time.perf_counter() - t0

        def avx() -> float:
            t0 = time.perf_counter()
            tr.train_epoch()
            return time.perf_counter() - t0

        avx(), baseline()  # warm-up
        t_avx, t_base = [], []
        for _ in range(args.epochs):
            t_avx.append(avx())
            t_base.append(baseline())
    mib = tr.data.selected_bytes() / 2**20
    base, ours = float(np.median(t_base)), float(np.median(t_avx))
    print(f"{args.method} on {args.streams}: {n_train} training clips, {mib:.0f} MiB, batch {cfg.batch_size}")
    print(f"  tensors collated once (baseline): {base:6.2f} s/epoch")
    print(f"  avx Trainer.train_epoch:          {ours:6.2f} s/epoch   ratio {ours / base:.2f}")


if __name__ == "__main__":
    main()
