"""Derived rating labels, checked against the real CREMA-D metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd

from avx.corpora import load_corpus
from avx.corpora.cremad import CLASS_CODES
from avx.store_schema import create_store, derive_rater_labels, open_store, validate_store
from tests.conftest import FIXTURES


def _joined(plurality_row: np.ndarray) -> str:
    """CREMA-D's emoVote spelling: plurality class codes joined by ':'."""
    return ":".join(c for c, on in zip(CLASS_CODES, plurality_row, strict=True) if on)


def test_derived_labels_definitions() -> None:
    counts = np.array([[0, 0, 0, 1, 10, 0], [2, 0, 0, 2, 1, 1], [0] * 6, [1, 1, 1, 1, 1, 2]])
    lab = derive_rater_labels(counts)
    np.testing.assert_allclose(lab.distribution[0], counts[0] / 11)
    assert np.isnan(lab.distribution[2]).all()
    # p > 1/6 strictly: 2/6 and 2/6 are in, 1/6 is not.
    assert lab.multihot[1].tolist() == [1, 0, 0, 1, 0, 0]
    assert lab.multihot[3].tolist() == [0, 0, 0, 0, 0, 1]  # 1/7 < 1/6 < 2/7
    assert lab.plurality[1].tolist() == [1, 0, 0, 1, 0, 0]  # tie kept
    assert lab.plurality[2].sum() == 0
    assert lab.hard_labels().tolist() == [4, -1, -1, 5]


def test_cremad_plurality_matches_tabulated_emo_vote(tmp_path) -> None:
    meta = load_corpus("cremad", FIXTURES / "cremad")
    assert len(meta.samples) == 245 and meta.samples["speaker"].nunique() == 3
    votes = pd.read_csv(FIXTURES / "cremad" / "processedResults" / "tabulatedVotes.csv")
    pos = {cid: i for i, cid in enumerate(meta.samples["id"])}
    checked = 0
    for qt, rater in ((1, "voice"), (2, "face"), (3, "av")):
        lab = derive_rater_labels(meta.votes[rater])
        sub = votes[votes.iloc[:, 0] // 100000 == qt]
        for _, row in sub.iterrows():
            derived = _joined(lab.plurality[pos[row.fileName]])
            assert derived == row.emoVote, (rater, row.fileName)
            checked += 1
    assert checked == 735

    store = create_store(tmp_path / "c.zarr", meta)
    s = open_store(store)
    assert validate_store(store).ok
    summary = pd.read_csv(FIXTURES / "cremad" / "summaryTable.csv").set_index("FileName")
    for rater, col in (("voice", "VoiceVote"), ("face", "FaceVote"), ("av", "MultiModalVote")):
        plurality = s.labels[rater].plurality
        for i, cid in enumerate(s.samples["id"]):
            derived = _joined(plurality[i])
            assert derived == summary.loc[cid, col], (rater, cid)
    assert s.samples.loc[0, "sex"] == "Male" and s.samples.loc[0, "age"] == 51
    assert set(s.split()) <= {"train", "dev", "test"}
    # Intended emotion from the file name.
    assert s.class_names[s.intended[0]] == "neutral" and s.samples.loc[0, "id"].endswith("NEU_XX")
