"""From a store to padded batches: stream selection, labels, splits, normalisation.

The fast path for features that fit in memory: every selected stream is read once per
run, part by part (``Stream.read_many``), never sample by sample. Ragged sequences are
padded per batch with a frame mask; a sample that lacks a stream (not extracted,
failed, or absent from the corpus) still flows through with ``present[stream] = False``
so methods can train on unpaired data. Normalisation statistics come from the
training split only and are saved with the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from avx.corpora.protocols import SPLITS
from avx.errors import AvxError, UnknownNameError
from avx.store_schema import FeatureStore

TASKS = ("multiclass",)


@dataclass(frozen=True)
class DataConfig:
    """Which data a run uses.

    Attributes:
        streams: store streams to feed the method (``audio/mfcc``, ``video/mobilenetv2``).
        labels: ``voice``/``face``/``av`` (plurality of that rater modality; clips with a
            tied plurality are left out of multiclass tasks) or a categorical label of
            the store (``intended``, ``consensus``).
        task: ``multiclass``.
        protocol: evaluation protocol stored in the store (None = the store's default).
        fold: which fold of the protocol.
        max_frames: truncate longer sequences to this many frames (None = keep all).
    """

    streams: tuple[str, ...]
    labels: str = "av"
    task: str = "multiclass"
    protocol: str | None = None
    fold: int = 0
    max_frames: int | None = None


@dataclass
class Batch:
    ids: list[str]
    inputs: dict[str, torch.Tensor]  # [B, T, D]
    masks: dict[str, torch.Tensor]  # [B, T] bool, True = real frame
    present: dict[str, torch.Tensor]  # [B] bool
    targets: torch.Tensor  # [B]


@dataclass
class Normalizer:
    """Per-dimension mean/std per stream, fitted on training frames only."""

    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)

    def state_dict(self) -> dict[str, dict[str, list[float]]]:
        return {s: {"mean": self.mean[s].tolist(), "std": self.std[s].tolist()} for s in self.mean}

    @classmethod
    def from_state_dict(cls, d: dict[str, dict[str, list[float]]]) -> Normalizer:
        return cls(
            {s: np.asarray(v["mean"], np.float32) for s, v in d.items()},
            {s: np.asarray(v["std"], np.float32) for s, v in d.items()},
        )


class FusionData:
    """Labels, splits and the selected streams of a store, held in memory."""

    def __init__(self, store: FeatureStore, config: DataConfig) -> None:
        self.store, self.config = store, config
        if config.task not in TASKS:
            raise UnknownNameError("task", config.task, list(TASKS))
        if not config.streams:
            raise AvxError("select at least one stream (--streams)")
        for s in config.streams:
            if s not in store.streams:
                raise UnknownNameError("stream", s, store.streams)
        self.class_names = store.class_names
        samples = store.samples
        split = store.split(config.protocol, config.fold)
        targets = self._targets()
        self.n_unlabelled = int((targets < 0).sum())
        keep = (targets >= 0) & (split != "")
        self.ids = samples["id"].to_numpy(dtype=object)[keep].astype(str)
        self.targets = targets[keep]
        self.split = split[keep].astype(str)
        self.features: dict[str, list[np.ndarray | None]] = {}
        self.dims: dict[str, int] = {}
        for name in config.streams:
            stream = store.stream(name)
            if stream.spec.layer_axis is not None:
                raise AvxError(f"stream {name} has a layer axis; layer selection comes with the featurizer")
            self.dims[name] = int(np.prod(stream.spec.frame_shape))
            have = [i for i, sid in enumerate(self.ids) if sid in stream]
            arrays = stream.read_many([self.ids[i] for i in have]) if have else []
            feats: list[np.ndarray | None] = [None] * len(self.ids)
            for i, a in zip(have, arrays, strict=True):
                a = a.reshape(len(a), -1).astype(np.float32)
                feats[i] = a[: config.max_frames] if config.max_frames else a
            self.features[name] = feats
        usable = np.array(
            [any(self.features[s][i] is not None for s in self.features) for i in range(len(self.ids))]
        )
        self._subset(usable)
        if not (self.split == "train").any():
            raise AvxError(
                f"{store.url}: no training samples with labels '{config.labels}' and these streams"
            )
        self.normalizer = self.fit_normalizer()

    def _targets(self) -> np.ndarray:
        src = self.config.labels
        if src in self.store.categorical_names:
            return self.store.categorical(src)
        if src not in self.store.labels:
            raise UnknownNameError(
                "label source", src, [*sorted(self.store.labels), *self.store.categorical_names]
            )
        return self.store.labels[src].hard_labels()

    def _subset(self, keep: np.ndarray) -> None:
        self.ids, self.targets, self.split = self.ids[keep], self.targets[keep], self.split[keep]
        idx = np.flatnonzero(keep)
        self.features = {s: [f[i] for i in idx] for s, f in self.features.items()}

    def fit_normalizer(self) -> Normalizer:
        norm = Normalizer()
        train = np.flatnonzero(self.split == "train")
        for s, feats in self.features.items():
            frames = [feats[i] for i in train if feats[i] is not None and len(feats[i])]
            if not frames:
                raise AvxError(f"stream {s}: no training frames to normalise with")
            x = np.concatenate(frames).astype(np.float64)
            norm.mean[s] = x.mean(axis=0).astype(np.float32)
            norm.std[s] = np.maximum(x.std(axis=0), 1e-8 * np.abs(x).max() + 1e-30).astype(np.float32)
        return norm

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        normalizer: Normalizer | None = None,
    ) -> Iterator[Batch]:
        idx = self.indices(split)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
        norm = normalizer or self.normalizer
        for a in range(0, len(idx), batch_size):
            yield self.collate(idx[a : a + batch_size], norm)

    def collate(self, idx: np.ndarray, norm: Normalizer) -> Batch:
        inputs, masks, present = {}, {}, {}
        for s, feats in self.features.items():
            seqs = [feats[i] for i in idx]
            lengths = [0 if f is None else len(f) for f in seqs]
            t = max(1, *lengths)
            x = np.zeros((len(idx), t, self.dims[s]), np.float32)
            m = np.zeros((len(idx), t), bool)
            for j, f in enumerate(seqs):
                if f is not None and len(f):
                    x[j, : len(f)] = (f - norm.mean[s]) / norm.std[s]
                    m[j, : len(f)] = True
            inputs[s], masks[s] = torch.from_numpy(x), torch.from_numpy(m)
            present[s] = torch.tensor([n > 0 for n in lengths])
        return Batch(
            ids=[str(self.ids[i]) for i in idx],
            inputs=inputs,
            masks=masks,
            present=present,
            targets=torch.as_tensor(self.targets[idx], dtype=torch.long),
        )
