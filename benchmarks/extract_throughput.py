"""Extraction throughput: ``avx extract`` against a bare backbone forward pass.

Both sides see the same decoded inputs: the demo corpus's face crops, committed to a
``faces`` stream first. The baseline is the backbone's network called directly in a
loop over fixed-size batches (no store, no padding, no prefetch); avx's number is a
full ``extract()`` run of that backbone reading the committed crops and writing its
stream (batching across clips, padding to fixed batches, commits, provenance). The
full pipeline (decode + MTCNN + backbone) is timed as well, for context.

Usage: uv run python benchmarks/extract_throughput.py [--clips 48] [--backbone mobilenetv2]
       [--device cuda] [--batch-size 64] [--weights none]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from avx import open_store
from avx.demo.corpus import make_demo_corpus
from avx.extract.backbones import create_backbone
from avx.extract.faces import FaceConfig
from avx.extract.media import FrameSampling
from avx.extract.run import ExtractOptions, extract


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--decode-workers", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        faces = FaceConfig(min_face_size=40, sampling=FrameSampling("fps", fps=args.fps))
        store = Path(tmp) / "bench.zarr"
        common = dict(
            weights=(args.weights,),
            device=args.device,
            batch_size=args.batch_size,
            faces=faces,
            decode_workers=args.decode_workers,
        )
        # Warm-up on a throwaway store (imports, cuDNN plans, thread pools), so that no
        # timed run pays first-call costs the others do not.
        warm = ExtractOptions(backbones=(args.backbone,), limit=4, **common)
        extract("cremad", corpus, Path(tmp) / "warm.zarr", warm, console=quiet)
        t0 = time.perf_counter()
        extract("cremad", corpus, store, ExtractOptions(backbones=("faces",), **common), console=quiet)
        t_faces = time.perf_counter() - t0
        crops = open_store(store).stream("faces").read_many(open_store(store).stream("faces").committed_ids)
        frames = np.concatenate(crops)
        n = len(frames)

        # Baseline: the bare network over the same crops.
        b = create_backbone(
            args.backbone, weights=args.weights, device=args.device, batch_size=args.batch_size
        )
        bs = args.batch_size or (256 if args.device.startswith("cuda") else 16)
        x_all = torch.from_numpy(frames)

        def bare() -> float:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode(), b.runtime.autocast():
                for a in range(0, n, bs):
                    y = b.forward(b.to_input(x_all[a : a + bs].to(b.runtime.device)))
                    _ = (y["features"] if isinstance(y, dict) else y).float().cpu()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        bare()  # warm-up: every batch shape once
        t_bare = bare()

        # avx: extract the backbone's stream from the committed crops.
        t0 = time.perf_counter()
        extract("cremad", corpus, store, ExtractOptions(backbones=(args.backbone,), **common), console=quiet)
        t_avx = time.perf_counter() - t0

        # Full pipeline into a fresh store: decode + MTCNN + backbone.
        t0 = time.perf_counter()
        full = ExtractOptions(backbones=(args.backbone,), **common)
        extract("cremad", corpus, Path(tmp) / "full.zarr", full, console=quiet)
        t_full = time.perf_counter() - t0

    print(
        f"{args.backbone} on {args.device}: {args.clips} clips, {n} face frames (batch {bs},"
        f" {args.decode_workers} decode workers)"
    )
    print(f"bare forward (baseline):   {t_bare:7.2f} s  {n / t_bare:8.1f} frames/s")
    print(f"avx extract from crops:    {t_avx:7.2f} s  {n / t_avx:8.1f} frames/s  ratio {t_bare / t_avx:.2f}")
    print(f"faces only (decode+MTCNN): {t_faces:7.2f} s  {n / t_faces:8.1f} frames/s")
    print(f"full pipeline (new store): {t_full:7.2f} s  {n / t_full:8.1f} frames/s")


if __name__ == "__main__":
    main()
