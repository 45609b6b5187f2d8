"""Aligning streams in time, from their per-frame timestamps.

Conventions (``docs/store.md``): every stream stores one timestamp per frame, in
seconds from the start of the clip (of the segment, for clips cut from longer videos).
A timestamp is the instant the frame stands for: the centre of the analysis window for
audio features (MFCC, VGGish patches, wav2vec2 frames, openSMILE LLDs), the
presentation time for video frames and face crops. Text tokens have NaN timestamps.

Three ways to bring a stream onto another's clock:

- :func:`windows`: for each reference frame (e.g. each face frame), the source frames
  (e.g. audio) whose timestamps fall in a window centred on it. COLD pairs each visual
  frame with 1 s of audio features around it;
- :func:`nearest`: the source frame nearest to each reference time (ties: the earlier);
- :func:`average_pool`: the source averaged over bins of a common rate, for
  resampling several streams onto one grid (empty bins take the nearest frame).
"""

from __future__ import annotations

import numpy as np


def _check(times: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError("timestamps must be 1-D")
    if data is not None and len(data) != len(times):
        raise ValueError(f"{len(times)} timestamps for {len(data)} frames")
    if np.isnan(times).any():
        raise ValueError("stream has no timestamps (NaN): it cannot be aligned in time")
    if len(times) > 1 and np.any(np.diff(times) < 0):
        raise ValueError("timestamps must not decrease")
    return times


def nearest_index(ref_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame in ``times`` nearest to each of ``ref_times`` (ties: earlier)."""
    ref, times = _check(ref_times), _check(times)
    if len(times) == 0:
        raise ValueError("cannot align to an empty stream")
    right = np.searchsorted(times, ref).clip(1, len(times) - 1) if len(times) > 1 else np.zeros(len(ref), int)
    if len(times) == 1:
        return right
    left = right - 1
    return np.where(np.abs(ref - times[left]) <= np.abs(times[right] - ref), left, right)


def nearest(ref_times: np.ndarray, times: np.ndarray, data: np.ndarray) -> np.ndarray:
    """``data`` resampled at ``ref_times`` by nearest neighbour: ``[len(ref_times), ...]``."""
    _check(times, data)
    return np.asarray(data)[nearest_index(ref_times, times)]


def window_slices(ref_times: np.ndarray, times: np.ndarray, window: float) -> np.ndarray:
    """``[N, 2]`` start/stop indices of the frames in ``[t - window/2, t + window/2]`` per ref time."""
    ref, times = _check(ref_times), _check(times)
    lo = np.searchsorted(times, ref - window / 2 - 1e-9, side="left")
    hi = np.searchsorted(times, ref + window / 2 + 1e-9, side="right")
    return np.stack([lo, hi], axis=1)


def windows(
    ref_times: np.ndarray,
    times: np.ndarray,
    data: np.ndarray,
    window: float = 1.0,
    max_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Source frames in a window centred on each reference time, padded to equal length.

    Returns ``(out [N, W, ...], mask [N, W])`` where ``W`` is ``max_frames`` or the
    longest window; ``mask`` is True for real frames. Windows at the clip edges hold
    fewer frames (never frames from outside the clip).
    """
    data = np.asarray(data)
    _check(times, data)
    sl = window_slices(ref_times, times, window)
    lengths = sl[:, 1] - sl[:, 0]
    w = int(max_frames if max_frames is not None else (lengths.max() if len(lengths) else 0))
    out = np.zeros((len(sl), w, *data.shape[1:]), dtype=data.dtype)
    mask = np.zeros((len(sl), w), dtype=bool)
    for i, (a, b) in enumerate(sl):  # one slice per reference frame, no loop over source frames
        n = min(b - a, w)
        out[i, :n] = data[a : a + n]
        mask[i, :n] = True
    return out, mask


def grid(duration: float, rate: float) -> np.ndarray:
    """Bin centres of a ``rate`` Hz grid covering ``[0, duration)``."""
    n = max(1, int(np.ceil(duration * rate - 1e-9)))
    return (np.arange(n) + 0.5) / rate


def average_pool(
    times: np.ndarray, data: np.ndarray, rate: float, duration: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ``data`` over bins ``[k/rate, (k+1)/rate)``: ``(pooled, bin_times, counts)``.

    ``duration`` defaults to just past the last frame. Bins without a frame (upsampling)
    take the frame nearest to their centre; ``counts`` says how many frames each bin
    averaged (0 for those).
    """
    data = np.asarray(data)
    times = _check(times, data)
    if len(times) == 0:
        raise ValueError("cannot pool an empty stream")
    duration = float(duration if duration is not None else times[-1] + 1e-6)
    centres = grid(duration, rate)
    k = np.clip(np.floor(times * rate).astype(np.int64), 0, len(centres) - 1)
    flat = data.reshape(len(data), -1).astype(np.float64)
    sums = np.zeros((len(centres), flat.shape[1]))
    np.add.at(sums, k, flat)
    counts = np.bincount(k, minlength=len(centres))
    pooled = sums / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        pooled[empty] = flat[nearest_index(centres[empty], times)]
    return pooled.reshape(len(centres), *data.shape[1:]).astype(data.dtype), centres, counts
