"""Shared fixtures: a tiny demo corpus and a store extracted from it by the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avx.demo.corpus import make_demo_corpus

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
