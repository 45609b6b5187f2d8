"""CMU-MOSEI (Zadeh et al., 2018): YouTube opinion segments, sentiment and six emotions.

Most users have the released features, not raw media. Two layouts are read:

1. CMU Multimodal SDK computational sequences (HDF5 ``.csd``)::

       <root>/CMU_MOSEI_Labels.csd          labels ("All Labels")
       <root>/CMU_MOSEI_COVAREP.csd         audio 74-D   -> stream audio/covarep
       <root>/CMU_MOSEI_VisualFacet42.csd   visual 35-D  -> stream video/facet-4-2
       <root>/CMU_MOSEI_TimestampedWordVectors.csd  GloVe -> stream text/glove-vectors
       <root>/folds.json  or  cmu_mosei_std_folds.py    (optional: official folds)

   Each ``.csd`` holds one top group (the sequence name) with ``data/<video>/features
   [T, D]`` and ``data/<video>/intervals [T, 2]`` (seconds) and a ``metadata`` group.
   The labels sequence has one row per opinion segment: ``[sentiment, happy, sad,
   anger, surprise, disgust, fear]`` with the segment's interval. A sample is one
   segment, id ``<video>[<k>]`` (the SDK's naming); a feature stream holds the rows
   whose intervals overlap the segment, timestamped by their start time.

2. The aligned/unaligned pickles (``*.pkl``, keys ``train``/``valid``/``test`` ->
   ``text``/``audio``/``vision``/``labels``/``id``), see :mod:`avx.corpora._features`.

Labels: sentiment in [-3, 3] (a dimension) and six emotion intensities in [0, 3]
(multi-label presence = intensity > 0). Speaker = video id (MOSEI has about 1,000
speakers across 3,228 videos but does not release speaker ids), so speaker trials are
video-disjoint. Imported features get provenance ``source: corpus-provided``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from avx.corpora._features import flatten_splits, load_feature_pickle, pickle_streams, single_pickle
from avx.corpora._io import check_range, fail, require_dir, sha256_file
from avx.corpora.base import CORPORA, CorpusCard, CorpusMetadata, Dimensions, ImportedStream
from avx.corpora.protocols import official, speaker_trials

CLASS_NAMES = ["happy", "sad", "anger", "surprise", "disgust", "fear"]
MODALITY_HINTS = (
    ("audio", ("covarep", "opensmile", "acoustic", "audio")),
    ("video", ("facet", "openface", "visual", "vision")),
    ("text", ("glove", "word", "bert", "text", "language")),
)


def _h5():
    import h5py

    return h5py


def _top(f, path: Path):
    groups = [k for k in f if "data" in f[k]]
    if len(groups) != 1:
        raise fail(path, "not a computational sequence (expected one top group with data/ and metadata/)")
    return f[groups[0]], groups[0]


def read_csd_labels(path: Path) -> pd.DataFrame:
    """One row per segment: video, k, start, end, sentiment and six intensities."""
    h5py = _h5()
    rows = []
    try:
        with h5py.File(path, "r") as f:
            top, _ = _top(f, path)
            for vid in sorted(top["data"].keys()):
                g = top["data"][vid]
                feats, iv = np.asarray(g["features"]), np.asarray(g["intervals"])
                if feats.ndim != 2 or feats.shape[1] != 7 or len(iv) != len(feats):
                    raise fail(path, f"video {vid}: labels must be [segments, 7] with one interval each")
                for k, (lab, (a, b)) in enumerate(zip(feats, iv, strict=True)):
                    rows.append({"video": vid, "k": k, "start": float(a), "end": float(b), "labels": lab})
    except OSError as e:
        raise fail(path, f"unreadable HDF5 ({e})") from None
    if not rows:
        raise fail(path, "no labelled segments")
    df = pd.DataFrame(rows)
    labels = np.stack(df["labels"].to_list())
    where = [f"video {v} segment {k}" for v, k in zip(df["video"], df["k"], strict=True)]
    check_range(path, labels[:, 0], -3.0, 3.0, "sentiment", rows=where)
    check_range(path, labels[:, 1:], 0.0, 3.0, "emotion intensity", rows=where)
    return df


def _stream_name(top_name: str, path: Path) -> tuple[str, str] | None:
    key = f"{top_name} {path.stem}".lower()
    for modality, hints in MODALITY_HINTS:
        if any(h in key for h in hints):
            slug = re.sub(r"[^a-z0-9]+", "-", top_name.lower()).strip("-") or path.stem.lower()
            return modality, slug
    return None


def csd_stream(path: Path, segments: pd.DataFrame) -> ImportedStream | None:
    """A feature sequence as a stream over label segments (None for non-numeric ones)."""
    h5py = _h5()
    with h5py.File(path, "r") as f:
        top, top_name = _top(f, path)
        vids = list(top["data"].keys())
        if not vids:
            raise fail(path, "no videos in data/")
        first = top["data"][vids[0]]["features"]
        if first.dtype.kind not in "fiu" or first.ndim != 2:
            return None  # words / phones: text, not features
        dim = int(first.shape[1])
        meta = {k: str(np.asarray(v[()]).reshape(-1)[0]) for k, v in top.get("metadata", {}).items()}
    named = _stream_name(top_name, path)
    if named is None:
        raise fail(path, f"cannot tell the modality of sequence '{top_name}'")
    sha = sha256_file(path)

    def frames() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        with h5py.File(path, "r") as f:
            data = _top(f, path)[0]["data"]
            for vid, group in segments.groupby("video", sort=False):
                if vid not in data:
                    continue
                feats = np.asarray(data[vid]["features"], dtype=np.float32)
                iv = np.asarray(data[vid]["intervals"], dtype=np.float64)
                for row, a, b in zip(group.index, group["start"], group["end"], strict=True):
                    sel = (iv[:, 0] < b) & (iv[:, 1] > a)
                    x = feats[sel]
                    yield int(row), np.where(np.isfinite(x), x, 0), iv[sel, 0]

    return ImportedStream(
        name=f"{named[0]}/{named[1]}",
        frame_shape=(dim,),
        frame_rate=None,
        provenance={
            "file": path.name,
            "sha256": sha,
            "layout": "CMU SDK computational sequence",
            "sequence": top_name,
            "metadata": meta,
            "nonfinite": "replaced by 0",
            "segmenting": "rows whose interval overlaps the label segment",
        },
        frames=frames,
    )


def read_folds(root: Path) -> dict[str, str] | None:
    """Video -> split from ``folds.json`` or the SDK's ``cmu_mosei_std_folds.py``."""
    if (p := root / "folds.json").exists():
        try:
            folds = json.loads(p.read_text())
        except ValueError as e:
            raise fail(p, f"malformed JSON ({e})") from None
    elif (p := root / "cmu_mosei_std_folds.py").exists():
        folds = {}
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                name = node.targets[0].id.replace("standard_", "").replace("_fold", "")
                folds[name] = ast.literal_eval(node.value)
    else:
        return None
    out: dict[str, str] = {}
    for split, vids in folds.items():
        for v in vids:
            if v in out:
                raise fail(p, f"video '{v}' is in both {out[v]} and {split}")
            out[v] = split
    return out


