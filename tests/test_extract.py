"""Extraction through the real CLI: provenance, per-sample failures, crash safety,
resume, and concurrent writers."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from avx.extract.backbones import list_backbones
from avx.store_schema import Status, open_store, validate_store
from avx.store_schema.locks import StreamLock
from tests.conftest import EXTRACT_ARGS, N_CLIPS, popen_avx, run_avx

STREAMS = ("faces", "audio/mfcc", "video/mobilenetv2")


def _same_features(a: Path, b: Path) -> None:
    sa, sb = open_store(a), open_store(b)
    for name in STREAMS:
        xa, xb = sa.stream(name), sb.stream(name)
        assert xa.committed_ids == xb.committed_ids, name
        for sid in xa.committed_ids:
            for field in ("data", "timestamps", *xa.spec.fields):
                assert np.array_equal(xa.field(sid, field), xb.field(sid, field), equal_nan=True), (name, sid)


def test_reference_store_is_complete_with_provenance(demo_store: Path) -> None:
    s = open_store(demo_store)
    assert sorted(s.streams) == sorted(STREAMS)
    for name in STREAMS:
        st = s.stream(name)
        assert st.counts() == {"missing": 0, "committed": N_CLIPS, "failed": 0}
        prov = st.provenance
        assert {"weights_sha256", "dtype", "created"} <= set(prov) or name == "faces"
        assert prov["created"]["avx_version"] and prov["created"]["host"]
    faces = s.stream("faces")
    assert faces.provenance["detector_weights_sha256"]["onet.pt"]
    assert faces.provenance["sampling"] == {"mode": "fps", "fps": 5.0}
    sid = faces.committed_ids[0]
    assert faces[sid].shape[1:] == (224, 224, 3) and faces.field(sid, "detected").all()
    assert np.array_equal(faces.timestamps(sid), s.stream("video/mobilenetv2").timestamps(sid))
    mnv2 = s.stream("video/mobilenetv2").provenance
    assert mnv2["weights"] == "random-init" and mnv2["weights_sha256"] == "random-init"
    assert mnv2["input_stream"] == "faces" and len(mnv2["input_provenance_sha256"]) == 64
    mfcc = s.stream("audio/mfcc")
    assert mfcc.provenance["sample_rate"] == 16000 and mfcc.provenance["hop_length"] == 160
    assert np.allclose(np.diff(mfcc.timestamps(sid)), 0.01)
    assert validate_store(demo_store, deep=True).ok


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(
    demo_corpus: Path, demo_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "killed.zarr"
    args = ["extract", "--corpus", "cremad", "--root", demo_corpus, "--store", store, *EXTRACT_ARGS]
    proc = popen_avx(*args, "--part-size", "2")
    deadline = time.time() + 240
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            committed = len(open_store(store).stream("video/mobilenetv2"))
        except Exception:
            continue
        if committed >= 4:
            break
    assert proc.poll() is None, "extraction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    report = validate_store(store, deep=True)
    assert report.ok, report.summary()
    s = open_store(store)
    assert 4 <= len(s.stream("video/mobilenetv2")) < N_CLIPS
    run_avx(*args)  # the same command resumes
    assert validate_store(store, deep=True).ok
    assert not any("uncommitted" in w for w in validate_store(store).warnings)
    _same_features(store, demo_store)
    again = run_avx(*args)  # nothing left to do
    assert "0 sample(s) processed" in again.stdout


@pytest.mark.slow
def test_concurrent_writers(demo_corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "conc.zarr"
    base = ["extract", "--corpus", "cremad", "--root", demo_corpus, "--store", store, "--limit", "8"]
    run_avx("store", "init", "--corpus", "cremad", "--root", demo_corpus, "--store", store)
    vis = [*base, "--backbone", "mobilenetv2", "--weights", "none", "--dtype", "float32", "--fps", "5"]
    # The same stream twice at once is refused: hold its lock the way a running extract does.
    with StreamLock(store, "video/mobilenetv2"):
        c = run_avx(*vis, check=False)
    assert c.returncode == 2
    assert "stream 'video/mobilenetv2' is being written by another process (pid" in c.stderr
    assert len(c.stderr.strip().splitlines()) == 1
    assert open_store(store).streams == []  # nothing written
    # Different backbones into one store at the same time both succeed.
    a = popen_avx(*vis)
    b = popen_avx(*base, "--backbone", "mfcc")
    _, err_a = a.communicate(timeout=300)
    _, err_b = b.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    s = open_store(store)
    assert len(s.stream("video/mobilenetv2")) == 8 and len(s.stream("audio/mfcc")) == 8
    assert validate_store(store, deep=True).ok


@pytest.mark.slow
def test_bad_media_becomes_a_recorded_failure(demo_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    first = pd.read_csv(corpus / "SentenceFilenames.csv")["Filename"][:3].tolist()
    videos = [corpus / "VideoFlash" / f"{c}.flv" for c in first]
    wavs = [corpus / "AudioWAV" / f"{c}.wav" for c in first]
    videos[0].write_bytes(b"not a video")
    sf.write(wavs[1], np.zeros(16000), 16000)
    store = tmp_path / "bad.zarr"
    args = [
        "extract",
        "--corpus",
        "cremad",
        "--root",
        corpus,
        "--store",
        store,
        *EXTRACT_ARGS,
        "--limit",
        "3",
    ]
    proc = run_avx(*args, check=False)
    assert proc.returncode == 3, proc.stderr  # finished, partially
    assert "corrupt video" in proc.stderr and "silent audio" in proc.stderr
    assert "partial: 2 sample(s) failed" in proc.stderr
    s = open_store(store)
    v0, a1 = videos[0].stem, wavs[1].stem
    assert s.stream("video/mobilenetv2").status(v0) == Status.FAILED
    assert "corrupt video" in s.stream("faces").failures[v0]
    assert s.stream("audio/mfcc").status(v0) == Status.COMMITTED
    assert "silent audio" in s.stream("audio/mfcc").failures[a1]
    assert validate_store(store).ok
    info = json.loads(run_avx("store", "info", store, "--json").stdout)
    assert info["streams"]["audio/mfcc"]["failed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backbone", "resnet9000"],
            "unknown backbone 'resnet9000'; valid: " + ", ".join(list_backbones()),
        ),
        (
            ["--backbone", "mfcc", "--corpus", "nosuch"],
            "unknown corpus 'nosuch'; valid: avec2019-ces, avx-demo, cmu-mosei, cremad, iemocap, m3ed,"
            " manifest, msp-improv, ravdess",
        ),
        (["--backbone", "mobilenetv2", "--weights", "/nope/w.pt"], "/nope/w.pt: weights file not found"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str, demo_corpus: Path, tmp_path: Path) -> None:
    base = ["extract", "--corpus", "cremad", "--root", demo_corpus, "--store", tmp_path / "e.zarr"]
    proc = run_avx(*base, *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {message}"
