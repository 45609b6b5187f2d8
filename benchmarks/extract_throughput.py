"""Extraction throughput: ``avx extract`` against a bare backbone forward pass.

Both sides see the same decoded inputs: the demo corpus's face crops, committed to a
``faces`` stream first. The baseline is the backbone's network called directly in a
loop over fixed-size batches (no store, no padding, no prefetch); avx's number is a
full ``extract()`` run of that backbone reading the committed crops and writing its
stream (batching across clips, padding to fixed batches, commits, provenance). The
full pipeline (decode + MTCNN + backbone) is timed as well, for context.

``--backbone wavlm`` (or any speech SSL name) times an audio backbone instead: a small
randomly initialised model of that architecture (``--layers``, ``--hidden``) saved to a
local folder, every hidden layer kept. The baseline is its bare forward over the
decoded, resampled, normalised waveforms (decoding not timed); avx's number is a full
``extract()`` of the stream (decoding in background threads, windows, fp16, commits).

Usage: uv run python benchmarks/extract_throughput.py [--clips 48] [--backbone mobilenetv2]
       [--device cuda] [--batch-size 64] [--weights none]
       uv run python benchmarks/extract_throughput.py --backbone wavlm [--layers 4 --hidden 384]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from avx import open_store
from avx.demo.corpus import make_demo_corpus
from avx.extract.backbones import BACKBONES, create_backbone
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
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; best of each side")
    ap.add_argument("--layers", type=int, default=4, help="audio: transformer layers")
    ap.add_argument("--hidden", type=int, default=384, help="audio: hidden size")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if BACKBONES.get(args.backbone).modality == "audio":
        return audio(args)
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

        # avx: extract the backbone's stream from the committed crops, into a copy of the
        # faces-only store each repeat; repeats interleaved with the baseline's.
        bare_times, avx_times = [], []
        for r in range(args.repeats):
            bare_times.append(bare())
            copy = Path(tmp) / f"r{r}.zarr"
            shutil.copytree(store, copy)
            t0 = time.perf_counter()
            opts = ExtractOptions(backbones=(args.backbone,), **common)
            extract("cremad", corpus, copy, opts, console=quiet)
            avx_times.append(time.perf_counter() - t0)
        t_bare, t_avx = min(bare_times), min(avx_times)

        # Full pipeline into a fresh store: decode + MTCNN + backbone.
        t0 = time.perf_counter()
        full = ExtractOptions(backbones=(args.backbone,), **common)
        extract("cremad", corpus, Path(tmp) / "full.zarr", full, console=quiet)
        t_full = time.perf_counter() - t0

    print(
        f"{args.backbone} on {args.device}: {args.clips} clips, {n} face frames (batch {bs},"
        f" {args.decode_workers} decode workers)"
    )
    print(f"bare forward (baseline):   {t_bare:7.2f} s  {n / t_bare:8.1f} frames/s  runs {_runs(bare_times)}")
    print(
        f"avx extract from crops:    {t_avx:7.2f} s  {n / t_avx:8.1f} frames/s  runs {_runs(avx_times)}"
        f"  ratio {t_bare / t_avx:.2f}"
    )
    print(f"faces only (decode+MTCNN): {t_faces:7.2f} s  {n / t_faces:8.1f} frames/s")
    print(f"full pipeline (new store): {t_full:7.2f} s  {n / t_full:8.1f} frames/s")


def audio(args: argparse.Namespace) -> None:
    """An audio backbone: bare forward over decoded waveforms vs ``extract()``."""
    from avx.extract.backbones.hf_audio import save_random_model
    from avx.extract.media import decode_audio, resample

    quiet = Console(quiet=True)
    arch = BACKBONES.get(args.backbone).config.arch
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_demo_corpus(Path(tmp) / "corpus", n_clips=args.clips, seed=0)
        folder = Path(tmp) / "model"
        save_random_model(
            arch,
            folder,
            num_hidden_layers=args.layers,
            hidden_size=args.hidden,
            num_attention_heads=max(1, args.hidden // 64),
            intermediate_size=4 * args.hidden,
        )
        common = dict(weights=(str(folder),), device=args.device, decode_workers=args.decode_workers)
        opts = ExtractOptions(backbones=(args.backbone,), **common)
        extract("cremad", corpus, Path(tmp) / "warm.zarr", replace_limit(opts, 4), console=quiet)

        b = create_backbone(args.backbone, weights=str(folder), device=args.device)
        paths = sorted((Path(corpus) / "AudioWAV").glob("*.wav"))[: args.clips]
        waves = [resample(decode_audio(p), b.sample_rate).waveform for p in paths]
        waves = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) if b.normalize else w for w in waves]

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for w in waves:
                    b._forward(w)
            return time.perf_counter() - t0

        bare()
        bare_times, avx_times = [], []
        for r in range(args.repeats):  # interleaved
            bare_times.append(bare())
            t0 = time.perf_counter()
            report = extract("cremad", corpus, Path(tmp) / f"audio{r}.zarr", opts, console=quiet)
            avx_times.append(time.perf_counter() - t0)
        t_bare, t_avx = min(bare_times), min(avx_times)
    seconds = sum(len(w) for w in waves) / b.sample_rate
    print(
        f"{args.backbone} (random init, {args.layers} layers x {args.hidden}, all hidden states) on"
        f" {args.device}: {len(waves)} clips, {seconds:.0f} s of audio, {report.processed} extracted"
    )
    rt = f"{seconds / t_bare:6.1f}x real time"
    print(f"bare forward (baseline):   {t_bare:7.2f} s  {rt}  runs {_runs(bare_times)}")
    rt = f"{seconds / t_avx:6.1f}x real time  runs {_runs(avx_times)}"
    print(f"avx extract (from files):  {t_avx:7.2f} s  {rt}  ratio {t_bare / t_avx:.2f}")


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def replace_limit(opts: ExtractOptions, limit: int) -> ExtractOptions:
    from dataclasses import replace

    return replace(opts, limit=limit)


if __name__ == "__main__":
    main()
