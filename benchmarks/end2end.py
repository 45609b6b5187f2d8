"""End-to-end training speed and memory against the cached-feature path, same store.

Three trainers on the same clips and method (``late``; ``unimodal`` with ``--audio
none``), timed over one training epoch
each (``Trainer.train_epoch``: reading, collating, forward, backward, step):

1. cached: the visual backbone's stored features (``video/<backbone>``), the baseline;
2. end to end, frozen (``--freeze all``): the same backbone run on the stored crops
   (``video/faces``) every step, no backward through it;
3. end to end, fine-tuned (``--freeze none``).

It prints clips/s of each and the ratio to the cached path; how long training waited
on the background batch reader (:class:`avx.prefetch.Prefetch`) against the
epoch's length, and the reader alone (batches built without a model), to show that
reading overlaps compute; and the peak memory of a fine-tuning epoch against batch
size (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak RSS of a fresh process
per batch size). On CUDA it repeats the fine-tuning epoch with AMP on and off.

Usage: uv run python benchmarks/end2end.py [--store avx-demo/demo.zarr] [--backbone mobilenetv2]
       [--audio audio/mfcc] [--device cpu] [--batch-sizes 4,8,16]

The store needs ``faces``, ``video/<backbone>`` and the audio stream: ``avx demo`` makes
one (``mobilenetv2``, random init; the timings do not depend on the weights). On a
CPU, a smaller network keeps it to minutes: extract ``--backbone efficientface.sfav
--weights efficientface.sfav=none --opt efficientface.sfav:size=112`` into the demo store
and pass ``--backbone efficientface.sfav``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from avx.fuse.data import DataConfig
from avx.fuse.end2end import EndToEndConfig
from avx.fuse.train import TrainConfig, Trainer


def _config(
    args: argparse.Namespace, streams: tuple[str, ...], e2e: EndToEndConfig | None, **kw
) -> TrainConfig:
    streams = tuple(s for s in streams if s != "none")  # --audio none: the visual stream alone
    return TrainConfig(
        store=args.store,
        method="late" if len(streams) > 1 else "unimodal",
        data=DataConfig(streams=streams, memory_gb=0 if e2e is not None else 8.0),
        batch_size=kw.pop("batch_size", args.batch_size),
        device=args.device,
        bootstrap=0,
        end_to_end=e2e,
        **kw,
    )


def _epoch(cfg: TrainConfig, out: Path, warm_up: bool = True) -> tuple[float, int, float, Trainer]:
    """(seconds, clips, seconds waited on data, trainer) of one training epoch (after a
    warm-up epoch unless ``warm_up`` is False)."""
    t = Trainer(cfg, out)
    t.fit_front_end()
    if warm_up:
        t.train_epoch()  # allocator, kernels, caches
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    t.train_epoch()
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, len(t.data.indices("train")), t.load_wait, t


def _memory(args: argparse.Namespace, batch_size: int) -> float:
    """Peak memory (MiB) of one fine-tuning epoch at ``batch_size``."""
    e2e = EndToEndConfig((f"video={args.backbone}",))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, ("video/faces", args.audio), e2e, batch_size=batch_size)
        _epoch(cfg, Path(tmp), warm_up=False)
        if args.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="avx-demo/demo.zarr", help="run `avx demo` first for the default")
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--audio", default="audio/mfcc", help="the cached audio stream beside the video, or none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-sizes", default="4,8,16")
    ap.add_argument("--memory-of", type=int, default=0, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.memory_of:
        print(json.dumps(_memory(args, args.memory_of)))
        return
    video = f"video/{args.backbone}"
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        rows["cached features (baseline)"] = _epoch(_config(args, (video, args.audio), None), Path(tmp) / "c")
        for name, freeze in (("end to end, frozen", "all"), ("end to end, fine-tuned", "none")):
            e2e = EndToEndConfig((f"video={args.backbone}",), freeze=freeze)
            rows[name] = _epoch(_config(args, ("video/faces", args.audio), e2e), Path(tmp) / freeze)
        if args.device.startswith("cuda"):
            for amp in (True, False):
                e2e = EndToEndConfig((f"video={args.backbone}",))
                rows[f"fine-tuned, AMP {'on' if amp else 'off'}"] = _epoch(
                    _config(args, ("video/faces", args.audio), e2e, amp=amp), Path(tmp) / f"amp{amp}"
                )
        base = rows["cached features (baseline)"]
        t = rows["end to end, fine-tuned"][3]
        train = t.data.rows[t.data.indices("train")]
        frames = int(t.data.streams["video/faces"].index.frames[train].sum())
        print(
            f"store {args.store}: {base[1]} training clips, {frames} crops; {t.cfg.method}; batch"
            f" {args.batch_size}; streams {', '.join(t.data.stream_names)}"
        )
        print(f"{'':32s} {'s/epoch':>8s} {'clips/s':>8s} {'vs cached':>10s} {'waited on data':>15s}")
        for name, (sec, n, wait, _) in rows.items():
            ratio = (n / sec) / (base[1] / base[0])
            waited = f"{wait:.3f} s ({100 * wait / sec:.0f}%)" if "end" in name or "AMP" in name else "-"
            print(f"{name:32s} {sec:8.3f} {n / sec:8.1f} {ratio:9.3f}x {waited:>15s}")
        t0 = time.perf_counter()
        n = sum(
            len(b)
            for b in t.data.batches("train", args.batch_size, shuffle=True, generator=torch.Generator())
        )
        read = time.perf_counter() - t0
        sec = rows["end to end, fine-tuned"][0]
        print(
            f"reader alone (no model): {read:.3f} s for {n} clips, {100 * read / sec:.0f}% of the fine-tuning"
            f" epoch; training waited {rows['end to end, fine-tuned'][2]:.3f} s of it (read ahead, a thread)"
        )
    print(f"\npeak memory of a fine-tuning epoch ({args.device}) by batch size:")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        cmd = [sys.executable, __file__, "--memory-of", str(bs), "--store", args.store, "--backbone",
               args.backbone, "--audio", args.audio, "--device", args.device]  # fmt: skip
        mib = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        what = "max allocated" if args.device.startswith("cuda") else "peak RSS, fresh process"
        print(f"  batch {bs:3d}: {mib:8.1f} MiB ({what})")


if __name__ == "__main__":
    main()
