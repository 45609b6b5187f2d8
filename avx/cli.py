"""The ``avx`` command line: one typer app per command group, each command a thin
wrapper around one Python API call.

Errors the user can fix (:class:`~avx.errors.AvxError`) print one line and exit 2;
``avx store validate`` exits 1 for an invalid store.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from avx.errors import AvxError

app = typer.Typer(
    name="avx",
    help="Audio-visual emotion recognition: extract features once into a Zarr store, fuse many times.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Create, inspect and validate feature stores.", no_args_is_help=True)
fuse_app = typer.Typer(help="Train and evaluate fusion methods from a store.", no_args_is_help=True)
corpus_app = typer.Typer(help="Corpora avx reads in their official layout.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(corpus_app, name="corpus")
app.add_typer(fuse_app, name="fuse")

out = Console()
err = Console(stderr=True)

Threads = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help="torch/BLAS threads (per worker with --workers); default OMP_NUM_THREADS, else physical"
        " cores ÷ workers.",
        show_default=False,
    ),
]


def _min_face(value: str) -> dict[str, Any]:
    """``--min-face-size``: ``40`` (pixels) or ``0.15h`` (of the frame's shorter side)."""
    try:
        if value.endswith("h"):
            frac = float(value[:-1])
            if not 0 < frac <= 1:
                raise ValueError
            return {"min_face_fraction": frac}
        px = int(value)
        if px < 1:
            raise ValueError
        return {"min_face_size": px}
    except ValueError:
        raise typer.BadParameter(
            f"'{value}': pixels (e.g. 40) or a fraction of the shorter side (e.g. 0.15h)",
            param_hint="--min-face-size",
        ) from None


def _threads(threads: int | None, workers: int = 0) -> None:
    """Set the thread count (see :mod:`avx.threads`); it is printed where the work starts."""
    from avx.threads import defer_announcement, set_threads

    defer_announcement(set_threads(threads, workers))


def _split_csv(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v for item in values or [] for v in item.split(",") if v)


@store_app.command("init")
def store_init(
    corpus: Annotated[str, typer.Option(help="Corpus name (see `avx corpus list`).")],
    root: Annotated[
        Path, typer.Option(help="Corpus root, in its official layout (manifest: the CSV/Parquet).")
    ],
    store: Annotated[str, typer.Option(help="Store path to create (e.g. cremad.zarr); local only.")],
    protocol: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Default evaluation protocol, e.g. speaker-trials or speaker-trials:k=10,seed=1"
            " (every protocol the corpus has is stored; this picks the default)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
) -> None:
    """Create a store from corpus metadata only: samples, labels, demographics, protocols."""
    from avx.corpora import load_corpus
    from avx.corpora.protocols import apply_protocol
    from avx.store_schema import create_store, open_store

    meta = load_corpus(corpus, root)
    default = apply_protocol(meta, protocol) if protocol else None
    path = create_store(store, meta, overwrite=overwrite, default_protocol=default, console=err)
    s = open_store(path)
    out.print(
        f"created {path}: {len(s.samples)} samples, {s.samples['speaker'].nunique()} speakers, "
        f"labels {sorted(s.labels) + s.categorical_names}, "
        f"protocols {s.protocols} (default {s.default_protocol})"
    )


@store_app.command("info")
def store_info(
    path: Annotated[str, typer.Argument(help="Store path or URL (file://, s3://, https://).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
    failures: Annotated[
        bool, typer.Option("--failures", help="List every failed clip with its reason, per stream.")
    ] = False,
) -> None:
    """Summarise a store: corpus, label statistics, protocols, and every stream with its
    provenance, failure reasons and damage."""
    from avx.store_schema import open_store

    store = open_store(path)
    info = store.info()
    if failures:
        info["failures"] = {n: store.stream(n).failures for n in info["streams"]}
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    out.print(
        f"[bold]{info['url']}[/] corpus={info['corpus']} schema=v{info['schema']} "
        f"samples={info['n_samples']} speakers={info['n_speakers']} "
        f"media: audio {info['media']['audio']}, video {info['media']['video']}"
    )
    out.print(f"classes: {', '.join(info['class_names'])}")
    for kind, st in info["label_stats"].items():
        if "plurality_counts" in st:
            counts = ", ".join(f"{c} {n}" for c, n in st["plurality_counts"].items())
            out.print(
                f"labels [bold]{kind}[/]: rated {st['rated']}, plurality {counts}, ties {st['ties']}; "
                f"multi-label {st['multilabel_clips']} ({100 * st['multilabel_rate']:.1f}%); "
                f"agreement {st['agreement']:.3f}, {st['mean_votes']:.1f} votes/clip",
                highlight=False,
            )
        else:
            out.print(f"labels [bold]{kind}[/]: {json.dumps(st, default=str)}", highlight=False)
    for name, p in info["protocols"].items():
        star = " (default)" if p["default"] else ""
        out.print(
            f"protocol [bold]{name}[/]{star}: {p['description']}; fold 0 clips {p['fold0_clips']}, "
            f"speakers {p['fold0_speakers']}",
            highlight=False,
        )
    for name, s in info["streams"].items():
        prov = s["provenance"]
        source = prov.get("weights") or prov.get("detector") or prov.get("source")
        out.print(
            f"stream [bold]{name}[/] {tuple(s['frame_shape'])} {s['dtype']}: committed={s['committed']} "
            f"failed={s['failed']} missing={s['missing']} from={source}"
        )
        for why, n in s["failure_reasons"].items():
            out.print(f"  failed {n}: {why}", highlight=False, markup=False)
        for sid, why in info.get("failures", {}).get(name, {}).items():
            out.print(f"  {sid}: {why}", highlight=False, markup=False)
    for name, why in info["damaged_streams"].items():
        out.print(f"[red]damaged[/] {name}: {why}", highlight=False)


@store_app.command("validate")
def store_validate(
    path: Annotated[str, typer.Argument(help="Store path or URL.")],
    deep: Annotated[bool, typer.Option(help="Also decode every chunk (verifies checksums).")] = False,
) -> None:
    """Check a store against the schema; exit 1 with a one-line reason when invalid."""
    from avx.store_schema import validate_store

    report = validate_store(path, deep=deep)
    for w in report.warnings:
        err.print(f"warning: {w}", highlight=False)
    if not report.ok:
        err.print(report.summary(), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(report.summary(), highlight=False)


@store_app.command("repair")
def store_repair(
    path: Annotated[str, typer.Argument(help="Local store path.")],
    stream: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Stream(s) to repair (default: every stream whose index is lost)."),
    ] = None,
) -> None:
    """Rebuild lost stream indexes from the parts' own records (rows, lengths, failures)."""
    from contextlib import ExitStack

    from avx.store_schema.locks import lock_streams
    from avx.store_schema.reader import INCOMPLETE, index_problem, stream_groups
    from avx.store_schema.writer import repair_index
    from avx.store_schema.zarrio import local_path, open_root

    root = open_root(local_path(path), writable=True)
    groups = stream_groups(root)
    names = list(stream) if stream else [
        n for n, g in groups.items() if not isinstance(g, str) and index_problem(g) not in (None, INCOMPLETE)
    ]  # fmt: skip
    if unknown := [n for n in names if n not in groups]:
        raise AvxError(f"{path}: no stream {', '.join(unknown)}; streams: {', '.join(groups)}")
    if not names:
        out.print(f"{path}: every stream index is readable; nothing to repair")
        return
    with ExitStack() as stack:
        lock_streams(stack, local_path(path), names)
        for name in names:
            out.print(repair_index(root, name).summary(), highlight=False)


@store_app.command("consolidate")
def store_consolidate(path: Annotated[Path, typer.Argument(help="Local store path.")]) -> None:
    """Refresh consolidated metadata (needed before serving a store over HTTP)."""
    from avx.store_schema import consolidate

    consolidate(path)
    out.print(f"consolidated {path}")


@app.command("extract")
def extract_cmd(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Option(help="Corpus name (see `avx corpus list`).")] = None,  # noqa: UP045
    root: Annotated[Optional[Path], typer.Option(help="Corpus root, in its official layout.")] = None,  # noqa: UP045
    store: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Store path (local); created from the corpus metadata if absent."),
    ] = None,
    backbone: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Backbone(s) to run; repeat or comma-separate (see --list)."),
    ] = None,
    preset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A paper's features (backbones, frames, crops; see `avx fuse presets`)."),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List backbones with output shape, rate and expected weights.")
    ] = False,
    weights: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="SPEC for all backbones or BACKBONE=SPEC: none | file | folder | hub id | named."),
    ] = None,
    opt: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--opt", help="Backbone setting KEY=VALUE or BACKBONE:KEY=VALUE (layers=0,12,24; hop=0.1; ...)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Frames per forward pass (default auto: 64 CPU; 256 GPU, halved on OOM)."),
    ] = None,
    amp: Annotated[bool, typer.Option(help="float16 autocast on CUDA (recorded as precision).")] = True,
    limit: Annotated[Optional[int], typer.Option(help="Process at most N pending samples.")] = None,  # noqa: UP045
    dtype: Annotated[Optional[str], typer.Option(help="float16 or float32 (default: per backbone).")] = None,  # noqa: UP045
    part_size: Annotated[
        int,
        typer.Option(
            help="Samples per committed part and task (with --workers N, fewer when needed"
            " to give each worker 2 tasks)."
        ),
    ] = 64,
    decode_workers: Annotated[int, typer.Option(help="Threads decoding and detecting faces ahead.")] = 2,
    workers: Annotated[int, typer.Option(help="Dask worker processes on this machine (0: none).")] = 0,
    threads: Threads = None,
    scheduler: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Address of a running Dask scheduler (tcp://host:8786); store must be shared."),
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Sample video frames at this rate (default: every frame).")
    ] = None,
    frames: Annotated[
        int | None, typer.Option(help="Sample N frames uniformly over the first --seconds.")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Window for --frames.")] = 3.6,
    crop_size: Annotated[
        int, typer.Option(help="Face crop side (0: the store's crops, else the backbones' largest input).")
    ] = 0,
    margin: Annotated[float, typer.Option(help="Margin around the face box (fraction of its side).")] = 0.25,
    align: Annotated[bool, typer.Option(help="Rotate crops so the eye line is horizontal.")] = True,
    min_face_size: Annotated[
        str,
        typer.Option(
            help="MTCNN's smallest face: pixels (40), or a fraction of the frame's shorter side"
            " (0.15h: much faster on frontal single-speaker video, see docs/extract.md)."
        ),
    ] = "20",
    missing_face: Annotated[
        str, typer.Option(help="Frames without a face: reuse (last box) or mark (zeros).")
    ] = "reuse",
    retry_failed: Annotated[bool, typer.Option(help="Retry samples recorded as failed.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the requested streams first and extract them again.")
    ] = False,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            help="Allow checkpoints that pickle Python objects (HSEmotion's enet_b2_8.pt); unpickling runs"
            " code from the file, so only for files you trust. Recorded in the stream's provenance."
        ),
    ] = False,
) -> None:
    """Add feature streams to a store; re-running the same command resumes.

    Exit status 0: every sample done; 3: the run finished but some samples failed
    (each with a recorded one-line reason); 2: a usage or input error stopped it.
    """
    if list_:
        _print_cards("backbones")
        return
    if preset:  # the paper's extraction settings, wherever no option was given
        from avx.fuse.presets import apply_preset

        chosen = {"backbone": backbone, "frames": frames, "seconds": seconds, "crop_size": crop_size}
        chosen = apply_preset(chosen, preset, _explicit(ctx), phase="extract")
        backbone, frames, seconds, crop_size = (
            chosen[k] for k in ("backbone", "frames", "seconds", "crop_size")
        )
    missing = [
        n
        for n, v in (("--corpus", corpus), ("--root", root), ("--store", store), ("--backbone", backbone))
        if not v
    ]
    if missing:
        raise AvxError(f"avx extract needs {', '.join(missing)} (or --list)")
    if missing_face not in ("reuse", "mark"):
        raise AvxError(f"unknown --missing-face '{missing_face}'; valid: reuse, mark")
    if dtype not in (None, "float16", "float32"):
        raise AvxError(f"unknown --dtype '{dtype}'; valid: float16, float32")
    from avx.corpora import CORPORA

    CORPORA.get(corpus)  # a typo is reported before torch is imported (seconds)
    from avx.extract.faces import FaceConfig
    from avx.extract.media import FrameSampling
    from avx.extract.run import PARTIAL_EXIT_CODE, ExtractOptions, extract

    if frames:
        sampling = FrameSampling("uniform", n=frames, seconds=seconds)
    elif fps:
        sampling = FrameSampling("fps", fps=fps)
    else:
        sampling = FrameSampling()
    options = ExtractOptions(
        backbones=_split_csv(backbone),
        weights=tuple(weights or ()),
        options=tuple(opt or ()),
        device=device,
        batch_size=batch_size,
        amp=amp,
        dtype=dtype,
        part_size=part_size,
        limit=limit,
        retry_failed=retry_failed,
        overwrite=overwrite,
        decode_workers=decode_workers,
        workers=workers,
        scheduler=scheduler,
        trust_pickle=trust_pickle,
        faces=FaceConfig(
            crop_size=crop_size,
            margin=margin,
            align=align,
            **_min_face(min_face_size),
            missing=missing_face,  # type: ignore[arg-type]
            sampling=sampling,
        ),
    )
    _threads(threads, workers)
    report = extract(corpus, root, store, options, console=err)  # type: ignore[arg-type]
    for name, c in report.streams.items():
        out.print(
            f"{name}: committed {c['committed_now']}, failed {c['failed_now']},"
            f" {c['frames_now']} frames ({report.frames_per_s(name):.1f} frames/s)",
            soft_wrap=True,
        )
    for name in report.skipped_streams:
        out.print(f"{name}: skipped (no input for it in this corpus)", soft_wrap=True)
    out.print(
        f"store {report.store}: {report.processed} sample(s) processed, {report.skipped} already done,"
        f" {report.failed} failed, {report.wall_s:.1f} s wall",
        soft_wrap=True,
    )
    if report.partial:
        err.print(
            f"partial: {report.failed} sample(s) failed; reasons: `avx store info --failures {report.store}`",
            highlight=False,
        )
        raise typer.Exit(PARTIAL_EXIT_CODE)


