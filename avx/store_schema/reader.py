"""Reading stores lazily from any URL: ``avx.open_store(url)``.

Reads never load a whole stream: a :class:`Stream` keeps only its small per-sample
index in memory and slices part arrays on demand. Readers never see half-written data,
because a sample becomes visible only when the index row that points at it is
committed, and the index is replaced atomically.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.core.sync import sync

from avx.corpora.base import ContinuousLabels, Dimensions
from avx.corpora.protocols import Protocol
from avx.errors import StoreError
from avx.store_schema import spec as S
from avx.store_schema.labels import RaterLabels, label_statistics
from avx.store_schema.writer import StreamSpec
from avx.store_schema.zarrio import (
    child_names,
    is_local,
    is_local_group,
    local_path,
    missing_chunks,
    open_root,
    read_table,
)


def stream_groups(root: zarr.Group) -> dict[str, zarr.Group | str]:
    """Every stream under ``streams/``: name -> its group, or why it cannot be read.

    Children are listed without parsing their metadata, so a garbled ``zarr.json`` or a
    stream that lost its ``avx_stream`` attribute is reported by name (damaged) rather
    than hiding the other streams or vanishing from the listing.
    """
    base = root[S.STREAMS]
    top = child_names(base)
    names = [S.FACES] if S.FACES in top else []
    out: dict[str, zarr.Group | str] = {}
    for modality in S.STREAM_MODALITIES:
        if modality in top:
            try:
                names += [f"{modality}/{k}" for k in child_names(base[modality])]
            except Exception as e:
                out[modality] = f"streams/{modality}: unreadable metadata ({_why(e)})"
    for name in names:
        try:
            g = root[S.stream_path(name)]
        except Exception as e:
            out[name] = f"stream {name}: unreadable metadata ({_why(e)})"
            continue
        if not isinstance(g, zarr.Group) or S.STREAM_ATTR not in g.attrs:
            out[name] = f"stream {name}: damaged (no {S.STREAM_ATTR} attribute)"
        else:
            out[name] = g
    return out


STALE = "consolidated metadata is older than the store; run `avx store consolidate` where it is written"

INCOMPLETE = "incomplete (its creation was interrupted; the next extract completes it)"


def index_problem(g: zarr.Group) -> str | None:
    """Why a stream group's index cannot be trusted (None: it can).

    A stream with no index and no parts was never finished (harmless: nothing was
    committed). An index that is gone while parts hold data is damage: zarr would read
    it as zeros (every sample "missing"), and an extract would then delete the parts.
    """
    if S.INDEX in g and not missing_chunks(g[S.INDEX]):
        return None
    has_parts = S.PARTS in g and bool(child_names(g[S.PARTS]))
    if not has_parts and S.INDEX not in g:
        return INCOMPLETE
    return "its index is missing (damaged); run `avx store repair` to rebuild it from the parts"


def failure_kind(reason: str) -> str:
    """A failure reason without what is particular to one clip (its path, its numbers)."""
    head, sep, rest = reason.partition(": ")
    text = rest if sep and " " not in head else reason
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", text)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def list_streams(root: zarr.Group) -> list[str]:
    """Names of the streams under ``streams/`` (``faces``, ``audio/<b>`` ...), damaged ones included."""
    return [n for n in stream_groups(root) if n not in S.STREAM_MODALITIES]


class Stream(Mapping[str, np.ndarray]):
    """Read-only mapping ``sample id -> frames x ...`` for one stream.

    Only committed samples are keys. The index is a snapshot taken when the stream was
    opened; call :meth:`FeatureStore.stream` again to see later commits.
    """

    def __init__(self, group: zarr.Group, name: str, sample_ids: np.ndarray) -> None:
        self.group, self.name = group, name
        self.spec = StreamSpec.from_attrs(group.attrs[S.STREAM_ATTR])
        if not is_local_group(group) and not sync(group.store_path.store.exists(f"{group.path}/zarr.json")):
            raise StoreError(f"stream '{name}' is gone: {STALE}")
        if why := index_problem(group):
            raise StoreError(f"stream '{name}': {why}")
        self.index = S.StreamIndex(group[S.INDEX][...])
        self._ids = sample_ids
        self._row = {sid: i for i, sid in enumerate(sample_ids)}
        self._parts: dict[int, zarr.Group] = {}
        self._present: set[tuple[int, str, int]] = set()

    # -- metadata -----------------------------------------------------------------
    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.spec.provenance)

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.group.attrs.get("history", []))

    @cached_property
    def committed_ids(self) -> list[str]:
        rows = np.flatnonzero(self.index.committed())
        return [str(self._ids[r]) for r in rows]

    @property
    def notes(self) -> dict[str, str]:
        """Committed sample id -> what was done to its input (e.g. "resampled 8000 -> 16000 Hz")."""
        out: dict[str, str] = {}
        idx = self.index
        for key in sorted({int(k) for k in idx.part[idx.committed()]}):
            for r, note in self._part(key).attrs.get("notes", {}).items():
                if idx.status[int(r)] == S.Status.COMMITTED and idx.part[int(r)] == key:
                    out[str(self._ids[int(r)])] = note
        return out

    @property
    def failures(self) -> dict[str, str]:
        """Failed sample id -> reason."""
        out: dict[str, str] = {}
        for r in np.flatnonzero(self.index.failed()):
            part = self._part(int(self.index.part[r]))
            out[str(self._ids[r])] = part.attrs["failures"].get(str(r), "")
        return out

    def failure_counts(self) -> dict[str, int]:
        """How many samples failed for each kind of reason, most frequent first (the
        reason without its file name and numbers: "silent audio (RMS below #)")."""
        kinds = Counter(failure_kind(r) for r in self.failures.values())
        return dict(kinds.most_common())

    def status(self, sample_id: str) -> S.Status:
        return S.Status(int(self.index.status[self._row_of(sample_id)]))

    def counts(self) -> dict[str, int]:
        st = self.index.status
        return {s.name.lower(): int((st == s).sum()) for s in S.Status}

    # -- data ---------------------------------------------------------------------
    def _row_of(self, sample_id: str) -> int:
        try:
            return self._row[sample_id]
        except KeyError:
            raise KeyError(f"sample '{sample_id}' is not in this store") from None

    def _part(self, k: int) -> zarr.Group:
        if k not in self._parts:
            try:
                self._parts[k] = self.group[f"{S.PARTS}/{S.part_name(k)}"]
            except KeyError:
                # Remote readers see parts through the consolidated metadata: a part
                # committed after the last consolidation is not in it.
                why = STALE if not is_local_group(self.group) else "the store is damaged"
                raise StoreError(f"stream '{self.name}': part {S.part_name(k)} is missing ({why})") from None
        return self._parts[k]

    def _slice(self, k: int, name: str, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` of array ``name`` in part ``k``, refusing chunks that are gone
        (checked once per chunk: committed chunks never change)."""
        arr = self._part(k)[name]
        step = arr.chunks[0] if arr.ndim else 1
        todo = [i for i in range(a // step, (b - 1) // step + 1) if (k, name, i) not in self._present]
        if todo:
            lo, hi = todo[0] * step, min(arr.shape[0], (todo[-1] + 1) * step)
            if lost := missing_chunks(arr, lo, hi):
                raise StoreError(
                    f"stream '{self.name}' part {S.part_name(k)}: chunk {lost[0]} of '{name}' is missing"
                    f" (frames {lost[0] * step}:{(lost[0] + 1) * step}); the store is damaged"
                )
            self._present.update((k, name, i) for i in todo)
        return np.asarray(arr[a:b])

    def field(
        self, sample_id: str, name: str = S.DATA, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """One per-frame array (``data``, ``timestamps`` or a declared field) of a sample;
        ``start``/``stop`` read only those of its frames (a long clip in pieces)."""
        status, k, a, b = self.index.row(self._row_of(sample_id))
        if status != S.Status.COMMITTED:
            raise KeyError(f"sample '{sample_id}' is {status.name.lower()} in '{self.name}'")
        n = b - a
        lo, hi = min(max(start, 0), n), n if stop is None else min(max(stop, 0), n)
        return self._slice(k, name, a + lo, a + max(lo, hi))

    def length(self, sample_id: str) -> int:
        """Frames of a committed sample (0 for any other)."""
        status, _, a, b = self.index.row(self._row_of(sample_id))
        return int(b - a) if status == S.Status.COMMITTED else 0

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.field(sample_id, S.DATA)

    def timestamps(self, sample_id: str) -> np.ndarray:
        return self.field(sample_id, S.TIMESTAMPS)

    def __iter__(self) -> Iterator[str]:
        return iter(self.committed_ids)

    def __len__(self) -> int:
        return len(self.committed_ids)

    def __contains__(self, sample_id: object) -> bool:
        row = self._row.get(sample_id)  # type: ignore[arg-type]
        return row is not None and self.index.status[row] == S.Status.COMMITTED

    def read_many(self, sample_ids: Sequence[str], name: str = S.DATA) -> list[np.ndarray]:
        """Many samples at once, reading each part's covering range in one request.

        Avoids per-sample random reads: samples are grouped by part and each group is
        served from one contiguous slice.
        """
        out: list[np.ndarray | None] = [None] * len(sample_ids)
        by_part: dict[int, list[tuple[int, int, int]]] = {}
        for i, sid in enumerate(sample_ids):
            status, k, a, b = self.index.row(self._row_of(sid))
            if status != S.Status.COMMITTED:
                raise KeyError(f"sample '{sid}' is {status.name.lower()} in '{self.name}'")
            by_part.setdefault(k, []).append((i, a, b))
        for k, items in by_part.items():
            lo = min(a for _, a, _ in items)
            hi = max(b for _, _, b in items)
            block = self._slice(k, name, lo, hi)
            for i, a, b in items:
                out[i] = block[a - lo : b - lo]
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        c = self.counts()
        return (
            f"Stream('{self.name}', frame_shape={self.spec.frame_shape}, dtype={self.spec.dtype}, "
            f"committed={c['committed']}, failed={c['failed']}, missing={c['missing']})"
        )


class FeatureStore:
    """An avx store opened for reading (see ``docs/store.md`` for the layout)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = str(url)
        self.root = open_root(url)
        version = self.root.attrs.get(S.SCHEMA_ATTR)
        if version is None and is_local(self.url):
            root = next(
                (p for p in local_path(self.url).resolve().parents if (p / "zarr.json").exists()
                 and S.SCHEMA_ATTR in json.loads((p / "zarr.json").read_text()).get("attributes", {})),
                None,
            )  # fmt: skip
            where = f"; the store's root is {root}" if root is not None else ""
            raise StoreError(f"{self.url}: not the root of an avx store (no schema version){where}")
        if version != S.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url}: store schema version {version!r}, this avx reads {S.SCHEMA_VERSION}"
            )

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def corpus(self) -> str:
        return str(self.root.attrs["corpus"])

    @property
    def class_names(self) -> list[str]:
        return list(self.root.attrs["class_names"])

    @cached_property
    def samples(self) -> pd.DataFrame:
        """One row per clip: id, speaker, duration, media paths, demographics, splits."""
        return read_table(self.root[S.SAMPLES])

    @cached_property
    def sample_ids(self) -> np.ndarray:
        return np.asarray(self.root[f"{S.SAMPLES}/id"][...]).astype(object)

    @cached_property
    def labels(self) -> dict[str, RaterLabels]:
        """Per rater modality (``voice``, ``face``, ``av``) derived rating labels."""
        out = {}
        labels = self.root[S.LABELS]
        for rater in labels.attrs.get("raters", []):
            g = labels[rater]
            arrays = {n: np.asarray(g[n][...]) for n in S.RATER_ARRAYS}
            intensity = np.asarray(g["intensity"][...]) if "intensity" in g else None
            out[rater] = RaterLabels(**arrays, intensity=intensity)
        return out

    @property
    def categorical_names(self) -> list[str]:
        """Named single labels in this store (``intended``, ``consensus``, ...)."""
        return list(self.root[S.LABELS].attrs.get("categorical", []))

    def categorical(self, name: str) -> np.ndarray:
        """Class index per clip of categorical label ``name`` (-1 = none)."""
        if name not in self.categorical_names:
            from avx.errors import UnknownNameError

            raise UnknownNameError("categorical label", name, self.categorical_names)
        return np.asarray(self.root[f"{S.LABELS}/{name}/label"][...]).astype(np.int64)

    @cached_property
    def intended(self) -> np.ndarray | None:
        """Intended class index per clip from the corpus design (-1 unknown)."""
        return self.categorical(S.INTENDED) if S.INTENDED in self.categorical_names else None

    @cached_property
    def multilabel(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(intensity, presence)`` per class, ``[n_samples, n_classes]`` each, or None."""
        path = f"{S.LABELS}/{S.MULTILABEL}"
        if path not in self.root:
            return None
        g = self.root[path]
        return np.asarray(g["intensity"][...]), np.asarray(g["presence"][...])

    @cached_property
    def dimensions(self) -> Dimensions | None:
        """Utterance-level dimensional labels on the corpus's scale (``.scaled()`` -> [-1, 1])."""
        path = f"{S.LABELS}/{S.DIMENSIONS}"
        if path not in self.root:
            return None
        g = self.root[path]
        return Dimensions(list(g.attrs["names"]), np.asarray(g["raw"][...]), g.attrs["low"], g.attrs["high"])

    @cached_property
    def continuous(self) -> ContinuousLabels | None:
        """Time-continuous labels per sample (AVEC), or None."""
        path = f"{S.LABELS}/{S.CONTINUOUS}"
        if path not in self.root:
            return None
        g = self.root[path]
        off = np.asarray(g["offsets"][...])
        values, times = np.asarray(g["values"][...]), np.asarray(g["times"][...])
        return ContinuousLabels(
            names=list(g.attrs["names"]),
            rate=float(g.attrs["rate"]),
            values=[values[a:b] for a, b in itertools.pairwise(off)],
            times=[times[a:b] for a, b in itertools.pairwise(off)],
            low=float(g.attrs["low"]),
            high=float(g.attrs["high"]),
        )

    # -- protocols ------------------------------------------------------------------
    @property
    def protocols(self) -> list[str]:
        return sorted(self.root[S.PROTOCOLS].group_keys()) if S.PROTOCOLS in self.root else []

    @property
    def default_protocol(self) -> str | None:
        return self.root[S.PROTOCOLS].attrs.get("default") if S.PROTOCOLS in self.root else None

    def protocol(self, name: str | None = None) -> Protocol:
        """Protocol ``name`` (the store's default when None) with its fold assignment."""
        name = name or self.default_protocol
        if name not in self.protocols:
            from avx.errors import UnknownNameError

            raise UnknownNameError("protocol", str(name), self.protocols)
        g = self.root[f"{S.PROTOCOLS}/{name}"]
        return Protocol(name, g.attrs["description"], np.asarray(g["assign"][...]), dict(g.attrs["params"]))

    def split(self, protocol: str | None = None, fold: int = 0) -> np.ndarray:
        """``train``/``dev``/``test``/"" per sample for one fold of a protocol."""
        return self.protocol(protocol).fold(fold)

    def label_stats(self) -> dict[str, Any]:
        """Label statistics per rater modality and per other label kind (see ``avx store info``)."""
        out: dict[str, Any] = {r: label_statistics(lab, self.class_names) for r, lab in self.labels.items()}
        for name in self.categorical_names:
            y = self.categorical(name)
            out[name] = {
                "labelled": int((y >= 0).sum()),
                "counts": {c: int((y == i).sum()) for i, c in enumerate(self.class_names)},
            }
        if self.multilabel is not None:
            _, presence = self.multilabel
            out[S.MULTILABEL] = {
                "counts": {c: int(presence[:, i].sum()) for i, c in enumerate(self.class_names)},
                "multilabel_rate": float((presence.sum(axis=1) > 1).mean()) if len(presence) else 0.0,
                "no_label_rate": float((presence.sum(axis=1) == 0).mean()) if len(presence) else 0.0,
            }
        if (dims := self.dimensions) is not None:
            out[S.DIMENSIONS] = {
                n: {"mean": float(np.nanmean(dims.values[:, i])), "std": float(np.nanstd(dims.values[:, i]))}
                for i, n in enumerate(dims.names)
            } | {"scale": [dims.low, dims.high]}
        if (cont := self.continuous) is not None:
            out[S.CONTINUOUS] = {
                "names": cont.names,
                "rate": cont.rate,
                "frames": int(sum(len(v) for v in cont.values)),
            }
        return out

    def protocol_summary(self) -> dict[str, Any]:
        """Per protocol: description, folds, and fold 0's clips and speakers per split."""
        speakers = self.samples["speaker"].astype(str).to_numpy()
        out = {}
        for name in self.protocols:
            p = self.protocol(name)
            fold0 = p.fold(0)
            out[name] = {
                "description": p.description,
                "n_folds": p.n_folds,
                "default": name == self.default_protocol,
                "fold0_clips": {s: int((fold0 == s).sum()) for s in ("train", "dev", "test")},
                "fold0_speakers": {s: len(set(speakers[fold0 == s])) for s in ("train", "dev", "test")},
            }
        return out

    @property
    def streams(self) -> list[str]:
        """Names of the streams present (any status; damaged ones included, see :attr:`damaged`)."""
        return list_streams(self.root)

    @property
    def damaged(self) -> dict[str, str]:
        """Streams that cannot be read -> why (one line each); the others read normally."""
        out = {}
        for name, g in stream_groups(self.root).items():  # one listing, each stream opened once
            try:
                self._open(name, g)
            except StoreError as e:
                out[name] = g if isinstance(g, str) else str(e)
        return out

    def stream(self, name: str) -> Stream:
        groups = stream_groups(self.root)
        if name not in groups or name in S.STREAM_MODALITIES:
            from avx.errors import UnknownNameError

            raise UnknownNameError("stream", name, self.streams)
        return self._open(name, groups[name])

    def _open(self, name: str, g: zarr.Group | str) -> Stream:
        """Stream ``name`` from its :func:`stream_groups` entry (a reason: it is damaged)."""
        if isinstance(g, str):
            raise StoreError(f"{self.url}: {g}")
        try:
            return Stream(g, name, self.sample_ids)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{self.url}: stream {name}: unreadable ({_why(e)})") from None

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: corpus, samples, labels, and each stream with provenance."""
        streams, damaged = {}, {}
        for name, g in stream_groups(self.root).items():
            if name in S.STREAM_MODALITIES:
                continue  # a modality group's own damage: listed by `damaged`, as before
            try:
                s = self._open(name, g)
            except StoreError as e:
                damaged[name] = str(e)
                continue
            streams[name] = {
                **s.counts(),
                "failure_reasons": s.failure_counts(),
                "frame_shape": list(s.spec.frame_shape),
                "dtype": s.spec.dtype,
                "frame_rate": s.spec.frame_rate,
                "fields": s.spec.fields,
                "provenance": s.provenance,
                "history": s.history,
            }
        samples = self.samples
        return {
            "url": self.url,
            "schema": self.root.attrs[S.SCHEMA_ATTR],
            "corpus": self.corpus,
            "n_samples": len(samples),
            "n_speakers": int(samples["speaker"].nunique()),
            "class_names": self.class_names,
            "raters": sorted(self.labels),
            "categorical": self.categorical_names,
            "label_stats": self.label_stats(),
            "protocols": self.protocol_summary(),
            "media": {
                "audio": int((samples["audio_path"].astype(str) != "").sum()),
                "video": int((samples["video_path"].astype(str) != "").sum()),
            },
            "sample_columns": list(samples.columns),
            "created": self.root.attrs.get("created"),
            "avx_version": self.root.attrs.get("avx_version"),
            "streams": streams,
            "damaged_streams": damaged,
        }

    def __repr__(self) -> str:
        return f"FeatureStore('{self.url}', corpus={self.corpus}, streams={self.streams})"


def open_store(url: str | os.PathLike[str]) -> FeatureStore:
    """Open an avx store for reading: a local path, ``file://``, ``s3://`` or ``http(s)://`` URL."""
    return FeatureStore(url)
