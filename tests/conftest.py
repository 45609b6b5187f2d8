"""Shared fixtures: a tiny demo corpus and a store extracted from it by the real CLI."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr

from avx.corpora import CorpusMetadata
from avx.corpora.protocols import official
from avx.demo.corpus import make_demo_corpus
from avx.store_schema import StreamSpec, StreamWriter, create_store, open_store

FIXTURES = Path(__file__).parent / "fixtures"
N_CLIPS = 24
# The options every extraction test uses, so stores built in different tests compare.
EXTRACT_ARGS = [
    "--backbone", "mfcc", "--backbone", "mobilenetv2", "--weights", "none",
    "--dtype", "float32", "--fps", "5", "--min-face-size", "40",
]  # fmt: skip


def run_avx(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real ``avx`` command in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, "-m", "avx", *map(str, args)], capture_output=True, text=True, env=env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"avx {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def crash_then_resume(config: Any, out: Path, epoch: int) -> dict:
    """Train ``config`` into ``out``, let it die after epoch ``epoch`` (checkpointed),
    then ``--resume`` it to the end; returns the resumed run's metrics."""
    from avx.fuse.train import train

    class Stop(Exception):
        pass

    def crash(done: int, _row: dict) -> None:
        if done == epoch:
            raise Stop

    with pytest.raises(Stop):
        train(config, out, on_epoch_end=crash)
    return train(config, out, resume=True)


def assert_selection_ignores_test(config: Any, tmp: Path, scramble: Any) -> None:
    """The framework's leakage check: training reads only train and dev batches, and
    ``scramble(values, rows, n_classes)`` applied to every test label changes nothing in training
    (history, selected epoch)."""
    from avx.fuse.train import Trainer

    ref = Trainer(config, tmp / "ref")
    seen: list[str] = []
    batches = ref.data.batches
    ref.data.batches = lambda split, *a, **k: (seen.append(split), batches(split, *a, **k))[1]  # type: ignore[method-assign]
    ref.fit()
    assert set(seen) == {"train", "dev"}
    scrambled = Trainer(config, tmp / "scr")
    d = scrambled.data
    scramble(d.targets_all.values, d.rows[d.indices("test")], len(d.names))
    scrambled.fit()
    strip = lambda h: [{k: x for k, x in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(scrambled.history) == strip(ref.history) and scrambled.best_epoch == ref.best_epoch


def popen_avx(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "avx", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", n_clips=N_CLIPS, seed=0)


@pytest.fixture(scope="session")
def demo_store(demo_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted reference run: every stream of every demo clip."""
    store = tmp_path_factory.mktemp("stores") / "ref.zarr"
    run_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store, *EXTRACT_ARGS)
    return store


@pytest.fixture(scope="session")
def layered_store(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store plus a 3-layer stream whose layer k is (k + 1) x the first 8 MFCCs."""
    path = tmp_path_factory.mktemp("layered") / "s.zarr"
    shutil.copytree(demo_store, path)
    store = open_store(path)
    mfcc = store.stream("audio/mfcc")
    spec = StreamSpec(
        "audio/layered", (3, 8), "float32", 100.0, layer_axis=0, provenance={"backbone": "test"}
    )
    w = StreamWriter(zarr.open_group(str(path), mode="r+"), spec, part_size=8)
    for row, sid in enumerate(store.sample_ids):
        x = mfcc[sid][:, :8]
        w.add(row, np.stack([x * (k + 1) for k in range(3)], axis=1), mfcc.timestamps(sid))
    w.close()
    return path


def synthetic_store(path: Path, seed: int, n: int = 200, k: int = 4) -> Path:
    """Both modalities carry the class, weakly per frame: audio 48 x 10-D at 16 Hz,
    video 15 x 16-D at 5 Hz, class prototype x strength + N(0, 1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    split = np.array(["train", "train", "train", "dev", "test"])[(np.arange(n) // k) % 5]
    samples = pd.DataFrame(
        {
            "id": [f"c{i:03d}" for i in range(n)],
            "speaker": [f"p{i // k % 5}" for i in range(n)],
            "duration": 3.0,
            "audio_path": "",
            "video_path": "",
        }
    )
    meta = CorpusMetadata(
        "synth",
        samples,
        [f"k{j}" for j in range(k)],
        categorical={"intended": y},
        protocols={"official": official(list(split), source="synthetic")},
    )
    shutil.rmtree(path, ignore_errors=True)
    create_store(path, meta)
    root = zarr.open_group(str(path), mode="r+")
    prov = {"backbone": "synthetic"}
    writers = {}
    for name, dim, rate, frames, strength in (
        ("audio/syn", 10, 16.0, 48, 0.25),
        ("video/syn", 16, 5.0, 15, 0.3),
    ):
        proto = rng.standard_normal((k, dim))
        w = StreamWriter(root, StreamSpec(name, (dim,), "float32", rate, provenance=prov), part_size=64)
        for i in range(n):
            x = strength * proto[y[i]] + rng.standard_normal((frames, dim))
            w.add(i, x.astype(np.float32), np.arange(frames) / rate)
        writers[name] = w
    for w in writers.values():
        w.close()
    return path


@pytest.fixture()
def http_root(tmp_path: Path) -> typing.Iterator[tuple[Path, str]]:
    """A static HTTP server on 127.0.0.1 serving ``tmp_path/www`` (stopped after the test)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass
