"""The one extraction loop: plan streams, lock them, split the work into parts, run, commit.

The *coordinator* (the process that runs ``avx extract``) builds every backbone once to
learn its stream spec, takes the stream locks, and splits the pending samples into
chunks of ``--part-size`` rows. Each chunk becomes one new part per stream, with part
numbers reserved by the coordinator. A :class:`ChunkRunner` turns a chunk into written
(uncommitted) parts; the coordinator then commits them by rewriting each stream's index.
Runners run in-process, or on Dask workers (``--workers N`` starts a local cluster,
``--scheduler ADDRESS`` joins an existing one): the write layout is the same, because a
runner only ever creates its own reserved part groups.

Inside a chunk, clips are decoded and face-detected by background threads
(``--decode-workers``) while the main thread runs the backbones; visual backbones run
on frames batched across the chunk's clips. A per-sample problem (missing or corrupt
file, silence, no face, too short) is recorded as that sample's failure; re-running the
same command skips everything committed or failed and finishes the rest.

Every forward pass of a visual backbone has the same batch shape (frames are carried
from clip to clip; only a chunk's last batch is padded), so a clip's features do not
depend on which clips shared its batches: a rerun, a resumed run or a run with another
number of workers (which chunks clips differently) writes the same bits on CPU, and
equal features to float tolerance on GPU (cuDNN may pick kernels per batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from avx.extract.backbones import (
    AudioBackbone,
    Backbone,
    TextBackbone,
    VisualBackbone,
    create_backbone,
)
from avx.extract.backbones.base import Runtime
from avx.extract.faces import FACE_FIELDS, CropWindow, FaceConfig, FacePipeline
from avx.extract.feed import WINDOW_DEPTH, VisualFeed
from avx.extract.media import Audio, decode_audio, iter_frames, resample
from avx.memory import release_free_heap, tune_allocator
from avx.prefetch import BackgroundQueue
from avx.progress import PlainLines, clock
from avx.serialization import to_dict
from avx.store_schema import spec as S
from avx.store_schema.locks import lock_streams
from avx.store_schema.reader import Stream
from avx.store_schema.writer import (
    PartBuilder,
    PartResult,
    StreamSpec,
    StreamWriter,
    consolidate,
    create_store,
    run_info,
    spec_mismatch,
)
from avx.store_schema.zarrio import local_path, open_root, read_table
from avx.threads import announce

if TYPE_CHECKING:
    import zarr

PARTIAL_EXIT_CODE = 3
PLAIN_INTERVAL_S = 10.0
"""Least seconds between plain progress lines in a log (one per part, the last always)."""
"""``avx extract`` exit status when some samples failed (the run finished, partially)."""
TASKS_PER_WORKER = 2
"""Least tasks per local Dask worker (parts are smaller for a small corpus): two, so
that a worker finishing early takes over work rather than idling."""
STORED_WINDOW = 512
"""Frames of committed crops read at once (a long clip is read in pieces)."""


@dataclass(frozen=True)
class ExtractOptions:
    """Options of ``avx extract`` (see its ``--help``).

    Attributes:
        backbones: registry names; ``faces`` alone writes only the crop stream.
        weights: ``SPEC`` for every backbone with weights, or ``backbone=SPEC`` entries.
        options: backbone settings ``KEY=VALUE`` (all backbones) or ``BACKBONE:KEY=VALUE``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: frames (visual) or windows (audio) per forward pass; None = auto.
        amp: float16 autocast on CUDA.
        dtype: storage dtype of backbone features; None = each backbone's default.
        part_size: samples per committed part (and per chunk of work).
        limit: process at most this many pending samples.
        retry_failed: try again samples recorded as failed.
        overwrite: delete the requested streams first (after taking their locks) and
            extract them again, e.g. with other settings. Other streams are untouched.
        faces: face pipeline settings; ``crop_size=0`` = the store's existing crops, else
            the largest input size among the requested visual backbones.
        decode_workers: background threads decoding media and detecting faces.
        workers: Dask worker processes on this machine (0 = run in this process).
        scheduler: address of an existing Dask scheduler (overrides ``workers``).
        trust_pickle: unpickle checkpoints that hold Python objects (HSEmotion's
            ``enet_b2_8.pt``); off by default because unpickling runs code from the file.
    """

    backbones: tuple[str, ...]
    weights: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    device: str = "cpu"
    batch_size: int | None = None
    amp: bool = True
    dtype: str | None = None
    part_size: int = 64
    limit: int | None = None
    retry_failed: bool = False
    overwrite: bool = False
    faces: FaceConfig = field(default_factory=FaceConfig)
    decode_workers: int = 2
    workers: int = 0
    scheduler: str | None = None
    trust_pickle: bool = False


@dataclass
class ExtractReport:
    """What a run did; ``partial`` when some sample of some stream failed."""

    store: str
    processed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_streams: list[str] = field(default_factory=list)
    failed_rows: set[int] = field(default_factory=set)
    peak_crops_held: int | None = None
    """Most face crops in memory at once (in-process runs): flat in clip length."""

    @property
    def failed(self) -> int:
        """Samples with a failure in at least one stream during this run."""
        return len(self.failed_rows)

    @property
    def partial(self) -> bool:
        return self.failed > 0

    def frames_per_s(self, stream: str) -> float:
        return self.streams.get(stream, {}).get("frames_now", 0) / max(self.wall_s, 1e-9)


# -- planning ---------------------------------------------------------------------------------


def _split_weights(weights: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """``--weights`` entries -> (generic specs, {backbone: spec}); hub ids and paths with a
    ``/`` before any ``=`` are generic."""
    generic, specific = [], {}
    for w in weights:
        key, sep, value = w.partition("=")
        if sep and key and "/" not in key:
            specific[key] = value
        else:
            generic.append(w)
    return generic, specific


def _weights_for(name: str, weights: tuple[str, ...]) -> str | None:
    generic, specific = _split_weights(weights)
    return specific.get(name, generic[-1] if generic else None)


def _options_for(name: str, options: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in options:
        target, _, kv = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise AvxError(f"--opt '{item}': expected KEY=VALUE or BACKBONE:KEY=VALUE")
        if target in ("", name):
            out[key.strip()] = value.strip()
    return out


def _stream_spec(b: Backbone, dtype: str | None, extra: dict[str, Any]) -> StreamSpec:
    prov = b.provenance()
    # Random-init features are tiny (no trained scale): float16 would flush them to zero.
    dt = dtype or ("float32" if prov.get("weights") == "random-init" else b.default_dtype)
    return StreamSpec(
        name=b.stream_name,
        frame_shape=tuple(b.frame_shape),
        dtype=dt,
        frame_rate=b.frame_rate,
        fields=dict(b.fields),
        layer_axis=b.layer_axis,
        provenance={
            **prov,
            "config": to_dict(b.config),  # create_backbone(provenance) rebuilds from it
            **({"options": b.options} if b.options else {}),
            **extra,
            "dtype": dt,
            "created": run_info(),
        },
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


def build_backbones(options: ExtractOptions, runtime: Runtime | None = None) -> list[Backbone]:
    """The requested backbones, in request order, sharing one runtime."""
    names = list(dict.fromkeys(options.backbones))
    if unknown := set(_split_weights(options.weights)[1]) - set(names):
        raise AvxError(f"--weights names backbone(s) not requested: {', '.join(sorted(unknown))}")
    runtime = runtime or Runtime.create(options.device, options.batch_size, options.amp, options.trust_pickle)
    return [
        create_backbone(
            n,
            weights=_weights_for(n, options.weights),
            options=_options_for(n, options.options),
            runtime=runtime,
        )
        for n in names
    ]


@dataclass
class Plan:
    """Everything a :class:`ChunkRunner` needs besides its backbones."""

    store: str
    media_root: str
    specs: dict[str, StreamSpec]
    faces: FaceConfig | None
    options: ExtractOptions
    threads: int = 1
    """torch intra-op threads of the coordinator. CPU kernels split reductions by thread
    count, so workers use the same count to write the same bits (MTCNN boxes differ by
    ~1e-5 px between 1 and 2 threads, enough to change a crop's pixels)."""
    blas_threads: int | None = None
    """BLAS threads of the coordinator (librosa's mel and DCT products), likewise."""


def _face_config(options: ExtractOptions, visual: list[VisualBackbone], root: Any) -> FaceConfig:
    cfg = options.faces
    if cfg.crop_size:
        return cfg
    path = S.stream_path(S.FACES)
    if path in root and S.STREAM_ATTR in root[path].attrs:
        size = int(root[path].attrs[S.STREAM_ATTR]["frame_shape"][0])
    else:
        size = max([b.crop_size for b in visual] or [224])
    return replace(cfg, crop_size=size)


def _faces_spec(cfg: FaceConfig) -> StreamSpec:
    pipe_prov = FacePipeline.describe(cfg)
    return StreamSpec(
        name=S.FACES,
        frame_shape=(cfg.crop_size, cfg.crop_size, 3),
        dtype="uint8",
        frame_rate=cfg.sampling.fps,
        fields=FACE_FIELDS,
        provenance={**pipe_prov, "dtype": "uint8", "created": run_info()},
    )


# -- running a chunk --------------------------------------------------------------------------


@dataclass
class Task:
    """One chunk of rows: for each stream, the rows it needs and its reserved part."""

    rows: list[int]
    todo: dict[str, set[int]]
    parts: dict[str, int]


@dataclass
class _Prepared:
    row: int
    audio: dict[int, Audio | MediaError] = field(default_factory=dict)
    video: Iterable[CropWindow] | None = None
    """The clip's crops in windows (raises the clip's failure where it happens)."""
    new_faces: bool = False
    video_error: MediaError | None = None


def _segment(sample: pd.Series) -> tuple[float, float] | None:
    """The clip's ``video_start``/``video_end`` inside a longer video (IEMOCAP), if any."""
    a, b = sample.get("video_start"), sample.get("video_end")
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
        return None
    return float(a), float(b)


def clip_failure(e: BaseException, source: object) -> MediaError:
    """``e``, raised while processing one clip, as that clip's failure record.

    Any error about one clip's input or its features fails that clip alone and the run
    goes on. Errors about the whole run re-raise: out of memory, the store (a write
    failure, a lock), and interrupts (``KeyboardInterrupt`` is not an ``Exception``).
    """
    if isinstance(e, MediaError):
        return e
    import torch

    if isinstance(e, MemoryError | torch.OutOfMemoryError | StoreError | AvxError):
        raise e
    first = (str(e).splitlines() or [""])[0][:200]
    return MediaError(f"{source}: {type(e).__name__}: {first}")


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _media(root: Path, rel: Any, sample_id: str, what: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise MediaError(f"{sample_id}: no {what} file listed for this clip")
    return root / rel


class ChunkRunner:
    """Turns :class:`Task` chunks into written parts; owns backbones and the face pipeline."""

    def __init__(self, plan: Plan, backbones: list[Backbone]) -> None:
        self.plan, self.backbones = plan, backbones
        self.root = open_root(plan.store, writable=True)
        self.media_root = Path(plan.media_root)
        self.samples = read_table(self.root[S.SAMPLES])
        self.ids = self.samples["id"].to_numpy(dtype=object)
        self.audio = [b for b in backbones if isinstance(b, AudioBackbone)]
        self.text = [b for b in backbones if isinstance(b, TextBackbone)]
        self.visual = [b for b in backbones if isinstance(b, VisualBackbone)]
        self.face_pipe = FacePipeline(plan.faces, device=plan.options.device) if plan.faces else None
        self._faces: Stream | None = None
        self.rates = sorted({b.sample_rate for b in self.audio})
        self.feeds: dict[str, VisualFeed] = {}
        self._live: list[BackgroundQueue] = []  # this chunk's background crop producers
        self._queued = 0  # crops produced and not yet taken by the backbones
        self._queued_lock = threading.Lock()
        self.peak_crops_held = 0
        """Most face crops held in memory at once (queued windows, frames waiting for a
        batch, crops not yet written): bounded by the settings, not by clip length."""

    # background work: decode, resample, detect ------------------------------------------
    def _prepare(self, row: int, task: Task) -> _Prepared:
        """Decode and resample the clip's audio; say where its crops will come from."""
        sample = self.samples.iloc[row]
        sid = str(sample["id"])
        prep = _Prepared(row)
        if any(row in task.todo.get(b.stream_name, ()) for b in self.audio):
            src = sample["audio_path"]
            try:
                src = _media(self.media_root, sample["audio_path"], sid, "audio")
                decoded = decode_audio(src).shorter_than(
                    _finite(sample.get("duration")), "the corpus metadata"
                )
                for rate in self.rates:
                    try:
                        prep.audio[rate] = resample(decoded, rate, source=str(src))
                    except Exception as e:
                        prep.audio[rate] = clip_failure(e, src)
            except Exception as e:
                prep.audio = dict.fromkeys(self.rates, clip_failure(e, src))
        if row in task.todo.get(S.FACES, ()):
            try:
                src = _media(self.media_root, sample["video_path"], sid, "video")
            except MediaError as e:
                prep.video_error = e
            else:
                chunks = iter_frames(src, self.plan.faces.sampling, segment=_segment(sample))
                prep.video, prep.new_faces = self.face_pipe.stream(chunks, source=str(src)), True
        elif self._needs_video(row, task):
            faces = self._faces
            status = S.Status(int(faces.index.status[row]))
            if status == S.Status.FAILED:
                prep.video_error = MediaError(faces.failures.get(sid, "face extraction failed"))
            elif status != S.Status.COMMITTED:
                prep.video_error = MediaError(f"{sid}: no committed face crops")
            else:
                prep.video = self._stored_windows(sid)
        return prep

    def _needs_video(self, row: int, task: Task) -> bool:
        """Whether ``row`` has crops to detect or to feed a visual backbone in ``task``."""
        streams = [S.FACES, *(b.stream_name for b in self.visual)]
        return any(row in task.todo.get(name, ()) for name in streams)

    def _stored_windows(self, sid: str) -> Iterator[CropWindow]:
        """Committed crops of ``sid`` in windows of ``STORED_WINDOW`` frames."""
        n = self._faces.length(sid)
        for a in range(0, n, STORED_WINDOW):
            b = min(n, a + STORED_WINDOW)
            yield CropWindow(
                self._faces.field(sid, S.DATA, a, b), self._faces.field(sid, S.TIMESTAMPS, a, b), {}
            )

    def _counted(self, windows: Iterable[CropWindow]) -> Iterator[CropWindow]:
        for w in windows:
            with self._queued_lock:
                self._queued += len(w.crops)
            yield w

    def _prefetch(
        self, task: Task, pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None
    ) -> Iterator[_Prepared]:
        """Prepared clips in order. With background threads, audio is decoded ahead and
        each clip's crops are produced ahead by at most ``WINDOW_DEPTH`` windows."""
        if pools is None:
            for row in task.rows:
                prep = self._prepare(row, task)
                if prep.video is not None:
                    prep.video = self._counted(prep.video)
                yield prep
            return
        audio_pool, video_pool = pools
        ahead = 2 * max(1, self.plan.options.decode_workers)
        waiting: deque[tuple[Future[_Prepared], BackgroundQueue | None]] = deque()

        def produce(prepared: Future[_Prepared]) -> Iterator[CropWindow]:
            video = prepared.result().video
            return self._counted(video) if video is not None else iter(())

        def start(row: int) -> tuple[Future[_Prepared], BackgroundQueue | None]:
            prepared = audio_pool.submit(self._prepare, row, task)
            if not self._needs_video(row, task):  # no producer thread for audio/text-only clips
                return prepared, None
            q = BackgroundQueue(WINDOW_DEPTH)
            self._live.append(q)
            # Submitted here, in row order: the pool starts producers oldest first, so
            # the clip the backbones wait for always has a thread.
            video_pool.submit(q.fill, lambda: produce(prepared))
            return prepared, q

        def ready(item: tuple[Future[_Prepared], BackgroundQueue | None]) -> _Prepared:
            prep = item[0].result()
            if item[1] is None:
                return prep
            if prep.video is None:
                item[1].cancel()
                return prep
            # a copy: the producer thread reads the original's `video` (the windows)
            return replace(prep, video=item[1])

        for row in task.rows:
            waiting.append(start(row))
            if len(waiting) > ahead:
                yield ready(waiting.popleft())
        while waiting:
            yield ready(waiting.popleft())

    # foreground: backbones --------------------------------------------------------------
    def run(self, task: Task, on_sample: Callable[[int, int], None] | None = None) -> dict[str, PartResult]:
        """Write one part per stream for ``task``; ``on_sample(row, n_frames)`` reports progress."""
        builders = {
            name: PartBuilder(self.root[S.stream_path(name)], self.plan.specs[name], k)
            for name, k in task.parts.items()
        }
        if self.plan.faces is not None:  # committed crops as of this chunk's start
            self._faces = Stream(self.root[S.stream_path(S.FACES)], S.FACES, self.ids)
        self.feeds = {
            b.stream_name: VisualFeed(b, builders[b.stream_name])
            for b in self.visual
            if b.stream_name in builders
        }
        workers = max(0, self.plan.options.decode_workers)
        with ExitStack() as stack:
            pools = None
            if workers:
                pools = (
                    stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="avx-decode")),
                    stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="avx-faces")),
                )
                # runs first on the way out: releases producers blocked on a full queue
                # (an error or an interrupt), else the pools would wait for them forever
                stack.callback(lambda: [q.cancel() for q in self._live])
            self._live = []
            for prep in self._prefetch(task, pools):
                sid = str(self.ids[prep.row])
                self._run_audio(prep, task, builders)
                self._run_text(prep, task, builders, sid)
                n = self._run_video(prep, task, builders)
                if on_sample is not None:
                    on_sample(prep.row, n)
        for feed in self.feeds.values():
            feed.finish()
        return {name: b.write() for name, b in builders.items() if len(b)}

    def _run_audio(self, prep: _Prepared, task: Task, builders: dict[str, PartBuilder]) -> None:
        for b in self.audio:
            name = b.stream_name
            if prep.row not in task.todo.get(name, ()):
                continue
            audio = prep.audio[b.sample_rate]
            src = str(self.samples.iloc[prep.row]["audio_path"])
            try:
                if isinstance(audio, MediaError):
                    raise audio
                feats, ts, *fields = b(audio.waveform, source=src)  # + per-frame fields, if any
                builders[name].add(prep.row, feats, ts, note=audio.note, **(fields[0] if fields else {}))
            except Exception as e:
                builders[name].fail(prep.row, str(clip_failure(e, src)))

    def _run_text(self, prep: _Prepared, task: Task, builders: dict[str, PartBuilder], sid: str) -> None:
        for b in self.text:
            name = b.stream_name
            if prep.row not in task.todo.get(name, ()):
                continue
            try:
                feats, ts = b(str(self.samples.iloc[prep.row].get("transcript") or ""), source=sid)
                builders[name].add(prep.row, feats, ts)
            except Exception as e:
                builders[name].fail(prep.row, str(clip_failure(e, sid)))

    def _run_video(self, prep: _Prepared, task: Task, builders: dict[str, PartBuilder]) -> int:
        """Crops of one clip, window by window, into the faces part and the visual
        feeds; returns the clip's frame count (0 if it failed)."""
        row = prep.row
        faces = builders.get(S.FACES) if prep.new_faces else None
        feeds = [f for name, f in self.feeds.items() if row in task.todo.get(name, ())]
        if prep.video_error is not None:
            for name in [S.FACES, *(b.stream_name for b in self.visual)]:
                if row in task.todo.get(name, ()):
                    builders[name].fail(row, str(prep.video_error))
            return 0
        if prep.video is None:
            return 0
        n = 0
        if faces is not None:
            faces.begin(row)
        try:
            for w in prep.video:
                if faces is not None:
                    faces.extend(w.crops, w.times, **w.fields)
                for f in feeds:
                    f.extend(row, w.crops, w.times)
                n += len(w.crops)
                self._note_held(faces)
                with self._queued_lock:
                    self._queued -= len(w.crops)
                del w
                release_free_heap()  # flat RSS on long clips (avx/memory.py)
        except Exception as e:
            why = str(clip_failure(e, self.samples.iloc[row].get("video_path") or self.ids[row]))
            if faces is not None:
                faces.fail(row, why)
            for f in feeds:
                f.fail(row, why)
            return 0
        if faces is not None:
            faces.end()
        for f in feeds:
            f.end(row)
        return n

    def _note_held(self, faces: PartBuilder | None) -> None:
        held = self._queued + sum(f.n_waiting for f in self.feeds.values())
        held += faces.held_frames if faces is not None else 0
        self.peak_crops_held = max(self.peak_crops_held, held)


