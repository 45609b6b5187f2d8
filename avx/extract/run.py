"""The one extraction loop: plan streams, lock them, resume, extract, commit.

For each sample that some requested stream still lacks, the loop decodes the media
once, runs the face pipeline when a visual backbone needs crops (or reads crops
already committed to the ``faces`` stream), runs every backbone and hands the results
to the stream writers, which commit them part by part. A per-sample problem (missing
or corrupt file, silence, no face) is recorded as that sample's failure; re-running
the same command skips everything committed or failed and finishes the rest.

Features of a sample never depend on which other samples share its run: each clip is
one batch. That is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from avx.corpora import load_corpus
from avx.errors import AvxError, MediaError, StoreError
from avx.extract.backbones import AudioBackbone, Backbone, VisualBackbone, create_backbone
from avx.extract.faces import FACE_FIELDS, FaceConfig, FacePipeline
from avx.extract.media import load_audio, read_frames
from avx.store_schema import spec as S
from avx.store_schema.locks import lock_streams
from avx.store_schema.reader import Stream
from avx.store_schema.writer import StreamSpec, StreamWriter, consolidate, create_store, run_info
from avx.store_schema.zarrio import local_path, open_root, read_table


@dataclass(frozen=True)
class ExtractOptions:
    """Options of ``avx extract`` (see its ``--help``).

    Attributes:
        weights: ``SPEC`` for every backbone with weights, or ``backbone=SPEC`` entries.
        dtype: storage dtype of backbone features; None = each backbone's default.
        part_size: samples per committed part (smaller = less lost on a crash).
        limit: process at most this many pending samples.
        retry_failed: try again samples recorded as failed.
    """

    backbones: tuple[str, ...]
    weights: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str | None = None
    part_size: int = 64
    limit: int | None = None
    retry_failed: bool = False
    faces: FaceConfig = field(default_factory=FaceConfig)


@dataclass
class ExtractReport:
    store: str
    processed: int = 0
    streams: dict[str, dict[str, int]] = field(default_factory=dict)


def _weights_for(name: str, weights: tuple[str, ...]) -> str | None:
    generic = [w for w in weights if "=" not in w]
    specific = dict(w.split("=", 1) for w in weights if "=" in w)
    return specific.get(name, generic[-1] if generic else None)


def _stream_spec(b: Backbone, dtype: str | None, extra: dict[str, Any]) -> StreamSpec:
    dt = dtype or b.default_dtype
    return StreamSpec(
        name=b.stream_name,
        frame_shape=tuple(b.frame_shape),
        dtype=dt,
        frame_rate=b.frame_rate,
        layer_axis=b.layer_axis,
        provenance={**b.provenance(), **extra, "dtype": dt, "created": run_info()},
    )


def _fingerprint(d: dict[str, Any]) -> str:
    d = {k: v for k, v in d.items() if k != "created"}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def ensure_store(corpus: str, root: str | Path, store: str | Path) -> Path:
    """Open ``store`` for ``corpus``, creating it from the corpus metadata if absent."""
    path = local_path(store)
    if not (path / "zarr.json").exists():
        create_store(path, load_corpus(corpus, root))
        return path
    g = open_root(path)
    if g.attrs.get(S.SCHEMA_ATTR) != S.SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {g.attrs.get(S.SCHEMA_ATTR)!r}, this avx writes {S.SCHEMA_VERSION}"
        )
    if g.attrs.get("corpus") != corpus:
        raise StoreError(f"{path}: store is for corpus '{g.attrs.get('corpus')}', not '{corpus}'")
    return path


def extract(
    corpus: str,
    root: str | Path,
    store: str | Path,
    options: ExtractOptions,
    *,
    console: Console | None = None,
) -> ExtractReport:
    """Extract ``options.backbones`` for every pending sample of ``corpus`` into ``store``."""
    console = console or Console(stderr=True)
    root = Path(root)
    known = {b.split("=", 1)[0] for b in options.weights if "=" in b}
    if unknown := known - set(options.backbones):
        raise AvxError(f"--weights names backbone(s) not requested: {', '.join(sorted(unknown))}")
    backbones = [
        create_backbone(n, weights=_weights_for(n, options.weights), device=options.device)
        for n in dict.fromkeys(options.backbones)
    ]
    path = ensure_store(corpus, root, store)
    root = root if root.is_dir() else root.parent  # a manifest file: media sit beside it
    audio = [b for b in backbones if isinstance(b, AudioBackbone)]
    visual = [b for b in backbones if isinstance(b, VisualBackbone)]
    specs: dict[str, StreamSpec] = {}
    face_pipe = None
    if visual:
        face_pipe = FacePipeline(options.faces, device=options.device)
        face_prov = {**face_pipe.provenance(), "dtype": "uint8", "created": run_info()}
        specs[S.FACES] = StreamSpec(
            name=S.FACES,
            frame_shape=(options.faces.crop_size, options.faces.crop_size, 3),
            dtype="uint8",
            frame_rate=options.faces.sampling.fps,
            fields=FACE_FIELDS,
            provenance=face_prov,
        )
        face_ref = {"input_stream": S.FACES, "input_provenance_sha256": _fingerprint(face_prov)}
    for b in backbones:
        specs[b.stream_name] = _stream_spec(b, options.dtype, face_ref if b in visual else {})

    report = ExtractReport(str(path))
    with ExitStack() as stack:
        lock_streams(stack, path, list(specs))
        g = open_root(path, writable=True)
        writers = {name: StreamWriter(g, spec, part_size=options.part_size) for name, spec in specs.items()}
        stack.callback(lambda: [w.close() for w in writers.values()])
        samples = read_table(g[S.SAMPLES])
        rows = list(range(len(samples)))
        todo = sorted(
            set().union(*(w.todo(rows, retry_failed=options.retry_failed) for w in writers.values()))
        )
        if options.limit is not None:
            todo = todo[: options.limit]
        faces_in_store = (
            Stream(g[S.stream_path(S.FACES)], S.FACES, samples["id"].to_numpy(dtype=object))
            if visual
            else None
        )
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"extract {', '.join(specs)}", total=len(todo))
            for row in todo:
                sample = samples.iloc[row]
                if audio:
                    _audio_row(row, sample, root, audio, writers, options, console)
                if visual:
                    _visual_row(
                        row, sample, root, visual, face_pipe, faces_in_store, writers, options, console
                    )
                report.processed += 1
                progress.advance(task)
    for name, w in writers.items():
        report.streams[name] = {"committed_now": w.committed_now, "failed_now": w.failed_now}
    consolidate(path)
    return report


def _needs(writer: StreamWriter, row: int, options: ExtractOptions) -> bool:
    return bool(writer.todo([row], retry_failed=options.retry_failed))


def _media(root: Path, rel: str, sample_id: str, what: str) -> Path:
    if not rel:
        raise MediaError(f"{sample_id}: no {what} file listed for this clip")
    return root / rel


def _segment(sample: pd.Series) -> tuple[float, float] | None:
    """The clip's ``video_start``/``video_end`` inside a longer video (IEMOCAP), if any."""
    a, b = sample.get("video_start"), sample.get("video_end")
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
        return None
    return float(a), float(b)


