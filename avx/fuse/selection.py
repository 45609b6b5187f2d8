"""Selection: which samples, streams, layers and targets a run uses (no feature read).

The first of the three steps from a store to batches (:mod:`avx.fuse.data` loads and
normalises, :mod:`avx.fuse.collate` pads into batches). Everything here comes from the
store's metadata and the streams' indices, so it is cheap and can be checked before
anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avx.corpora.protocols import SPLITS
from avx.errors import AvxError, UnknownNameError
from avx.fuse.datatypes import DataConfig, StreamInfo, parse_length, parse_stream
from avx.fuse.targets import Targets, resolve_targets
from avx.store_schema import FeatureStore
from avx.store_schema import spec as S
from avx.store_schema.reader import Stream


def age_group(age: np.ndarray) -> np.ndarray:
    """Age bands for fairness: <30, 30-44, 45+ (unknown when missing)."""
    a = np.asarray(age, dtype=float)
    return np.where(~np.isfinite(a), "unknown", np.where(a < 30, "<30", np.where(a < 45, "30-44", "45+")))


FACES_INPUT = "video/faces"
"""The name the crop stream ``faces`` has among a run's inputs, so that the modality of
every input is its prefix (``--length video=...``, ``--missing video``)."""


@dataclass(frozen=True)
class RawInput:
    """A raw end-to-end input: which stored stream, its per-frame shape and dtype as
    batches carry it (the waveform is flattened to samples: shape ``()``)."""

    stored: str
    shape: tuple[int, ...]
    dtype: np.dtype
    waveform: bool = False


class Selection:
    """Which samples, streams, layers and targets a run uses: everything decided from
    the store's metadata and stream indices, before any feature is read.

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
        self,
        store: FeatureStore,
        config: DataConfig,
        *,
        align: bool = False,
        keep_unlabelled: bool = False,
        raw: bool = False,
    ) -> None:
        self.store, self.config = store, config
        self.raw_ok = raw
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
        self.extra_targets: dict[str, Targets] = {
            src: self._extra_targets(src) for src in config.label_sources()
        }
        self.extra_labelled = {src: t.labelled() for src, t in self.extra_targets.items()}
        self.task = config.task
        self.names = self.targets_all.names  # class names, or dimension names for regression
        self.frame_level = self.targets_all.frame_level
        self.stream_names: list[str] = []
        self.streams: dict[str, Stream] = {}  # opened once: each open reads the stream's index
        self._layers: dict[str, list[int] | None] = {}
        self.info: dict[str, StreamInfo] = {}
        self.raw: dict[str, RawInput] = {}
        for spec in self._of_modalities(config.streams):
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

    # -- selection ---------------------------------------------------------------------
    def _of_modalities(self, specs: tuple[str, ...]) -> list[str]:
        """``specs`` of the modalities ``config.modalities`` keeps (all when empty)."""
        keep = self.config.modalities
        if not keep:
            return list(specs)
        out = [s for s in specs if s.split("/")[0] in keep]
        if not out:
            raise AvxError(f"no stream of modality {', '.join(keep)} among --streams {', '.join(specs)}")
        return out

    def _extra_targets(self, src: str) -> Targets:
        """Targets of another label source for the same task and class names (per sequence)."""
        c = self.config
        t = resolve_targets(
            self.store, src, c.task, level=c.level, bins=tuple(c.bins), soft_targets=c.soft_targets
        )
        if t.frame_level or self.targets_all.frame_level:
            raise AvxError(f"extra label source '{src}': per-frame targets cannot be extra labels")
        if t.names != self.targets_all.names:
            raise AvxError(
                f"extra label source '{src}' has outputs {t.names}, '{c.labels}' has {self.targets_all.names}"
            )
        return t

    def _add_stream(self, spec: str) -> None:
        name, layers = parse_stream(spec)
        if name in (S.FACES, FACES_INPUT):
            if self.raw_ok:
                return self._add_raw(FACES_INPUT, S.FACES, layers)
            raise AvxError(
                "faces is a crop stream; select features (video/<backbone>) instead, or train the"
                " visual backbone end to end (--end-to-end video=BACKBONE)"
            )
        if name not in self.store.streams:
            trainable = [n for n in self.store.streams if n != S.FACES]  # crops are not features
            raise UnknownNameError("stream", name, trainable)
        st = self.store.stream(name)
        if st.provenance.get("backbone") == "waveform":
            if not self.raw_ok:
                raise AvxError(
                    f"{name} is raw audio; select features (audio/<backbone>) instead, or train a"
                    " speech model end to end (--end-to-end audio=BACKBONE)"
                )
            return self._add_raw(name, name, layers)
        self.streams[name] = st
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

    def _add_raw(self, name: str, stored: str, layers: str | None) -> None:
        """A raw input of end-to-end training (crops, waveform): read as stored, neither
        flattened nor normalised; its backbone turns it into features in the model."""
        if stored not in self.store.streams:
            what = "crops: extract with any visual backbone" if stored == S.FACES else "waveform"
            raise AvxError(f"{self.store.url}: no '{stored}' stream ({what}) for end-to-end training")
        if layers is not None:
            raise AvxError(
                f"{name}: a raw input has no layers; choose them with --backbone-opt audio:layers="
            )
        st = self.streams[name] = self.store.stream(stored)
        waveform = stored != S.FACES
        shape = () if waveform else tuple(st.spec.frame_shape)
        self.raw[name] = RawInput(stored, shape, np.dtype(st.spec.dtype), waveform)
        self._layers[name] = None
        self.stream_names.append(name)
        self.info[name] = StreamInfo(int(np.prod(shape)), 1, name.split("/")[0])

    def _resolve_align(self, method_needs: bool) -> str | None:
        a = self.config.align
        if self.raw and a is not None and a.startswith("rate:"):
            # Crops aligned by nearest time and a speech model's output frames picked by
            # nearest time are the aligned cached features; averaging (rate:R) is not.
            raise AvxError("end to end, --align rate:R would average raw inputs; align to a stream or labels")
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
        return self.streams[name].index.committed()

    def frames(self, split: str) -> int:
        """Real frames of every selected stream over ``split``'s samples (the cost's
        frames per second)."""
        idx = self.indices(split)
        total = 0
        for s in self.stream_names:
            have = self.available[s][idx]
            total += int(self.streams[s].index.frames[self.rows[idx][have]].sum())
        return total

    def selected_bytes(self) -> int:
        total = 0
        for s in self.stream_names:
            frames = int(self.streams[s].index.frames[self.rows][self.available[s]].sum())
            if s in self.raw:
                total += frames * int(np.prod(self.streams[s].spec.frame_shape)) * self.raw[s].dtype.itemsize
            else:
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

    def skip_training_without(self, streams: list[str]) -> dict[str, dict[str, Any]]:
        """Take training clips lacking any of ``streams`` out of training (split
        ``skipped``): end-to-end training cannot encode a clip whose crops or waveform
        failed or are missing. Returns, per stream, how many and which, with reasons;
        dev and test keep such clips (the stream is absent there, as in the cached path)."""
        out: dict[str, dict[str, Any]] = {}
        train = self.indices("train")
        split = self.split.astype(f"<U{max(8, self.split.dtype.itemsize // 4)}")
        for s in streams:
            lack = train[~self.available[s][train]]
            if not len(lack):
                continue
            failures = self.streams[s].failures
            ids = [str(self.ids[i]) for i in lack]
            out[s] = {
                "n": len(ids),
                "ids": ids,
                "reasons": {i: failures.get(i, "not extracted") for i in ids},
            }
            split[lack] = "skipped"
        self.split = split
        return out

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}
