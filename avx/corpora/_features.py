"""Corpus-provided features: the aligned/unaligned pickles CMU-MOSEI and M3ED ship as.

The widely used layout (MulT, MMSA, CARAT, LDDU) is one pickle holding
``{split: {"text": [N, L, Dt], "audio": [N, L, Da], "vision": [N, L, Dv], "labels": ...,
"id": ...}}`` for ``train``/``valid``/``test``. Optional ``audio_lengths`` /
``vision_lengths`` / ``text_lengths`` trim padding; without them every frame is kept as
released. Non-finite values (COVAREP has -inf) become 0, the universal preprocessing,
and provenance says so.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avx.corpora._io import check_unique, fail, sha256_file
from avx.corpora.base import ImportedStream
from avx.serialization import restricted_load

SPLIT_KEYS = ("train", "valid", "test")
MODALITY_KEYS = {"text": "text", "audio": "audio", "vision": "video"}
KNOWN_FEATURES = {
    ("audio", 74): "covarep",
    ("video", 35): "facet",
    ("video", 713): "openface2",
    ("text", 300): "glove",
    ("text", 768): "bert",
}
"""Stream names for the feature sets these releases are known to contain, by width."""


@dataclass
class PickleSplit:
    ids: list[str]
    videos: list[str]
    """The source video of each sample (its speaker proxy): the first field of an
    array id, the part before ``$_$`` (MMSA) or ``[`` (CMU SDK), else the id itself."""
    features: dict[str, np.ndarray]  # modality -> [N, L, D]
    lengths: dict[str, np.ndarray | None]
    labels: np.ndarray | None


def _as_id(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, (list, tuple, np.ndarray)):
        return "_".join(_as_id(v) for v in np.asarray(x).reshape(-1))
    return str(x)


def _video_of(x: Any) -> str:
    if isinstance(x, (list, tuple, np.ndarray)) and np.asarray(x).size > 1:
        return _as_id(np.asarray(x).reshape(-1)[0])
    sid = _as_id(x)
    for sep in ("$_$", "["):
        if sep in sid:
            return sid.split(sep)[0]
    return sid


def load_feature_pickle(path: Path) -> dict[str, PickleSplit]:
    """Read and check one release pickle; errors name the file and the problem.

    Releases come from strangers, so the pickle is read by
    :class:`~avx.serialization.RestrictedUnpickler`: arrays and plain data only, any
    other object (a payload calling ``os.system``) is refused before it can run.
    """
    try:
        with open(path, "rb") as f:
            try:
                data = restricted_load(f)
            except UnicodeDecodeError:  # pickles written by Python 2
                f.seek(0)
                data = restricted_load(f, encoding="latin1")
    except pickle.UnpicklingError as e:
        raise fail(path, f"refused pickle: {e}") from None
    except Exception as e:
        raise fail(path, f"unreadable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not set(SPLIT_KEYS) & set(data):
        raise fail(path, f"expected a dict with splits {', '.join(SPLIT_KEYS)}")
    out: dict[str, PickleSplit] = {}
    for split in SPLIT_KEYS:
        if split not in data:
            continue
        d = data[split]
        feats = {}
        for key, modality in MODALITY_KEYS.items():
            if key in d:
                arr = np.asarray(d[key])
                if arr.ndim != 3 or arr.dtype.kind not in "fiu":
                    raise fail(
                        path, f"{split}/{key} must be a numeric [N, L, D] array, got {arr.shape} {arr.dtype}"
                    )
                feats[modality] = arr
        if not feats:
            raise fail(path, f"{split} has none of {', '.join(MODALITY_KEYS)}")
        n = {len(a) for a in feats.values()}
        if len(n) != 1:
            raise fail(path, f"{split}: modalities have different sample counts {sorted(n)}")
        count = n.pop()
        ids = [_as_id(x) for x in d["id"]] if "id" in d else [f"{split}-{i:05d}" for i in range(count)]
        videos = [_video_of(x) for x in d["id"]] if "id" in d else list(ids)
        if len(ids) != count:
            raise fail(path, f"{split}: {len(ids)} ids for {count} samples")
        labels = None
        for key in ("labels", "regression_labels"):
            if key in d:
                labels = np.asarray(d[key], dtype=np.float64).reshape(count, -1)
                break
        lengths = {
            m: (np.asarray(d[f"{k}_lengths"]).reshape(-1) if f"{k}_lengths" in d else None)
            for k, m in MODALITY_KEYS.items()
        }
        out[split] = PickleSplit(ids, videos, feats, lengths, labels)
    return out


def flatten_splits(path: Path, splits: dict[str, PickleSplit]) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Samples (speaker = source video), split name per sample and stacked labels."""
    ids, videos, split_of, labels = [], [], [], []
    for split, s in splits.items():
        if s.labels is None:
            raise fail(path, f"{split} has no labels")
        ids += s.ids
        videos += s.videos
        split_of += [split] * len(s.ids)
        labels.append(s.labels)
    check_unique(path, ids, "sample id")
    samples = pd.DataFrame(
        {"id": ids, "speaker": videos, "duration": np.nan, "audio_path": "", "video_path": ""}
    )
    return samples, split_of, np.concatenate(labels)


def single_pickle(root: Path) -> Path | None:
    """The corpus root's release pickle; several are ambiguous and refused."""
    pickles = sorted(root.glob("*.pkl"))
    if len(pickles) > 1:
        raise fail(root, f"several pickles ({', '.join(p.name for p in pickles)}); keep one per corpus root")
    return pickles[0] if pickles else None


def pickle_streams(
    path: Path,
    splits: dict[str, PickleSplit],
    rows: dict[str, int],
    names: dict[tuple[str, int], str] | None = None,
) -> list[ImportedStream]:
    """One imported stream per modality; ``rows`` maps sample id -> store row."""
    names = {**KNOWN_FEATURES, **(names or {})}
    sha = sha256_file(path)
    modalities = sorted({m for s in splits.values() for m in s.features})
    streams = []
    for modality in modalities:
        dims = {s.features[modality].shape[2] for s in splits.values() if modality in s.features}
        if len(dims) != 1:
            raise fail(path, f"{modality} features have different widths across splits {sorted(dims)}")
        dim = dims.pop()

        def frames(modality: str = modality) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            for split in splits.values():
                if modality not in split.features:
                    continue
                arr, lengths = split.features[modality], split.lengths[modality]
                for i, sid in enumerate(split.ids):
                    x = arr[i] if lengths is None else arr[i, : int(lengths[i])]
                    x = np.where(np.isfinite(x), x, 0).astype(np.float32)
                    yield rows[sid], x, np.arange(len(x), dtype=np.float64)

        streams.append(
            ImportedStream(
                name=f"{modality}/{names.get((modality, dim), 'provided')}",
                frame_shape=(dim,),
                frame_rate=None,
                provenance={
                    "file": path.name,
                    "sha256": sha,
                    "layout": "release pickle",
                    "nonfinite": "replaced by 0",
                    "timestamps": "frame index (the release has no times)",
                    "padding": "trimmed by *_lengths"
                    if any(s.lengths[modality] is not None for s in splits.values())
                    else "as released",
                },
                frames=frames,
            )
        )
    return streams