def _warn(console: Console, stream: str, sample_id: str, err: Exception) -> None:
    console.print(f"[yellow]failed[/] {stream} {sample_id}: {err}", highlight=False, soft_wrap=True)


def _audio_row(row, sample, root, audio, writers, options, console) -> None:
    cache: dict[int, np.ndarray | MediaError] = {}
    for b in audio:
        w = writers[b.stream_name]
        if not _needs(w, row, options):
            continue
        try:
            if b.sample_rate not in cache:
                try:
                    src = _media(root, sample["audio_path"], sample["id"], "audio")
                    cache[b.sample_rate] = load_audio(src, b.sample_rate)
                except MediaError as e:
                    cache[b.sample_rate] = e
            wav = cache[b.sample_rate]
            if isinstance(wav, MediaError):
                raise wav
            feats, ts = b(wav, source=str(root / sample["audio_path"]))
            w.add(row, feats, ts)
        except MediaError as e:
            w.fail(row, str(e))
            _warn(console, b.stream_name, sample["id"], e)


def _visual_row(row, sample, root, visual, face_pipe, faces_in_store, writers, options, console) -> None:
    fw = writers[S.FACES]
    pending = [b for b in visual if _needs(writers[b.stream_name], row, options)]
    need_faces = _needs(fw, row, options)
    if not pending and not need_faces:
        return
    try:
        if not need_faces and fw.status(row) == S.Status.FAILED:
            raise MediaError(faces_in_store.failures.get(sample["id"], "face extraction failed"))
        if not need_faces:
            crops = faces_in_store[sample["id"]]
        else:
            src = _media(root, sample["video_path"], sample["id"], "video")
            frames, ts = read_frames(src, options.faces.sampling, segment=_segment(sample))
            crops, fields = face_pipe(frames, source=str(src))
            fw.add(row, crops, ts, **fields)
            if not pending:
                return
        ts = faces_in_store.timestamps(sample["id"]) if not need_faces else ts
    except MediaError as e:
        for w in [fw] * need_faces + [writers[b.stream_name] for b in pending]:
            w.fail(row, str(e))
        _warn(console, "video", sample["id"], e)
        return
    for b in pending:
        writers[b.stream_name].add(row, b(crops), ts)
