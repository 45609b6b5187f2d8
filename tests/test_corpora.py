"""Corpus adapters on replicas of their official layouts, and the real CREMA-D metadata."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from avx.corpora import CORPORA, load_corpus
from avx.corpora._io import CorpusFileError
from avx.corpora.cremad import CLASS_CODES
from avx.corpora.protocols import speaker_trials
from avx.errors import AvxError
from avx.store_schema import create_store, open_store, validate_store
from tests.conftest import FIXTURES, run_avx


def _assert_speaker_disjoint(store) -> None:
    """The promise of every protocol: no speaker in two splits of one fold."""
    speakers = store.samples["speaker"].astype(str).to_numpy()
    assert store.protocols
    for name in store.protocols:
        p = store.protocol(name)
        for k in range(p.n_folds):
            split = p.fold(k)
            held = {s: set(speakers[split == s]) for s in ("train", "dev", "test")}
            assert not held["train"] & held["dev"], (name, k)
            assert not held["train"] & held["test"], (name, k)
            assert not held["dev"] & held["test"], (name, k)


def _store(tmp_path: Path, corpus: str, root: Path, **kw):
    path = create_store(tmp_path / f"{corpus}.zarr", load_corpus(corpus, root), **kw)
    report = validate_store(path, deep=True)
    assert report.ok, report.summary()
    s = open_store(path)
    _assert_speaker_disjoint(s)
    return s


# -- CREMA-D: the complete real metadata ----------------------------------------------
@pytest.fixture(scope="module")
def cremad_meta_root(tmp_path_factory) -> Path:
    """Only the real metadata files, in the official layout (no media)."""
    root = tmp_path_factory.mktemp("cremad")
    (root / "processedResults").mkdir()
    for name in ("SentenceFilenames", "VideoDemographics", "summaryTable", "tabulatedVotes"):
        dest = root / ("processedResults" if name == "tabulatedVotes" else "") / f"{name}.csv"
        with gzip.open(FIXTURES / "cremad_full" / f"{name}.csv.gz", "rb") as f:
            dest.write_bytes(f.read())
    return root


def _joined(row: np.ndarray) -> str:
    return ":".join(c for c, on in zip(CLASS_CODES, row, strict=True) if on)


@pytest.mark.slow
def test_cremad_real_metadata_store_init_cli(cremad_meta_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "cremad.zarr"
    proc = run_avx("store", "init", "--corpus", "cremad", "--root", cremad_meta_root, "--store", store)
    assert "7442 samples, 91 speakers" in proc.stdout
    assert validate_store(store).ok
    s = open_store(store)
    assert len(s.samples) == 7442 and s.samples["speaker"].nunique() == 91
    assert sorted(s.labels) == ["av", "face", "voice"]
    summary = pd.read_csv(cremad_meta_root / "summaryTable.csv").set_index("FileName")
    ids = s.samples["id"].tolist()
    for rater, col in (("voice", "VoiceVote"), ("face", "FaceVote"), ("av", "MultiModalVote")):
        derived = [_joined(r) for r in s.labels[rater].plurality]
        expected = summary.loc[ids, col].astype(str).tolist()
        mismatches = [i for i, (a, b) in enumerate(zip(derived, expected, strict=True)) if a != b]
        assert not mismatches, (rater, ids[mismatches[0]])
    # Counts measured on the real metadata (closing note of issue 3).
    stats = s.label_stats()
    assert {r: stats[r]["multilabel_clips"] for r in ("voice", "face", "av")} == {
        "voice": 5197,
        "face": 4264,
        "av": 4083,
    }
    assert {r: stats[r]["ties"] for r in ("voice", "face", "av")} == {"voice": 644, "face": 470, "av": 420}
    assert stats["av"]["plurality_counts"]["neutral"] == 1972
    # The tabulated agreement column is the share of votes for the plurality.
    votes = pd.read_csv(cremad_meta_root / "processedResults" / "tabulatedVotes.csv")
    av = votes[votes.iloc[:, 0] // 100000 == 3].set_index("fileName")
    lab = s.labels["av"]
    agreement = lab.counts.max(axis=1) / lab.counts.sum(axis=1)
    np.testing.assert_allclose(agreement, av.loc[ids, "agreement"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(lab.intensity, av.loc[ids, "meanEmoResp"].to_numpy(), rtol=1e-6)
    # Demographics, intended emotion and level, sentence text.
    first = s.samples.iloc[0]
    assert (first["id"], first["age"], first["sex"], first["race"]) == (
        "1001_IEO_NEU_XX",
        51,
        "Male",
        "Caucasian",
    )
    assert first["transcript"] == "It's eleven o'clock"
    assert s.class_names[s.intended[0]] == "neutral"
    # VAVL's protocol: 5 seeded partitions of 63/14/14 speakers.
    p = s.protocol()
    assert p.name == "speaker-trials" and p.n_folds == 5
    speakers = s.samples["speaker"].to_numpy()
    for k in range(5):
        split = p.fold(k)
        assert [len(set(speakers[split == x])) for x in ("train", "dev", "test")] == [63, 14, 14]
    assert not np.array_equal(p.fold(0), p.fold(1))
    _assert_speaker_disjoint(s)
    # media is reported missing per clip rather than invented
    assert (s.samples["audio_path"] == "").all()
    info = run_avx("store", "info", store).stdout
    assert "multi-label 5197 (69.8%)" in info and "speaker-trials (default)" in info


@pytest.mark.slow
def test_speaker_trials_reproducible_and_configurable(cremad_meta_root: Path, tmp_path: Path) -> None:
    spk = [f"s{i}" for i in range(91)]
    a, b = speaker_trials(spk, k=3, seed=1), speaker_trials(spk, k=3, seed=1)
    assert np.array_equal(a.assign, b.assign)
    assert not np.array_equal(a.assign, speaker_trials(spk, k=3, seed=2).assign)
    store = tmp_path / "c10.zarr"
    run_avx(
        "store", "init", "--corpus", "cremad", "--root", cremad_meta_root, "--store", store,
        "--protocol", "speaker-trials:k=10,seed=3",
    )  # fmt: skip
    p = open_store(store).protocol()
    assert p.n_folds == 10 and p.params["seed"] == 3
    bad = run_avx(
        "store", "init", "--corpus", "cremad", "--root", cremad_meta_root, "--store", tmp_path / "x.zarr",
        "--protocol", "actor-folds", check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown protocol 'actor-folds'" in bad.stderr
    assert not (tmp_path / "x.zarr").exists()


def _copy_layout(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t[: t.rstrip().rfind("\n") + 13], "row 735: column H is empty; truncated file?"),
        (lambda t: t.replace("\n100002,0,0,0,3", "\n100002,0,0,0,-3"), "row 2: vote count -3 outside"),
        (lambda t: t.replace("1001_IEO_HAP_LO", "1001_IEO_HAP_ZZ", 1), "unknown level code 'ZZ'"),
        (lambda t: t.replace("\n100002,", "\n100001,", 1), "row 2: duplicate row id '100001'"),
        (lambda t: t.replace("1001_IEO_HAP_LO", "1001_IEO_NEU_XX", 1), "duplicate (queryType, fileName)"),
    ],
)
def test_cremad_bad_metadata_one_line_errors(tmp_path: Path, edit, message: str) -> None:
    root = _copy_layout(FIXTURES / "cremad", tmp_path / "c")
    votes = root / "processedResults" / "tabulatedVotes.csv"
    text = votes.read_text()
    if "1001_IEO_HAP_ZZ" in edit(text):  # a clip name must be unknown everywhere
        (root / "SentenceFilenames.csv").unlink()
    votes.write_text(edit(text))
    with pytest.raises(CorpusFileError) as e:
        load_corpus("cremad", root)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "tabulatedVotes.csv" in str(e.value) or "SentenceFilenames" in str(e.value)


def test_cremad_duplicate_clip_and_missing_media(tmp_path: Path) -> None:
    root = _copy_layout(FIXTURES / "cremad", tmp_path / "c")
    listing = root / "SentenceFilenames.csv"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(
        CorpusFileError, match=r"SentenceFilenames.csv, row 246: duplicate clip '1001_IEO_NEU_XX'"
    ):
        load_corpus("cremad", root)
    listing.write_text("\n".join(lines) + "\n")
    (root / "AudioWAV").mkdir()
    (root / "AudioWAV" / "1001_IEO_NEU_XX.wav").write_bytes(b"")  # a partial download: one file
    meta = load_corpus("cremad", root)
    assert (meta.samples["audio_path"] != "").sum() == 1


# -- RAVDESS ---------------------------------------------------------------------------
REAL_RAVDESS_NAMES = ["01-01-01-01-01-01-01.mp4", "02-01-06-01-02-01-12.mp4", "03-02-05-02-02-02-24.wav"]


def _ravdess(root: Path) -> Path:
    for actor in range(1, 25):
        d = root / "Video_Speech" / f"Actor_{actor:02d}"
        d.mkdir(parents=True)
        for emo, inten in ((1, 1), (3, 2), (8, 1)):
            for mod in ("01", "02", "03"):
                ext = "wav" if mod == "03" else "mp4"
                (d / f"{mod}-01-{emo:02d}-{inten:02d}-01-01-{actor:02d}.{ext}").write_bytes(b"")
    # actor 3 has only the audio-only zip of one recording
    for p in (root / "Video_Speech" / "Actor_03").glob("0[12]-01-08-*"):
        p.unlink()
    return root


def test_ravdess_replica(tmp_path: Path) -> None:
    from avx.corpora.ravdess import parse_name

    for name in REAL_RAVDESS_NAMES:
        f = parse_name(Path(name))
        assert f["key"] == name[3:-4]
    assert parse_name(Path("03-02-05-02-02-02-24.wav"))["channel"] == "song"
    assert parse_name(Path("02-01-06-01-02-01-12.mp4"))["sex"] == "female"
    s = _store(tmp_path, "ravdess", _ravdess(tmp_path / "r"))
    assert len(s.samples) == 24 * 3 and s.class_names[s.intended[0]] == "neutral"
    row = s.samples.set_index("id").loc["01-03-02-01-01-05"]
    assert row["audio_path"].endswith("03-01-03-02-01-01-05.wav")
    assert row["video_path"].endswith("01-01-03-02-01-01-05.mp4") and row["sex"] == "male"
    only_audio = s.samples.set_index("id").loc["01-08-01-01-01-03"]
    assert only_audio["video_path"] == "" and only_audio["audio_path"].endswith(".wav")
    folds = s.protocol("actor-folds")
    assert s.default_protocol == "actor-folds" and folds.n_folds == 5
    speakers = s.samples["speaker"].to_numpy()
    split = folds.fold(0)
    assert sorted(set(speakers[split == "test"])) == ["01", "02", "03", "04"]
    assert sorted(set(speakers[split == "dev"])) == ["05", "06", "07", "08"]
    assert len(set(speakers[split == "train"])) == 16
    assert sorted(set(speakers[folds.fold(4) == "test"])) == ["17", "18", "19", "20"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("01-01-09-01-01-01-01.mp4", "unknown emotion code '09'"),
        ("01-01-01-02-01-01-01.mp4", "neutral has no strong intensity"),
        ("01-01-01-01-03-01-01.mp4", "unknown statement code '03'"),
        ("01-01-01-01-01-01-02.mp4", "does not match its folder Actor_01"),
    ],
)
def test_ravdess_bad_names(tmp_path: Path, name: str, message: str) -> None:
    d = tmp_path / "Actor_01"
    d.mkdir()
    (d / name).write_bytes(b"")
    with pytest.raises(CorpusFileError, match=message) as e:
        load_corpus("ravdess", tmp_path)
    assert name in str(e.value)


# -- IEMOCAP ---------------------------------------------------------------------------
def _iemocap(root: Path, bad: str = "") -> Path:
    for n in range(1, 6):
        dialog = f"Ses0{n}F_impro0{n}"
        ev = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True)
        vad = "6.0000" if bad == "vad" and n == 2 else "2.5000"
        text = (
            f"% header\n\n[6.2901 - 8.2357]\t{dialog}_F000\tneu\t[{vad}, 2.5000, 2.5000]\n"
            "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nC-F1:\tAnger;\t()\n"
            "A-E3:\tval 3; act 2; dom  2;\t()\n\n"
            f"[10.0100 - 11.3925]\t{dialog}_M000\t{'zzz' if bad == 'code' else 'fru'}\t"
            "[1.5000, 4.0000, 4.5000]\n"
            "C-E1:\tFrustration; Anger;\t()\nC-E3:\tFrustration;\t()\nC-E4:\tOther:annoyed;\t(x)\n"
            f"\n[12.0 - 13.5]\t{dialog}_F001\txxx\t[3.0000, 3.0000, 3.0000]\n"
            "C-E1:\tHappiness;\t()\nC-E2:\tExcited;\t()\n"
        )
        (ev / f"{dialog}.txt").write_text(text)
        wav = root / f"Session{n}" / "sentences" / "wav" / dialog
        wav.mkdir(parents=True)
        (wav / f"{dialog}_F000.wav").write_bytes(b"")
        avi = root / f"Session{n}" / "dialog" / "avi" / "DivX"
        avi.mkdir(parents=True)
        (avi / f"{dialog}.avi").write_bytes(b"")
        tr = root / f"Session{n}" / "dialog" / "transcriptions"
        tr.mkdir(parents=True)
        (tr / f"{dialog}.txt").write_text(f"{dialog}_F000 [006.2901-008.2357]: Excuse me.\n")
    return root


def test_iemocap_replica(tmp_path: Path) -> None:
    s = _store(tmp_path, "iemocap", _iemocap(tmp_path / "i"))
    assert len(s.samples) == 15
    ids = s.samples["id"].tolist()
    m = ids.index("Ses01F_impro01_M000")
    votes = dict(zip(s.class_names, s.labels["av"].counts[m], strict=True))
    assert votes["frustration"] == 2 and votes["anger"] == 1 and votes["other"] == 1
    f = ids.index("Ses01F_impro01_F000")
    assert s.labels["av"].counts[f].sum() == 2  # the actor's self-evaluation is not a vote
    consensus = s.categorical("consensus")
    assert s.class_names[consensus[m]] == "frustration" and consensus[ids.index("Ses01F_impro01_F001")] == -1
    dims = s.dimensions
    assert dims.names == ["valence", "arousal", "dominance"] and (dims.low, dims.high) == (1.0, 5.0)
    np.testing.assert_allclose(dims.scaled()[m], [-0.75, 0.5, 0.75])
    row = s.samples.iloc[f]
    assert row["speaker"] == "Ses01F" and row["audio_path"].endswith("Ses01F_impro01_F000.wav")
    assert row["video_path"].endswith("Ses01F_impro01.avi") and row["video_start"] == pytest.approx(6.2901)
    assert row["transcript"] == "Excuse me." and s.samples.iloc[m]["speaker"] == "Ses01M"
    loso = s.protocol("leave-one-session-out")
    assert s.default_protocol == "leave-one-session-out" and loso.n_folds == 10
    speakers = s.samples["speaker"].to_numpy()
    fold8 = loso.fold(8)  # COLD's split: train sessions 1-4, session 5 speakers as dev and test
    assert set(speakers[fold8 == "train"]) == {f"Ses0{n}{g}" for n in range(1, 5) for g in "FM"}
    assert (set(speakers[fold8 == "dev"]), set(speakers[fold8 == "test"])) == ({"Ses05F"}, {"Ses05M"})
    assert set(speakers[loso.fold(9) == "test"]) == {"Ses05F"}


@pytest.mark.parametrize(
    ("bad", "message"), [("vad", "line 3: valence"), ("code", "unknown consensus code 'zzz'")]
)
def test_iemocap_bad_labels(tmp_path: Path, bad: str, message: str) -> None:
    with pytest.raises(CorpusFileError, match=message) as e:
        load_corpus("iemocap", _iemocap(tmp_path / "i", bad))
    assert "EmoEvaluation" in str(e.value)


# -- MSP-IMPROV ------------------------------------------------------------------------
def _msp(root: Path, extra: str = "") -> Path:
    lines = []
    for session in range(1, 4):
        for gender in "FM":
            for scen, letter in (("T", "A"), ("S", "H"), ("P", "X"), ("R", "S")):
                name = f"MSP-IMPROV-S0{session}A-{gender}0{session}-{scen}-FM01"
                audio = root / "Audio" / f"session{session}" / f"S0{session}A" / scen
                audio.mkdir(parents=True, exist_ok=True)
                (audio / f"{name}.wav").write_bytes(b"")
                lines.append(f"UTD-IMPROV-S0{session}A-{gender}0{session}-{scen}-FM01.avi; {letter}; "
                             "A:4.000000; V:2.000000; D:3.500000; N:2.000000")  # fmt: skip
                lines += ["E1; Angry; Frustrated;", "E2; angry;", "E3; Happy;", "E4; Confused;"]
    (root / "Evaluation.txt").write_text("\n".join(lines) + "\n" + extra)
    return root


def test_msp_improv_replica(tmp_path: Path) -> None:
    s = _store(tmp_path, "msp-improv", _msp(tmp_path / "m"))
    assert len(s.samples) == 24
    row = s.samples.iloc[0]
    assert row["id"] == "MSP-IMPROV-S01A-F01-T-FM01" and row["speaker"] == "F01"
    assert row["scenario"] == "target" and row["audio_path"].endswith("MSP-IMPROV-S01A-F01-T-FM01.wav")
    assert dict(zip(s.class_names, s.labels["av"].counts[0], strict=True)) == {
        "anger": 2, "happy": 1, "sad": 0, "neutral": 0, "other": 1,
    }  # fmt: skip
    assert set(s.samples["scenario"]) == {"target", "improvised", "natural", "read"}
    consensus = s.categorical("consensus")
    assert [s.class_names[c] if c >= 0 else None for c in consensus[:4]] == ["anger", "happy", None, "sad"]
    intended = s.categorical("intended")
    assert intended[:4].tolist() == [0, -1, -1, 0]  # only target and read sentences carry an intent
    np.testing.assert_allclose(s.dimensions.values[0], [4.0, 2.0, 3.5, 2.0])
    assert {"speaker-trials", "leave-one-session-out"} <= set(s.protocols)


def test_msp_improv_bad_attribute(tmp_path: Path) -> None:
    extra = "UTD-IMPROV-S09A-F01-T-FM01.avi; A; A:7.0; V:2.0; D:3.0; N:2.0\n"
    with pytest.raises(CorpusFileError, match=r"Evaluation.txt, line 121: attribute 7 outside"):
        load_corpus("msp-improv", _msp(tmp_path / "m", extra))


# -- AVEC 2019 CES ---------------------------------------------------------------------
def _avec(root: Path, bad: bool = False) -> Path:
    for d in ("audio", "video", "labels"):
        (root / d).mkdir(parents=True)
    for name in ("Train_DE_01", "Train_HU_02", "Devel_DE_01", "Test_CN_01"):
        (root / "audio" / f"{name}.wav").write_bytes(b"")
        if not name.startswith("Test"):
            t = np.arange(30) / 10
            v = np.stack([np.sin(t), np.cos(t) * 0.5], axis=1)
            if bad and name == "Devel_DE_01":
                v[7, 1] = 1.5
            rows = [f"{name};{a:.1f};{x:.4f};{y:.4f};0" for a, (x, y) in zip(t, v, strict=True)]
            (root / "labels" / f"{name}.csv").write_text(
                "name;timeStamp;arousal;valence;liking\n" + "\n".join(rows) + "\n"
            )
    return root


def test_avec2019_ces_replica(tmp_path: Path) -> None:
    s = _store(tmp_path, "avec2019-ces", _avec(tmp_path / "a"))
    assert s.samples["id"].tolist() == ["Devel_DE_01", "Test_CN_01", "Train_DE_01", "Train_HU_02"]
    assert s.samples["culture"].tolist() == ["DE", "CN", "DE", "HU"]
    split = s.split()
    assert split.tolist() == ["dev", "test", "train", "train"]
    cont = s.continuous
    assert cont.names == ["arousal", "valence"] and cont.rate == pytest.approx(10.0)
    assert len(cont.values[1]) == 0 and cont.values[0].shape == (30, 2)
    np.testing.assert_allclose(cont.values[2][:, 0], np.sin(np.arange(30) / 10), atol=1e-4)
    np.testing.assert_allclose(cont.times[2], np.arange(30) / 10)


def test_avec2019_ces_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(CorpusFileError, match=r"Devel_DE_01.csv, row 8: label 1.5 outside"):
        load_corpus("avec2019-ces", _avec(tmp_path / "a", bad=True))


# -- CMU-MOSEI -------------------------------------------------------------------------
def _csd(path: Path, top: str, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A computational sequence in the CMU SDK's HDF5 layout."""
    with h5py.File(path, "w") as f:
        g = f.create_group(top)
        d = g.create_group("data")
        for vid, (feats, iv) in data.items():
            v = d.create_group(vid)
            v.create_dataset("features", data=feats)
            v.create_dataset("intervals", data=iv)
        m = g.create_group("metadata")
        m.create_dataset("root name", data=np.array([top], dtype=h5py.string_dtype()))


