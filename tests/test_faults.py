"""Faults labs meet: one odd clip, a lost chunk, a garbled file, a kill, a shared store.

Each test damages a real store (or corpus, or checkpoint) the way a disk, a network file
system or a corpus release does, and checks that avx either keeps correct data or says
which part is missing: it never returns zeros in place of data, and it never deletes
what was committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avx.errors import AvxError, StoreError
from avx.fuse.checkpoint import load_checkpoint, save_checkpoint
from avx.store_schema import open_store, validate_store
from avx.store_schema import spec as S
from tests.conftest import popen_avx, run_avx
from tests.media_fixtures import face_frames, noise_frames, voice, write_mp4, write_wav

# -- helpers ------------------------------------------------------------------------------


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(store, out)
    return out


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


def _part_dirs(store: Path, stream: str) -> list[Path]:
    return sorted(p for p in (store / "streams" / stream / "parts").iterdir() if p.is_dir())


# -- one bad clip must not block a corpus ---------------------------------------------------


@pytest.mark.slow
def test_bad_clips_fail_alone_and_good_ones_commit(tmp_path: Path) -> None:
    """NaN, Inf and 1e30 audio, a truncated WAV and a 16×16 video among good clips."""
    good = voice(1.0)
    write_wav(tmp_path / "good.wav", good)
    nan = good.copy()
    nan[100:110] = np.nan
    import soundfile as sf

    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = good.copy()
    inf[5] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 16000, subtype="FLOAT")
    sf.write(tmp_path / "huge.wav", (good * 1e30).astype(np.float32), 16000, subtype="FLOAT")
    write_wav(tmp_path / "cut.wav", voice(2.0, seed=3))
    size = (tmp_path / "cut.wav").stat().st_size
    with (tmp_path / "cut.wav").open("r+b") as f:
        f.truncate(int(size * 0.3))
    write_mp4(tmp_path / "tiny.mp4", noise_frames(10, size=(16, 16)), fps=10)
    write_mp4(tmp_path / "face.mp4", face_frames(10), fps=10)
    rows = [
        ("good", "good.wav", "face.mp4", 1.0),
        ("nan", "nan.wav", "", 1.0),
        ("inf", "inf.wav", "", 1.0),
        ("huge", "huge.wav", "", 1.0),
        ("cut", "cut.wav", "", 2.0),
        ("tiny", "good.wav", "tiny.mp4", 1.0),
    ]
    pd.DataFrame(
        [{"id": i, "speaker": i, "audio_path": a, "video_path": v, "duration": d, "split": "train"}
         for i, a, v, d in rows]
    ).to_csv(tmp_path / "manifest.csv", index=False)  # fmt: skip
    store = tmp_path / "s.zarr"
    args = ["extract", "--corpus", "manifest", "--root", tmp_path / "manifest.csv", "--store", store,
            "--backbone", "mfcc", "--backbone", "faces", "--fps", "5", "--min-face-size", "20"]  # fmt: skip
    proc = run_avx(*args, check=False)
    assert proc.returncode == 3, proc.stderr  # partial (some clips failed), not a crash
    assert "Traceback" not in proc.stderr
    s = open_store(store)
    mfcc = s.stream("audio/mfcc")
    assert set(mfcc) >= {"good", "tiny", "cut"}
    why = mfcc.failures
    assert set(why) == {"nan", "inf", "huge"}
    assert "non-finite audio samples" in why["nan"] and "non-finite audio samples" in why["inf"]
    assert "non-finite features" in why["huge"]
    assert np.isfinite(mfcc["good"]).all()
    assert "truncated" in mfcc.notes["cut"] and "in the header" in mfcc.notes["cut"]
    faces = s.stream("faces")
    assert "smaller than the smallest face" in faces.failures["tiny"] and "good" in faces
    assert validate_store(store, deep=True).ok
    # the failure listing: counts per reason, and the clips with --failures
    info = json.loads(run_avx("store", "info", store, "--json", "--failures").stdout)
    reasons = info["streams"]["audio/mfcc"]["failure_reasons"]
    assert sum(reasons.values()) == 3 and any("non-finite audio samples" in r for r in reasons)
    assert set(info["failures"]["audio/mfcc"]) == {"nan", "inf", "huge"}
    text = run_avx("store", "info", store, "--failures").stdout
    assert "failed 2:" in text and "huge:" in text
    # a re-run finds nothing left to do instead of crashing again
    again = run_avx(*args, check=False)
    said = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0 and "0 sample(s) processed, 6 already done" in said


def test_validate_deep_reports_non_finite_values(demo_store: Path, tmp_path: Path) -> None:
    import zarr

    store = _copy(demo_store, tmp_path)
    part = _part_dirs(store, "audio/mfcc")[0]
    arr = zarr.open_array(zarr.storage.LocalStore(part / "data"), mode="r+", zarr_format=3)
    arr[3, 0] = np.nan
    assert validate_store(store).ok  # the cheap check does not decode chunks
    deep = validate_store(store, deep=True)
    assert not deep.ok and "1 non-finite values in frames" in deep.errors[0]


# -- missing data is an error, never zeros --------------------------------------------------


def test_a_lost_data_or_timestamp_chunk_raises_instead_of_reading_zeros(
    demo_store: Path, tmp_path: Path
) -> None:
    store = _copy(demo_store, tmp_path)
    part = _part_dirs(store, "audio/mfcc")[0]
    _chunk_files(part / "data")[0].unlink()
    s = open_store(store)
    mfcc = s.stream("audio/mfcc")
    sid = next(i for i in mfcc.committed_ids if mfcc.index.part[s.sample_ids.tolist().index(i)] == 0)
    with pytest.raises(
        StoreError, match=rf"stream 'audio/mfcc' part {part.name}: chunk 0 of 'data' is missing"
    ):
        mfcc[sid]
    with pytest.raises(StoreError, match="is missing"):
        mfcc.read_many([sid])
    report = validate_store(store)
    assert not report.ok and f"part {part.name} 'data': 1 of" in report.errors[0]
    vparts = _part_dirs(store, "video/mobilenetv2")
    _chunk_files(vparts[-1] / "timestamps")[0].unlink()
    video = open_store(store).stream("video/mobilenetv2")
    last = [
        i
        for i in video.committed_ids
        if video.index.part[s.sample_ids.tolist().index(i)] == int(vparts[-1].name)
    ]
    with pytest.raises(StoreError, match="chunk 0 of 'timestamps' is missing"):
        video.timestamps(last[0])
    faces_part = _part_dirs(store, "faces")[0]
    _chunk_files(faces_part / "data")[0].unlink()
    with pytest.raises(StoreError, match="stream 'faces'"):
        faces = open_store(store).stream("faces")
        faces.read_many(faces.committed_ids)


@pytest.mark.slow
def test_a_lost_index_is_damage_extract_refuses_and_repair_rebuilds_it(
    demo_store: Path, demo_corpus: Path, tmp_path: Path
) -> None:
    store = _copy(demo_store, tmp_path)
    before = open_store(store).stream("audio/mfcc")
    index, data = before.index.array.copy(), {i: before[i] for i in before}
    failures = before.failures
    (store / "streams/audio/mfcc/index/c/0/0").unlink()
    parts = sorted(p.name for p in _part_dirs(store, "audio/mfcc"))
    with pytest.raises(StoreError, match=r"stream 'audio/mfcc': its index is missing .*avx store repair"):
        open_store(store).stream("audio/mfcc")
    assert "audio/mfcc" in open_store(store).damaged
    assert open_store(store).stream("video/mobilenetv2")  # the others still read
    report = validate_store(store, deep=True)
    assert not report.ok and any("audio/mfcc: its index is missing" in e for e in report.errors)
    proc = run_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store,
                   "--backbone", "mfcc", check=False)  # fmt: skip
    assert proc.returncode == 2 and "its index is missing but its parts hold data" in proc.stderr
    assert sorted(p.name for p in _part_dirs(store, "audio/mfcc")) == parts  # nothing deleted
    out = run_avx("store", "repair", store).stdout
    assert f"stream audio/mfcc: index rebuilt from {len(parts)} part(s)" in out
    after = open_store(store).stream("audio/mfcc")
    np.testing.assert_array_equal(after.index.array, index)
    assert after.failures == failures
    assert all(np.array_equal(after[i], x) for i, x in data.items())
    assert validate_store(store, deep=True).ok
    assert "nothing to repair" in run_avx("store", "repair", store).stdout


def test_garbled_stream_metadata_damages_that_stream_only(demo_store: Path, tmp_path: Path) -> None:
    store = _copy(demo_store, tmp_path)
    (store / "streams/audio/mfcc/zarr.json").write_text("{ not json")
    doc = json.loads((store / "streams/video/mobilenetv2/zarr.json").read_text())
    doc["attributes"].pop(S.STREAM_ATTR)
    (store / "streams/video/mobilenetv2/zarr.json").write_text(json.dumps(doc))
    s = open_store(store)
    assert set(s.streams) == {"faces", "audio/mfcc", "video/mobilenetv2"}  # damaged ones are not hidden
    assert len(s.stream("faces")) > 0
    with pytest.raises(StoreError, match="stream audio/mfcc: unreadable metadata"):
        s.stream("audio/mfcc")
    with pytest.raises(StoreError, match="stream video/mobilenetv2: damaged \\(no avx_stream attribute\\)"):
        s.stream("video/mobilenetv2")
    assert set(s.damaged) == {"audio/mfcc", "video/mobilenetv2"}
    assert set(s.info()["damaged_streams"]) == {"audio/mfcc", "video/mobilenetv2"}
    report = validate_store(store)
    assert not report.ok and len(report.errors) == 2
    proc = run_avx("store", "validate", store, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "unreadable metadata" in proc.stderr


# -- atomic creation ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stream_whose_creation_was_interrupted_is_completed(demo_corpus: Path, tmp_path: Path) -> None:
    """What a kill between creating a stream group and its index left (older avx): the
    spec and nothing else. Streams are now created whole and renamed into place."""
    from avx.extract.run import ExtractOptions, extract

    store = tmp_path / "s.zarr"
    run_avx("store", "init", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store)
    opts = ExtractOptions(backbones=("mfcc",), limit=2)
    extract("avx-demo", demo_corpus, store, opts)
    spec = json.loads((store / "streams/audio/mfcc/zarr.json").read_text())
    shutil.rmtree(store / "streams/audio/mfcc")
    (store / "streams/audio/mfcc").mkdir()
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {S.STREAM_ATTR: spec["attributes"][S.STREAM_ATTR]},
    }
    (store / "streams/audio/mfcc/zarr.json").write_text(json.dumps(doc))
    report = validate_store(store)
    assert report.ok and any("incomplete" in w for w in report.warnings)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store).stream("audio/mfcc")
    extract("avx-demo", demo_corpus, store, opts)
    assert len(open_store(store).stream("audio/mfcc")) == 2
    assert not list((store / "streams/audio").glob(".creating-*"))
    assert validate_store(store, deep=True).ok


@pytest.mark.slow
def test_a_kill_at_stream_creation_leaves_a_store_the_next_extract_completes(
    demo_corpus: Path, tmp_path: Path
) -> None:
    """SIGKILL as soon as the stream's folder (hidden while being built, or renamed into
    place) appears on disk: no half stream is visible, and the next extract finishes."""
    import signal
    import time

    store = tmp_path / "s.zarr"
    run_avx("store", "init", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store)
    audio = store / "streams" / "audio"
    proc = popen_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store,
                     "--backbone", "mfcc", "--limit", "3")  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if audio.exists() and any(p.name.startswith((".creating-mfcc", "mfcc")) for p in audio.iterdir()):
            break
        time.sleep(0.001)
    assert proc.poll() is None, "extraction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = open_store(store)
    assert s.streams in ([], ["audio/mfcc"])  # never a stream without its index
    assert validate_store(store).ok
    run_avx("extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", store, "--backbone", "mfcc",
            "--limit", "3")  # fmt: skip
    assert len(open_store(store).stream("audio/mfcc")) == 3
    assert not list(audio.glob(".creating-*"))


# -- checkpoints ---------------------------------------------------------------------------


def test_a_torn_checkpoint_falls_back_to_the_previous_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for epoch in (1, 2, 3):
        w = {"w": torch.full((4,), float(epoch))}
        save_checkpoint(run, epoch, w, w, {"history": [epoch], "rng": torch.arange(3)})
    folder = run / "checkpoint"
    assert sorted(p.name for p in folder.glob("epoch-*")) == [
        "epoch-0002.pt", "epoch-0002.safetensors", "epoch-0003.pt", "epoch-0003.safetensors",
    ]  # fmt: skip
    newest = folder / "epoch-0003.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # torn by the file system
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, best, state = load_checkpoint(run)
    assert state["epoch"] == 2 and torch.equal(model["w"], torch.full((4,), 2.0)) and best is not None
    said = [str(w.message) for w in caught]
    assert any("epoch-0003: unreadable checkpoint" in m and "falling back to epoch 2" in m for m in said)
    (folder / "latest.json").write_text("")  # a torn pointer: the newest readable pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_checkpoint(run)[2]["epoch"] == 2
    (folder / "epoch-0002.pt").write_bytes(b"torn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AvxError, match="no readable checkpoint"):
            load_checkpoint(run)


# -- concurrency ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_visual_backbones_extract_into_one_store_at_once(
    demo_store: Path, demo_corpus: Path, tmp_path: Path
) -> None:
    """``faces`` is complete, so neither run takes its lock; both read the crops."""
    store = _copy(demo_store, tmp_path)
    common = ["extract", "--corpus", "avx-demo", "--root", str(demo_corpus), "--store", str(store),
              "--weights", "none", "--dtype", "float32", "--fps", "5", "--min-face-size", "40"]  # fmt: skip
    procs = [popen_avx(*common, "--backbone", b) for b in ("efficientface", "efficientnet-b2")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    s = open_store(store)
    n = len(s.stream("faces"))
    assert len(s.stream("video/efficientface")) == n == len(s.stream("video/efficientnet-b2"))


# -- remote stores --------------------------------------------------------------------------


def test_http_reads_equal_local_and_stale_metadata_is_one_line(
    demo_store: Path, http_root: tuple[Path, str]
) -> None:
    www, url = http_root
    store = www / "ref.zarr"
    shutil.copytree(demo_store, store)
    run_avx("store", "consolidate", store)
    local, remote = open_store(store), open_store(f"{url}/ref.zarr")
    assert remote.streams == local.streams
    a, b = local.stream("audio/mfcc"), remote.stream("audio/mfcc")
    ids = a.committed_ids[:5]
    assert all(np.array_equal(x, y) for x, y in zip(a.read_many(ids), b.read_many(ids), strict=True))
    assert validate_store(f"{url}/ref.zarr").ok
    shutil.rmtree(store / "streams/video/mobilenetv2")  # the store moved on; its consolidated copy did not
    with pytest.raises(
        StoreError, match="consolidated metadata is older than the store; run `avx store consolidate`"
    ):
        stale = open_store(f"{url}/ref.zarr").stream("video/mobilenetv2")
        stale.read_many(stale.committed_ids)


def test_remote_urls_are_not_write_targets() -> None:
    from avx.store_schema.zarrio import local_path

    for target in ("s3://bucket/x.zarr", "gs://bucket/x.zarr", "https://host/x.zarr", "s3:/bucket/x.zarr"):
        with pytest.raises(StoreError, match="writes stores on local or network file systems only"):
            local_path(target)
    assert local_path("file:///data/x.zarr") == Path("/data/x.zarr") and local_path("C:/x") == Path("C:/x")


@pytest.mark.slow
def test_writing_to_s3_from_the_cli_is_a_one_line_error(demo_corpus: Path, tmp_path: Path) -> None:
    init = ["store", "init", "--corpus", "avx-demo", "--root", demo_corpus, "--store", "s3://bucket/x.zarr"]
    extract = ["extract", "--corpus", "avx-demo", "--root", demo_corpus, "--store", "s3://bucket/x.zarr",
               "--backbone", "mfcc"]  # fmt: skip
    for args in (init, extract):
        proc = run_avx(*args, check=False, cwd=tmp_path)
        assert proc.returncode == 2 and "local or network file systems only" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no folder named "s3:"


@pytest.mark.slow
def test_s3_reads_through_a_local_moto_server(demo_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("moto")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import os

        import s3fs

        os.environ.update(env)
        endpoint = f"http://127.0.0.1:{port}"
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        for _ in range(100):
            try:
                fs.mkdir("avx-test")
                break
            except Exception:
                import time

                time.sleep(0.1)
        store = _copy(demo_store, tmp_path)
        run_avx("store", "consolidate", store)
        fs.put(str(store), "avx-test/ref.zarr", recursive=True)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        remote = open_store("s3://avx-test/ref.zarr")
        local = open_store(store)
        assert remote.streams == local.streams
        ids = local.stream("audio/mfcc").committed_ids[:4]
        got = remote.stream("audio/mfcc").read_many(ids)
        assert all(
            np.array_equal(x, y) for x, y in zip(local.stream("audio/mfcc").read_many(ids), got, strict=True)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_wrong_store_paths_say_what_is_wrong(demo_store: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store \\(the path does not exist\\)"):
        open_store(tmp_path / "nope.zarr")
    with pytest.raises(StoreError, match=f"not the root of an avx store .*the store's root is {demo_store}"):
        open_store(demo_store / "streams" / "audio")
