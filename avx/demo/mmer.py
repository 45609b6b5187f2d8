"""A synthetic trimodal multi-label corpus in the CMU-MOSEI release-pickle layout.

What LDDU, CARAT and MulT train on is the pickle MulT/MMSA/CARAT distribute
(``{train, valid, test} -> text [N, L, 768], audio [N, L, 74], vision [N, L, 35],
labels [N, 1, 7], id``), read by the ``cmu-mosei`` adapter. This module writes one
whose labels are driven by **known per-modality cues**, so a method that fuses the
three modalities can be checked to learn, on any machine, without the real corpus:

- six emotions [happy, sad, anger, surprise, disgust, fear]; a sample carries none
  (15%), one, or a second one that co-occurs with the first (anger with disgust, sad
  with fear, happy with surprise), class frequencies skewed as in MOSEI;
- each emotion is cued in one or two modalities (:data:`CUES`): a prototype direction
  of that modality's feature space, added to a random contiguous run of 40% of the
  frames, on top of N(0, 1) noise (so the cue must be found in time, and no single
  modality sees every emotion);
- sentiment in [-3, 3] (multiples of 1/3, zeros included, as MOSEI's averaged
  ratings) from the emotions plus noise, so the sentiment path has data too;
- ``aligned``: every modality ``length`` frames (MOSEI aligned: 50); unaligned: text
  ``length``, audio and video ``10 x length`` (MOSEI unaligned: 50 / 500 / 500).

Its numbers say nothing about emotion recognition; they prove the pipeline.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
DIMS = {"text": 768, "audio": 74, "vision": 35}
CUES = {
    "happy": ("text", "vision"),
    "sad": ("audio", "text"),
    "anger": ("audio", "vision"),
    "surprise": ("vision",),
    "disgust": ("text",),
    "fear": ("audio",),
}
"""Which modalities carry each emotion's cue."""
PRIOR = np.array([0.40, 0.18, 0.15, 0.09, 0.10, 0.08])
COOCCUR = {
    "anger": "disgust",
    "disgust": "anger",
    "sad": "fear",
    "fear": "sad",
    "happy": "surprise",
    "surprise": "happy",
}
SENTIMENT = np.array([1.4, -1.0, -1.1, 0.4, -0.8, -0.6])


def make_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-hot ``[n, 6]``: none (15%), one, or one plus its co-occurring emotion (30%)."""
    y = np.zeros((n, len(EMOTIONS)), np.int64)
    for i in range(n):
        if rng.random() < 0.15:
            continue
        j = int(rng.choice(len(EMOTIONS), p=PRIOR))
        y[i, j] = 1
        if rng.random() < 0.3:
            y[i, EMOTIONS.index(COOCCUR[EMOTIONS[j]])] = 1
    return y


def make_split(
    y: np.ndarray,
    protos: dict[str, np.ndarray],
    lengths: dict[str, int],
    strength: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Features of every modality for labels ``y``."""
    n = len(y)
    out = {}
    for modality, dim in DIMS.items():
        t = lengths[modality]
        x = rng.standard_normal((n, t, dim)).astype(np.float32)
        run = max(1, round(0.4 * t))
        for j, emotion in enumerate(EMOTIONS):
            if modality not in CUES[emotion]:
                continue
            for i in np.flatnonzero(y[:, j]):
                start = int(rng.integers(0, t - run + 1))
                x[i, start : start + run] += strength * protos[modality][j]
        out[modality] = x
    return out


def write_mmer_pickle(
    path: str | Path,
    *,
    n: tuple[int, int, int] = (600, 200, 200),
    length: int = 20,
    aligned: bool = True,
    strength: float = 0.3,
    seed: int = 0,
) -> Path:
    """Write the synthetic release pickle to ``path`` (train/valid/test sizes ``n``)."""
    rng = np.random.default_rng(seed)
    protos = {m: rng.standard_normal((len(EMOTIONS), d)).astype(np.float32) for m, d in DIMS.items()}
    lengths = {m: length if aligned or m == "text" else 10 * length for m in DIMS}
    data = {}
    video = 0
    for split, size in zip(("train", "valid", "test"), n, strict=True):
        y = make_labels(size, rng)
        feats = make_split(y, protos, lengths, strength, rng)
        intensity = y * rng.choice([1 / 3, 2 / 3, 1.0, 4 / 3, 2.0], size=y.shape)
        sentiment = np.clip(y @ SENTIMENT + rng.normal(0, 0.6, size), -3, 3)
        sentiment = np.round(sentiment * 3) / 3
        labels = np.concatenate([sentiment[:, None], intensity], 1)[:, None, :].astype(np.float32)
        ids = []
        for i in range(size):  # three segments per video, videos never shared across splits
            ids.append(f"syn{video + i // 3:04d}$_${i % 3}")
        video += (size + 2) // 3
        data[split] = {
            "text": feats["text"],
            "audio": feats["audio"],
            "vision": feats["vision"],
            "labels": labels,
            "id": ids,
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(data, protocol=4))
    tmp.replace(path)
    return path