def _print_cards(kind: str, names_only: bool = False) -> None:
    """The one listing behind ``avx list KIND``, ``avx extract --list``, ``avx fuse methods``,
    ``avx fuse presets`` and ``avx corpus list``: the registry's cards as a table."""
    from avx.errors import UnknownNameError
    from avx.registry import card_table

    registries = {
        "backbones": "avx.extract.backbones:BACKBONES",
        "corpora": "avx.corpora:CORPORA",
        "methods": "avx.fuse.methods:METHODS",
        "presets": "avx.fuse.presets:PRESETS",
    }
    if kind not in registries:
        raise UnknownNameError("list", kind, list(registries))
    module, _, attr = registries[kind].partition(":")
    registry = getattr(importlib.import_module(module), attr)
    if names_only:
        for name in registry.names():
            out.print(name, highlight=False)
        return
    out.print(card_table(registry.cards()))


def _kv(items: list[str] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in items or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise AvxError(f"--set takes KEY=VALUE, got '{kv}'")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _floats(values: list[str] | None) -> list[float]:
    return [float(v) for v in _split_csv(values)]


Opt = Optional  # typer needs Optional (not X | None) inside Annotated options


def _explicit(ctx: typer.Context) -> set[str]:
    """Options the user gave on the command line (a preset fills in only the others)."""
    given = ("COMMANDLINE", "ENVIRONMENT")  # by name: typer may vendor its own click
    return {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", None) in given}


_END_TO_END_ONLY = (
    "backbone_weights", "backbone_opt", "freeze", "backbone_lr", "augment", "gradient_checkpointing",
    "backbone_bn",
)  # fmt: skip


@fuse_app.command("train")
def fuse_train(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(help="Store path or URL.")],
    streams: Annotated[
        str,
        typer.Option(
            help="Comma-separated streams; layers with @: audio/wavlm-large@all,video/efficientface."
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Run directory (or trials directory with --trials).")
    ],
    method: Annotated[
        Opt[str], typer.Option(help="Fusion method (see `avx fuse methods`); implied by --preset.")
    ] = None,
    preset: Annotated[
        Opt[str],
        typer.Option(help="A paper's training recipe (see `avx fuse presets`); explicit options win."),
    ] = None,
    labels: Annotated[
        str,
        typer.Option(
            help="voice | face | av | intended | consensus | a dimension (valence[,arousal]) | multilabel."
        ),
    ] = "av",
    train_labels: Annotated[
        Opt[str],
        typer.Option(help="Label source the loss trains on (selection and scores stay --labels)."),
    ] = None,
    labels_stage1: Annotated[
        Opt[str],
        typer.Option(
            "--labels-stage1",
            help="twostage: stage-1 label sources per modality, e.g. audio=voice+av,video=face+av.",
        ),
    ] = None,
    modalities: Annotated[
        Opt[str], typer.Option(help="Keep only --streams of these modalities (audio,video,text).")
    ] = None,
    task: Annotated[str, typer.Option(help="multiclass | multilabel | regression.")] = "multiclass",
    level: Annotated[str, typer.Option(help="Dimensional targets: auto | sequence | frame.")] = "auto",
    soft_targets: Annotated[
        bool,
        typer.Option(help="Train on vote distributions (multilabel), smoothed 0.94p + 0.01 (multiclass)."),
    ] = False,
    bins: Annotated[str, typer.Option(help="Thresholds binning a dimension into 3 classes.")] = "-0.05,0.05",
    length: Annotated[
        Opt[list[str]], typer.Option(help="Length policy: truncate:N | pad:N | resample:N, or STREAM=POLICY.")
    ] = None,
    align: Annotated[
        Opt[str], typer.Option(help="labels | STREAM | rate:R (default: as the method needs).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    optimizer: Annotated[str, typer.Option(help="adam | adamw | sgd.")] = "adam",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 1e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    betas: Annotated[str, typer.Option(help="Adam/AdamW betas B1,B2.")] = "0.9,0.999",
    scheduler: Annotated[
        str, typer.Option(help="none | cosine-restarts | warmup-cosine | step | plateau.")
    ] = "none",
    t0: Annotated[int, typer.Option(help="cosine-restarts: first period (epochs).")] = 1,
    t_mult: Annotated[int, typer.Option(help="cosine-restarts: period multiplier.")] = 2,
    warmup: Annotated[int, typer.Option(help="warmup-cosine: warm-up epochs.")] = 1,
    step_size: Annotated[int, typer.Option(help="step: epochs per decay; plateau: patience.")] = 10,
    gamma: Annotated[float, typer.Option(help="step / plateau decay factor.")] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Max gradient L2 norm (0: off).")] = 0.0,
    patience: Annotated[
        int, typer.Option(help="Early stopping on dev after N epochs without gain (0: off).")
    ] = 0,
    select_metric: Annotated[
        Opt[str], typer.Option(help="Dev metric for model selection (default per task).")
    ] = None,
    class_weights: Annotated[str, typer.Option(help="none | inverse | effective[:beta].")] = "none",
    sampling: Annotated[str, typer.Option(help="none | over | under (multiclass).")] = "none",
    regression_loss: Annotated[str, typer.Option(help="ccc | ccc+mse | mse | l1.")] = "ccc",
    dropout: Annotated[
        str, typer.Option(help="Modality dropout while training: none | softhard | noise | prob:P.")
    ] = "none",
    threshold: Annotated[
        Opt[str],
        typer.Option(help="Multilabel decision: default share > 1/C; a probability; or 'tune' on dev."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, batch order and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Threads = None,
    amp: Annotated[bool, typer.Option(help="float16 autocast on CUDA.")] = False,
    protocol: Annotated[
        Opt[str], typer.Option(help="Stored evaluation protocol (default: the store's).")
    ] = None,
    fold: Annotated[int, typer.Option(help="Fold of the protocol.")] = 0,
    trials: Annotated[int, typer.Option(help="Run folds 0..K-1 and write a mean ± std table.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            help="Run seeds --seed..--seed+N-1 on --fold and write a mean ± std table (OUT/seed-S/)."
        ),
    ] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from RUN/checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run --out holds (cleared first); without it, it is refused.")
    ] = False,
    keep_checkpoint: Annotated[
        bool, typer.Option(help="Keep RUN/checkpoint after the run finishes (removed by default).")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of test clips for the headline metric's 95% CI (0: off).")
    ] = 1000,
    tensorboard: Annotated[bool, typer.Option(help="Log to RUN/tensorboard.")] = False,
    memory_gb: Annotated[
        float, typer.Option(help="Load features once when smaller, else stream by chunks.")
    ] = 8.0,
    option: Annotated[
        Opt[list[str]],
        typer.Option("--set", help="Method option KEY=VALUE (JSON value), e.g. --set hidden=64."),
    ] = None,
    end_to_end: Annotated[
        Opt[str],
        typer.Option(
            "--end-to-end",
            help="Train backbones with the method from the stored crops/waveform: MODALITY=BACKBONE[,...],"
            " e.g. video=efficientface,audio=wavlm-base-plus, with video/faces,audio/waveform in --streams.",
        ),
    ] = None,
    backbone_weights: Annotated[
        Opt[list[str]],
        typer.Option(help="End to end: MODALITY=PATH|HUB_ID, weights instead of the cached stream's."),
    ] = None,
    backbone_opt: Annotated[
        Opt[list[str]], typer.Option(help="End to end: backbone option MODALITY:KEY=VALUE (video:size=112).")
    ] = None,
    freeze: Annotated[
        str,
        typer.Option(help="End to end: none | all | N (first N blocks) | feature-extractor, or MODALITY=..."),
    ] = "none",
    backbone_lr: Annotated[
        Opt[float], typer.Option(help="End to end: learning rate of backbone parameters (default lr/10).")
    ] = None,
    augment: Annotated[
        bool, typer.Option(help="End to end: per-clip flip and ±10° rotation of the crops while training.")
    ] = False,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="End to end: recompute speech-model activations in backward (less memory).")
    ] = False,
    trust_pickle: Annotated[
        bool, typer.Option(help="End to end: allow backbone checkpoints that unpickle Python objects.")
    ] = False,
    backbone_bn: Annotated[
        str,
        typer.Option(help="End to end: BatchNorm of trained backbones: frozen (running stats) | train."),
    ] = "frozen",
) -> None:
    """Train a fusion method; writes RUN/metrics.json, config.json, model.json, model.safetensors,
    normalizer.safetensors, predictions.csv (end to end: also RUN/backbones/)."""
    if method is None and preset is None:
        raise AvxError("give --method (see `avx fuse methods`) or --preset (see `avx fuse presets`)")
    lo, _, hi = bins.partition(",")
    thr: float | str | None = threshold
    if threshold not in (None, "tune"):
        try:
            thr = float(threshold)
        except ValueError:
            raise AvxError(f"--threshold takes a number or 'tune', not '{threshold}'") from None
    try:
        b1, b2 = (float(b) for b in betas.split(","))
    except ValueError:
        raise AvxError(f"--betas takes two numbers B1,B2, not '{betas}'") from None
    if "://" not in store and not Path(store).exists():  # as open_store says it, without importing zarr
        raise AvxError(f"{store}: no such store (the path does not exist)")
    from avx.fuse.data import DataConfig  # torch: after the checks that need none (usage errors in < 1 s)
    from avx.fuse.end2end import EndToEndConfig
    from avx.fuse.presets import apply_preset
    from avx.fuse.runs import markdown, run_trials, trials_table
    from avx.fuse.train import TrainConfig, train

    config = TrainConfig(
        store=store,
        method=method or "",
        data=DataConfig(
            streams=_split_csv([streams]),
            labels=labels,
            train_labels=train_labels,
            modalities=_split_csv([modalities]) if modalities else (),
            task=task,
            level=level,
            bins=(float(lo), float(hi)),
            soft_targets=soft_targets,
            protocol=protocol,
            fold=fold,
            length=tuple(length or ()),
            align=align,
            memory_gb=memory_gb,
        ),
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        betas=(b1, b2),
        scheduler=scheduler,
        t0=t0,
        t_mult=t_mult,
        warmup=warmup,
        step_size=step_size,
        gamma=gamma,
        grad_clip=grad_clip,
        patience=patience,
        select_metric=select_metric,
        class_weights=class_weights,
        sampling=sampling,
        regression_loss=regression_loss,
        dropout=dropout,
        threshold=thr,
        seed=seed,
        device=device,
        amp=amp,
        tensorboard=tensorboard,
        bootstrap=bootstrap,
        method_config={**_kv(option), **({"stage1": labels_stage1} if labels_stage1 else {})},
        end_to_end=None
        if end_to_end is None
        else EndToEndConfig(
            backbones=_split_csv([end_to_end]),
            weights=tuple(backbone_weights or ()),
            options=tuple(backbone_opt or ()),
            freeze=freeze,
            backbone_lr=backbone_lr,
            augment=augment,
            gradient_checkpointing=gradient_checkpointing,
            trust_pickle=trust_pickle,
            batchnorm=backbone_bn,
        ),
    )
    if end_to_end is None and (explicit := _explicit(ctx) & set(_END_TO_END_ONLY)):
        raise AvxError(f"--{sorted(explicit)[0].replace('_', '-')} applies to --end-to-end training only")
    if preset:
        config = apply_preset(config, preset, _explicit(ctx))
    method = config.method
    _threads(threads)
    if trials or seeds:
        summary = run_trials(
            config,
            out_dir,
            trials,
            seeds=seeds,
            console=err,
            resume=resume,
            overwrite=overwrite,
            keep_checkpoint=keep_checkpoint,
        )
        out.print(markdown(trials_table(summary)), highlight=False, soft_wrap=True)
        out.print(f"wrote {out_dir}/trials.md, trials.csv, trials.json and {'seed' if seeds else 'fold'}-*/")
        return
    from avx.fuse.runs import metrics_table

    metrics = train(
        config, out_dir, console=err, resume=resume, overwrite=overwrite, keep_checkpoint=keep_checkpoint
    )
    out.print(metrics_table(metrics, title=f"{method} on {store} ({config.data.labels}, {config.data.task})"))
    out.print(
        f"wrote {out_dir}/metrics.json, config.json, model.json, model.safetensors, predictions.csv",
        soft_wrap=True,
    )


@fuse_app.command("convert")
def fuse_convert(
    run: Annotated[Path, typer.Argument(help="Run or trials directory written by an older avx.")],
) -> None:
    """Rewrite an older run's pickles (model.pt, last.pt) as JSON + safetensors.

    Unpickling runs any code the files carry: convert only runs from a source you trust.
    Afterwards the folder holds no pickle and loads safely anywhere.
    """
    from avx.fuse.run_folder import convert_run

    for f in convert_run(run):
        out.print(f"converted {f}")


@fuse_app.command("eval")
def fuse_eval(
    run: Annotated[Path, typer.Argument(help="Run directory written by `avx fuse train`.")],
    store: Annotated[Opt[str], typer.Option(help="Evaluate on another store (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    missing: Annotated[
        Opt[list[str]], typer.Option(help="Modality (audio|video|text) or stream absent.")
    ] = None,
    missing_as: Annotated[
        Opt[str],
        typer.Option(help="Present an absent modality as 'mask' or 'zeros' (default: the method's)."),
    ] = None,
    noise: Annotated[
        Opt[list[str]], typer.Option(help="Modality or stream replaced by N(0,1) noise.")
    ] = None,
    snr: Annotated[Opt[float], typer.Option(help="With --noise: add noise at this SNR (dB) instead.")] = None,
    mask_frames: Annotated[
        Opt[list[str]], typer.Option(help="Zero this fraction of frames (0.1..0.9); writes RUN/masking.csv.")
    ] = None,
    modality: Annotated[
        Opt[str], typer.Option(help="With --mask-frames: mask only this modality (audio|video|text|stream).")
    ] = None,
    against: Annotated[
        Opt[Path],
        typer.Option(help="Trials directory to t-test against (paired, two-tailed, over folds; * p < 0.05)."),
    ] = None,
    occlude: Annotated[Opt[list[str]], typer.Option(help="Occlude this fraction of face crops.")] = None,
    settings: Annotated[
        Opt[str],
        typer.Option(
            help="Modality table: the modalities kept per row by letter (a, v, t) and 'mean', e.g."
            " 'av,a,v,mean' (SFAV's table); 'all,mean': every subset of the run's modalities."
        ),
    ] = None,
    absent: Annotated[
        str,
        typer.Option(help="With --settings: the dropped modalities 'missing' or 'noise' (N(0,1))."),
    ] = "missing",
    seed: Annotated[int, typer.Option(help="Seed of the perturbations.")] = 0,
    ece_bins: Annotated[int, typer.Option(help="Equal-width confidence bins for ECE.")] = 15,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Threads = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    groups: Annotated[
        Opt[str],
        typer.Option(
            help="Also tabulate test predictions per demographic group (sex,race,age): macro-F1 (CI),"
            " bias, DPD, EOD; writes RUN/groups-*.md|csv."
        ),
    ] = None,
) -> None:
    """Score a run under test-time conditions; writes RUN/eval.json, eval.csv, eval.md."""
    from avx.fuse.run_files import check_loadable

    trials = (run / "trials.json").exists()  # a --trials directory: every fold, then mean ± std
    if not trials:
        check_loadable(run)  # before torch is imported: a wrong path is answered at once
        if against is not None:
            raise AvxError(f"--against compares fold by fold: {run} is not a --trials directory")
    elif against is not None and not (against / "trials.json").exists():
        raise AvxError(f"--against {against}: not a --trials directory (no trials.json)")
    if modality is not None and not mask_frames:
        raise AvxError("--modality selects what --mask-frames masks: give --mask-frames too")
    from avx.fuse.robustness import evaluate_run, evaluate_trials

    _threads(threads)
    kw = dict(
        store=store,
        split=split,
        modality_table=tuple(_split_csv([settings])) if settings else (),
        absent=absent,
        device=device,
        batch_size=batch_size,
        seed=seed,
        ece_bins=ece_bins,
        missing=list(_split_csv(missing)),
        missing_as=missing_as,
        noise=list(_split_csv(noise)),
        snr=snr,
        mask_frames=_floats(mask_frames),
        mask_modality=modality,
        occlude=_floats(occlude),
        console=err,
    )
    res = evaluate_trials(run, against=against, **kw) if trials else evaluate_run(run, **kw)
    out.print(res["markdown"], highlight=False, soft_wrap=True)
    extra = ", masking.csv" if mask_frames else ""
    out.print(f"wrote {run}/eval.json, eval.csv, eval.md{extra}" + (" (and each fold's)" if trials else ""))
    if groups:
        from avx.fuse.runs import markdown
        from avx.fuse.tables import group_table, pooled_test

        what = "pooled test predictions of every fold" if trials else "test predictions"
        pooled = pooled_test(run)
        for g in _split_csv([groups]):
            shown, numbers = group_table({run.name: pooled}, g)
            md = f"Per {g} group ({what}): macro-F1 (95% CI), macro-F1 bias x 100 (CI), DPD, EOD\n\n"
            md += markdown(shown)
            out.print("\n" + md, highlight=False, soft_wrap=True)
            (run / f"groups-{g}.md").write_text(md + "\n")
            numbers.to_csv(run / f"groups-{g}.csv", index=False)
        out.print(f"wrote {run}/groups-*.md, groups-*.csv")


@fuse_app.command("predict")
def fuse_predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by `avx fuse train`.")],
    store: Annotated[Opt[str], typer.Option(help="Store to predict on (default: the run's).")] = None,
    out_dir: Annotated[
        Opt[Path], typer.Option("--out", help="Output directory (default RUN/predict).")
    ] = None,
    split: Annotated[str, typer.Option(help="train | dev | test | all.")] = "all",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Threads = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
) -> None:
    """Write predictions with per-stream outputs and per-frame fusion weights / uncertainties."""
    from avx.fuse.run_files import check_loadable

    check_loadable(run)  # before torch is imported
    from avx.fuse.robustness import predict_run
    from avx.threads import announce

    _threads(threads)
    announce(err)
    path = predict_run(run, store=store, out=out_dir, split=split, device=device, batch_size=batch_size)
    out.print(f"wrote {path}/predictions.csv, frames.npz")


@fuse_app.command("compare")
def fuse_compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run or trials directories; the first is the reference.")
    ],
    metric: Annotated[
        Opt[str],
        typer.Option(
            help="Metric, or several comma-separated, shown as mean ± std (default: the task's headline"
            " metric); LDDU's Table 1: jaccard_accuracy,micro_precision,micro_recall,micro_f1."
        ),
    ] = None,
    csv: Annotated[Opt[Path], typer.Option(help="Also write the table as CSV.")] = None,
    tables: Annotated[
        bool,
        typer.Option(
            "--tables",
            help="Paper-style tables on pooled test predictions: scores with bootstrap CIs and"
            " significance vs --reference, per-class F1 and Brier, per-group (--groups) fairness.",
        ),
    ] = False,
    names: Annotated[Opt[str], typer.Option(help="With --tables: row labels, comma-separated.")] = None,
    reference: Annotated[
        Opt[str], typer.Option(help="With --tables: run (label or path) to test against (default: first).")
    ] = None,
    groups: Annotated[
        Opt[str], typer.Option(help="With --tables: demographic columns, e.g. sex,race,age.")
    ] = None,
    metrics: Annotated[str, typer.Option(help="With --tables: the score columns.")] = "macro_f1,weighted_f1",
    bootstrap: Annotated[int, typer.Option(help="With --tables: bootstrap resamples.")] = 1000,
    out_dir: Annotated[
        Opt[Path], typer.Option("--out", help="With --tables: write each table as .md and .csv here.")
    ] = None,
) -> None:
    """Side-by-side test results with bootstrap CIs and paired t-test p-values vs the first run."""
    import pandas as pd

    from avx.fuse.runs import compare_runs, markdown

    if tables:
        _paper_tables(runs, names, reference, groups, metrics, bootstrap, out_dir)
        return
    table = compare_runs(list(runs), metric)
    several = "std" not in table.columns
    shown = table.astype({"p_vs_first": object})
    if several:  # one "mean ± std" cell per metric
        for c in [c for c in table.columns if f"{c} std" in table.columns]:
            shown[c] = [
                f"{v:.3f} ± {sd:.3f}" if sd == sd else f"{v:.3f}"
                for v, sd in zip(table[c], table[f"{c} std"], strict=True)
            ]
            shown = shown.drop(columns=f"{c} std")
    else:
        shown = shown.astype({"std": object})
    for i, row in table.iterrows():  # say why a cell is empty instead of printing nan
        if row["folds"] < 2 and not several:
            shown.loc[i, "std"] = "needs ≥ 2 trials"
        if i == 0:
            shown.loc[i, "p_vs_first"] = "reference"
        elif pd.isna(row["p_vs_first"]):
            shown.loc[i, "p_vs_first"] = "needs ≥ 2 common folds"
    out.print(markdown(shown), highlight=False, soft_wrap=True)
    if csv:
        table.to_csv(csv, index=False)


def _paper_tables(
    runs: list[Path],
    names: str | None,
    reference: str | None,
    groups: str | None,
    metrics: str,
    bootstrap: int,
    out_dir: Path | None,
) -> None:
    """``avx fuse compare --tables``: see :mod:`avx.fuse.tables`."""
    from avx.fuse import tables as T
    from avx.fuse.runs import markdown

    labels = list(_split_csv([names])) if names else [p.name for p in runs]
    if len(labels) != len(runs):
        raise AvxError(f"--names gives {len(labels)} labels for {len(runs)} runs")
    by_label = dict(zip(labels, runs, strict=True))
    ref = labels[0]
    if reference is not None:
        hits = [lb for lb, p in by_label.items() if reference in (lb, str(p))]
        if not hits:
            raise AvxError(f"--reference {reference}: not one of the runs' labels or paths")
        ref = hits[0]
    kw = {"n_boot": bootstrap}
    by_label = {lb: T.pooled_test(p) for lb, p in by_label.items()}  # each run read once, for every table
    parts = [
        ("results", f"Scores on pooled test predictions (bootstrap 95% CI); * p < 0.05 vs {ref}",
         T.results_table(by_label, reference=ref, metrics=tuple(_split_csv([metrics])), **kw)),
        ("classes", "F1 per class (bootstrap 95% CI) and the Brier score (mean over classes)",
         T.per_class_table(by_label, **kw)),
    ]  # fmt: skip
    for g in _split_csv([groups]) if groups else ():
        parts.append(
            (f"groups-{g}", f"Per {g} group: macro-F1 (CI), macro-F1 bias x 100 (CI), DPD, EOD",
             T.group_table(by_label, g, **kw))
        )  # fmt: skip
    for name, title, (shown, numbers) in parts:
        md = f"{title}\n\n{markdown(shown)}"
        out.print(md + "\n", highlight=False, soft_wrap=True)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.md").write_text(md + "\n")
            numbers.to_csv(out_dir / f"{name}.csv", index=False)
    if out_dir is not None:
        out.print(f"wrote {', '.join(n for n, _, _ in parts)} (.md, .csv) to {out_dir}")


@fuse_app.command("methods")
def fuse_methods() -> None:
    """Registered fusion methods: tasks, number of streams, per-frame support (= `avx list methods`)."""
    _print_cards("methods")


@fuse_app.command("plot")
def fuse_plot(
    frames: Annotated[
        Path, typer.Argument(help="Directory written by `avx fuse predict` (or its frames.npz).")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Image to write (.png, .pdf, .svg).")],
    sample_id: Annotated[Opt[str], typer.Option("--id", help="Sample to draw.")] = None,
    output: Annotated[int, typer.Option(help="Output (dimension or class) to draw.")] = 0,
    masking: Annotated[
        bool, typer.Option(help="Draw RUN/masking.csv (`avx fuse eval --mask-frames`): VAVL Fig. 2.")
    ] = False,
    metric: Annotated[Opt[str], typer.Option(help="With --masking: the metric (default: headline).")] = None,
) -> None:
    """Per-frame predictions and fusion weights of one sample over time (COLD Figs. 5-6),
    or with --masking a run's score per frame-masking rate, fused and per head (VAVL Fig. 2)."""
    from avx.fuse.plots import plot_frames, plot_masking

    if masking:
        out.print(f"wrote {plot_masking(frames, out_path, metric=metric)}")
        return
    if sample_id is None:
        raise AvxError("give --id SAMPLE (or --masking to draw a run's masking curves)")
    out.print(f"wrote {plot_frames(frames, sample_id, out_path, output=output)}")


@fuse_app.command("sweep")
def fuse_sweep(
    path: Annotated[Path, typer.Argument(help="The sweep spec (TOML); with --status, the sweep folder.")],
    out_dir: Annotated[Opt[Path], typer.Option("--out", help="Sweep folder (cells, sweep.json).")] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Print counts of done, failed and pending cells.")
    ] = False,
    workers: Annotated[
        Opt[int],
        typer.Option(help="Local Dask workers, one cell and one GPU each (default: the spec's, or 1)."),
    ] = None,
    scheduler: Annotated[Opt[str], typer.Option(help="An existing Dask scheduler, tcp://HOST:PORT.")] = None,
    slurm: Annotated[
        bool, typer.Option(help="Run cells as Slurm jobs (dask-jobqueue; pip install 'avx[cluster]').")
    ] = False,
    slurm_opt: Annotated[
        Opt[list[str]],
        typer.Option(help="Slurm option KEY=VALUE: queue, gpus, memory, walltime, cores, account, jobs."),
    ] = None,
    override: Annotated[
        Opt[list[str]],
        typer.Option(help="Change the spec: TABLE.KEY=VALUE (TOML value), e.g. train.epochs=20."),
    ] = None,
) -> None:
    """Run a sweep: every method x streams x labels x grid value x trial of SPEC as an ordinary
    run folder, on Dask; re-running resumes (finished cells are skipped)."""
    from avx.fuse.sweep.execute import run_sweep
    from avx.fuse.sweep.execute import status as sweep_status
    from avx.fuse.sweep.spec import load_spec

    if status:
        st = sweep_status(path)
        out.print(
            f"{path}: {st['cells']} cells: {st['done']} done, {st['failed']} failed, {st['pending']} pending"
        )
        for f in st["failures"]:
            out.print(f"  failed {f['cell']}: {f['error']}", highlight=False, soft_wrap=True)
        return
    if out_dir is None:
        raise AvxError("give --out SWEEP (the folder the cells go in)")
    spec = load_spec(path, override or ())
    _threads(None)
    st = run_sweep(
        spec, out_dir, workers=workers, scheduler=scheduler,
        slurm=_kv(slurm_opt) if slurm else None,
        console=err,
    )  # fmt: skip
    out.print(
        f"{out_dir}: {st['cells']} cells: {st['done']} done, {st['failed']} failed, {st['pending']} pending"
    )
    for f in st["failures"]:
        out.print(f"  failed {f['cell']}: {f['error']}", highlight=False, soft_wrap=True)


@fuse_app.command("report")
def fuse_report(
    sweep: Annotated[Path, typer.Argument(help="A sweep folder (avx fuse sweep --out).")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for results.md/.csv, report.html, provenance.json.")
    ],
    reference: Annotated[
        Opt[str], typer.Option(help="Method the t-tests compare against (default: the spec's).")
    ] = None,
    metric: Annotated[
        Opt[str], typer.Option(help="Table metric (default: the spec's, or the task's headline).")
    ] = None,
    n_boot: Annotated[
        Opt[int], typer.Option(help="Bootstrap resamples per table cell (default 1000).")
    ] = None,
) -> None:
    """A sweep's results as a paper prints them: results.md and results.csv (mean ± std, bootstrap
    interval, Holm-corrected paired t-tests), a self-contained report.html, provenance.json."""
    from avx.fuse.sweep.report import write_report

    files = write_report(sweep, out_dir, reference=reference, metric=metric, n_boot=n_boot)
    out.print(files["results.md"].read_text(), highlight=False, soft_wrap=True, markup=False)
    out.print(f"wrote {', '.join(str(f) for f in files.values())}", soft_wrap=True)


@fuse_app.command("presets")
def fuse_presets() -> None:
    """Recipes from the papers: method, settings, features, source (= `avx list presets`)."""
    _print_cards("presets")


@corpus_app.command("list")
def corpus_list() -> None:
    """Registered corpora: modalities, label types and expected layout (= `avx list corpora`)."""
    _print_cards("corpora")


@app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="backbones | corpora | methods | presets")],
    names: Annotated[bool, typer.Option("--names", help="Names only, one per line (for scripts).")] = False,
) -> None:
    """List what is registered, with what each entry states about itself."""
    _print_cards(kind, names)


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for the demo corpus, store and runs.")
    ] = Path("avx-demo"),
    clips: Annotated[
        int, typer.Option(help="Number of synthetic clips (6 classes x 12 speakers cycle).")
    ] = 144,
    seed: Annotated[int, typer.Option(help="Seed for the corpus and the training run.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs (default: 20; 10 with --trimodal).")] = 0,
    trimodal: Annotated[
        bool,
        typer.Option(
            "--trimodal",
            help="Instead: a synthetic CMU-MOSEI-layout corpus (text, audio, video features; six emotions,"
            " multi-label, cued per modality), its store, and LDDU, CARAT, MulT, late fusion.",
        ),
    ] = False,
    threads: Threads = None,
) -> None:
    """Generate the synthetic demo corpus, extract, validate, train late/context/MulT fusion, compare."""
    from avx.demo.pipeline import run_demo, run_mmer_demo

    _threads(threads)
    if trimodal:
        run_mmer_demo(out_dir, seed=seed, epochs=epochs or 10, out=out, err=err)
        return
    run_demo(out_dir, clips=clips, seed=seed, epochs=epochs or 20, out=out, err=err)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit 2."""
    warnings.showwarning = lambda message, category, *a, **k: err.print(
        f"warning: {message}", highlight=False, soft_wrap=True
    )
    try:
        app()
    except AvxError as e:
        err.print(f"error: {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