def _mosei_csd(root: Path, bad: bool = False) -> dict[str, np.ndarray]:
    root.mkdir()
    rng = np.random.default_rng(0)
    vids = ["-3g5yACwYnA", "zk2jTlAtvSU", "ZUXBRvtny7o", "_q7DM8WkzAQ"]
    labels, covarep, facet = {}, {}, {}
    for i, vid in enumerate(vids):
        lab = np.array([[1.0, 1.0, 0, 0, 0, 0, 0.333], [-2.5, 0, 2.0, 1.0, 0, 0, 0]])
        if bad and i == 2:
            lab[1, 0] = -3.5
        labels[vid] = (lab, np.array([[0.0, 2.0], [2.0, 5.0]]))
        t = np.arange(0, 5, 0.5)
        feats = rng.normal(size=(len(t), 74)).astype(np.float32)
        feats[0, 3] = -np.inf
        covarep[vid] = (feats, np.stack([t, t + 0.5], axis=1))
        facet[vid] = (
            rng.normal(size=(5, 35)).astype(np.float32),
            np.stack([np.arange(5.0), np.arange(5.0) + 1], 1),
        )
    _csd(root / "CMU_MOSEI_Labels.csd", "All Labels", labels)
    _csd(root / "CMU_MOSEI_COVAREP.csd", "COVAREP", covarep)
    _csd(root / "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", facet)
    (root / "folds.json").write_text(json.dumps({"train": vids[:2], "valid": vids[2:3], "test": vids[3:]}))
    return covarep


