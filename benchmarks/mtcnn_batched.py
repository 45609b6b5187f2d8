"""Faces: avx's MTCNN + aligned crops against facenet-pytorch's per-frame ``mtcnn(frame)``.

The baseline is what most preprocessing scripts do (SFAV's included): one call of
facenet-pytorch's ``MTCNN`` per frame, which detects and returns the face crop
(``image_size=224``, its default ``min_face_size=20``). avx runs the same networks and
weights over batches of frames, tracks the subject and cuts aligned 224² crops
(``FacePipeline.process``). Both sides see the same decoded frames of the demo corpus,
scaled to each ``--sizes`` entry; the subject's boxes are checked to agree.

``--min-face`` is avx's smallest face searched for, as a fraction of the frame's
shorter side (``--min-face-size 0.15h`` on the command line; 0 = the baseline's 20 px).
A corpus of frontal single-speaker clips films faces far larger than 20 px, and the
image pyramid's largest, costliest scales exist only to find tiny faces.

Usage: uv run python benchmarks/mtcnn_batched.py [--clips 4] [--sizes 960x540 224x224]
       [--min-face 0.15] [--device cuda] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from PIL import Image

from avx.demo.corpus import make_demo_corpus
from avx.extract.faces import FaceConfig, FacePipeline
from avx.extract.media import FrameSampling, read_frames


def scaled(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--sizes", nargs="+", default=["960x540", "224x224"])
    ap.add_argument("--min-face", type=float, default=0.15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        videos = sorted((corpus / "VideoFlash").glob("*.flv"))
        raw = [read_frames(v, FrameSampling())[0] for v in videos]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for size_s in args.sizes:
        size = tuple(int(v) for v in size_s.split("x"))
        clips = [scaled(c, size) for c in raw]
        n = sum(len(c) for c in clips)
        base = MTCNN(image_size=224, post_process=False, device=args.device)
        frac = f"{args.min_face}h" if args.min_face else "20"
        cfg = FaceConfig(min_face_fraction=args.min_face, crop_size=224, batch_size=args.batch_size)
        pipe = FacePipeline(cfg, device=args.device)
        base(Image.fromarray(clips[0][0]))  # warm-up both
        pipe.process([(clips[0][:2], np.zeros(2))])
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for clip in clips:
                for frame in clip:
                    base(Image.fromarray(frame))  # detect + crop, what preprocessing scripts call
        sync()
        t_loop = time.perf_counter() - t0
        loop_boxes = []
        with torch.inference_mode():  # boxes of the baseline, for the agreement check (untimed)
            for clip in clips:
                for frame in clip:
                    boxes, probs = base.detect(frame)
                    loop_boxes.append(np.full(4, np.nan) if boxes is None else boxes[np.argmax(probs)])
        t0 = time.perf_counter()
        fields = [pipe.process([(clip, np.zeros(len(clip)))])[2] for clip in clips]
        sync()
        t_avx = time.perf_counter() - t0
        ours = np.concatenate([f["box"] for f in fields])
        diff = np.abs(np.asarray(loop_boxes) - ours)
        print(f"faces on {args.device}, {n} frames of {size_s} ({args.clips} demo clips)")
        print(f"  facenet-pytorch mtcnn(frame) loop (baseline): {t_loop:7.2f} s  {n / t_loop:7.1f} frames/s")
        print(f"  avx FacePipeline (min face {frac}, batch {args.batch_size}):"
              f" {t_avx:7.2f} s  {n / t_avx:7.1f} frames/s  ratio {t_loop / t_avx:.2f}")  # fmt: skip
        print(f"  subject box difference: median {np.nanmedian(diff):.3f} px, max {np.nanmax(diff):.2f} px")


if __name__ == "__main__":
    main()
