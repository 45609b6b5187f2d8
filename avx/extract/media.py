"""Decoding media: audio from any container, video frames with a sampling policy.

Every failure is a :class:`~avx.errors.MediaError` naming the file and the problem;
the extraction loop records it as that sample's failure and carries on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import soundfile as sf
import soxr

from avx.errors import MediaError

SILENCE_RMS = 1e-5


@dataclass(frozen=True)
class Audio:
    """A decoded clip: mono float32 ``waveform`` at ``sample_rate``, and what it was."""

    waveform: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    declared_s: float | None = None
    """Duration the container's header declares (None: unknown)."""
    extra: tuple[str, ...] = ()
    """Further notes (a duration shorter than the corpus metadata's)."""

    @property
    def duration(self) -> float:
        return len(self.waveform) / self.sample_rate

    def shorter_than(self, expected_s: float | None, what: str) -> Audio:
        """A copy noting truncation when ``expected_s`` (say, the corpus metadata's
        duration) is clearly longer than what was decoded."""
        if expected_s is None or not np.isfinite(expected_s) or not _cut_short(self.duration, expected_s):
            return self
        note = f"truncated: {self.duration:.2f} s of {expected_s:.2f} s in {what}"
        return replace(self, extra=(*self.extra, note))

    @property
    def note(self) -> str:
        """What was done to the source, recorded per sample ("" when nothing)."""
        notes = list(self.extra)
        if self.declared_s is not None and _cut_short(self.duration, self.declared_s):
            notes.insert(0, f"truncated: {self.duration:.2f} s of {self.declared_s:.2f} s in the header")
        if self.channels != 1:
            notes.append(f"{self.channels} channels mixed to mono")
        if self.source_rate != self.sample_rate:
            notes.append(f"resampled {self.source_rate} -> {self.sample_rate} Hz")
        return "; ".join(notes)


def _cut_short(decoded_s: float, expected_s: float) -> bool:
    """More than 1 % and 10 ms shorter: rounding of header fields never is."""
    return decoded_s < 0.99 * expected_s - 0.01


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a WAV header declares for its ``data`` chunk (libsndfile reports what is
    on disk, so a truncated file would otherwise go unnoticed); None if unknown."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"RIFF" or not f.read(4) or f.read(4) != b"WAVE":
                return None
            block_align = 0
            while len(head := f.read(8)) == 8:
                cid, size = head[:4], int.from_bytes(head[4:], "little")
                if cid == b"fmt ":
                    fmt = f.read(size)
                    block_align = int.from_bytes(fmt[12:14], "little")
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    # streaming writers leave the size at 0 or 0xFFFFFFFF
                    ok = block_align and size not in (0, 0xFFFFFFFF)
                    return size // block_align if ok else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None
    return None


def decode_audio(path: str | Path) -> Audio:
    """The file's audio as decoded: mono mix at its own rate (no resampling)."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        declared = None
        if path.suffix.lower() in {".wav", ".flac", ".ogg"}:
            y, sr = sf.read(str(path), dtype="float32", always_2d=True)
            channels = y.shape[1]
            y = y.mean(axis=1)
            frames = _wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
            declared = frames / sr if frames else None
        else:
            y, sr, channels, declared = _decode_audio_av(path)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: unreadable audio ({type(e).__name__}: {_first_line(e)})") from None
    if y.size == 0:
        raise MediaError(f"{path}: no audio samples")
    if not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise MediaError(f"{path}: {bad} non-finite audio samples (NaN or Inf); the file is damaged")
    return Audio(np.ascontiguousarray(y, dtype=np.float32), int(sr), int(sr), int(channels), declared)


def resample(audio: Audio, sample_rate: int, *, source: str = "audio") -> Audio:
    """``audio`` at ``sample_rate`` (soxr, high quality); silence is an error: features of
    silence are not data."""
    y = audio.waveform
    if audio.sample_rate != sample_rate:
        y = soxr.resample(y, audio.sample_rate, sample_rate, quality="HQ").astype(np.float32)
    if float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) < SILENCE_RMS:
        raise MediaError(f"{source}: silent audio (RMS below {SILENCE_RMS:g})")
    return replace(audio, waveform=np.ascontiguousarray(y), sample_rate=sample_rate)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate`` from any container (wav/flac/ogg with
    libsndfile, anything else, such as mp3 or the audio track of flv/mp4, through PyAV)."""
    return resample(decode_audio(path), sample_rate, source=str(path)).waveform


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def _decode_audio_av(path: Path) -> tuple[np.ndarray, int, int, float | None]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = c.streams.audio[0]
        channels = stream.codec_context.channels or 1
        resampler = av.AudioResampler(format="flt", layout="mono")
        chunks = []
        for frame in c.decode(stream):
            for f in resampler.resample(frame):
                chunks.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            chunks.append(f.to_ndarray().reshape(-1))
        sr = stream.rate
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif c.duration:
            declared = c.duration / 1_000_000
    y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return y, int(sr), int(channels), declared


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

    def targets(self) -> Iterator[float] | None:
        """Target times in seconds (None: every frame)."""
        if self.mode == "all":
            return None
        if self.mode == "fps":
            return (k / self.fps for k in itertools.count())
        return ((k + 0.5) * (self.seconds / self.n) for k in range(self.n))

    def selector(self) -> FrameSelector:
        return FrameSelector(self)

    def select(self, times: np.ndarray) -> np.ndarray:
        """Indices into decoded frames with presentation ``times`` (seconds)."""
        sel, out = self.selector(), []
        for i, t in enumerate(times):
            out += [j for j, _ in sel.push(i, float(t))]
            if sel.done:
                break
        return np.asarray(out + [j for j, _ in sel.finish()], dtype=np.int64)

    def describe(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v is not None}


