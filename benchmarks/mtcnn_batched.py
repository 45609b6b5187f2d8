"""MTCNN: avx's batched, tracked detection against facenet-pytorch's per-frame loop.

The baseline is what most preprocessing scripts do (SFAV's included): call
``mtcnn.detect(frame)`` once per frame. avx passes batches of frames to the same MTCNN
(same weights and thresholds) and picks the subject per frame. Both see the same
decoded frames of the demo corpus; the detected boxes are checked to agree.

Usage: uv run python benchmarks/mtcnn_batched.py [--clips 12] [--device cuda] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avx.demo.corpus import make_demo_corpus
from avx.extract.faces import FaceConfig, FacePipeline
from avx.extract.media import FrameSampling, read_frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        videos = sorted((corpus / "VideoFlash").glob("*.flv"))
        clips = [read_frames(v, FrameSampling())[0] for v in videos]
    n = sum(len(c) for c in clips)
    pipe = FacePipeline(FaceConfig(min_face_size=40, batch_size=args.batch_size), device=args.device)
    pipe.detect(clips[0][:2])  # warm-up
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    loop_boxes = []
    with torch.inference_mode():
        for clip in clips:
            prev = None
            for frame in clip:
                boxes, probs = pipe.mtcnn.detect(frame)
                if boxes is None:
                    loop_boxes.append(np.full(4, np.nan))
                    continue
                prev = boxes[pipe._choose(boxes, probs, prev)]  # the same subject choice as avx
                loop_boxes.append(prev)
    sync()
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = np.concatenate([pipe.detect(clip).boxes for clip in clips])
    sync()
    t_batch = time.perf_counter() - t0
    diff = np.abs(np.asarray(loop_boxes) - batched)
    agree, median = np.nanmax(diff), np.nanmedian(diff)
    print(
        f"MTCNN on {args.device}: {args.clips} clips, {n} frames of {clips[0].shape[2]}x{clips[0].shape[1]}"
    )
    print(f"per-frame loop (baseline): {t_loop:7.2f} s  {n / t_loop:8.1f} frames/s")
    print(f"avx batched ({args.batch_size}):         {t_batch:7.2f} s  {n / t_batch:8.1f} frames/s"
          f"  ratio {t_loop / t_batch:.2f}")  # fmt: skip
    print(f"box difference batched vs per-frame: median {median:.4f} px, max {agree:.3f} px")


if __name__ == "__main__":
    main()
