"""From a store to padded batches: streams, layers, alignment, length, labels, splits.

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
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from avx.corpora.protocols import SPLITS
from avx.errors import AvxError, UnknownNameError
from avx.fuse.targets import Targets, resolve_targets
from avx.store_schema import FeatureStore
from avx.store_schema import spec as S
from avx.store_schema.align import average_pool, nearest_index
from avx.store_schema.reader import Stream

DEMOGRAPHICS = ("sex", "race", "age_group")
BLOCK_SAMPLES = 512


@dataclass(frozen=True)
class DataConfig:
    """Which data a run uses (saved in ``RUN/config.json``).

    Attributes:
        streams: store streams, optionally with layers: ``audio/wavlm-large@all``.
        labels: label source (see :mod:`avx.fuse.targets`).
        task: ``multiclass``, ``multilabel`` or ``regression``.
        level: ``auto``, ``sequence`` or ``frame`` targets for dimensional labels.
        bins: thresholds for binning a dimension into 3 classes.
        soft_targets: multilabel targets are the vote distribution, not multi-hot.
        protocol / fold: stored evaluation protocol (None = the store's default).
        length: length policies, ``POLICY`` for all streams or ``STREAM=POLICY``.
        align: None, ``labels``, a stream name or ``rate:R``.
        memory_gb: read everything once when the selection is smaller than this.
        groups: sample columns used for fairness metrics (``age_group`` is derived).
    """

    streams: tuple[str, ...]
    labels: str = "av"
    task: str = "multiclass"
    level: str = "auto"
    bins: tuple[float, float] = (-0.05, 0.05)
    soft_targets: bool = False
    protocol: str | None = None
    fold: int = 0
    length: tuple[str, ...] = ()
    align: str | None = None
    memory_gb: float = 8.0
    groups: tuple[str, ...] = DEMOGRAPHICS


@dataclass(frozen=True)
class StreamInfo:
    """What a method needs to know about one input: feature size, layers, modality."""

    dim: int
    layers: int = 1
    modality: str = "audio"


@dataclass
class Batch:
    """A padded batch. ``inputs[s]`` is ``[B, T, D]`` (``[B, T, L, D]`` with layers)."""

    ids: list[str]
    index: np.ndarray
    inputs: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]  # [B, T] bool, True = real frame
    present: dict[str, torch.Tensor]  # [B] bool
    targets: torch.Tensor  # [B] | [B, K] | [B, T] | [B, T, K]
    target_mask: torch.Tensor  # [B] | [B, T] bool
    # Frames a test-time perturbation corrupted, per stream ([B, T] bool), for analyses.
    corrupted: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> Batch:
        mv = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return replace(
            self,
            inputs=mv(self.inputs),
            masks=mv(self.masks),
            present=mv(self.present),
            targets=self.targets.to(device),
            target_mask=self.target_mask.to(device),
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Normalizer:
    """Per-dimension mean/std per stream, fitted on training frames only."""

    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)

    def state_dict(self) -> dict[str, dict[str, list]]:
        return {s: {"mean": self.mean[s].tolist(), "std": self.std[s].tolist()} for s in self.mean}

    @classmethod
    def from_state_dict(cls, d: dict[str, dict[str, list]]) -> Normalizer:
        return cls(
            {s: np.asarray(v["mean"], np.float32) for s, v in d.items()},
            {s: np.asarray(v["std"], np.float32) for s, v in d.items()},
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """``mean:STREAM`` / ``std:STREAM`` tensors, as ``normalizer.safetensors`` holds them."""
        out = {f"mean:{s}": torch.as_tensor(v) for s, v in self.mean.items()}
        out.update({f"std:{s}": torch.as_tensor(v) for s, v in self.std.items()})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Normalizer:
        streams = [k.removeprefix("mean:") for k in t if k.startswith("mean:")]
        return cls(
            {s: t[f"mean:{s}"].numpy().astype(np.float32) for s in streams},
            {s: t[f"std:{s}"].numpy().astype(np.float32) for s in streams},
        )

    def __call__(self, stream: str, x: np.ndarray) -> np.ndarray:
        return (x - self.mean[stream]) / self.std[stream]


def parse_stream(spec: str) -> tuple[str, str | None]:
    """``audio/wavlm@6+12`` -> (``audio/wavlm``, ``6+12``)."""
    name, _, layers = spec.partition("@")
    return name.strip(), (layers.strip() or None)


def parse_length(policies: tuple[str, ...], streams: list[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for item in policies:
        target, _, pol = item.rpartition("=")
        kind, _, n = pol.partition(":")
        if kind not in ("truncate", "pad", "resample") or not n.isdigit() or int(n) < 1:
            raise AvxError(f"bad length policy '{item}'; use truncate:N, pad:N or resample:N (N >= 1)")
        hit = [s for s in streams if not target or s == target or s.split("/")[0] == target]
        if not hit:
            raise UnknownNameError("stream or modality in --length", target, streams)
        for s in hit:
            out[s] = (kind, int(n))
    return out


def age_group(age: np.ndarray) -> np.ndarray:
    """Age bands for fairness: <30, 30-44, 45+ (unknown when missing)."""
    a = np.asarray(age, dtype=float)
    return np.where(~np.isfinite(a), "unknown", np.where(a < 30, "<30", np.where(a < 45, "30-44", "45+")))


class FusionData:
    """Targets, splits and the selected streams of a store, ready to batch.

    Args:
        store: the opened store.
        config: what to select.
        align: the method needs one clock for every stream (early fusion); the first
            stream's timestamps are used unless ``config.align`` says otherwise.
        keep_unlabelled: keep samples without a target or split (prediction); their
            split is ``unassigned`` and their per-sequence targets are -1 (multiclass)
            or 0: every sample is scored, none should be trained or evaluated on.
    """

    def __init__(
        self, store: FeatureStore, config: DataConfig, *, align: bool = False, keep_unlabelled: bool = False
    ) -> None:
        self.store, self.config = store, config
        if not config.streams:
            raise AvxError("select at least one stream (--streams)")
        self.targets_all: Targets = resolve_targets(
            store,
            config.labels,
            config.task,
            level=config.level,
            bins=tuple(config.bins),
            soft_targets=config.soft_targets,
        )
        self.task = config.task
        self.names = self.targets_all.names  # class names, or dimension names for regression
        self.frame_level = self.targets_all.frame_level
        self.stream_names: list[str] = []
        self.streams: dict[str, Stream] = {}  # opened once: each open reads the stream's index
        self._layers: dict[str, list[int] | None] = {}
        self.info: dict[str, StreamInfo] = {}
        for spec in config.streams:
            self._add_stream(spec)
        self.align = self._resolve_align(align)
        self.length = parse_length(config.length, self.stream_names)
        split = store.split(config.protocol, config.fold).astype(str)
        labelled = self.targets_all.labelled()
        self.n_unlabelled = int((~labelled & (split != "")).sum())
        if keep_unlabelled:
            split = np.where(split == "", "unassigned", split)
            rows = np.arange(len(split))
        else:
            rows = np.flatnonzero(labelled & (split != ""))
        have = {s: self._committed(s) for s in self.stream_names}
        rows = rows[np.any([have[s][rows] for s in self.stream_names], axis=0)]
        self.rows = rows
        self.ids = store.sample_ids[rows].astype(str)
        self.split = split[rows]
        self.available = {s: have[s][rows] for s in self.stream_names}
        self.groups = self._groups()
        if not (self.split == "train").any():
            raise AvxError(
                f"{store.url}: no training samples with labels '{config.labels}' and these streams"
            )
        self.in_memory = self.selected_bytes() <= config.memory_gb * 2**30
        self.features: dict[str, list[np.ndarray | None]] = {}
        self.target_frames: list[np.ndarray | None] | None = None
        self.ref_times: list[np.ndarray | None] = []
        if self.in_memory:
            self.features, self.target_frames, self.ref_times = self._load(np.arange(len(self.ids)))
        self.normalizer = self.fit_normalizer()

    # -- selection ---------------------------------------------------------------------
    def _add_stream(self, spec: str) -> None:
        name, layers = parse_stream(spec)
        if name not in self.store.streams:
            raise UnknownNameError("stream", name, self.store.streams)
        if name == S.FACES:
            raise AvxError("faces is a crop stream; select features (video/<backbone>) instead")
        st = self.streams[name] = self.store.stream(name)
        shape = st.spec.frame_shape
        axis = st.spec.layer_axis
        if axis is None:
            if layers is not None:
                raise AvxError(f"stream {name} has no layer axis; drop '@{layers}'")
            self._layers[name] = None
            info = StreamInfo(int(np.prod(shape)), 1, name.split("/")[0])
        else:
            n_layers = shape[axis]
            if layers in (None, "all"):
                sel = list(range(n_layers))
            else:
                try:
                    sel = [int(v) for v in layers.split("+")]
                except ValueError:
                    raise AvxError(f"bad layer selection '@{layers}'; use @6, @6+12 or @all") from None
                if bad := [v for v in sel if not 0 <= v < n_layers]:
                    raise AvxError(f"stream {name} has layers 0..{n_layers - 1}; got {bad}")
            self._layers[name] = sel
            dim = int(np.prod(shape)) // n_layers
            info = StreamInfo(dim, len(sel), name.split("/")[0])
        self.stream_names.append(name)
        self.info[name] = info

    def _resolve_align(self, method_needs: bool) -> str | None:
        a = self.config.align
        if self.frame_level:
            if a not in (None, "labels"):
                raise AvxError("per-frame targets align every stream to the label times (--align labels)")
            return "labels"
        if a is None:
            return self.stream_names[0] if method_needs else None
        if a == "labels":
            raise AvxError("--align labels needs per-frame targets")
        if a.startswith("rate:"):
            try:
                float(a[5:])
            except ValueError:
                raise AvxError(f"bad --align '{a}'; use rate:R with R in Hz") from None
            return a
        if a not in self.stream_names:
            raise UnknownNameError("alignment reference", a, ["labels", "rate:R", *self.stream_names])
        return a

    def _committed(self, name: str) -> np.ndarray:
        return self.streams[name].index[:, 0] == S.Status.COMMITTED

    def selected_bytes(self) -> int:
        total = 0
        for s in self.stream_names:
            idx = self.streams[s].index[self.rows]
            frames = int((idx[:, 3] - idx[:, 2])[self.available[s]].sum())
            total += frames * self.info[s].dim * self.info[s].layers * 4
        return total

    def _groups(self) -> dict[str, np.ndarray]:
        samples = self.store.samples.iloc[self.rows]
        out = {}
        for g in self.config.groups:
            if g == "age_group" and "age" in samples:
                out[g] = age_group(samples["age"].to_numpy())
            elif g in samples:
                out[g] = samples[g].fillna("unknown").astype(str).to_numpy()
        return out

    # -- loading -----------------------------------------------------------------------
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
        acc: dict[str, list[np.ndarray]] = {s: [] for s in self.stream_names}
        n = dict.fromkeys(self.stream_names, 0)
        for feats, _, _ in self._iter_blocks(self.indices("train")):
            for s, seqs in feats.items():
                for f in seqs:
                    if f is None or not len(f):
                        continue
                    f64 = f.astype(np.float64)
                    if not acc[s]:
                        acc[s] = [np.zeros(f.shape[1:]), np.zeros(f.shape[1:])]
                    acc[s][0] += f64.sum(0)
                    acc[s][1] += (f64**2).sum(0)
                    n[s] += len(f)
        for s in self.stream_names:
            if not n[s]:
                raise AvxError(f"stream {s}: no training frames to normalise with")
            mean = acc[s][0] / n[s]
            var = np.maximum(acc[s][1] / n[s] - mean**2, 0)
            std = np.sqrt(var)
            norm.mean[s] = mean.astype(np.float32)
            norm.std[s] = np.maximum(std, 1e-6 * max(np.abs(mean).max(), 1e-12) + 1e-12).astype(np.float32)
        return norm

    # -- batching ----------------------------------------------------------------------
    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}

    def _iter_blocks(
        self, idx: np.ndarray, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[dict[str, list], list | None, np.ndarray]]:
        """Processed features for ``idx``, whole (in memory) or block by block (streamed)."""
        if self.in_memory:
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
            for a in range(0, len(idx), batch_size):
                yield self.collate(idx[a : a + batch_size], norm)
            return
        for feats, tgts, block in self._iter_blocks(idx, shuffle, generator):
            for a in range(0, len(block), batch_size):
                sl = slice(a, a + batch_size)
                yield self._collate(
                    block[sl], {s: f[sl] for s, f in feats.items()}, None if tgts is None else tgts[sl], norm
                )

    def collate(self, idx: np.ndarray, norm: Normalizer | None = None) -> Batch:
        """A batch of in-memory samples ``idx``."""
        feats = {s: [f[i] for i in idx] for s, f in self.features.items()}
        tgts = None if self.target_frames is None else [self.target_frames[i] for i in idx]
        return self._collate(np.asarray(idx), feats, tgts, norm or self.normalizer)

    def _collate(self, idx: np.ndarray, feats: dict[str, list], tgts: list | None, norm: Normalizer) -> Batch:
        inputs, masks, present = {}, {}, {}
        b = len(idx)
        fixed = {s: n for s, (k, n) in self.length.items() if k in ("pad", "resample")}
        for s in self.stream_names:
            seqs = feats[s]
            lengths = [0 if f is None else len(f) for f in seqs]
            t = fixed.get(s) or max(1, *lengths)
            shape = (
                (self.info[s].layers, self.info[s].dim) if self.info[s].layers > 1 else (self.info[s].dim,)
            )
            x = np.zeros((b, t, *shape), np.float32)
            m = np.zeros((b, t), bool)
            for j, f in enumerate(seqs):
                if f is not None and len(f):
                    x[j, : len(f)] = norm(s, f)
                    m[j, : len(f)] = True
            inputs[s], masks[s] = torch.from_numpy(x), torch.from_numpy(m)
            present[s] = torch.tensor([n > 0 for n in lengths])
        rows = self.rows[idx]
        tv = self.targets_all
        if tgts is not None:
            t = max(max(x.shape[1] for x in inputs.values()), *(len(f) for f in tgts))
            k = () if tv.task == "multiclass" else (tv.n_outputs,)
            y = np.zeros((b, t, *k), np.int64 if tv.task == "multiclass" else np.float32)
            tm = np.zeros((b, t), bool)
            if tv.task == "multiclass":
                y[:] = -1
            for j, f in enumerate(tgts):
                y[j, : len(f)] = f
                ok = f >= 0 if tv.task == "multiclass" else np.isfinite(f).all(-1)
                tm[j, : len(f)] = ok
            y = np.nan_to_num(y) if y.dtype != np.int64 else y
            targets, tmask = torch.from_numpy(y), torch.from_numpy(tm)
        else:
            v = tv.values[rows]
            if tv.task != "multiclass":
                v = np.nan_to_num(v)
            targets = torch.as_tensor(v, dtype=torch.long if tv.task == "multiclass" else torch.float32)
            tmask = torch.ones(b, dtype=torch.bool)
        return Batch(
            ids=[str(self.ids[i]) for i in idx],
            index=np.asarray(idx),
            inputs=inputs,
            masks=masks,
            present=present,
            targets=targets,
            target_mask=tmask,
        )