class FrameSelector:
    """Streaming form of :class:`FrameSampling`: frames go in one at a time, the chosen
    ones come out, so a long video is never held in memory.

    Each target time takes the nearer of the two frames around it (the earlier on a
    tie); ``fps`` never repeats a frame, ``uniform`` always yields ``n`` frames (the last
    frame repeats when the clip is shorter than ``seconds``) and is ``done`` as soon as
    its last target is passed, so decoding can stop early.
    """

    def __init__(self, sampling: FrameSampling) -> None:
        self.sampling = sampling
        self._targets = sampling.targets()
        self._target = next(self._targets, None) if self._targets is not None else None
        self._prev: tuple[Any, float] | None = None
        self._last_emitted: Any = None
        self.done = False

    def _emit(self, item: Any, t: float, out: list[tuple[Any, float]]) -> None:
        if self.sampling.mode == "fps" and self._last_emitted is item:
            return
        out.append((item, t))
        self._last_emitted = item

    def push(self, item: Any, t: float) -> list[tuple[Any, float]]:
        out: list[tuple[Any, float]] = []
        if self._targets is None:
            return [(item, t)]
        while self._target is not None and self._target <= t:
            prev = self._prev
            if prev is not None and (self._target - prev[1]) <= (t - self._target):
                self._emit(prev[0], prev[1], out)
            else:
                self._emit(item, t, out)
            self._target = next(self._targets, None)
        if self._target is None:
            self.done = True
        self._prev = (item, t)
        return out

    def finish(self) -> list[tuple[Any, float]]:
        out: list[tuple[Any, float]] = []
        if self.sampling.mode == "uniform" and self._prev is not None:
            while self._target is not None:
                out.append(self._prev)
                self._target = next(self._targets, None)  # type: ignore[arg-type]
        return out


def iter_frames(
    path: str | Path,
    sampling: FrameSampling,
    *,
    segment: tuple[float, float] | None = None,
    chunk: int = 64,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sampled RGB frames in chunks ``([n, H, W, 3] uint8, [n] seconds)``, streamed.

    Timestamps count from the first decoded frame, or from ``segment[0]`` when
    ``segment=(start, end)`` keeps only frames in ``[start, end)`` of a longer video
    (decoding starts from a seek to the keyframe before ``start``).
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    sel = sampling.selector()
    buf: list[tuple[np.ndarray, float]] = []
    n_decoded, last_t = 0, 0.0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MediaError(f"{path}: no video track")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            if segment is not None and segment[0] > 0 and stream.time_base:
                c.seek(int(segment[0] / stream.time_base), stream=stream, backward=True)
            t0 = segment[0] if segment is not None else None
            for i, frame in enumerate(c.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 30)
                if segment is not None and t < segment[0]:
                    continue
                if segment is not None and t >= segment[1]:
                    break
                t0 = t if t0 is None else t0
                last_t = t
                n_decoded += 1
                buf += [(f.to_ndarray(format="rgb24"), ts) for f, ts in sel.push(frame, t - t0)]
                if len(buf) >= chunk:
                    yield _stack(buf)
                    buf = []
                if sel.done:
                    break
            if segment is None and not sel.done and n_decoded:
                _check_complete(path, c, stream, last_t - t0)
            buf += [(f.to_ndarray(format="rgb24"), ts) for f, ts in sel.finish()]
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: corrupt video ({type(e).__name__}: {_first_line(e)})") from None
    if n_decoded == 0:
        if segment is not None:
            raise MediaError(f"{path}: no frames in segment {segment[0]:.2f}-{segment[1]:.2f} s")
        raise MediaError(f"{path}: corrupt video (no decodable frames)")
    if buf:
        yield _stack(buf)


def _check_complete(path: Path, container: Any, stream: Any, span: float) -> None:
    """A file whose frames stop well before its header's duration was cut short."""
    expected = None
    if stream.duration is not None and stream.time_base is not None:
        expected = float(stream.duration * stream.time_base)
    elif container.duration:  # e.g. FLV: the header's duration
        expected = container.duration / 1_000_000
    fps = float(stream.average_rate or 25)
    if expected and span + 2 / fps < 0.9 * expected - 0.1:
        raise MediaError(f"{path}: truncated video (frames end at {span:.2f} s of {expected:.2f} s)")


def _stack(buf: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([f for f, _ in buf]), np.asarray([t for _, t in buf], dtype=np.float64)


def read_frames(
    path: str | Path, sampling: FrameSampling, *, segment: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All sampled frames of a clip at once (see :func:`iter_frames`); for short clips."""
    chunks = list(iter_frames(path, sampling, segment=segment))
    return np.concatenate([f for f, _ in chunks]), np.concatenate([t for _, t in chunks])
