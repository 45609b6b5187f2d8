"""``avx store validate``: is this store complete, consistent and readable?

Errors make a store invalid; warnings describe harmless leftovers (an unreferenced
part from a crash before its commit, a stale consolidated-metadata copy). The default
checks read metadata, indices and chunk listings only, so they are fast on large
stores; ``deep=True`` also decodes every chunk, which verifies its crc32c checksum.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from avx.corpora.protocols import Protocol
from avx.errors import AvxError
from avx.store_schema import spec as S
from avx.store_schema.labels import derive_rater_labels
from avx.store_schema.reader import INCOMPLETE, index_problem, stream_groups
from avx.store_schema.writer import StreamSpec
from avx.store_schema.zarrio import is_local, local_path, missing_chunks, open_root


@dataclass
class ValidationReport:
    url: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.ok:
            n = ", ".join(f"{v} {k}" for k, v in self.checked.items())
            return f"{self.url}: valid ({n})"
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"{self.url}: invalid: {self.errors[0]}{more}"


def _check_chunks(
    arr: zarr.Array, what: str, report: ValidationReport, deep: bool, finite: bool = False
) -> None:
    """Every chunk exists (cheap: a listing, or one existence check per chunk where the
    store cannot list); ``deep`` also decodes each (crc32c) and, for ``finite`` arrays,
    looks for NaN/Inf, which extraction never commits."""
    try:
        present = arr.nchunks_initialized
    except (NotImplementedError, OSError):  # stores that cannot list (HTTP)
        present = arr.nchunks - len(missing_chunks(arr))
    if present < arr.nchunks:
        report.errors.append(f"{what}: {arr.nchunks - present} of {arr.nchunks} chunks missing")
        return
    if deep and arr.size:
        try:
            step = arr.chunks[0]
            for a in range(0, arr.shape[0], step):
                block = arr[a : a + step]
                if finite and block.dtype.kind == "f" and not np.isfinite(block).all():
                    bad = int((~np.isfinite(block)).sum())
                    report.errors.append(f"{what}: {bad} non-finite values in frames {a}:{a + len(block)}")
                    return
        except Exception as e:
            report.errors.append(f"{what}: unreadable chunk ({type(e).__name__}: {e})")


def _validate_stream(g: zarr.Group, name: str, n: int, report: ValidationReport, deep: bool) -> None:
    try:
        spec = StreamSpec.from_attrs(g.attrs[S.STREAM_ATTR])
    except (KeyError, TypeError) as e:
        report.errors.append(f"stream {name}: unreadable spec ({e})")
        return
    if why := index_problem(g):
        (report.warnings if why == INCOMPLETE else report.errors).append(f"stream {name}: {why}")
        return
    raw = np.asarray(g[S.INDEX][...])
    if raw.shape != (n, len(S.INDEX_COLUMNS)):
        report.errors.append(f"stream {name}: index shape {raw.shape}, expected {(n, len(S.INDEX_COLUMNS))}")
        return
    index = S.StreamIndex(raw)
    status = index.status
    if not np.isin(status, [int(s) for s in S.Status]).all():
        report.errors.append(f"stream {name}: unknown status codes in index")
        return
    parts = g[S.PARTS]
    names = set(parts.group_keys())
    used = sorted(set(index.part[status != S.Status.MISSING].tolist()))
    for k in used:
        key = S.part_name(int(k))
        if key not in names:
            report.errors.append(f"stream {name}: index points to missing part {key}")
            continue
        part = parts[key]
        rows = np.flatnonzero((index.part == k) & index.committed())
        n_frames = int(part.attrs.get("n_frames", -1))
        arrays = {S.DATA: spec.frame_shape, S.TIMESTAMPS: ()}
        arrays.update({f: tuple(fs["shape"]) for f, fs in spec.fields.items()})
        for arr_name, shape in arrays.items():
            what = f"stream {name} part {key} '{arr_name}'"
            if arr_name not in part:
                report.errors.append(f"{what}: missing")
                continue
            arr = part[arr_name]
            if arr.shape[0] != n_frames or tuple(arr.shape[1:]) != tuple(shape):
                report.errors.append(
                    f"{what}: shape {arr.shape}, expected ({n_frames}, {', '.join(map(str, shape))})"
                    " (truncated array?)"
                )
                continue
            _check_chunks(arr, what, report, deep, finite=arr_name == S.DATA)
        if arrays and S.DATA in part and str(part[S.DATA].dtype) != spec.dtype:
            report.errors.append(f"stream {name} part {key}: dtype {part[S.DATA].dtype} != {spec.dtype}")
        spans = sorted((int(index.start[r]), int(index.stop[r])) for r in rows)
        pos = 0
        for a, b in spans:
            if a != pos or b < a:
                report.errors.append(
                    f"stream {name} part {key}: offsets inconsistent"
                    f" (sample range {a}:{b}, expected start {pos})"
                )
                break
            pos = b
        else:
            if pos != n_frames:
                report.errors.append(f"stream {name} part {key}: offsets cover {pos} of {n_frames} frames")
        if deep and rows.size and S.TIMESTAMPS in part:
            ts = np.asarray(part[S.TIMESTAMPS][...])
            for a, b in spans:
                if b - a > 1 and (np.diff(ts[a:b]) < 0).any():
                    report.errors.append(f"stream {name} part {key}: timestamps decrease")
                    break
        report.checked["parts"] = report.checked.get("parts", 0) + 1
    orphans = sorted(names - {S.part_name(int(k)) for k in used})
    if orphans:
        report.warnings.append(
            f"stream {name}: {len(orphans)} uncommitted part(s) {orphans[:3]} (left by an"
            " interrupted run; the next extract removes them)"
        )
    report.checked["streams"] = report.checked.get("streams", 0) + 1


def _validate_protocols(root: zarr.Group, n: int, samples: zarr.Group, report: ValidationReport) -> None:
    """Shapes, codes, and the promise every protocol makes: no speaker crosses splits."""
    if S.PROTOCOLS not in root:
        report.errors.append("no protocols group")
        return
    group = root[S.PROTOCOLS]
    names = sorted(group.group_keys())
    default = group.attrs.get("default")
    if names and default not in names:
        report.errors.append(f"protocols: default '{default}' is not one of {names}")
    speakers = np.asarray(samples["speaker"][...]).astype(object)
    for name in names:
        assign = np.asarray(group[name]["assign"][...])
        if assign.ndim != 2 or assign.shape[0] != n:
            report.errors.append(f"protocol {name}: assign shape {assign.shape}, expected ({n}, folds)")
            continue
        if not np.isin(assign, [-1, 0, 1, 2]).all():
            report.errors.append(f"protocol {name}: unknown split codes")
            continue
        try:
            Protocol(name, "", assign).check_speaker_disjoint(speakers)
        except AvxError as e:
            report.errors.append(str(e))
        report.checked["protocols"] = report.checked.get("protocols", 0) + 1


def validate_store(url: str | os.PathLike[str], *, deep: bool = False) -> ValidationReport:
    """Check a store against the store schema; never raises for a bad store, reports instead."""
    report = ValidationReport(str(url))
    try:
        root = open_root(url)
    except AvxError as e:
        report.errors.append(str(e).split(": ", 1)[-1])
        return report
    except Exception as e:  # unreadable root metadata
        report.errors.append(f"cannot open ({type(e).__name__}: {e})")
        return report
    version = root.attrs.get(S.SCHEMA_ATTR)
    if version != S.SCHEMA_VERSION:
        report.errors.append(f"schema version {version!r}, this avx reads {S.SCHEMA_VERSION}")
        return report
    try:
        n = int(root.attrs["n_samples"])
        class_names = list(root.attrs["class_names"])
        samples = root[S.SAMPLES]
        for col in samples.attrs["columns"]:
            if col not in samples:
                report.errors.append(f"samples: column '{col}' missing")
            elif samples[col].shape != (n,):
                report.errors.append(
                    f"samples: column '{col}' has shape {samples[col].shape}, expected ({n},)"
                )
        if report.errors:
            return report
        ids = np.asarray(samples["id"][...]).astype(object)
        if len(set(ids)) != n or any(not i for i in ids):
            report.errors.append("samples: ids empty or not unique")
        labels = root[S.LABELS]
        for rater in labels.attrs.get("raters", []):
            g = labels[rater]
            counts = np.asarray(g["counts"][...])
            if counts.shape != (n, len(class_names)):
                report.errors.append(f"labels/{rater}: counts shape {counts.shape}")
                continue
            derived = derive_rater_labels(counts)
            for arr in S.RATER_ARRAYS[1:]:
                got = np.asarray(g[arr][...])
                if not np.array_equal(got, getattr(derived, arr), equal_nan=arr == "distribution"):
                    report.errors.append(f"labels/{rater}/{arr}: does not match the vote counts")
        report.checked["samples"] = n
        _validate_protocols(root, n, samples, report)
    except KeyError as e:
        report.errors.append(f"missing required entry {e}")
        return report

    for name, g in stream_groups(root).items():
        if isinstance(g, str):
            report.errors.append(g)
            continue
        try:
            _validate_stream(g, name, n, report, deep)
        except Exception as e:
            report.errors.append(f"stream {name}: {type(e).__name__}: {e}")

    if is_local(url):
        _check_local_leftovers(local_path(url), report)
    return report


def _check_local_leftovers(path: Path, report: ValidationReport) -> None:
    partial = [p for p in path.rglob("*.partial")]
    if partial:
        report.warnings.append(f"{len(partial)} interrupted temporary file(s), e.g. {partial[0]}")
    try:
        doc = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return
    consolidated = (doc.get("consolidated_metadata") or {}).get("metadata", {})
    if consolidated:
        actual = {
            str(p.parent.relative_to(path))
            for p in path.rglob("zarr.json")
            if p.parent != path and ".locks" not in p.parts
        }
        if actual - set(consolidated):
            report.warnings.append(
                "consolidated metadata is stale (run `avx store consolidate` before serving over HTTP)"
            )
