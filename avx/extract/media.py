"""Decoding media: audio from any container, video frames with a sampling policy.

Every failure is a :class:`~avx.errors.MediaError` naming the file and the problem;
the extraction loop records it as that sample's failure and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import soundfile as sf
import soxr

from avx.errors import MediaError

SILENCE_RMS = 1e-5


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate`` (resampled with soxr, high quality).

    wav/flac/ogg are read with libsndfile; anything else (mp3, flv/mp4 audio tracks)
    through PyAV. Silent audio is an error: features of silence are not data.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    try:
        if path.suffix.lower() in {".wav", ".flac", ".ogg"}:
            y, sr = sf.read(str(path), dtype="float32", always_2d=True)
            y = y.mean(axis=1)
        else:
            y, sr = _decode_audio_av(path)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: unreadable audio ({type(e).__name__}: {e})") from None
    if y.size == 0:
        raise MediaError(f"{path}: no audio samples")
    if sr != sample_rate:
        y = soxr.resample(y, sr, sample_rate, quality="HQ").astype(np.float32)
    if float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) < SILENCE_RMS:
        raise MediaError(f"{path}: silent audio (RMS below {SILENCE_RMS:g})")
    return np.ascontiguousarray(y, dtype=np.float32)


def _decode_audio_av(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono")
        chunks = []
        for frame in c.decode(stream):
            for f in resampler.resample(frame):
                chunks.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            chunks.append(f.to_ndarray().reshape(-1))
        sr = stream.rate
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), int(sr)


@dataclass(frozen=True)
class FrameSampling:
    """Which video frames to use.

    - ``all``: every decoded frame;
    - ``fps``: frames nearest to a fixed rate ``fps``;
    - ``uniform``: ``n`` frames spread uniformly over the first ``seconds`` seconds
      (SFAV's RAVDESS recipe is ``n=15, seconds=3.6``).
    """

    mode: Literal["all", "fps", "uniform"] = "all"
    fps: float | None = None
    n: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.mode == "fps" and not (self.fps and self.fps > 0):
            raise ValueError("frame sampling 'fps' needs fps > 0")
        if self.mode == "uniform" and not (self.n and self.seconds):
            raise ValueError("frame sampling 'uniform' needs n and seconds")

    def select(self, times: np.ndarray) -> np.ndarray:
        """Indices into decoded frames with presentation ``times`` (seconds)."""
        if self.mode == "all" or len(times) == 0:
            return np.arange(len(times))
        if self.mode == "fps":
            targets = np.arange(0.0, times[-1] + 1e-9, 1.0 / self.fps)
        else:
            targets = (np.arange(self.n) + 0.5) * (self.seconds / self.n)
        idx = np.searchsorted(times, targets).clip(1, len(times) - 1)
        left_closer = (targets - times[idx - 1]) <= (times[idx] - targets)
        idx = np.where(left_closer, idx - 1, idx)
        return idx if self.mode == "uniform" else np.unique(idx)

    def describe(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v is not None}


def read_frames(
    path: str | Path, sampling: FrameSampling, *, segment: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded RGB frames ``[T, H, W, 3]`` uint8 and their timestamps in seconds.

    ``segment=(start, end)`` keeps only frames in ``[start, end)`` of a longer video
    (seeking to the keyframe before ``start``); timestamps then count from ``start``.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    frames, times = [], []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MediaError(f"{path}: no video track")
            stream = c.streams.video[0]
            if segment is not None and segment[0] > 0 and stream.time_base:
                c.seek(int(segment[0] / stream.time_base), stream=stream, backward=True)
            for i, frame in enumerate(c.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 30)
                if segment is not None and t < segment[0]:
                    continue
                if segment is not None and t >= segment[1]:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: corrupt video ({type(e).__name__}: {e})") from None
    if not frames:
        if segment is not None:
            raise MediaError(f"{path}: no frames in segment {segment[0]:.2f}-{segment[1]:.2f} s")
        raise MediaError(f"{path}: corrupt video (no decodable frames)")
    t = np.asarray(times, dtype=np.float64)
    t -= segment[0] if segment is not None else t[0]
    keep = sampling.select(t)
    return np.stack([frames[i] for i in keep]), t[keep]