# -- Dask ---------------------------------------------------------------------------------------

_WORKER_RUNNERS: dict[str, ChunkRunner] = {}


def _worker_device(device: str) -> str:
    """``cuda`` on a Dask worker: one GPU per worker, by worker index."""
    import torch

    if device != "cuda" or torch.cuda.device_count() <= 1:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else abs(hash(name))
    except Exception:
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


def _dask_spawn_environ() -> dict[str, str]:
    """What Dask's nanny puts in a worker's environment by default (its trim threshold
    is Dask's choice, not the user's: :func:`~avx.memory.tune_allocator` may override it)."""
    import dask

    env = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {k: str(v) for k, v in env.items()}


def run_task_on_worker(plan: Plan, task: Task) -> dict[str, PartResult]:
    """Dask task: build (once per worker process) the runner, check provenance, run a chunk."""
    key = _fingerprint({"plan": plan.store, "specs": {k: v.to_attrs() for k, v in plan.specs.items()}})
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        import torch

        tune_allocator(not_user_set=_dask_spawn_environ())
        torch.set_num_threads(plan.threads)
        if plan.blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(plan.blas_threads, user_api="blas")
        opts = replace(plan.options, device=_worker_device(plan.options.device))
        with warnings.catch_warnings():  # the coordinator has shown them once already
            warnings.simplefilter("ignore", UserWarning)
            built = build_backbones(opts)
        backbones = [b for b in built if b.stream_name in plan.specs and b.stream_name != S.FACES]
        for b in backbones:
            want = plan.specs[b.stream_name].provenance
            got = _stream_spec(
                b, opts.dtype, {k: want[k] for k in ("input_stream", "input_provenance_sha256") if k in want}
            )
            if _fingerprint(got.provenance) != _fingerprint(want):
                raise StoreError(f"worker builds '{b.stream_name}' with other settings than the coordinator")
        runner = _WORKER_RUNNERS[key] = ChunkRunner(plan, backbones)
    return runner.run(task)


