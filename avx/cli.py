"""The ``avx`` command line: one typer app per command group, each command a thin
wrapper around one Python API call.

Errors the user can fix (:class:`~avx.errors.AvxError`) print one line and exit 2;
``avx store validate`` exits 1 for an invalid store.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

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


def _split_csv(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v for item in values or [] for v in item.split(",") if v)


@store_app.command("init")
def store_init(
    corpus: Annotated[str, typer.Option(help="Corpus name (see `avx corpus list`).")],
    root: Annotated[
        Path, typer.Option(help="Corpus root, in its official layout (manifest: the CSV/Parquet).")
    ],
    store: Annotated[Path, typer.Option(help="Store path to create (e.g. cremad.zarr).")],
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
) -> None:
    """Summarise a store: corpus, label statistics, protocols, and every stream with its provenance."""
    from avx.store_schema import open_store

    info = open_store(path).info()
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


@store_app.command("consolidate")
def store_consolidate(path: Annotated[Path, typer.Argument(help="Local store path.")]) -> None:
    """Refresh consolidated metadata (needed before serving a store over HTTP)."""
    from avx.store_schema import consolidate

    consolidate(path)
    out.print(f"consolidated {path}")


@app.command("extract")
def extract_cmd(
    corpus: Annotated[Optional[str], typer.Option(help="Corpus name (see `avx corpus list`).")] = None,  # noqa: UP045
    root: Annotated[Optional[Path], typer.Option(help="Corpus root, in its official layout.")] = None,  # noqa: UP045
    store: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Store path; created from the corpus metadata if absent."),
    ] = None,
    backbone: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Backbone(s) to run; repeat or comma-separate (see --list)."),
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
    part_size: Annotated[int, typer.Option(help="Samples per committed part (and per task).")] = 64,
    decode_workers: Annotated[int, typer.Option(help="Threads decoding and detecting faces ahead.")] = 2,
    workers: Annotated[int, typer.Option(help="Dask worker processes on this machine (0: none).")] = 0,
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
    min_face_size: Annotated[int, typer.Option(help="MTCNN minimum face size in pixels.")] = 20,
    missing_face: Annotated[
        str, typer.Option(help="Frames without a face: reuse (last box) or mark (zeros).")
    ] = "reuse",
    retry_failed: Annotated[bool, typer.Option(help="Retry samples recorded as failed.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the requested streams first and extract them again.")
    ] = False,
) -> None:
    """Add feature streams to a store; re-running the same command resumes.

    Exit status 0: every sample done; 3: the run finished but some samples failed
    (each with a recorded one-line reason); 2: a usage or input error stopped it.
    """
    from avx.extract.faces import FaceConfig
    from avx.extract.media import FrameSampling
    from avx.extract.run import PARTIAL_EXIT_CODE, ExtractOptions, extract

    if list_:
        _print_backbones()
        return
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
        faces=FaceConfig(
            crop_size=crop_size,
            margin=margin,
            align=align,
            min_face_size=min_face_size,
            missing=missing_face,  # type: ignore[arg-type]
            sampling=sampling,
        ),
    )
    report = extract(corpus, root, store, options, console=err)  # type: ignore[arg-type]
    for name, c in report.streams.items():
        out.print(
            f"{name}: committed {c['committed_now']}, failed {c['failed_now']},"
            f" {c['frames_now']} frames ({report.frames_per_s(name):.1f} frames/s)"
        )
    for name in report.skipped_streams:
        out.print(f"{name}: skipped (no input for it in this corpus)")
    out.print(
        f"store {report.store}: {report.processed} sample(s) processed, {report.skipped} already done,"
        f" {report.failed} failed, {report.wall_s:.1f} s wall"
    )
    if report.partial:
        err.print(f"partial: {report.failed} sample(s) failed; see `avx store info` for reasons")
        raise typer.Exit(PARTIAL_EXIT_CODE)


def _print_backbones() -> None:
    from rich.markup import escape
    from rich.table import Table

    from avx.extract.backbones import backbone_info

    table = Table(box=None)
    table.add_column("name", no_wrap=True)
    for col in ("modality", "output per frame", "rate", "weights"):
        table.add_column(col)
    for i in backbone_info():
        table.add_row(*(escape(x) for x in (i.name, i.modality, i.shape, i.rate, i.weights)))
    out.print(table)


@fuse_app.command("train")
def fuse_train(
    store: Annotated[str, typer.Option(help="Store path or URL.")],
    method: Annotated[str, typer.Option(help="Fusion method (see `avx list methods`).")],
    streams: Annotated[str, typer.Option(help="Comma-separated streams, e.g. audio/mfcc,video/mobilenetv2.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory for metrics, config, checkpoint.")],
    labels: Annotated[str, typer.Option(help="voice | face | av | intended | consensus.")] = "av",
    task: Annotated[str, typer.Option(help="multiclass.")] = "multiclass",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and batch order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    protocol: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Evaluation protocol stored in the store (default: the store's default)."),
    ] = None,
    fold: Annotated[int, typer.Option(help="Fold of the protocol.")] = 0,
    option: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--set", help="Method option KEY=VALUE (JSON value), e.g. --set hidden_size=64."),
    ] = None,
) -> None:
    """Train a fusion method; writes RUN/metrics.json, RUN/config.json and RUN/model.pt."""
    from avx.fuse.data import DataConfig
    from avx.fuse.train import TrainConfig, metrics_rows, results_table, train

    method_config = {}
    for kv in option or []:
        k, _, v = kv.partition("=")
        try:
            method_config[k] = json.loads(v)
        except json.JSONDecodeError:
            method_config[k] = v
    config = TrainConfig(
        store=store,
        method=method,
        data=DataConfig(
            streams=_split_csv([streams]), labels=labels, task=task, protocol=protocol, fold=fold
        ),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        method_config=method_config,
    )
    metrics = train(config, out_dir, console=err)
    out.print(results_table(metrics_rows(metrics), title=f"{method} on {store} ({labels} labels)"))
    out.print(f"wrote {out_dir}/metrics.json, config.json, model.pt")


@corpus_app.command("list")
def corpus_list() -> None:
    """Registered corpora: modalities, label types and the layout avx expects, one line each."""
    from avx.corpora import CORPORA

    for name in CORPORA.names():
        i = CORPORA.info(name)
        out.print(f"[bold]{name}[/]  modalities: {i.modalities} | labels: {i.labels} | layout: {i.layout}")


@app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="corpora | backbones | methods")],
) -> None:
    """List registered corpora, backbones or fusion methods."""
    from avx.corpora import CORPORA
    from avx.errors import UnknownNameError
    from avx.extract.backbones import list_backbones
    from avx.fuse.methods import METHODS

    kinds = {"corpora": CORPORA.names, "backbones": list_backbones, "methods": METHODS.names}
    if kind not in kinds:
        raise UnknownNameError("list", kind, list(kinds))
    for name in kinds[kind]():
        out.print(name)


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for the demo corpus, store and runs.")
    ] = Path("avx-demo"),
    clips: Annotated[
        int, typer.Option(help="Number of synthetic clips (6 classes x 12 speakers cycle).")
    ] = 144,
    seed: Annotated[int, typer.Option(help="Seed for the corpus and the training run.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
) -> None:
    """Generate the synthetic demo corpus, extract, validate, train late fusion, print results."""
    from avx.demo.pipeline import run_demo

    run_demo(out_dir, clips=clips, seed=seed, epochs=epochs, out=out, err=err)


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
