"""The extraction pipeline through the real CLI: every kind of bad input, every backbone
into one store, parallel Dask workers, streaming decode, and stream alignment."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avx.errors import AvxError
from avx.extract.faces import FaceConfig, FacePipeline
from avx.extract.media import FrameSampling, decode_audio, iter_frames, read_frames
from avx.extract.run import ExtractOptions, build_backbones
from avx.store_schema import Status, align, open_store, validate_store
from tests.conftest import run_avx
from tests.media_fixtures import face_frames, noise_frames, voice, write_mp4, write_wav
from tests.tiny_models import save_speech_model, save_text_model

PARTIAL = 3


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest corpus with two good clips and one clip per kind of bad input."""
    d = tmp_path_factory.mktemp("bad")
    good_v = face_frames(20)
    rows = []

    def add(sid: str, audio: str = "", video: str = "") -> None:
        split = ("train", "dev", "test")[len(rows) % 3]
        row = {"id": sid, "speaker": f"s{len(rows)}", "audio_path": audio, "video_path": video}
        rows.append({**row, "split": split, "label": "a", "transcript": "hi"})

    write_wav(d / "good1.wav", voice(1.5))
    write_mp4(d / "good1.mp4", good_v)
    add("good1", "good1.wav", "good1.mp4")
    write_mp4(d / "good2.mp4", face_frames(20, seed=1), audio=voice(1.5, seed=1))
    add("good2", "good2.mp4", "good2.mp4")  # audio from the mp4's own track
    write_wav(d / "stereo44k.wav", voice(1.5, sr=44100, channels=2), sr=44100)
    add("stereo44k", "stereo44k.wav", "good1.mp4")
    write_wav(d / "tel8k.wav", voice(1.5, sr=8000), sr=8000)
    add("tel8k", "tel8k.wav", "good1.mp4")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    add("corrupt_video", "good1.wav", "corrupt.mp4")
    data = (d / "good1.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    add("truncated_video", "good1.wav", "truncated.mp4")
    (d / "empty.wav").write_bytes(b"")
    add("zero_byte_audio", "empty.wav", "good1.mp4")
    add("audioless_video", "good1.mp4", "good1.mp4")
    (d / "clip.xyz").write_bytes(b"\x00\x01not a container" * 50)
    add("unsupported_container", "clip.xyz", "good1.mp4")
    write_wav(d / "silence.wav", np.zeros(24000, np.float32))
    add("silence", "silence.wav", "good1.mp4")
    write_wav(d / "short.wav", voice(0.4))
    add("too_short", "short.wav", "good1.mp4")
    write_mp4(d / "noface.mp4", noise_frames(10))
    add("no_face", "good1.wav", "noface.mp4")
    long_v = np.concatenate([good_v] * 15)  # 300 frames = 12 s
    write_mp4(d / "long.mp4", long_v, audio=voice(12.0, seed=2))
    add("very_long", "long.mp4", "long.mp4")
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    save_speech_model("wav2vec2", d / "w2v")
    return d


EXPECTED = {  # sample -> (stream, reason fragment)
    "corrupt_video": ("faces", "corrupt.mp4: corrupt video"),
    "truncated_video": ("faces", "truncated.mp4: corrupt video"),
    "zero_byte_audio": ("audio/vggish", "empty.wav: empty file (0 bytes)"),
    "audioless_video": ("audio/vggish", "good1.mp4: no audio track"),
    "unsupported_container": ("audio/vggish", "clip.xyz: unreadable audio"),
    "silence": ("audio/vggish", "silence.wav: silent audio"),
    "too_short": ("audio/vggish", "short.wav: too short (0.400 s < one 0.975 s VGGish patch)"),
    "no_face": ("faces", "noface.mp4: no face found in 4 frame(s)"),
}


@pytest.mark.slow
def test_bad_input_is_recorded_per_sample_and_never_touches_committed_data(
    bad_corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "bad.zarr"
    base = ["extract", "--corpus", "manifest", "--root", bad_corpus / "manifest.csv", "--store", store]
    common = ["--fps", "10", "--min-face-size", "40", "--part-size", "4"]
    # First run: the good clips only; snapshot what it committed.
    run_avx(*base, "--backbone", "vggish,faces", "--weights", "none", *common, "--limit", "2")
    before = _tree_digest(store / "streams")
    proc = run_avx(
        *base,
        "--backbone", "vggish,faces,wav2vec2",
        "--weights", "none", "--weights", f"wav2vec2={bad_corpus / 'w2v'}",
        "--opt", "wav2vec2:window=5", "--opt", "wav2vec2:context=1",
        *common,
        check=False,
    )  # fmt: skip
    assert proc.returncode == PARTIAL, proc.stderr
    assert "partial: 8 sample(s) failed" in proc.stderr
    after = _tree_digest(store / "streams")
    for key, digest in before.items():  # every file of the first run is untouched
        if not key.endswith(("index/c/0/0", "zarr.json")):
            assert after[key] == digest, key
    s = open_store(store)
    for sid, (stream, reason) in EXPECTED.items():
        st = s.stream(stream)
        assert st.status(sid) == Status.FAILED, sid
        assert reason in st.failures[sid], (sid, st.failures[sid])
        assert "\n" not in st.failures[sid]
    vgg, faces, w2v = s.stream("audio/vggish"), s.stream("faces"), s.stream("audio/wav2vec2")
    for sid in ("good1", "good2", "stereo44k", "tel8k", "very_long"):
        assert vgg.status(sid) == Status.COMMITTED and faces.status(sid) == Status.COMMITTED
    assert vgg.notes["stereo44k"] == "2 channels mixed to mono; resampled 44100 -> 16000 Hz"
    assert vgg.notes["tel8k"] == "resampled 8000 -> 16000 Hz" and "good1" not in vgg.notes
    assert faces.status("audioless_video") == Status.COMMITTED  # only its audio is bad
    # The very long clip: windowed speech model, streamed video (12 s at 10 fps).
    n_samples = len(decode_audio(bad_corpus / "long.mp4").waveform)  # 12 s + AAC padding
    assert n_samples >= 12 * 16000 and len(w2v["very_long"]) == 1 + (n_samples - 400) // 320
    assert len(faces["very_long"]) == 120 and faces.field("very_long", "detected").all()
    assert validate_store(store, deep=True).ok
    # Re-running finds nothing to do; failed samples stay failed until --retry-failed.
    again = run_avx(*base, "--backbone", "vggish,faces", "--weights", "none", *common, check=False)
    assert again.returncode == 0 and "0 sample(s) processed" in again.stdout


ALL = "mfcc,mfcc.sfav,vggish,egemaps,wav2vec2,wavlm,hubert,text,text.pooled"
ALL += ",efficientface,efficientface.sfav,efficientnet-b2,mobilenetv2,emofan"
ALL_STREAMS = [
    f"audio/{n}" for n in ("mfcc", "mfcc.sfav", "vggish", "egemaps", "wav2vec2", "wavlm", "hubert")
]
ALL_STREAMS += ["text/text", "text/text.pooled", "faces", "video/emofan"]
ALL_STREAMS += [
    f"video/{n}" for n in ("efficientface", "efficientface.sfav", "efficientnet-b2", "mobilenetv2")
]


@pytest.fixture(scope="module")
def all_weights(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--weights`` arguments for every backbone: tiny saved models for the HF ones, else none."""
    hf = tmp_path_factory.mktemp("hf")
    w = [f"{a}={save_speech_model(a, hf / a)}" for a in ("wav2vec2", "wavlm", "hubert")]
    bert = save_text_model(hf / "bert")
    w += [f"text={bert}", f"text.pooled={bert}", "none"]
    return [x for item in w for x in ("--weights", item)]


@pytest.mark.slow
def test_all_backbones_from_the_demo_corpus(
    demo_corpus: Path, all_weights: list[str], tmp_path: Path
) -> None:
    """Every registered backbone extracts into one store (random or tiny weights)."""
    store = tmp_path / "all.zarr"
    args = ["extract", "--corpus", "cremad", "--root", demo_corpus, "--store", store, "--backbone", ALL]
    proc = run_avx(
        *args, *all_weights, "--frames", "2", "--seconds", "1", "--min-face-size", "40", "--limit", "3"
    )
    s = open_store(store)
    assert sorted(s.streams) == sorted(ALL_STREAMS), proc.stdout
    shapes = {"video/efficientface": (1024,), "video/efficientnet-b2": (1408,), "video/emofan": (256,)}
    shapes |= {
        "audio/vggish": (128,),
        "audio/wavlm": (3, 32),
        "text/text.pooled": (32,),
        "faces": (256, 256, 3),
    }
    for name in ALL_STREAMS:
        st = s.stream(name)
        assert st.counts()["committed"] == 3, (name, st.failures)
        sid = st.committed_ids[0]
        assert st[sid].ndim == 1 + len(st.spec.frame_shape)
        if name in shapes:
            assert st.spec.frame_shape == shapes[name], name
    emo = s.stream("video/emofan")
    assert set(emo.spec.fields) == {"expression", "valence", "arousal"}
    assert emo.field(emo.committed_ids[0], "expression").shape == (2, 8)
    assert s.stream("faces").spec.frame_shape[0] == 256  # the largest visual input (EmoFAN)
    assert len(s.stream("text/text.pooled")[sid]) == 1
    assert s.stream("audio/wavlm").provenance["weights_kind"] == "folder"
    info = run_avx("store", "info", store).stdout
    assert "video/emofan" in info and "from=random-init" in info
    assert validate_store(store, deep=True).ok


@pytest.mark.slow
def test_ravdess_replica_with_every_backbone(all_weights: list[str], tmp_path: Path) -> None:
    """A RAVDESS-layout replica (AV mp4s with their audio tracks), SFAV's frame recipe."""
    root = tmp_path / "RAVDESS"
    for actor in range(1, 25):
        d = root / f"Actor_{actor:02d}"
        d.mkdir(parents=True)
        if actor <= 2:
            name = f"01-01-01-01-01-01-{actor:02d}.mp4"
            write_mp4(
                d / name,
                face_frames(100, seed=actor),
                fps=25,
                audio=voice(4.0, sr=48000, seed=actor),
                sr=48000,
            )
        else:  # the rest of the actors: audio-only recordings
            write_wav(d / f"03-01-01-01-01-01-{actor:02d}.wav", voice(1.2, seed=actor))
    store = tmp_path / "ravdess.zarr"
    args = ["extract", "--corpus", "ravdess", "--root", root, "--store", store, *all_weights]
    proc = run_avx(*args, "--backbone", ALL, "--frames", "15", "--seconds", "3.6",
                   "--min-face-size", "40", "--limit", "4", check=False)  # fmt: skip
    assert proc.returncode == 3  # the audio-only recordings have no video
    s = open_store(store)
    faces = s.stream("faces")
    av_ids = faces.committed_ids
    assert len(av_ids) == 2 and len(faces.failures) == 2  # audio-only recordings have no video
    assert "no video file listed" in next(iter(faces.failures.values()))
    ts = faces.timestamps(av_ids[0])
    assert len(ts) == 15 and np.allclose(ts, np.arange(3, 90, 6) / 25)  # bin centres of 0.24 s
    assert s.stream("video/efficientface.sfav")[av_ids[0]].shape == (15, 1024)
    mf = s.stream("audio/mfcc.sfav")
    assert mf.counts()["committed"] == 4 and mf.notes[av_ids[0]] == "resampled 48000 -> 22050 Hz"
    assert sorted(s.streams) == sorted(ALL_STREAMS)
    for name in ALL_STREAMS:
        expected = 4 if name.startswith(("audio/", "text/")) else 2
        assert s.stream(name).counts()["committed"] == expected, name
    assert s.stream("text/text.pooled")[av_ids[0]].shape == (1, 32)  # "Kids are talking by the door"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["workers", "scheduler"])
def test_two_dask_workers_write_the_same_store_as_one_process(
    how: str, demo_corpus: Path, tmp_path: Path
) -> None:
    args = [
        "--corpus",
        "cremad",
        "--root",
        demo_corpus,
        "--backbone",
        "mfcc,mobilenetv2",
        "--weights",
        "none",
    ]
    args += ["--dtype", "float32", "--fps", "5", "--min-face-size", "40", "--limit", "4", "--part-size", "2"]
    # One thread on both sides: kernels split reductions by thread count (see Plan.threads),
    # and by default one process uses every core while each of 2 workers uses half.
    args += ["--threads", "1"]
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    if how == "workers":
        run_avx("extract", *args, "--store", one)
        proc = run_avx("extract", *args, "--store", two, "--workers", "2")
    else:  # an existing cluster, as on a GPU farm (here two local worker processes)
        from distributed import LocalCluster

        # Starting a cluster sets OMP_NUM_THREADS=1 in this process's environment, which the
        # avx commands inherit: both runs start after it, so both use the same thread count.
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            run_avx("extract", *args, "--store", one)
            proc = run_avx("extract", *args, "--store", two, "--scheduler", cluster.scheduler_address)
    assert "4 sample(s) processed" in proc.stdout
    assert "still alive" not in proc.stderr and "killing" not in proc.stderr  # workers exit cleanly
    sa, sb = open_store(one), open_store(two)
    assert sorted(sa.streams) == sorted(sb.streams)
    for name in sa.streams:
        xa, xb = sa.stream(name), sb.stream(name)
        assert xa.committed_ids == xb.committed_ids and len(xa) == 4
        for sid in xa.committed_ids:
            for f in ("data", "timestamps", *xa.spec.fields):
                assert np.array_equal(xa.field(sid, f), xb.field(sid, f), equal_nan=True), (name, sid, f)
    assert validate_store(two, deep=True).ok


def test_streamed_decode_and_crops_equal_the_in_memory_path(tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "v.mp4", face_frames(45), fps=25)
    for sampling in (
        FrameSampling(),
        FrameSampling("fps", fps=7),
        FrameSampling("uniform", n=6, seconds=1.0),
    ):
        frames, times = read_frames(video, sampling)
        chunks = list(iter_frames(video, sampling, chunk=4))
        assert len(chunks) > 1 or len(frames) <= 4
        assert np.array_equal(np.concatenate([c[0] for c in chunks]), frames)
        all_times = read_frames(video, FrameSampling())[1]
        assert np.array_equal(times, all_times[sampling.select(all_times)])
    # each target takes the nearest frame (ties: the earlier); uniform repeats the last frame
    times = np.arange(30) / 25

    def brute(targets: np.ndarray) -> list[int]:
        return [int(np.argmin(np.abs(times - t))) for t in targets]

    assert FrameSampling("uniform", n=4, seconds=2.0).select(times).tolist() == [*brute([0.25, 0.75]), 29, 29]
    fps = FrameSampling("fps", fps=10).select(times).tolist()
    assert fps == sorted(set(brute(np.arange(12) / 10))) and len(fps) == 12
    pipe = FacePipeline(FaceConfig(min_face_size=40, batch_size=3))
    frames, times = read_frames(video, FrameSampling())
    crops, fields = pipe(frames)
    c2, t2, f2 = pipe.process(iter_frames(video, FrameSampling(), chunk=5))
    assert np.array_equal(crops, c2) and np.array_equal(times, t2)
    assert np.array_equal(fields["box"], f2["box"], equal_nan=True)


def test_missing_faces_before_the_first_detection_take_the_first_box(tmp_path: Path) -> None:
    frames = np.concatenate([noise_frames(6), face_frames(6)])
    pipe = FacePipeline(FaceConfig(min_face_size=40, missing="reuse"))
    crops, _, fields = pipe.process(
        [(frames[:4], np.zeros(4)), (frames[4:8], np.zeros(4)), (frames[8:], np.zeros(4))]
    )
    found = fields["detected"]
    assert not found[:6].any() and found[6:].all()
    first = int(np.flatnonzero(found)[0])
    assert (crops[:6] > 0).any(axis=(1, 2, 3)).all()  # reused the first box, not zeros
    box = (fields["box"][first].astype(float), fields["landmarks"][first].astype(float))
    same_box = pipe._crop_with(frames[:1], box)
    assert np.abs(crops[0].astype(int) - same_box[0]).max() <= 1
    marked = FacePipeline(FaceConfig(min_face_size=40, missing="mark"))(frames)[0]
    assert (marked[:6] == 0).all() and (marked[6:] > 0).any()


def test_alignment_utilities() -> None:
    audio_t = np.arange(100) * 0.01 + 0.005  # 100 Hz, centres
    audio = np.arange(100, dtype=np.float32)[:, None]
    video_t = np.array([0.0, 0.5, 0.99])
    win, mask = align.windows(video_t, audio_t, audio, window=0.2)
    assert win.shape == (3, 20, 1) and mask.sum(1).tolist() == [10, 20, 11]  # 0.895 .. 0.995
    assert win[1, mask[1], 0].tolist() == list(range(40, 60))
    assert align.nearest(video_t, audio_t, audio)[:, 0].tolist() == [0, 49, 98]
    pooled, centres, counts = align.average_pool(audio_t, audio, rate=10, duration=1.0)
    assert pooled.shape == (10, 1) and np.allclose(centres, np.arange(10) / 10 + 0.05)
    assert counts.tolist() == [10] * 10 and pooled[0, 0] == pytest.approx(4.5)
    up, _, c_up = align.average_pool(np.array([0.05, 0.35]), np.array([[1.0], [2.0]]), rate=10, duration=0.4)
    assert c_up.tolist() == [1, 0, 0, 1] and up[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="NaN"):
        align.nearest(video_t, np.full(3, np.nan), np.zeros((3, 1)))


@pytest.mark.slow
def test_backbone_options(demo_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    shutil.copytree(demo_corpus, corpus)
    base = ["extract", "--corpus", "cremad", "--root", corpus, "--store", tmp_path / "s.zarr", "--limit", "1"]
    with pytest.raises(AvxError, match=r"mfcc: unknown option\(s\) \['n_mfc'\]"):
        build_backbones(ExtractOptions(backbones=("mfcc",), options=("mfcc:n_mfc=3",)))
    run_avx(*base, "--backbone", "mfcc", "--opt", "n_mfcc=13")
    assert open_store(tmp_path / "s.zarr").stream("audio/mfcc").spec.frame_shape == (13,)
    other = run_avx(*base, "--backbone", "mfcc", "--opt", "n_mfcc=20", check=False)
    assert other.returncode == 2 and "pass --overwrite to replace the stream" in other.stderr
    run_avx(*base, "--backbone", "mfcc", "--opt", "n_mfcc=20", "--overwrite")
    mfcc = open_store(tmp_path / "s.zarr").stream("audio/mfcc")
    assert mfcc.spec.frame_shape == (20,) and len(mfcc) == 1


@pytest.mark.slow
def test_corpus_without_transcripts_skips_text_with_a_message(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", voice(1.0))
    rows = [{"id": f"c{i}", "speaker": f"s{i}", "audio_path": "a.wav", "split": "train"} for i in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    bert = save_text_model(tmp_path / "bert")
    store = tmp_path / "s.zarr"
    proc = run_avx("extract", "--corpus", "manifest", "--root", tmp_path / "manifest.csv", "--store", store,
                   "--backbone", "text,mfcc", "--weights", f"text={bert}")  # fmt: skip
    assert "skipped text/text: corpus 'manifest' has no transcripts" in " ".join(proc.stderr.split())
    assert open_store(store).streams == ["audio/mfcc"]


@pytest.mark.slow
def test_local_workers_start_with_our_threads_and_allocator_not_dasks() -> None:
    """Dask's nanny would start workers with a 64 KiB trim threshold (every freed
    activation returned and faulted in again) and per-thread arenas capped at 64 MiB;
    ours get one arena, the per-worker thread count and a tunable allocator, and the
    coordinator's own environment is left as it was."""
    import os

    from avx.extract.run import ExtractOptions, _dask_client, _dask_spawn_environ
    from avx.memory import tune_allocator

    before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")}
    client = _dask_client(ExtractOptions(backbones=("mfcc",), workers=1), threads=3)
    try:
        keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")
        (env,) = client.run(lambda: {k: os.environ.get(k) for k in keys}).values()
        assert env == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "MALLOC_TRIM_THRESHOLD_": None,
                       "MALLOC_ARENA_MAX": "1"}  # fmt: skip
        (tuned,) = client.run(lambda: tune_allocator(not_user_set=_dask_spawn_environ())).values()
        assert tuned is True
        assert {k: os.environ.get(k) for k in before} == before
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