def _worker_environ(threads: int) -> dict[str, str]:
    """Environment our local workers start with, in place of Dask's ``pre-spawn-environ``.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` and one
    OpenMP/BLAS thread, and writes the same into the starting process's own environment.
    The trim threshold hands each freed activation back to the system, so the next batch
    page-faults it in again. Worse, a worker runs tasks on a thread, and glibc gives each
    thread its own arena, whose heaps hold at most 64 MiB: larger blocks (mobilenetv2's
    77 MiB activations at batch 16) are mapped and faulted in anew on every batch whatever
    the mmap threshold. A worker ran 24 demo clips in 2.5× the time of one process, with
    3.4 million page faults against 0.66 million. So workers get the thread count the
    coordinator chose per worker, glibc's trim default (which
    :func:`~avx.memory.tune_allocator` raises as in one process) and one arena, the
    main heap, which has no such cap: 0.5 million faults, a worker as fast as one process
    (docs/extract.md, "Performance on small machines").
    """
    n = str(max(1, threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MALLOC_ARENA_MAX": "1"}


def _dask_client(options: ExtractOptions, threads: int = 1) -> Any:
    import dask
    from distributed import Client, LocalCluster

    if options.scheduler:
        return Client(options.scheduler)
    env, theirs = _worker_environ(threads), _dask_spawn_environ()
    keep = {k: os.environ.get(k) for k in {*env, *theirs}}
    # The nanny takes a variable from this process's environment over its config: set
    # ours there, and drop Dask's own values an earlier cluster left in it (a value the
    # user set stays, and the workers inherit it).
    for k, v in theirs.items():
        if os.environ.get(k) == v:
            del os.environ[k]
    os.environ.update(env)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(
                n_workers=options.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
    finally:  # the nanny wrote its variables into this process's environment too
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Client(cluster)


# -- the coordinator ---------------------------------------------------------------------------


def extract(
    corpus: str,
    root: str | Path,
    store: str | Path,
    options: ExtractOptions,
    *,
    console: Console | None = None,
) -> ExtractReport:
    """Extract ``options.backbones`` for every pending sample of ``corpus`` into ``store``.

    Three steps: :func:`plan_extraction` (which streams, with which specs),
    :func:`build_tasks` (which samples each chunk of work covers, after taking the
    stream locks) and :func:`execute` (run the chunks here or on Dask workers and commit
    each part as it arrives).
    """
    console = console or Console(stderr=True)
    t0 = time.time()
    tune_allocator()  # large tensors from the heap, not fresh mappings (avx/memory.py)
    report = ExtractReport(str(store))
    plan, backbones = plan_extraction(corpus, root, store, options, report, console)
    report.store = plan.store
    g = open_root(plan.store, writable=True)
    if _faces_complete(g, plan):
        # Visual backbones only read committed crops: no faces lock, so extractions of
        # several visual backbones share a store, as documented.
        plan = replace(plan, specs={n: s for n, s in plan.specs.items() if n != S.FACES})
    with ExitStack() as stack:
        lock_streams(stack, plan.store, list(plan.specs))
        if options.overwrite:
            _delete_for_overwrite(g, plan.specs, options, console)
        writers = {n: StreamWriter(g, spec, part_size=options.part_size) for n, spec in plan.specs.items()}
        stack.callback(lambda: [w.close() for w in writers.values()])
        samples = read_table(g[S.SAMPLES])
        tasks, n_todo = build_tasks(writers, len(samples), options, report)
        announce(console)  # the thread count, once inputs, locks and stream settings are checked
        frames = execute(plan, backbones, tasks, writers, samples["id"], report, console, n_todo, t0)
        report.processed = n_todo
    for name, w in writers.items():
        report.streams[name] = {
            "committed_now": w.committed_now,
            "failed_now": w.failed_now,
            "frames_now": frames[name],
        }
    consolidate(plan.store)
    report.wall_s = time.time() - t0
    return report


def _faces_complete(g: zarr.Group, plan: Plan) -> bool:
    """The ``faces`` stream needs no writing: it was not asked for by name, holds crops
    made with the planned settings, and has no sample left to do."""
    spec, options = plan.specs.get(S.FACES), plan.options
    path = S.stream_path(S.FACES)
    if spec is None or S.FACES in options.backbones or path not in g:
        return False
    try:
        faces = Stream(g[path], S.FACES, np.zeros(int(g.attrs["n_samples"]), dtype=object))
    except (StoreError, KeyError):
        return False
    if spec_mismatch(faces.spec, spec) is not None:
        return False  # the writer explains the mismatch (or --overwrite replaces it)
    todo = faces.index.status == S.Status.MISSING
    if options.retry_failed:
        todo |= faces.index.failed()
    return not todo.any()


def plan_extraction(
    corpus: str,
    root: str | Path,
    store: str | Path,
    options: ExtractOptions,
    report: ExtractReport,
    console: Console,
) -> tuple[Plan, list[Backbone]]:
    """The backbones to run and every stream's spec (creating the store from the corpus
    metadata when it does not exist). Text backbones are skipped, with a message, for a
    corpus without transcripts; visual backbones bring the ``faces`` stream they read."""
    root = Path(root)
    backbones = build_backbones(options)
    path = ensure_store(corpus, root, store)
    media_root = root if root.is_dir() else root.parent  # a manifest file: media sit beside it
    g = open_root(path)
    samples = read_table(g[S.SAMPLES])
    text = [b for b in backbones if isinstance(b, TextBackbone)]
    if text and (
        "transcript" not in samples or not samples["transcript"].fillna("").astype(str).str.strip().any()
    ):
        for b in text:
            console.print(f"[yellow]skipped[/] {b.stream_name}: corpus '{corpus}' has no transcripts")
            report.skipped_streams.append(b.stream_name)
        backbones = [b for b in backbones if b not in text]
    visual = [b for b in backbones if isinstance(b, VisualBackbone)]
    want_faces = bool(visual) or any(b.stream_name == S.FACES for b in backbones)
    backbones = [b for b in backbones if b.stream_name != S.FACES]
    specs: dict[str, StreamSpec] = {}
    faces_cfg = _face_config(options, visual, g) if want_faces else None
    face_ref: dict[str, Any] = {}
    if faces_cfg is not None:
        specs[S.FACES] = _faces_spec(faces_cfg)
        face_ref = {
            "input_stream": S.FACES,
            "input_provenance_sha256": _fingerprint(specs[S.FACES].provenance),
        }
    for b in backbones:
        specs[b.stream_name] = _stream_spec(b, options.dtype, face_ref if b in visual else {})
    if not specs:
        raise AvxError("nothing to extract")
    import torch
    from threadpoolctl import threadpool_info

    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    plan = Plan(
        str(path),
        str(media_root),
        specs,
        faces_cfg,
        options,
        threads=torch.get_num_threads(),
        blas_threads=max(blas) if blas else None,
    )
    return plan, backbones


def _delete_for_overwrite(
    g: zarr.Group, specs: dict[str, StreamSpec], options: ExtractOptions, console: Console
) -> None:
    """``--overwrite``: delete the requested streams (their locks are held)."""
    for name in specs:
        if S.stream_path(name) not in g:
            continue
        if name == S.FACES and S.FACES not in options.backbones:
            # crops a visual backbone merely reads are kept if their settings still hold
            old = StreamSpec.from_attrs(g[S.stream_path(name)].attrs[S.STREAM_ATTR])
            if spec_mismatch(old, specs[name]) is None:
                continue
        del g[S.stream_path(name)]
        console.print(f"overwrite: deleted stream {name}", highlight=False)


def build_tasks(
    writers: dict[str, StreamWriter], n_samples: int, options: ExtractOptions, report: ExtractReport
) -> tuple[list[Task], int]:
    """Chunks of ``part_size`` pending rows, each with the rows every stream still needs
    and a reserved part number per stream; and how many rows are pending in all."""
    rows = list(range(n_samples))
    todo_by = {n: set(w.todo(rows, retry_failed=options.retry_failed)) for n, w in writers.items()}
    todo = sorted(set().union(*todo_by.values()))
    report.skipped = len(rows) - len(todo)
    if options.limit is not None:
        todo = todo[: options.limit]
    size = max(1, options.part_size)
    if options.workers > 0 and not options.scheduler:
        # every local worker gets work: a corpus smaller than workers × part size would
        # otherwise be one task on one worker while the others idle
        size = min(size, max(1, -(-len(todo) // (TASKS_PER_WORKER * options.workers))))
    tasks = []
    for a in range(0, len(todo), size):
        chunk = todo[a : a + size]
        per = {n: rs for n in writers if (rs := todo_by[n].intersection(chunk))}
        tasks.append(Task(chunk, per, {n: writers[n].reserve_part() for n in per}))
    return tasks, len(todo)


def execute(
    plan: Plan,
    backbones: list[Backbone],
    tasks: list[Task],
    writers: dict[str, StreamWriter],
    ids: pd.Series,
    report: ExtractReport,
    console: Console,
    n_todo: int,
    t0: float,
) -> dict[str, int]:
    """Run every task (here, or on Dask workers) with a progress bar, committing each
    stream's part as it arrives; returns the frames written per stream."""
    frames = {n: 0 for n in plan.specs}

    def commit(results: dict[str, PartResult]) -> None:
        for name, res in results.items():
            writers[name].commit(res)
            report.failed_rows |= set(res.failures)
            for row, why in res.failures.items():
                console.print(
                    f"[yellow]failed[/] {name} {ids.iat[row]}: {why}", highlight=False, soft_wrap=True
                )
            frames[name] += sum(b - a for _, a, b in res.entries)

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    title = f"extract {', '.join(plan.specs)}"
    lines = PlainLines(console, interval=PLAIN_INTERVAL_S)
    with Progress(*columns, console=console, transient=False, disable=lines.enabled) as progress:
        bar = progress.add_task(title, total=n_todo, rate="")
        done = {"clips": 0, "frames": 0}

        def rate() -> str:
            el = max(time.time() - t0, 1e-9)
            text = f"{done['clips'] / el:.2f} clips/s"
            if done["frames"]:
                text += f", {done['frames'] / el:.0f} face frames/s"
            return text

        def tick(n_clips: int, n_frames: int) -> None:
            done["clips"] += n_clips
            done["frames"] += n_frames
            progress.update(bar, advance=n_clips, rate=rate())

        def part_done() -> None:
            """A plain line per committed part when the output is not a terminal."""
            el, n = time.time() - t0, done["clips"]
            left = f", ~{clock(el / n * (n_todo - n))} left" if 0 < n < n_todo else ""
            lines(
                f"{title}: {n}/{n_todo} clips ({100 * n / max(n_todo, 1):.0f}%), {rate()},"
                f" {clock(el)} elapsed{left}",
                last=n >= n_todo,
            )

        options = plan.options
        if options.workers > 0 or options.scheduler:
            _run_dask(plan, tasks, commit, tick, options, part_done)
        else:
            runner = ChunkRunner(plan, backbones)
            for task in tasks:
                commit(runner.run(task, on_sample=lambda _r, n: tick(1, n)))
                part_done()
            report.peak_crops_held = runner.peak_crops_held
    return frames


def _run_dask(
    plan: Plan,
    tasks: list[Task],
    commit: Callable[[dict[str, PartResult]], None],
    tick: Callable[[int, int], None],
    options: ExtractOptions,
    part_done: Callable[[], None] = lambda: None,
) -> None:
    from distributed import as_completed

    client = _dask_client(options, plan.threads)
    try:
        futures = {client.submit(run_task_on_worker, plan, t, pure=False): t for t in tasks}
        for fut in as_completed(futures):
            results = fut.result()
            commit(results)
            n_frames = sum(b - a for _, a, b in results.get(S.FACES, PartResult(0, [], {})).entries)
            tick(len(futures[fut].rows), n_frames)
            part_done()
    finally:
        _shutdown(client, options)


WORKER_CLOSE_TIMEOUT_S = 60.0
"""How long a local worker process may take to exit. Dask's default (5 s, of which the
nanny waits 4) is shorter than a loaded machine needs to tear down torch and the models,
and the nanny then kills the worker with a warning after work that went fine."""


def release_worker_state() -> None:
    """Dask ``client.run`` target: drop this worker's backbones (memory, GPU memory)."""
    import gc

    _WORKER_RUNNERS.clear()
    gc.collect()


def _shutdown(client: Any, options: ExtractOptions) -> None:
    """Leave workers as we found them: an existing cluster's workers drop our models and
    stay; our local cluster's workers exit, each given time to do so without a kill."""
    import contextlib

    cluster = getattr(client, "cluster", None)
    with contextlib.suppress(Exception):  # a worker that died already has nothing to release
        client.run(release_worker_state)
    client.close()
    if cluster is None or options.scheduler:
        return

    async def close_workers() -> None:
        import asyncio

        await asyncio.gather(*(w.close(timeout=WORKER_CLOSE_TIMEOUT_S) for w in cluster.workers.values()))

    with contextlib.suppress(Exception):
        cluster.sync(close_workers)
    cluster.close()
