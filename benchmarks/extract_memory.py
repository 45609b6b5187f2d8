"""Peak memory of ``avx extract`` against the clip's length.

One synthetic talking-face video per length (a face drifting over a plain background,
25 fps), extracted with ``faces,mobilenetv2`` at every frame in a fresh process each,
whose peak RSS (``ru_maxrss``) is read when it exits. The baseline is the shortest
clip's run, measured the same way in the same session: the ratio says how memory grows
with length (flat = 1.0; holding every crop would grow ~150 KB per frame at 224²).

Usage: uv run python benchmarks/extract_memory.py [--seconds 10 60 240] [--size 480x270]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd


def write_video(path: Path, seconds: float, size: tuple[int, int], fps: int = 25) -> None:
    from PIL import Image

    from avx.demo.corpus import _face_image

    w, h = size
    face = np.asarray(Image.fromarray(_face_image()).resize((h // 2, h // 2)))
    fs = face.shape[0]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.bit_rate = w, h, "yuv420p", 2_000_000
        frame = np.full((h, w, 3), 120, np.uint8)
        for i in range(int(seconds * fps)):
            frame[:] = 120
            x = w // 2 - fs // 2 + int(w / 8 * np.sin(i / 20))
            y = h // 4 + int(h / 16 * np.cos(i / 15))
            frame[y : y + fs, x : x + fs] = face
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)


def peak_rss(manifest: Path, store: Path) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of one ``avx extract`` process."""
    cmd = [sys.executable, "-m", "avx", "extract", "--corpus", "manifest", "--root", str(manifest),
           "--store", str(store), "--backbone", "faces,mobilenetv2", "--weights", "none",
           "--min-face-size", "60"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    pid = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    if status:
        raise SystemExit(f"avx extract failed ({status}): {' '.join(cmd)}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 240])
    ap.add_argument("--size", default="480x270")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sec in args.seconds:
            d = Path(tmp) / f"s{sec:g}"
            d.mkdir()
            write_video(d / "clip.mp4", sec, size)
            rows = [{"id": "clip", "speaker": "a", "video_path": "clip.mp4", "split": "test", "label": "x"}]
            pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
            rss, wall = peak_rss(d / "manifest.csv", d / "s.zarr")
            results.append((sec, rss, wall))
    base = results[0][1]
    print(f"peak RSS of avx extract faces,mobilenetv2 (every frame, 25 fps, {args.size}), a process each")
    for sec, rss, wall in results:
        print(f"  {sec:6.0f} s clip ({int(sec * 25):5d} frames): {rss:5.2f} GiB  {wall:6.1f} s   ratio to"
              f" {results[0][0]:g} s: {rss / base:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
