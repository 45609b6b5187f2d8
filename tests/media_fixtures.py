"""Real media files for extraction tests, written with PyAV (no downloads)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from avx.demo.corpus import _face_image


def face_frames(n: int, size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """``n`` frames ``[n, H, W, 3]`` with the astronaut's face drifting over a plain background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    face = np.asarray(Image.fromarray(_face_image()).resize((72, 72)))
    out = np.empty((n, h, w, 3), np.uint8)
    out[:] = rng.integers(60, 200, size=3, dtype=np.uint8)
    for i in range(n):
        x, y = 20 + int(10 * np.sin(i / 4)), 20 + int(4 * np.cos(i / 3))
        out[i, y : y + 72, x : x + 72] = face
    return out


def noise_frames(n: int, size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def voice(seconds: float, sr: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A voiced harmonic signal with some noise: not silent, not a pure tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8)) * (
        0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    )
    y = 0.2 * y / np.abs(y).max() + 0.01 * rng.standard_normal(len(t))
    y = y.astype(np.float32)
    return np.stack([y, 0.8 * y], axis=1) if channels == 2 else y


def write_wav(path: Path, y: np.ndarray, sr: int = 16000) -> Path:
    sf.write(path, y, sr)
    return path


def write_mp4(
    path: Path, frames: np.ndarray, fps: int = 25, audio: np.ndarray | None = None, sr: int = 16000
) -> Path:
    """An MPEG-4 video (and AAC audio track when ``audio`` is given)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vs.bit_rate = 1_000_000
        a_s = None
        if audio is not None:
            a_s = c.add_stream("aac", rate=sr)
            a_s.layout = "mono"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a_s is not None:
            block = 1024
            for i in range(0, len(audio), block):
                chunk = audio[i : i + block].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sr, i, Fraction(1, sr)
                for p in a_s.encode(frame):
                    c.mux(p)
            for p in a_s.encode():
                c.mux(p)
    return path