def test_cmu_mosei_csd_replica(tmp_path: Path) -> None:
    covarep = _mosei_csd(tmp_path / "mosei")
    s = _store(tmp_path, "cmu-mosei", tmp_path / "mosei")
    assert s.samples["id"].tolist()[:2] == ["-3g5yACwYnA[0]", "-3g5yACwYnA[1]"]
    assert s.class_names == ["happy", "sad", "anger", "surprise", "disgust", "fear"]
    intensity, presence = s.multilabel
    assert presence[0].tolist() == [1, 0, 0, 0, 0, 1] and presence[1].tolist() == [0, 1, 1, 0, 0, 0]
    np.testing.assert_allclose(intensity[0], [1.0, 0, 0, 0, 0, 0.333], rtol=1e-6)
    np.testing.assert_allclose(s.dimensions.values[:2, 0], [1.0, -2.5])
    np.testing.assert_allclose(s.dimensions.scaled()[1, 0], -2.5 / 3, rtol=1e-6)
    fold_of = {"-3g5yACwYnA": "train", "zk2jTlAtvSU": "train", "ZUXBRvtny7o": "dev", "_q7DM8WkzAQ": "test"}
    assert s.split("official").tolist() == [fold_of[v] for v in s.samples["video"]]
    assert sorted(s.streams) == ["audio/covarep", "video/facet-4-2"]
    audio = s.stream("audio/covarep")
    assert audio.provenance["source"] == "corpus-provided" and audio.provenance["sequence"] == "COVAREP"
    assert len(audio.provenance["sha256"]) == 64
    feats, iv = covarep["-3g5yACwYnA"]
    expected = feats[(iv[:, 0] < 2.0) & (iv[:, 1] > 0.0)]
    expected = np.where(np.isfinite(expected), expected, 0)
    np.testing.assert_array_equal(audio["-3g5yACwYnA[0]"], expected)
    np.testing.assert_array_equal(audio.timestamps("-3g5yACwYnA[1]"), np.arange(2.0, 5.0, 0.5))
    assert s.stream("video/facet-4-2")["zk2jTlAtvSU[1]"].shape == (3, 35)  # [2,3), [3,4), [4,5)


