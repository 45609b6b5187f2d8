"""``avx demo``: both phases on the synthetic corpus, through the same API users call:
extraction, validation, then late, context and MulT fusion and their comparison table.

Re-running with the same ``--out`` reuses the corpus, resumes (finds complete) the store
and retrains, so an interrupted demo simply continues.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from avx.demo.corpus import make_demo_corpus
from avx.errors import StoreError
from avx.extract.faces import FaceConfig
from avx.extract.media import FrameSampling
from avx.extract.run import ExtractOptions, extract
from avx.fuse.data import DataConfig
from avx.fuse.runs import comparison_table
from avx.fuse.train import TrainConfig, train
from avx.store_schema import open_store, validate_store

DEMO_BACKBONES = ("mfcc", "mobilenetv2", "waveform")  # the waveform: for --end-to-end audio=...
DEMO_STREAMS = ("audio/mfcc", "video/mobilenetv2")
DEMO_METHODS = ("late", "context", "mult")
# MFCC frames (100 Hz) averaged onto a 10 Hz grid, video repeated onto it: a GRU over
# 20 frames instead of 200 keeps the demo's training to seconds per method.
DEMO_DATA = DataConfig(streams=DEMO_STREAMS, labels="av", align="rate:10")
# Demo faces are >= 80 px: a larger MTCNN minimum skips the costliest pyramid levels.
DEMO_FACES = FaceConfig(min_face_size=40, sampling=FrameSampling("fps", fps=5))


def run_demo(
    out_dir: str | Path,
    *,
    clips: int = 144,
    seed: int = 0,
    epochs: int = 20,
    out: Console | None = None,
    err: Console | None = None,
) -> list[dict]:
    out, err = out or Console(), err or Console(stderr=True)
    out_dir = Path(out_dir)
    corpus = out_dir / "corpus"
    store = out_dir / "demo.zarr"
    t0 = time.time()
    marker = corpus / f".complete-{clips}-{seed}"
    if not marker.exists():
        out.print(f"[bold]1/4[/] generating {clips} synthetic clips in {corpus} (CREMA-D layout)")
        make_demo_corpus(corpus, n_clips=clips, seed=seed)
        marker.touch()
    else:
        out.print(f"[bold]1/4[/] reusing demo corpus {corpus}")
    t1 = time.time()
    out.print(
        "[bold]2/4[/] extracting faces (MTCNN), video/mobilenetv2 (random init), audio/mfcc, audio/waveform"
    )
    extract(
        "avx-demo",
        corpus,
        store,
        ExtractOptions(
            backbones=DEMO_BACKBONES, weights=("none",), dtype="float32", part_size=32, faces=DEMO_FACES
        ),
        console=err,
    )
    t2 = time.time()
    report = validate_store(store)
    if not report.ok:
        raise StoreError(report.summary())
    out.print(f"[bold]3/4[/] {report.summary()}", soft_wrap=True)  # one line each in a log
    opened = open_store(store)
    for name in opened.streams:
        out.print(f"      {opened.stream(name)!r}", soft_wrap=True)
    out.print(
        f"[bold]4/4[/] training {', '.join(DEMO_METHODS)} on {', '.join(DEMO_STREAMS)} (AV-rated labels)",
        soft_wrap=True,
    )
    results = []
    for method in DEMO_METHODS:
        results.append(
            train(
                TrainConfig(
                    store=str(store), method=method, data=DEMO_DATA, epochs=epochs, seed=seed, bootstrap=200
                ),
                out_dir / "runs" / method,
                console=err,
                overwrite=True,  # the demo retrains its runs on every call
            )
        )
    t3 = time.time()
    out.print(comparison_table(results, title="demo test results (synthetic data: proves the pipeline only)"))
    out.print(
        f"corpus {t1 - t0:.1f} s, extract {t2 - t1:.1f} s, train {t3 - t2:.1f} s; "
        f"runs in {out_dir / 'runs'} (compare: avx fuse compare {out_dir / 'runs'}/*)",
        soft_wrap=True,
    )
    return results


MMER_STREAMS = ("text/bert", "audio/covarep", "video/facet")
MMER_METHODS = ("lddu", "carat", "mult", "late")


def run_mmer_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    epochs: int = 10,
    out: Console | None = None,
    err: Console | None = None,
) -> list[dict]:
    """``avx demo --trimodal``: the synthetic CMU-MOSEI-layout pickle
    (:mod:`avx.demo.mmer`), its store through the ``cmu-mosei`` adapter, then LDDU,
    CARAT, MulT and late fusion on text + audio + video, six-label multi-label task."""
    from avx.corpora import load_corpus
    from avx.demo.mmer import write_mmer_pickle
    from avx.store_schema import create_store

    out, err = out or Console(), err or Console(stderr=True)
    out_dir = Path(out_dir)
    pickle_path = out_dir / "corpus" / "mosei_synthetic.pkl"
    store = out_dir / "mmer.zarr"
    t0 = time.time()
    if not pickle_path.exists():
        out.print(
            f"[bold]1/3[/] writing the synthetic trimodal pickle {pickle_path} (CMU-MOSEI release layout)"
        )
        write_mmer_pickle(pickle_path, seed=seed)
    else:
        out.print(f"[bold]1/3[/] reusing {pickle_path}")
    try:
        open_store(store)
        out.print(f"[bold]2/3[/] reusing store {store}")
    except StoreError:
        out.print(f"[bold]2/3[/] creating {store} with the cmu-mosei adapter")
        create_store(store, load_corpus("cmu-mosei", pickle_path.parent), overwrite=True, console=err)
    out.print(f"[bold]3/3[/] training {', '.join(MMER_METHODS)} on {', '.join(MMER_STREAMS)} (six emotions)")
    data = DataConfig(streams=MMER_STREAMS, labels="multilabel", task="multilabel")
    results = []
    for method in MMER_METHODS:
        cfg = TrainConfig(
            store=str(store), method=method, data=data, epochs=epochs, seed=seed, threshold=0.5, bootstrap=200
        )
        results.append(train(cfg, out_dir / "runs" / method, console=err, overwrite=True))
    out.print(
        comparison_table(
            results, title="trimodal demo test results (synthetic data: proves the pipeline only)"
        )
    )
    out.print(f"{time.time() - t0:.1f} s; runs in {out_dir / 'runs'}", soft_wrap=True)
    return results