def _from_csd(root: Path, label_file: Path) -> CorpusMetadata:
    seg = read_csd_labels(label_file)
    samples = pd.DataFrame(
        {
            "id": [f"{v}[{k}]" for v, k in zip(seg["video"], seg["k"], strict=True)],
            "speaker": seg["video"],
            "duration": seg["end"] - seg["start"],
            "audio_path": "",
            "video_path": "",
            "video": seg["video"],
            "segment_start": seg["start"],
            "segment_end": seg["end"],
        }
    )
    labels = np.stack(seg["labels"].to_list())
    protocols = {}
    folds = read_folds(root)
    if folds is not None:
        p = official([folds.get(v, "") for v in seg["video"]], source="CMU SDK standard folds")
        protocols[p.name] = p
    trials = speaker_trials(samples["speaker"].tolist(), k=5, seed=0)
    protocols[trials.name] = trials
    streams = []
    for path in sorted(root.glob("*.csd")):
        if path != label_file and (s := csd_stream(path, seg)) is not None:
            streams.append(s)
    return _metadata(
        samples, labels[:, 1:], labels[:, 0], protocols, streams, "CMU SDK computational sequences"
    )


def _from_pickle(root: Path, path: Path) -> CorpusMetadata:
    splits = load_feature_pickle(path)
    samples, split_of, lab = flatten_splits(path, splits)
    if lab.shape[1] == 7:
        sentiment, emotions = lab[:, 0], lab[:, 1:]
    elif lab.shape[1] == 6:
        sentiment, emotions = np.full(len(lab), np.nan), lab
    elif lab.shape[1] == 1:
        sentiment, emotions = lab[:, 0], None
    else:
        raise fail(path, f"labels have {lab.shape[1]} columns; expected 1 (sentiment), 6 (emotions) or 7")
    check_range(path, sentiment, -3.0, 3.0, "sentiment")
    if emotions is not None:
        check_range(path, emotions, 0.0, 3.0, "emotion intensity")
    protocols = {"official": official(split_of, source=f"{path.name} train/valid/test")}
    if samples["speaker"].nunique() >= 3:
        protocols["speaker-trials"] = speaker_trials(samples["speaker"].tolist(), k=5, seed=0)
    streams = pickle_streams(path, splits, {x: i for i, x in enumerate(samples["id"])})
    return _metadata(samples, emotions, sentiment, protocols, streams, f"release pickle {path.name}")


def _metadata(samples, emotions, sentiment, protocols, streams, source) -> CorpusMetadata:
    dims = None
    if not np.isnan(sentiment).all():
        dims = Dimensions(["sentiment"], sentiment.reshape(-1, 1).astype(np.float32), -3.0, 3.0)
    return CorpusMetadata(
        name="cmu-mosei",
        samples=samples,
        class_names=CLASS_NAMES if emotions is not None else [],
        multilabel=None if emotions is None else emotions.astype(np.float32),
        dimensions=dims,
        protocols=protocols,
        default_protocol=next(iter(protocols)),
        features=streams,
        attrs={"source": f"CMU-MOSEI ({source})", "licence": "CMU-MOSEI terms of use"},
    )


def load_cmu_mosei(root: Path) -> CorpusMetadata:
    root = require_dir(root)
    label_files = [p for p in sorted(root.glob("*.csd")) if "label" in p.stem.lower()]
    if label_files:
        return _from_csd(root, label_files[0])
    if (pickle := single_pickle(root)) is not None:
        return _from_pickle(root, pickle)
    raise fail(root, "no CMU-MOSEI labels (*Labels*.csd) and no release pickle (*.pkl)")


CORPORA.register(
    CorpusCard(
        "cmu-mosei",
        load_cmu_mosei,
        modalities="features only: audio (COVAREP), video (FACET), text (GloVe/BERT)",
        labels="sentiment [-3, 3], six emotion intensities [0, 3] (multi-label)",
        layout="*.csd (CMU SDK HDF5: Labels + feature sequences) or aligned/unaligned *.pkl",
    )
)