def test_cmu_mosei_label_out_of_range(tmp_path: Path) -> None:
    _mosei_csd(tmp_path / "mosei", bad=True)
    with pytest.raises(
        CorpusFileError, match=r"CMU_MOSEI_Labels.csd, video ZUXBRvtny7o segment 1: sentiment -3.5"
    ):
        load_corpus("cmu-mosei", tmp_path / "mosei")


def _release_pickle(path: Path, n_labels: int, ids_fn, lengths: bool = False, sizes=(6, 2, 2)) -> dict:
    rng = np.random.default_rng(1)
    data = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        d = {
            "text": rng.normal(size=(n, 5, 768)).astype(np.float32),
            "audio": rng.normal(size=(n, 5, 74)).astype(np.float32),
            "vision": rng.normal(size=(n, 5, 35)).astype(np.float32),
            "labels": (rng.random(size=(n, 1, n_labels)) > 0.5).astype(np.float32),
            "id": [ids_fn(split, i) for i in range(n)],
        }
        if lengths:
            d["audio_lengths"] = np.full(n, 3)
        data[split] = d
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def test_cmu_mosei_pickle_replica(tmp_path: Path) -> None:
    data = _release_pickle(
        tmp_path / "p" / "mosei_aligned_50.pkl", 6, lambda s, i: np.array([f"{s}vid{i // 2}", i, i + 1]), True
    )
    s = _store(tmp_path, "cmu-mosei", tmp_path / "p")
    assert len(s.samples) == 10 and s.samples["speaker"].iloc[0] == "trainvid0"
    assert sorted(s.streams) == ["audio/covarep", "text/bert", "video/facet"]
    np.testing.assert_array_equal(s.multilabel[1][:6], data["train"]["labels"][:, 0].astype(np.uint8))
    first = s.samples["id"].iloc[0]
    np.testing.assert_array_equal(s.stream("audio/covarep")[first], data["train"]["audio"][0, :3])
    np.testing.assert_array_equal(s.stream("text/bert")[first], data["train"]["text"][0])
    assert s.stream("audio/covarep").provenance["padding"] == "trimmed by *_lengths"
    assert s.split("official").tolist() == ["train"] * 6 + ["dev"] * 2 + ["test"] * 2


