"""From a store to padded batches, in three steps: selection (:mod:`avx.fuse.selection`),
loading and normalisation (this module), collation (:mod:`avx.fuse.collate`). What each
covers: streams, layers, alignment, length, labels, splits.

Per sample and stream, in this order:

1. **layers** — a multi-layer stream (``[T, L, D]``, e.g. WavLM's hidden states) is
   selected with ``name@6``, ``name@6+12+18`` or ``name@all``; several layers stay a
   layer axis and the method mixes them with learnable softmax weights.
2. **alignment** — ``align``: ``labels`` (per-frame targets: every stream is sampled at
   the label times, nearest frame), a stream name (its timestamps), or ``rate:R``
   (average-pooled onto an R Hz grid). Methods that need one clock (early fusion,
   per-frame targets) get it by default.
3. **length** — ``truncate:N`` (first N frames), ``pad:N`` (first N, zero-padded to
   exactly N), ``resample:N`` (N frames uniformly over the sequence); per stream or
   modality with ``stream=policy`` / ``audio=policy``.
4. **normalisation** — per-dimension mean/std from the training split only, saved with
   the run and reused at evaluation.

A sample lacking a stream (not extracted, failed, absent from the corpus) still flows
through with ``present[stream] = False``, so methods can train on unpaired data.

Two ways to read: when the selected features fit in ``memory_gb`` they are read once
per run, part by part (``Stream.read_many``); otherwise every epoch streams blocks of
consecutive samples (one contiguous read per part), shuffling the block order and the
samples within each block, so there is never one random read per sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from avx.errors import AvxError
from avx.extract.backbones.hf_audio import frame_times
from avx.extract.backbones.waveform import SAMPLES as WAVEFORM_SAMPLES
from avx.extract.backbones.waveform import waveform_of
from avx.fuse.collate import collate
from avx.fuse.datatypes import (
    BLOCK_SAMPLES,
    DEMOGRAPHICS,
    AlignedRaw,
    Batch,
    DataConfig,
    Normalizer,
    StreamInfo,
    parse_length,
    parse_stream,
)
from avx.fuse.selection import Selection, age_group
from avx.store_schema import FeatureStore
from avx.store_schema import spec as S
from avx.store_schema.align import average_pool, nearest_index

__all__ = [
    "BLOCK_SAMPLES",
    "DEMOGRAPHICS",
    "Batch",
    "DataConfig",
    "FusionData",
    "Normalizer",
    "Selection",
    "StreamInfo",
    "age_group",
    "parse_length",
    "parse_stream",
]


class FusionData(Selection):
    """A :class:`~avx.fuse.selection.Selection` whose features can be read, normalised and batched.

    Constructing one only selects (reads metadata and stream indices). Features are
    read by :meth:`load` (all at once when they fit in ``memory_gb``, else streamed
    block by block while batching), the normaliser is fitted by :meth:`fit_normalizer`
    (training split only) or set from a saved run; both happen on first use when not
    done explicitly. Batches come from :func:`avx.fuse.collate.collate`.
    """

    def __init__(
        self,
        store: FeatureStore,
        config: DataConfig,
        *,
        align: bool = False,
        keep_unlabelled: bool = False,
        raw: bool = False,
    ) -> None:
        super().__init__(store, config, align=align, keep_unlabelled=keep_unlabelled, raw=raw)
        self._features: dict[str, list[np.ndarray | None]] | None = None
        self.target_frames: list[np.ndarray | None] | None = None
        self.ref_times: list[np.ndarray | None] = []
        self._normalizer: Normalizer | None = None

    # -- loading -----------------------------------------------------------------------
    def load(self) -> FusionData:
        """Read every selected feature into memory when the selection fits (else a no-op:
        batches stream blocks). Idempotent; returns ``self``."""
        if self.in_memory and self._features is None:
            self._features, self.target_frames, self.ref_times = self._load(np.arange(len(self.ids)))
        return self

    @property
    def features(self) -> dict[str, list[np.ndarray | None]]:
        """Processed features per stream and sample (in-memory selections; loaded on first use)."""
        if self._features is None:
            self.load()
        return self._features if self._features is not None else {}

    @features.setter
    def features(self, value: dict[str, list[np.ndarray | None]]) -> None:
        self._features = value

    @property
    def normalizer(self) -> Normalizer:
        """The training-split normaliser (fitted on first use unless set)."""
        if self._normalizer is None:
            self._normalizer = self.fit_normalizer()
        return self._normalizer

    @normalizer.setter
    def normalizer(self, value: Normalizer) -> None:
        self._normalizer = value

    def _load(self, idx: np.ndarray) -> tuple[dict[str, list[np.ndarray | None]], list | None, list]:
        """Processed features, per-frame targets and reference times of samples ``idx``
        (positions in ``self.ids``), read part by part."""
        raw: dict[str, list[np.ndarray | None]] = {}
        times: dict[str, list[np.ndarray | None]] = {}
        for s in self.stream_names:
            st = self.streams[s]
            ok = [i for i in idx if self.available[s][i]]
            ids = [self.ids[i] for i in ok]
            data = st.read_many(ids) if ids else []
            ts = st.read_many(ids, S.TIMESTAMPS) if ids and self.align else [None] * len(ids)
            if ids and s in self.raw and self.raw[s].waveform:  # (data, real samples per frame)
                counts = st.read_many(ids, WAVEFORM_SAMPLES)
                data = list(zip(data, counts, strict=True))
                if self.align:  # on the speech model's clock, the frames the method sees
                    ts = [frame_times(int(c.sum())) for c in counts]
            pos = {i: k for k, i in enumerate(ok)}
            raw[s] = [data[pos[i]] if i in pos else None for i in idx]
            times[s] = [ts[pos[i]] if i in pos else None for i in idx]
        feats: dict[str, list[np.ndarray | None]] = {s: [] for s in self.stream_names}
        tgts: list[np.ndarray | None] | None = [] if self.frame_level else None
        refs: list[np.ndarray | None] = []
        for j, i in enumerate(idx):
            ref = self._reference_times(i, {s: times[s][j] for s in self.stream_names})
            refs.append(ref)
            for s in self.stream_names:
                feats[s].append(self._process(s, raw[s][j], times[s][j], ref))
            if tgts is not None:
                tgts.append(self._length(None, self.targets_all.frames[self.rows[i]]))
        return feats, tgts, refs

    def _reference_times(self, i: int, times: dict[str, np.ndarray | None]) -> np.ndarray | None:
        if self.align is None:
            return None
        if self.align == "labels":
            return np.asarray(self.targets_all.times[self.rows[i]], np.float64)
        if self.align.startswith("rate:"):
            ends = [t[-1] for t in times.values() if t is not None and len(t)]
            rate = float(self.align[5:])
            return (np.arange(max(1, int(np.ceil(max(ends, default=0) * rate)))) + 0.5) / rate
        return (
            times[self.align]
            if times[self.align] is not None
            else next((t for t in times.values() if t is not None), None)
        )

    def _process(
        self, s: str, x: np.ndarray | None, t: np.ndarray | None, ref: np.ndarray | None
    ) -> np.ndarray | None:
        if x is None or not len(x):
            return None
        if s in self.raw:
            return self._process_raw(s, x, t, ref)
        x = np.asarray(x, np.float32)
        sel = self._layers[s]
        if sel is not None:
            axis = self.streams[s].spec.layer_axis
            x = np.moveaxis(x, axis + 1, 1)[:, sel].reshape(len(x), len(sel), -1)
            if len(sel) == 1:
                x = x[:, 0]
        else:
            x = x.reshape(len(x), -1)
        return self.place(s, x, t, ref)

    def _process_raw(
        self, s: str, x: Any, t: np.ndarray | None, ref: np.ndarray | None
    ) -> np.ndarray | AlignedRaw | None:
        """Unaligned, the crops or the clip's samples the length policy keeps (on a
        waveform it crops whole 20 ms frames, then the last frame's padding is dropped).
        Aligned, an :class:`AlignedRaw`: the crops picked or the whole clip, and the
        backbone output frames nearest in time to ``ref`` under the length policy
        (``t``: the crops' times, or the speech model's frame times)."""
        waveform = self.raw[s].waveform
        if ref is not None:
            if t is None or not len(t):  # a clip shorter than one speech frame
                return None
            picked = self._length(s, nearest_index(ref, t))
            if waveform:
                return AlignedRaw(waveform_of(np.asarray(x[0], np.float32), x[1]), picked)
            used, frames = np.unique(picked, return_inverse=True)
            return AlignedRaw(np.asarray(x)[used], frames.reshape(-1))
        if not waveform:
            return self._length(s, np.asarray(x))
        if self.length.get(s, ("",))[0] == "resample":
            raise AvxError(
                f"{s}: resample picks frames apart, which would splice the audio; use truncate or pad"
            )
        frames, samples = x
        frames = self._length(s, frames)
        wav = waveform_of(np.asarray(frames, np.float32), samples[: len(frames)])
        return wav if len(wav) else None

    def place(self, s: str, x: np.ndarray, t: np.ndarray | None, ref: np.ndarray | None) -> np.ndarray:
        """Alignment onto ``ref`` times and the length policy, for any per-frame array."""
        if ref is not None:
            if self.align and self.align.startswith("rate:"):
                rate = float(self.align[5:])
                x = average_pool(t, x, rate, duration=ref[-1] + 0.5 / rate)[0][: len(ref)]
            else:
                x = x[nearest_index(ref, t)]
        return self._length(s, x)

    def _length(self, s: str | None, x: np.ndarray) -> np.ndarray:
        # Per-frame targets follow the (common) policy of the streams they are aligned with.
        pol = self.length.get(s) if s else next(iter(self.length.values()), None)
        if pol is None:
            return x
        kind, n = pol
        if kind == "resample" and len(x):
            return x[np.round(np.linspace(0, len(x) - 1, n)).astype(int)]
        return x[:n]

    def fit_normalizer(self) -> Normalizer:
        norm = Normalizer()
        streams = [s for s in self.stream_names if s not in self.raw]  # raw: the model normalises
        acc: dict[str, list[np.ndarray]] = {s: [] for s in streams}
        n = dict.fromkeys(streams, 0)
        for feats, _, _ in self._iter_blocks(self.indices("train")):
            for s in streams:
                for f in feats[s]:
                    if f is None or not len(f):
                        continue
                    f64 = f.astype(np.float64)
                    if not acc[s]:
                        acc[s] = [np.zeros(f.shape[1:]), np.zeros(f.shape[1:])]
                    acc[s][0] += f64.sum(0)
                    acc[s][1] += (f64**2).sum(0)
                    n[s] += len(f)
        for s in streams:
            if not n[s]:
                raise AvxError(f"stream {s}: no training frames to normalise with")
            mean = acc[s][0] / n[s]
            var = np.maximum(acc[s][1] / n[s] - mean**2, 0)
            std = np.sqrt(var)
            norm.mean[s] = mean.astype(np.float32)
            norm.std[s] = np.maximum(std, 1e-6 * max(np.abs(mean).max(), 1e-12) + 1e-12).astype(np.float32)
        return norm

    # -- batching ----------------------------------------------------------------------
    def _iter_blocks(
        self, idx: np.ndarray, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[dict[str, list], list | None, np.ndarray]]:
        """Processed features for ``idx``, whole (in memory) or block by block (streamed)."""
        if self.in_memory:
            self.load()
            yield (
                {s: [f[i] for i in idx] for s, f in self.features.items()},
                None if self.target_frames is None else [self.target_frames[i] for i in idx],
                idx,
            )
            return
        blocks = [np.sort(idx)[a : a + BLOCK_SAMPLES] for a in range(0, len(idx), BLOCK_SAMPLES)]
        order = torch.randperm(len(blocks), generator=generator).numpy() if shuffle else range(len(blocks))
        for b in order:
            block = blocks[b]
            if shuffle:
                block = block[torch.randperm(len(block), generator=generator).numpy()]
            feats, tgts, _ = self._load(block)
            yield feats, tgts, block

    def batches(
        self,
        split: str | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        normalizer: Normalizer | None = None,
        sample_weights: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``split`` (or explicit positions). ``sample_weights`` resamples
        (over/under-sampling) with replacement, drawn from ``generator``."""
        idx = self.indices(split) if isinstance(split, str) else np.asarray(split)
        if sample_weights is not None:
            w = torch.as_tensor(sample_weights[idx], dtype=torch.float64)
            n = round(float(sample_weights[idx].sum()))
            idx = idx[torch.multinomial(w, n, replacement=True, generator=generator).numpy()]
        elif shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
        norm = normalizer or self.normalizer
        if self.in_memory:
            self.load()
            for a in range(0, len(idx), batch_size):
                yield self.collate(idx[a : a + batch_size], norm)
            return
        for feats, tgts, block in self._iter_blocks(idx, shuffle, generator):
            for a in range(0, len(block), batch_size):
                sl = slice(a, a + batch_size)
                yield collate(
                    self,
                    block[sl],
                    {s: f[sl] for s, f in feats.items()},
                    None if tgts is None else tgts[sl],
                    norm,
                )

    def collate(self, idx: np.ndarray, norm: Normalizer | None = None) -> Batch:
        """A batch of in-memory samples ``idx``."""
        self.load()
        feats = {s: [f[i] for i in idx] for s, f in self.features.items()}
        tgts = None if self.target_frames is None else [self.target_frames[i] for i in idx]
        return collate(self, np.asarray(idx), feats, tgts, norm or self.normalizer)
