"""Extraction holds a bounded number of crops whatever a clip's length, and pads at most
one batch per chunk (real MTCNN, real MobileNetV2 with random weights, real stores)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from avx.extract.backbones.mobilenetv2 import MobileNetV2
from avx.extract.faces import FaceConfig
from avx.extract.feed import WINDOW_DEPTH
from avx.extract.media import FrameSampling
from avx.extract.run import ExtractOptions, build_backbones, extract
from avx.store_schema import open_store, validate_store
from avx.store_schema import spec as S
from tests.media_fixtures import face_frames, write_mp4

BATCH = 8
DETECT = 32  # MTCNN frames per window


def _corpus(d: Path, lengths: list[int]) -> Path:
    rows = []
    for i, n in enumerate(lengths):
        write_mp4(d / f"c{i}.mp4", face_frames(n, seed=i))
        rows.append({"id": f"c{i}", "speaker": f"s{i}", "video_path": f"c{i}.mp4",
                     "split": ("train", "dev", "test")[i % 3], "label": "a"})  # fmt: skip
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return d / "manifest.csv"


def _options(**kw) -> ExtractOptions:
    faces = FaceConfig(min_face_size=40, batch_size=DETECT, sampling=FrameSampling("all"))
    return ExtractOptions(backbones=("mobilenetv2",), weights=("none",), batch_size=BATCH, faces=faces, **kw)


def test_a_long_clip_holds_a_bounded_number_of_crops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32 s clip (800 frames) beside short ones: the crops in memory at any time stay
    under a bound set by the window, queue, batch and flush sizes, not by the clip."""
    from avx.store_schema import writer

    monkeypatch.setattr(writer, "FLUSH_BYTES", 2**20)  # sized for 224² crops; these are 64²
    monkeypatch.setattr(S, "TARGET_CHUNK_BYTES", 2**20)
    manifest = _corpus(tmp_path, [800, 20, 30])
    store = tmp_path / "s.zarr"
    opts = _options(part_size=2, decode_workers=1, options=("size=64",))  # 64² crops: fast
    report = extract("manifest", manifest, store, opts, console=Console(quiet=True))
    s = open_store(store)
    faces = s.stream("faces")
    assert len(faces["c0"]) == 800 and len(s.stream("video/mobilenetv2")["c0"]) == 800
    crop_bytes = 64 * 64 * 3
    chunk_rows = S.TARGET_CHUNK_BYTES // crop_bytes
    # windows: queued + one being produced + one being consumed (one producer thread)
    bound = (WINDOW_DEPTH + 2) * DETECT + BATCH + writer.FLUSH_BYTES // crop_bytes + chunk_rows
    assert faces.spec.frame_shape == (64, 64, 3)
    assert report.peak_crops_held is not None and 0 < report.peak_crops_held <= bound < 800 / 2
    assert faces.field("c0", "detected").mean() > 0.9
    assert validate_store(store, deep=True).ok


def test_only_the_last_batch_of_a_chunk_is_padded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames are carried across clips: every forward pass is a full batch but a chunk's
    last, so frames forwarded = frames extracted + less than one batch per chunk. Each
    clip's features are those of the clip run alone (batch composition does not leak)."""
    lengths = [13, 13, 13, 11, 13]
    manifest = _corpus(tmp_path, lengths)
    calls: list[int] = []
    forward = MobileNetV2.forward

    def counted(self, x):
        calls.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(MobileNetV2, "forward", counted)
    store = tmp_path / "s.zarr"
    extract("manifest", manifest, store, _options(part_size=3), console=Console(quiet=True))
    assert set(calls) == {BATCH}  # fixed batch shape
    chunks = [sum(lengths[:3]), sum(lengths[3:])]  # 39 and 24 frames
    assert len(calls) == sum(-(-n // BATCH) for n in chunks) == 5 + 3
    assert len(calls) * BATCH - sum(lengths) < len(chunks) * BATCH
    s = open_store(store)
    (b,) = build_backbones(_options())
    st = s.stream("video/mobilenetv2")
    for sid in ("c1", "c4"):  # c1 shares batches with c0 and c2; c4 ends a chunk
        alone = b(s.stream("faces")[sid])[0].astype(st.spec.dtype)
        np.testing.assert_array_equal(st[sid], alone)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_heap_is_released_at_most_once_per_interval():
    from avx import memory

    assert memory.release_free_heap(force=True) is True
    assert memory.release_free_heap() is False  # within MIN_INTERVAL_S of the forced trim
    memory._last -= memory.MIN_INTERVAL_S
    assert memory.release_free_heap() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_respects_the_users_malloc_settings(monkeypatch):
    from avx import memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert memory.tune_allocator() is False  # the user's choice stands
    for k in memory._USER_SET:
        monkeypatch.delenv(k, raising=False)
    assert memory.tune_allocator() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_overrides_what_dask_set_but_not_what_the_user_set(monkeypatch):
    from avx import memory

    for k in memory._USER_SET:
        monkeypatch.delenv(k, raising=False)
    dask_default = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert memory.tune_allocator(not_user_set=dask_default) is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # not Dask's value: the user's
    assert memory.tune_allocator(not_user_set=dask_default) is False