# -- M3ED ------------------------------------------------------------------------------
def test_m3ed_replica(tmp_path: Path) -> None:
    root = tmp_path / "m3ed"
    ann = {}
    movies = ["anjia", "baobeier", "chengzi"]
    for movie in movies:
        ann[movie] = {
            f"{movie}_1": {
                "SpeakerInfo": {
                    "A": {"Name": "Li", "Gender": "female", "Age": "young"},
                    "B": {"Name": "Wang"},
                },
                "Dialog": {
                    f"{movie}_1_{k}": {
                        "Speaker": "AB"[(k + 1) % 2],
                        "StartTime": "00:00:01",
                        "EndTime": "00:00:03.5",
                        "Text": "你好",
                        "EmoAnnotation": {"final_main_emo": "Happy", "final_mul_emo": "Happy,Surprise"}
                        if k == 1
                        else {"final_main_emo": "Neutral", "final_mul_emo": ["Neutral"]},
                    }
                    for k in range(1, 4)
                },
            }
        }
    root.mkdir()
    (root / "annotation.json").write_text(json.dumps(ann, ensure_ascii=False))
    (root / "splitInfo").mkdir()
    for split, movie in zip(("train", "val", "test"), movies, strict=True):
        (root / "splitInfo" / f"movie_list_{split}.txt").write_text(movie + "\n")
    (root / "audio").mkdir()
    (root / "audio" / "A_anjia_1_1.wav").write_bytes(b"")
    ids = [f"{m}_1_{k}" for m in movies for k in range(1, 4)]
    order = iter(ids)
    _release_pickle(root / "m3ed_features.pkl", 7, lambda s, i: next(order), sizes=(3, 3, 3))
    s = _store(tmp_path, "m3ed", root)
    assert s.samples["duration"].iloc[0] == pytest.approx(2.5)
    assert len(s.samples) == 9 and s.samples["speaker"].iloc[0] == "anjia:Li"
    presence = s.multilabel[1]
    cls = s.class_names
    assert {cls[i] for i in np.flatnonzero(presence[0])} == {"happy", "surprise"}
    assert cls[s.categorical("main")[1]] == "neutral"
    assert (
        s.samples["audio_path"].iloc[0] == "audio/A_anjia_1_1.wav"
        and s.samples["transcript"].iloc[0] == "你好"
    )
    assert s.split("official").tolist() == ["train"] * 3 + ["dev"] * 3 + ["test"] * 3
    assert sorted(s.streams) == ["audio/covarep", "text/bert", "video/facet"]
    bad = json.loads((root / "annotation.json").read_text())
    bad["anjia"]["anjia_1"]["Dialog"]["anjia_1_2"]["EmoAnnotation"]["final_mul_emo"] = "Joyful"
    (root / "annotation.json").write_text(json.dumps(bad))
    with pytest.raises(CorpusFileError, match="utterance anjia_1_2: unknown emotion 'Joyful'"):
        load_corpus("m3ed", root)


