"""Store schema: round trip, commit protocol, validation failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avx.corpora import CorpusMetadata
from avx.corpora.protocols import official
from avx.errors import AvxError, StoreError
from avx.store_schema import (
    SCHEMA_VERSION,
    Status,
    StreamSpec,
    StreamWriter,
    create_store,
    open_store,
    validate_store,
)
from avx.store_schema.writer import spec_mismatch
from avx.store_schema.zarrio import open_root

N = 10


def _meta() -> CorpusMetadata:
    samples = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(N)],
            "speaker": [f"p{i % 3}" for i in range(N)],
            "duration": np.linspace(1, 2, N),
            "audio_path": [f"a/s{i}.wav" for i in range(N)],
            "video_path": [""] * N,
            "age": [20.0, np.nan] * (N // 2),
        }
    )
    rng = np.random.default_rng(0)
    votes = {r: rng.integers(0, 5, (N, 3)) for r in ("voice", "face", "av")}
    split = official(["train"] * 6 + ["dev"] * 2 + ["test"] * 2, source="toy")
    split.assign[:] = np.array([0, 1, 2])[np.arange(N) % 3].reshape(-1, 1)  # by speaker p0/p1/p2
    return CorpusMetadata(
        "toy",
        samples,
        ["a", "b", "c"],
        votes,
        categorical={"intended": np.arange(N) % 3},
        protocols={"official": split},
    )


SPEC = StreamSpec(
    name="audio/toy",
    frame_shape=(4,),
    dtype="float16",
    frame_rate=100.0,
    fields={"flag": {"shape": [], "dtype": "bool"}},
    provenance={"backbone": "toy", "weights": "random-init", "hop": 160},
)


def _frames(i: int) -> np.ndarray:
    return (np.arange((i + 1) * 4, dtype=np.float32).reshape(i + 1, 4) / 7).astype(np.float32)


def _write(store: Path, rows, *, part_size: int = 3, fail=()) -> StreamWriter:
    w = StreamWriter(open_root(store, writable=True), SPEC, part_size=part_size)
    for i in rows:
        if i in fail:
            w.fail(i, f"s{i}.wav: silent audio")
        else:
            w.add(i, _frames(i), np.arange(i + 1) / 100, flag=np.arange(i + 1) % 2 == 0)
    w.close()
    return w


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return create_store(tmp_path / "t.zarr", _meta())


def test_round_trip(store: Path) -> None:
    _write(store, range(N), fail={4})
    s = open_store(store)
    assert list(s.samples["id"]) == [f"s{i}" for i in range(N)]
    assert np.isnan(s.samples["age"][1]) and s.samples["age"][0] == 20
    assert s.labels["voice"].counts.shape == (N, 3) and s.intended.tolist() == list(np.arange(N) % 3)
    assert s.streams == ["audio/toy"]
    st = s.stream("audio/toy")
    assert st.committed_ids == [f"s{i}" for i in range(N) if i != 4]
    assert st.failures == {"s4": "s4.wav: silent audio"}
    assert st.status("s4") == Status.FAILED
    for i in (0, 3, 9):
        np.testing.assert_array_equal(st[f"s{i}"], _frames(i).astype(np.float16))
        np.testing.assert_array_equal(st.timestamps(f"s{i}"), np.arange(i + 1) / 100)
        assert st.field(f"s{i}", "flag").tolist() == (np.arange(i + 1) % 2 == 0).tolist()
    many = st.read_many(["s9", "s0", "s5"])
    assert [len(a) for a in many] == [10, 1, 6]
    with pytest.raises(KeyError, match="failed"):
        st["s4"]
    assert st.provenance["hop"] == 160 and st.spec.dtype == "float16"
    assert validate_store(store, deep=True).ok
    info = s.info()
    assert info["streams"]["audio/toy"]["committed"] == N - 1
    json.dumps(info)  # JSON-able


def test_resume_skips_done_and_refuses_other_settings(store: Path) -> None:
    _write(store, range(4))
    w = StreamWriter(open_root(store, writable=True), SPEC)
    assert w.todo(list(range(N))) == list(range(4, N))
    other = StreamSpec(**{**SPEC.__dict__, "provenance": {**SPEC.provenance, "hop": 320}})
    with pytest.raises(StoreError, match="provenance 'hop' is 160 in the store, 320 now"):
        StreamWriter(open_root(store, writable=True), other)


def test_streams_written_before_configs_were_recorded_still_resume(store: Path) -> None:
    """Provenance without ``config`` (older avx) resumes under a newer avx that records
    one; once a stream has a config, a different config is refused like any setting."""
    _write(store, range(4))
    newer = StreamSpec(**{**SPEC.__dict__, "provenance": {**SPEC.provenance, "config": {"hop": 160}}})
    w = StreamWriter(open_root(store, writable=True), newer)
    assert w.todo(list(range(N))) == list(range(4, N))
    assert spec_mismatch(newer, newer) is None
    other = StreamSpec(**{**SPEC.__dict__, "provenance": {**SPEC.provenance, "config": {"hop": 320}}})
    assert spec_mismatch(newer, other) == "provenance 'config' is {'hop': 160} in the store, {'hop': 320} now"
    assert spec_mismatch(other, SPEC) is not None  # a config may not be dropped either


def test_float16_overflow_is_refused(store: Path) -> None:
    w = StreamWriter(open_root(store, writable=True), SPEC)
    with pytest.raises(StoreError, match="float16 cannot represent"):
        w.add(0, np.full((2, 4), 1e6, np.float32), np.arange(2.0), flag=np.ones(2, bool))


def test_uncommitted_part_is_invisible_then_removed(store: Path) -> None:
    _write(store, range(3))
    # Simulate a crash after a part's arrays were written but before the index commit.
    parts = store / "streams/audio/toy/parts"
    shutil.copytree(parts / "000000", parts / "000007")
    s = open_store(store).stream("audio/toy")
    assert len(s) == 3
    report = validate_store(store)
    assert report.ok and any("uncommitted part" in w for w in report.warnings)
    _write(store, range(3, 5))
    assert not (parts / "000007").exists()
    assert not any("uncommitted" in w for w in validate_store(store).warnings)


def _corrupt_and_check(store: Path, deep: bool, pattern: str) -> None:
    report = validate_store(store, deep=deep)
    assert not report.ok
    assert pattern in report.summary(), report.summary()
    assert "\n" not in report.summary()


def test_validate_truncated_array(store: Path) -> None:
    _write(store, range(N))
    meta = store / "streams/audio/toy/parts/000000/data/zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] -= 1
    meta.write_text(json.dumps(doc))
    _corrupt_and_check(store, False, "truncated array")


def test_validate_truncated_chunk_file(store: Path) -> None:
    _write(store, range(N))
    chunk = store / "streams/audio/toy/parts/000001/data/c/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    assert validate_store(store).ok  # metadata checks cannot see inside chunks...
    _corrupt_and_check(store, True, "unreadable chunk")  # ...the checksum can


def test_validate_missing_chunk(store: Path) -> None:
    _write(store, range(N))
    (store / "streams/audio/toy/parts/000001/timestamps/c/0").unlink()
    _corrupt_and_check(store, False, "chunks missing")


def test_validate_wrong_schema_version(store: Path) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["avx_schema"] = 99
    doc.pop("consolidated_metadata", None)
    meta.write_text(json.dumps(doc))
    _corrupt_and_check(store, False, f"schema version 99, this avx reads {SCHEMA_VERSION}")
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(store)


def test_validate_inconsistent_offsets(store: Path) -> None:
    _write(store, range(N))
    root = open_root(store, writable=True)
    index = root["streams/audio/toy/index"][...]
    index[1, 2] += 1  # sample 1 now starts one frame late inside its part
    root["streams/audio/toy/index"][...] = index
    _corrupt_and_check(store, False, "offsets inconsistent")


def test_validate_labels_must_match_votes(store: Path) -> None:
    root = open_root(store, writable=True)
    mh = root["labels/av/multihot"][...]
    mh[0] = 1 - mh[0]
    root["labels/av/multihot"][...] = mh
    _corrupt_and_check(store, False, "labels/av/multihot")


def test_validate_protocol_must_be_speaker_disjoint(store: Path, tmp_path: Path) -> None:
    assert validate_store(store).ok
    root = open_root(store, writable=True)
    assign = root["protocols/official/assign"][...]
    assign[3, 0] = 2  # sample s3 (speaker p0, in train) moved to test
    root["protocols/official/assign"][...] = assign
    _corrupt_and_check(store, False, "protocol 'official' fold 0: speaker p0 is in both train and test")
    bad = _meta()
    bad.protocols["official"].assign[3, 0] = 2
    with pytest.raises(AvxError, match="speaker p0 is in both train and test"):
        create_store(tmp_path / "x.zarr", bad)
    assert not (tmp_path / "x.zarr").exists()


def test_create_store_is_all_or_nothing(tmp_path: Path) -> None:
    bad = _meta()
    bad.votes["av"] = np.full((N, 3), -1)  # derive_rater_labels refuses negative counts
    with pytest.raises(ValueError):
        create_store(tmp_path / "x.zarr", bad)
    assert list(tmp_path.iterdir()) == []
    create_store(tmp_path / "y.zarr", _meta())
    with pytest.raises(StoreError, match="already exists"):
        create_store(tmp_path / "y.zarr", _meta())


def test_part_builder_streams_pieces_to_disk_and_rolls_back_a_failed_sample(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples added in pieces are written in whole chunks while they arrive (memory held
    stays below a chunk plus a piece), and a sample that fails half-way, some of it
    already on disk, leaves no trace: the part reads back as if it had never been added."""
    from avx.store_schema import spec as S
    from avx.store_schema.writer import PartBuilder

    monkeypatch.setattr(S, "TARGET_CHUNK_BYTES", 4 * SPEC.frame_bytes)  # chunks of 4 frames
    w = StreamWriter(open_root(store, writable=True), SPEC)
    b = PartBuilder(w.group, SPEC, w.reserve_part(), flush_bytes=3 * SPEC.frame_bytes)
    rng = np.random.default_rng(0)
    data = {i: rng.normal(size=(n, 4)).astype(np.float32) for i, n in [(0, 9), (1, 11), (2, 6), (3, 2)]}
    held = []

    def stream(i: int, upto: int | None = None) -> None:
        x = data[i][:upto]
        for a in range(0, len(x), 3):
            piece = x[a : a + 3]
            b.extend(piece, np.arange(a, a + len(piece)) / 10.0, flag=np.ones(len(piece), bool))
            held.append(b.held_frames)

    for i in (0, 1, 2, 3):
        b.begin(i)
        if i == 1:
            stream(1, upto=10)  # frames 9..18 of the part: 9..16 are on disk now
            assert b._on_disk > 9
            b.fail(1, "s1: NaN features")
        else:
            stream(i)
            b.end()
    assert max(held) < 4 + 3
    w.commit(b.write())
    w.close()
    st = open_store(store).stream("audio/toy")
    assert st.failures == {"s1": "s1: NaN features"}
    for i in (0, 2, 3):
        np.testing.assert_array_equal(st[f"s{i}"], data[i].astype(np.float16))
        np.testing.assert_array_equal(st.timestamps(f"s{i}"), np.arange(len(data[i])) / 10.0)
    assert validate_store(store, deep=True).ok
