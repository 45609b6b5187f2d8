"""Writing stores: creation from corpus metadata, and the stream commit protocol.

Nothing is ever half-written:

- ``create_store`` builds the store in a temporary sibling directory and renames it
  into place, so a store either exists complete or not at all.
- A stream grows by *parts*. The writer buffers finished samples, writes them as a new
  part group (``parts/<k>/data``, ``timestamps`` and per-frame fields) that no reader
  references yet, and then rewrites the stream's one-chunk ``index`` array, an atomic
  file replacement, which is the commit point. A crash before it leaves an unreferenced
  part that the next writer deletes; a crash after it leaves committed samples.
- Parts are written by one writer each and never touched again, so parallel workers
  writing their own parts never share a chunk; only the holder of the stream lock
  commits to the index. Different streams share no arrays at all.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from avx.corpora.base import CorpusMetadata, ImportedStream
from avx.errors import MediaError, StoreError
from avx.store_schema import spec as S
from avx.store_schema.labels import derive_rater_labels
from avx.store_schema.zarrio import local_path, local_path_of, missing_chunks, write_array, write_table


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _avx_version() -> str:
    from avx import __version__

    return __version__


def run_info() -> dict[str, Any]:
    """Who wrote something and with what: recorded in provenance and stream history."""
    from importlib.metadata import version

    return {
        "avx_version": _avx_version(),
        "created": _now(),
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "torch_version": version("torch"),
        "zarr_version": zarr.__version__,
        "numpy_version": np.__version__,
    }


def create_store(
    path: str | Path,
    meta: CorpusMetadata,
    *,
    overwrite: bool = False,
    default_protocol: str | None = None,
    console: Any = None,
) -> Path:
    """Create a store at ``path`` from corpus metadata (no media decoding).

    The store is assembled in a temporary directory beside ``path`` (including any
    corpus-provided feature streams) and renamed into place, so an interrupted
    ``store init`` leaves nothing behind. An existing store is kept unless ``overwrite``.
    """
    path = local_path(path)
    if path.exists() and not overwrite:
        raise StoreError(f"{path}: already exists (pass --overwrite to replace it)")
    default = default_protocol or meta.default_protocol
    if meta.protocols and default not in meta.protocols:
        raise StoreError(f"protocol '{default}' is not one of {sorted(meta.protocols)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        root.attrs.update(
            {
                S.SCHEMA_ATTR: S.SCHEMA_VERSION,
                "corpus": meta.name,
                "class_names": list(meta.class_names),
                "corpus_attrs": meta.attrs,
                "n_samples": len(meta.samples),
                **{k: v for k, v in run_info().items() if k in ("avx_version", "created", "host")},
            }
        )
        write_table(root.create_group(S.SAMPLES), meta.samples.reset_index(drop=True))
        _write_labels(root.create_group(S.LABELS), meta)
        _write_protocols(root.create_group(S.PROTOCOLS), meta, default)
        streams = root.create_group(S.STREAMS)
        for modality in S.STREAM_MODALITIES:
            streams.create_group(modality)
        for imported in meta.features:
            _import_stream(root, imported, console)
        zarr.consolidate_metadata(zarr.storage.LocalStore(tmp))
        if overwrite and path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_labels(labels: zarr.Group, meta: CorpusMetadata) -> None:
    clash = set(meta.categorical) & (set(S.RATER_MODALITIES) | set(S.RESERVED_LABEL_GROUPS))
    if clash:
        raise ValueError(f"categorical label name(s) {sorted(clash)} clash with reserved label groups")
    labels.attrs.update(
        {
            "class_names": list(meta.class_names),
            "raters": sorted(meta.votes),
            "categorical": sorted(meta.categorical),
        }
    )
    for rater, counts in meta.votes.items():
        g = labels.create_group(rater)
        derived = derive_rater_labels(counts)
        for name in S.RATER_ARRAYS:
            write_array(g, name, getattr(derived, name))
        if rater in meta.rater_intensity:
            write_array(g, "intensity", np.asarray(meta.rater_intensity[rater], dtype=np.float32))
    for name, values in meta.categorical.items():
        g = labels.create_group(name)
        write_array(g, "label", np.asarray(values, dtype=np.int16))
        if name == S.INTENDED and meta.intended_level is not None:
            write_array(g, "level", np.asarray(meta.intended_level, dtype=object))
    if meta.multilabel is not None:
        g = labels.create_group(S.MULTILABEL)
        intensity = np.asarray(meta.multilabel, dtype=np.float32)
        write_array(g, "intensity", intensity)
        write_array(g, "presence", (intensity > 0).astype(np.uint8))
    if (dims := meta.dimensions) is not None:
        g = labels.create_group(S.DIMENSIONS)
        g.attrs.update({"names": list(dims.names), "low": dims.low, "high": dims.high})
        write_array(g, "raw", np.asarray(dims.values, dtype=np.float32))
        write_array(g, "scaled", dims.scaled())
    if (cont := meta.continuous) is not None:
        g = labels.create_group(S.CONTINUOUS)
        g.attrs.update({"names": list(cont.names), "rate": cont.rate, "low": cont.low, "high": cont.high})
        lengths = np.array([len(v) for v in cont.values], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        empty = np.zeros((0, len(cont.names)), np.float32)
        values = (
            np.concatenate([np.asarray(v, np.float32) for v in cont.values]) if len(cont.values) else empty
        )
        write_array(g, "values", values, chunk_rows=1 << 18)
        times = (
            np.concatenate([np.asarray(t, np.float64) for t in cont.times])
            if len(cont.times)
            else np.zeros(0)
        )
        write_array(g, "times", times, chunk_rows=1 << 18)
        write_array(g, "offsets", offsets)


def _write_protocols(group: zarr.Group, meta: CorpusMetadata, default: str | None) -> None:
    group.attrs["default"] = default
    speakers = meta.samples["speaker"].astype(str).tolist()
    for name, p in meta.protocols.items():
        p.check_speaker_disjoint(speakers)
        g = group.create_group(name)
        g.attrs.update(
            {
                "description": p.description,
                "params": p.params,
                "n_folds": p.n_folds,
                "speakers": p.speakers(speakers),
            }
        )
        write_array(g, "assign", np.asarray(p.assign, dtype=np.int8))


def _import_stream(root: zarr.Group, imported: ImportedStream, console: Any) -> None:
    """Write one corpus-provided feature stream (provenance ``source: corpus-provided``)."""
    spec = StreamSpec(
        name=imported.name,
        frame_shape=tuple(imported.frame_shape),
        dtype=imported.dtype,
        frame_rate=imported.frame_rate,
        provenance={"backbone": "corpus-provided", "source": "corpus-provided", **imported.provenance},
    )
    writer = StreamWriter(root, spec, part_size=2048)
    for row, data, timestamps in imported.frames():
        writer.add(row, data, timestamps)
    writer.close()
    if console is not None:
        console.print(f"imported {spec.name}: {writer.committed_now} samples", highlight=False)


@dataclass(frozen=True)
class StreamSpec:
    """What a stream holds; stored as the stream group's ``avx_stream`` attribute.

    Attributes:
        name: ``faces``, ``audio/<backbone>``, ``video/<backbone>`` or ``text/<backbone>``.
        frame_shape: shape of one frame's features (``[1280]``, ``[25, 1024]``, ``[224, 224, 3]``).
        dtype: storage dtype of ``data``.
        frame_rate: nominal frames per second (per-frame ``timestamps`` are authoritative).
        fields: extra per-frame arrays, name -> ``{"shape": [...], "dtype": str}``.
        layer_axis: index of the layer axis in ``frame_shape`` for multi-layer streams.
        provenance: backbone id, weights source and sha256, every preprocessing parameter.
            Resuming requires it to be identical, so a stream never mixes settings.
    """

    name: str
    frame_shape: tuple[int, ...]
    dtype: str
    frame_rate: float | None = None
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer_axis: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_shape"] = list(self.frame_shape)
        return d

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> StreamSpec:
        d = dict(d)
        d["frame_shape"] = tuple(d["frame_shape"])
        return cls(**d)

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


VOLATILE_PROVENANCE = {"created"}
"""Provenance keys that may differ on resume (who/when); each run is listed in ``history``."""

ADDED_PROVENANCE = {"config"}
"""Provenance keys newer avx records on top of what older avx did (the backbone's whole
config). A stream written without one still resumes: its other keys already describe
every setting, and those are compared."""


def spec_mismatch(old: StreamSpec, new: StreamSpec) -> str | None:
    """Why a stream written with ``old`` cannot be continued with ``new`` (None: it can)."""
    a, b = old.to_attrs(), new.to_attrs()
    for key in sorted(set(a) | set(b)):
        if key == "provenance":
            pa, pb = a[key], b[key]
            added = {k for k in ADDED_PROVENANCE if k not in pa}
            for pk in sorted((set(pa) | set(pb)) - VOLATILE_PROVENANCE - added):
                if pa.get(pk) != pb.get(pk):
                    return f"provenance '{pk}' is {pa.get(pk)!r} in the store, {pb.get(pk)!r} now"
        elif a.get(key) != b.get(key):
            return f"'{key}' is {a.get(key)!r} in the store, {b.get(key)!r} now"
    return None


def _check_half(name: str, data: np.ndarray, half: np.ndarray) -> None:
    """Refuse features float16 cannot hold rather than store infs or flushed zeros."""
    overflow = np.isfinite(data) & ~np.isfinite(half)
    flushed = (data != 0) & (half == 0)
    if overflow.any() or flushed.mean() > 0.01:
        mag = np.abs(data[np.isfinite(data) & (data != 0)])
        lo, hi = (float(mag.min()), float(mag.max())) if mag.size else (0.0, 0.0)
        raise StoreError(
            f"stream '{name}': float16 cannot represent these features (|x| from {lo:.3g} to"
            f" {hi:.3g}); extract with --dtype float32"
        )


@dataclass
class PartResult:
    """A written but not yet committed part: what the index must learn to commit it.

    Workers (other processes or machines) return these to the one process holding the
    stream lock, which commits them with :meth:`StreamWriter.commit`.
    """

    part: int
    entries: list[tuple[int, int, int]]  # (row, start, stop)
    failures: dict[int, str]


FLUSH_BYTES = 32 * 2**20
"""Frame data a part builder holds before writing whole chunks of it to disk."""


class PartBuilder:
    """Writes samples as part ``part`` of a stream; never touches the index.

    This is all a parallel worker does: its part group has a name no one else uses, so
    it shares no chunk with any other writer, and nothing references it until the lock
    holder commits the returned :class:`PartResult`.

    Frame data streams to disk: a sample may arrive in pieces (:meth:`begin`,
    :meth:`extend`, :meth:`end`), and whole chunks are written once more than
    ``flush_bytes`` are held, so memory does not grow with a clip's length or the
    part's size. Timestamps and per-frame fields (tens of bytes a frame) stay in memory
    until :meth:`write`. A sample that fails half-way is rolled back (:meth:`fail`): its
    frames are cut off and the next sample's overwrite them. The part's attributes,
    which say what it holds, are written last, so a part interrupted mid-write
    describes nothing and is deleted as an orphan.
    """

    def __init__(
        self, stream_group: zarr.Group, spec: StreamSpec, part: int, *, flush_bytes: int | None = None
    ) -> None:
        self.group, self.spec, self.part = stream_group, spec, part
        self.failures: dict[int, str] = {}
        self.notes: dict[int, str] = {}
        self.nbytes = 0
        self.flush_bytes = FLUSH_BYTES if flush_bytes is None else flush_bytes
        self.chunk_rows = max(1, S.TARGET_CHUNK_BYTES // max(1, spec.frame_bytes))
        self._entries: list[tuple[int, int, int]] = []
        self._open: tuple[int, int] | None = None  # (row, first frame) of the sample being added
        self._held: list[np.ndarray] = []  # frames not yet on disk, from frame `_on_disk`
        self._n_held = 0
        self._on_disk = 0
        self._times: list[np.ndarray] = []
        self._fields: dict[str, list[np.ndarray]] = {k: [] for k in spec.fields}
        self._group: zarr.Group | None = None

    def __len__(self) -> int:
        return len(self._entries) + len(self.failures)

    @property
    def n_frames(self) -> int:
        return self._on_disk + self._n_held

    @property
    def open_row(self) -> int | None:
        """The sample being added (between :meth:`begin` and :meth:`end`), if any."""
        return None if self._open is None else self._open[0]

    @property
    def held_frames(self) -> int:
        """Frames held in memory now (the rest are on disk)."""
        return self._n_held

    def add(
        self, row: int, data: np.ndarray, timestamps: np.ndarray, *, note: str = "", **fields: np.ndarray
    ) -> None:
        """All frames of sample ``row`` at once."""
        self.begin(row)
        self.extend(data, timestamps, **fields)
        self.end(note=note)

    def begin(self, row: int) -> None:
        if self._open is not None:
            raise RuntimeError(f"{self.spec.name}: sample row {self._open[0]} is still open")
        self._open = (row, self.n_frames)

    def extend(self, data: np.ndarray, timestamps: np.ndarray, **fields: np.ndarray) -> None:
        """The next frames of the open sample."""
        if self._open is None:
            raise RuntimeError(f"{self.spec.name}: extend() without begin()")
        data = np.asarray(data)
        if tuple(data.shape[1:]) != self.spec.frame_shape:
            raise ValueError(f"{self.spec.name}: frame shape {data.shape[1:]} != {self.spec.frame_shape}")
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if timestamps.shape != (data.shape[0],):
            raise ValueError(f"{self.spec.name}: {len(timestamps)} timestamps for {len(data)} frames")
        if set(fields) != set(self.spec.fields):
            raise ValueError(f"{self.spec.name}: fields {sorted(fields)} != {sorted(self.spec.fields)}")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            # Never committed: a NaN/Inf frame is a damaged input (or an overflow in the
            # backbone), and readers would take it for data.
            bad = int((~np.isfinite(data)).any(axis=tuple(range(1, data.ndim))).sum())
            raise MediaError(
                f"{self.spec.name}: {bad} of {len(data)} frames have non-finite features (NaN or Inf)"
            )
        with np.errstate(over="ignore"):  # overflow is detected and refused just below
            stored = data.astype(self.spec.dtype, copy=False)
        if stored.dtype == np.float16 and data.dtype != np.float16 and data.size:
            _check_half(self.spec.name, data, stored)
        for k, v in fields.items():
            fs = self.spec.fields[k]
            self._fields[k].append(np.asarray(v, dtype=fs["dtype"]).reshape(len(data), *fs["shape"]))
        self._times.append(timestamps)
        self._held.append(stored)
        self._n_held += len(stored)
        self.nbytes += stored.nbytes
        if self._n_held * self.spec.frame_bytes >= self.flush_bytes:
            self._flush(whole_chunks=True)

    def end(self, *, note: str = "") -> None:
        """The open sample is complete."""
        if self._open is None:
            raise RuntimeError(f"{self.spec.name}: end() without begin()")
        row, start = self._open
        self._entries.append((row, start, self.n_frames))
        if note:
            self.notes[row] = note
        self._open = None

    def fail(self, row: int, reason: str) -> None:
        """Record ``row`` as failed; if it is the open sample, drop its frames."""
        if self._open is not None and self._open[0] == row:
            self._truncate(self._open[1])
            self._open = None
        self.failures[row] = " ".join(str(reason).split())

    def _truncate(self, n: int) -> None:
        """Keep only the first ``n`` frames (a failed sample's are cut off)."""
        if n < self._on_disk:  # part of it is on disk: hold again the chunk it starts in
            keep_from = n - n % self.chunk_rows
            again = self._data[keep_from:n] if n > keep_from else None
            self._held, self._n_held = ([again] if again is not None else []), n - keep_from
            self._on_disk = keep_from
        else:
            flat = np.concatenate(self._held) if self._held else None
            self._n_held = n - self._on_disk
            self._held = [flat[: self._n_held]] if flat is not None and self._n_held else []
        for lst in (self._times, *self._fields.values()):
            if lst:
                lst[:] = [np.concatenate(lst)[:n]]

    @property
    def _part_group(self) -> zarr.Group:
        if self._group is None:
            self._group = self.group[S.PARTS].create_group(S.part_name(self.part))
        return self._group

    @property
    def _data(self) -> zarr.Array:
        g = self._part_group
        if S.DATA not in g:
            empty = np.zeros((0, *self.spec.frame_shape), dtype=self.spec.dtype)
            write_array(g, S.DATA, empty, chunk_rows=self.chunk_rows)
        return g[S.DATA]

    def _flush(self, *, whole_chunks: bool) -> None:
        """Write held frames to disk: whole chunks only, or all of them (the end)."""
        n = self._n_held - (self._n_held % self.chunk_rows if whole_chunks else 0)
        if n <= 0:
            return
        held = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        arr = self._data
        a = self._on_disk
        arr.resize((a + n, *self.spec.frame_shape))
        arr[a : a + n] = held[:n]
        rest = held[n:]
        self._held, self._n_held, self._on_disk = ([rest] if len(rest) else []), len(rest), a + n

    def write(self) -> PartResult:
        """Write what is still held and the part's attributes; returns what commits it."""
        if self._open is not None:
            raise RuntimeError(f"{self.spec.name}: sample row {self._open[0]} was never ended")
        self._flush(whole_chunks=False)
        n = self.n_frames
        arr = self._data
        if arr.shape[0] != n:  # a failed sample's frames were on disk past the end
            arr.resize((n, *self.spec.frame_shape))
        part = self._part_group
        times = np.concatenate(self._times)[:n] if self._times else np.zeros(0)
        write_array(part, S.TIMESTAMPS, times, chunk_rows=1 << 16)
        for name, fs in self.spec.fields.items():
            vals = self._fields[name]
            flat = np.concatenate(vals)[:n] if vals else np.zeros((0, *fs["shape"]), dtype=fs["dtype"])
            write_array(part, name, flat, chunk_rows=1 << 16)
        part.attrs.update(
            {
                "rows": [r for r, _, _ in self._entries],
                "lengths": [
                    b - a for _, a, b in self._entries
                ],  # with rows: what `avx store repair` rebuilds the index from
                "failures": {str(r): why for r, why in self.failures.items()},
                "notes": {str(r): n for r, n in self.notes.items()},
                "n_frames": n,
                "written": _now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        )
        return PartResult(self.part, list(self._entries), dict(self.failures))


class StreamWriter:
    """Appends samples to one stream, committing them part by part.

    The caller must hold the stream's lock (:class:`~avx.store_schema.locks.StreamLock`).
    Opening a writer deletes parts no index row references (leftovers of a crash), so
    only the lock holder opens one; parallel workers use :class:`PartBuilder` on part
    numbers the lock holder handed out with :meth:`reserve_part`.

    Args:
        root: the store's root group, opened writable.
        spec: the stream's spec; must equal the stored one when the stream exists.
        part_size: samples per part (flush threshold).
        part_bytes: flush earlier when buffered data exceeds this many bytes.
    """

    def __init__(
        self,
        root: zarr.Group,
        spec: StreamSpec,
        *,
        part_size: int = 64,
        part_bytes: int = 256 * 2**20,
    ) -> None:
        if not S.valid_stream_name(spec.name):
            raise StoreError(f"invalid stream name '{spec.name}'")
        self.root, self.spec = root, spec
        self.part_size, self.part_bytes = max(1, part_size), part_bytes
        self.n_samples = int(root.attrs["n_samples"])
        path = S.stream_path(spec.name)
        where = f"{local_path_of(root)}: stream '{spec.name}'"
        if path in root:
            try:
                self.group = root[path]
                old = StreamSpec.from_attrs(self.group.attrs[S.STREAM_ATTR])
            except Exception as e:
                raise StoreError(
                    f"{where} is damaged (unreadable metadata: {type(e).__name__}); nothing was"
                    " written; pass --overwrite to replace it"
                ) from None
            why = spec_mismatch(old, spec)
            if why:
                raise StoreError(
                    f"{where} was written with other settings ({why});"
                    " pass --overwrite to replace the stream, or use another store"
                )
            _complete(self.group, self.n_samples, where)
        else:
            self.group = _create_stream(root, path, spec, self.n_samples)
        self.index = S.StreamIndex(self.group[S.INDEX][...])
        self._parts = self.group[S.PARTS]
        self._remove_orphans()
        existing = [int(k) for k in self._parts.group_keys()]
        self._next_part = max(existing, default=-1) + 1
        self._builder: PartBuilder | None = None
        self.committed_now = 0
        self.failed_now = 0

    def _remove_orphans(self) -> None:
        """Delete parts no index row references: leftovers of a crash before commit."""
        referenced = set(self.index.part[self.index.status != S.Status.MISSING].tolist())
        for key in list(self._parts.group_keys()):
            if int(key) not in referenced:
                del self._parts[key]

    def reserve_part(self) -> int:
        """A fresh part number (for this writer or a parallel worker's PartBuilder)."""
        k = self._next_part
        self._next_part += 1
        return k

    def status(self, row: int) -> S.Status:
        return S.Status(int(self.index.status[row]))

    def todo(self, rows: list[int], *, retry_failed: bool = False) -> list[int]:
        """The subset of ``rows`` this stream still needs."""
        done = {S.Status.COMMITTED} if retry_failed else {S.Status.COMMITTED, S.Status.FAILED}
        return [r for r in rows if self.status(r) not in done]

    def _current(self) -> PartBuilder:
        if self._builder is None:
            self._builder = PartBuilder(self.group, self.spec, self.reserve_part())
        return self._builder

    def add(
        self, row: int, data: np.ndarray, timestamps: np.ndarray, *, note: str = "", **fields: np.ndarray
    ) -> None:
        """Buffer one sample's frames; commits a part when the buffer is full."""
        b = self._current()
        b.add(row, data, timestamps, note=note, **fields)
        if len(b) >= self.part_size or b.nbytes >= self.part_bytes:
            self.flush()

    def fail(self, row: int, reason: str) -> None:
        """Record that ``row`` cannot be extracted (status ``failed`` with ``reason``)."""
        b = self._current()
        b.fail(row, reason)
        if len(b) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples as a new part, then commit it in the index."""
        if self._builder is None or not len(self._builder):
            return
        result = self._builder.write()
        self._builder = None
        self.commit(result)

    def commit(self, result: PartResult) -> None:
        """Commit point: one atomic rewrite of the one-chunk index."""
        if not result.entries and not result.failures:
            return
        index = self.index.copy()
        for row, a, b in result.entries:
            index.status[row], index.part[row], index.start[row], index.stop[row] = (
                S.Status.COMMITTED, result.part, a, b,
            )  # fmt: skip
        for r in result.failures:
            index.status[r], index.part[r], index.start[r], index.stop[r] = S.Status.FAILED, result.part, 0, 0
        self.group[S.INDEX][...] = index.array
        self.index = index
        self.committed_now += len(result.entries)
        self.failed_now += len(result.failures)

    def close(self) -> None:
        """Flush and append this run to the stream's history."""
        self.flush()
        history = list(self.group.attrs.get("history", []))
        history.append(
            {
                **{k: v for k, v in run_info().items() if k in ("avx_version", "created", "host")},
                "committed": self.committed_now,
                "failed": self.failed_now,
            }
        )
        self.group.attrs["history"] = history


def _new_index(group: zarr.Group, n_samples: int) -> zarr.Array:
    return group.create_array(
        S.INDEX,
        shape=(n_samples, len(S.INDEX_COLUMNS)),
        chunks=(max(1, n_samples), len(S.INDEX_COLUMNS)),
        dtype="int64",
        fill_value=0,
        attributes={"columns": list(S.INDEX_COLUMNS)},
        config={"write_empty_chunks": True},
    )


def _create_stream(root: zarr.Group, path: str, spec: StreamSpec, n_samples: int) -> zarr.Group:
    """Create a stream atomically: built whole in a hidden sibling folder (spec, empty
    index written out, ``parts``), then renamed into place, so a kill leaves either no
    stream or a complete empty one."""
    parent_path, _, leaf = path.rpartition("/")
    root.require_group(parent_path)
    base = local_path_of(root)
    final = base / path
    for stale in final.parent.glob(f".creating-{leaf}-*"):  # a killed creation's (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".creating-{leaf}-{os.getpid()}"
    g = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
    g.attrs.update({S.STREAM_ATTR: spec.to_attrs(), "history": []})
    g.create_group(S.PARTS)
    _new_index(g, n_samples)[...] = np.zeros((n_samples, len(S.INDEX_COLUMNS)), np.int64)
    os.rename(tmp, final)  # fails if another writer created it first (the locks prevent that)
    # Opened afresh: the caller's root may be a consolidated snapshot that cannot see it.
    return zarr.open_group(root.store_path.store, path=path, mode="r+", zarr_format=3, use_consolidated=False)


def _complete(group: zarr.Group, n_samples: int, where: str) -> None:
    """Finish a stream whose creation an older avx left half done (spec, no index or
    parts), and refuse one whose index was lost while parts hold data."""
    has_parts = S.PARTS in group and bool(list(group[S.PARTS].group_keys()))
    if S.INDEX in group and not missing_chunks(group[S.INDEX]):
        if S.PARTS not in group:
            group.create_group(S.PARTS)
        return
    if has_parts:
        raise StoreError(
            f"{where}: its index is missing but its parts hold data; nothing was written;"
            " run `avx store repair` to rebuild the index from the parts"
        )
    if S.PARTS not in group:
        group.create_group(S.PARTS)
    if S.INDEX not in group:
        _new_index(group, n_samples)
    group[S.INDEX][...] = np.zeros((n_samples, len(S.INDEX_COLUMNS)), np.int64)


@dataclass
class RepairReport:
    stream: str
    committed: int = 0
    failed: int = 0
    parts_used: list[str] = field(default_factory=list)
    parts_skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        skipped = "; ".join(f"part {k}: {why}" for k, why in self.parts_skipped.items())
        return (
            f"stream {self.stream}: index rebuilt from {len(self.parts_used)} part(s): {self.committed}"
            f" committed, {self.failed} failed" + (f"; skipped {skipped}" if skipped else "")
        )


def repair_index(root: zarr.Group, name: str) -> RepairReport:
    """Rebuild stream ``name``'s index from its parts' own records (the caller holds its lock).

    Every part records the rows it holds, their frame counts and its failures, so the
    index (status, part, start, stop per sample) follows from the parts alone. A part
    whose arrays are incomplete or lost chunks is skipped: its rows stay missing and
    the next extract redoes them. Where parts overlap (a retried failure), the later
    part wins, as it did when it was committed.
    """
    g = root[S.stream_path(name)]
    spec = StreamSpec.from_attrs(g.attrs[S.STREAM_ATTR])
    n = int(root.attrs["n_samples"])
    report = RepairReport(name)
    index = S.StreamIndex(np.zeros((n, len(S.INDEX_COLUMNS)), np.int64))
    parts = g.require_group(S.PARTS)
    for key in sorted(parts.group_keys(), key=int):
        part = parts[key]
        rows = [int(r) for r in part.attrs.get("rows", [])]
        n_frames = int(part.attrs.get("n_frames", -1))
        lengths = part.attrs.get("lengths")
        if lengths is None and len(rows) <= 1:
            lengths = [n_frames] * len(rows)  # one sample: its length is the part's
        if lengths is None or len(lengths) != len(rows) or sum(lengths) != n_frames:
            report.parts_skipped[key] = "no per-sample lengths (written before avx recorded them)"
            continue
        arrays = [S.DATA, S.TIMESTAMPS, *spec.fields]
        broken = [
            a for a in arrays if a not in part or part[a].shape[0] != n_frames or missing_chunks(part[a])
        ]
        if broken:
            report.parts_skipped[key] = f"incomplete arrays {broken}"
            continue
        stops = np.cumsum(lengths, dtype=np.int64)
        for r, a, b in zip(rows, stops - np.asarray(lengths, np.int64), stops, strict=True):
            index.array[r] = (S.Status.COMMITTED, int(key), int(a), int(b))
        for r in part.attrs.get("failures", {}):
            if index.status[int(r)] != S.Status.COMMITTED:
                index.array[int(r)] = (S.Status.FAILED, int(key), 0, 0)
        report.parts_used.append(key)
    if S.INDEX not in g:
        _new_index(g, n)
    g[S.INDEX][...] = index.array
    report.committed = int(index.committed().sum())
    report.failed = int(index.failed().sum())
    return report


def consolidate(path: str | Path) -> None:
    """Refresh the consolidated metadata (needed by HTTP readers, which cannot list).

    Serialised by a store-wide lock and re-read from disk while holding it, so when
    several writers finish at once the last consolidation sees all of their streams.
    """
    from avx.store_schema.locks import StreamLock

    path = local_path(path)
    with StreamLock(path, "__meta__", timeout=120):
        zarr.consolidate_metadata(zarr.storage.LocalStore(path))