# -- manifest --------------------------------------------------------------------------
def test_manifest_replica(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    for i in range(5):
        (tmp_path / "wav" / f"u{i}.wav").write_bytes(b"")
    df = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(6)],
            "speaker": ["a", "a", "b", "b", "c", "d"],
            "audio_path": [f"wav/u{i}.wav" for i in range(6)],  # u5's file is missing
            "transcript": ["hi"] * 6,
            "label": ["happy", "sad", "sad", "", "happy", "neutral"],
            "labels": ["happy;sad", "sad", "", "neutral", "happy", "sad;neutral"],
            "dim:valence[1,5]": [1, 2, 3, 4, 5, 3],
            "dim:arousal[1,5]": [5, 4, 3, 2, 1, 3],
            "accent": ["x", "y", "x", "y", "x", "y"],
            "split": ["train", "train", "dev", "dev", "test", "test"],
        }
    )
    csv = tmp_path / "lab.csv"
    df.to_csv(csv, index=False)
    s = _store(tmp_path, "manifest", csv)
    assert s.class_names == ["happy", "neutral", "sad"]
    assert s.categorical("label").tolist() == [0, 2, 2, -1, 0, 1]
    assert s.multilabel[1][0].tolist() == [1, 0, 1] and s.multilabel[1][2].sum() == 0
    np.testing.assert_allclose(s.dimensions.scaled()[0], [-1.0, 1.0])
    assert s.samples["accent"].tolist() == df["accent"].tolist()
    assert s.samples["audio_path"].iloc[5] == "" and bool(s.samples["audio_listed"].iloc[5])
    assert s.split("official").tolist() == df["split"].tolist()
    df.to_parquet(tmp_path / "manifest.parquet")
    assert len(load_corpus("manifest", tmp_path).samples) == 6  # a directory with manifest.parquet
    df.loc[3, "id"] = "u1"
    df.to_csv(csv, index=False)
    with pytest.raises(CorpusFileError, match=r"lab.csv, row 4: duplicate id 'u1'"):
        load_corpus("manifest", csv)


def test_every_registered_corpus_has_a_list_line() -> None:
    names = CORPORA.names()
    assert names == [
        "avec2019-ces",
        "avx-demo",
        "cmu-mosei",
        "cremad",
        "iemocap",
        "m3ed",
        "manifest",
        "msp-improv",
        "ravdess",
    ]
    out = run_avx("corpus", "list").stdout
    for name in names:
        assert name in out
    assert "tabulatedVotes.csv" in out and "Actor_XX" in out


class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted release could carry)."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_release_pickle_with_a_payload_is_refused(
    tmp_path: Path, protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Corpus pickles go through a restricted unpickler: arrays and plain data only."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "mosei"
    data = _release_pickle(root / "mosei.pkl", 6, lambda s, i: f"{s}vid{i}")
    data["train"]["note"] = _Payload()
    (root / "mosei.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    with pytest.raises(AvxError, match=r"mosei\.pkl.*refused.*(posix|os|nt)\.system"):
        load_corpus("cmu-mosei", root)
    assert not (tmp_path / "PWNED").exists()
    # The same file without the payload, written by an old protocol, still loads.
    del data["train"]["note"]
    (root / "mosei.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    assert len(load_corpus("cmu-mosei", root).samples) == 10
