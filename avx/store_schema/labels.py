"""Derived rating labels: one definition of distribution, multi-hot and plurality.

Corpora hand the store raw vote counts per rater modality; everything else is derived
here so every corpus, and every reader, agrees on the definitions:

- distribution: counts / total votes (NaN row when a clip has no votes);
- multihot: distribution strictly greater than 1/C (C = number of classes), the
  threshold the two-stage and multi-label papers use;
- plurality: every class whose count equals the maximum (ties kept, as CREMA-D's
  ``emoVote`` joins them with ':'); all-zero when there are no votes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RaterLabels:
    """Labels from one rater modality, arrays of shape ``[n_samples, n_classes]``."""

    counts: np.ndarray
    distribution: np.ndarray
    multihot: np.ndarray
    plurality: np.ndarray
    intensity: np.ndarray | None = None
    """Mean rated intensity per clip (CREMA-D ``meanEmoResp``), when the corpus has it."""

    @property
    def unique_plurality(self) -> np.ndarray:
        """Boolean ``[n_samples]``: the plurality is a single class (no tie, some votes)."""
        return self.plurality.sum(axis=1) == 1

    def hard_labels(self) -> np.ndarray:
        """Class index of the plurality where unique, -1 where tied or unrated."""
        out = self.plurality.argmax(axis=1).astype(np.int64)
        out[~self.unique_plurality] = -1
        return out


def derive_rater_labels(counts: np.ndarray) -> RaterLabels:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"vote counts must be [n_samples, n_classes], got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("vote counts must be non-negative")
    n_classes = counts.shape[1]
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(total > 0, counts / np.maximum(total, 1), np.nan).astype(np.float32)
    multihot = (np.nan_to_num(dist, nan=0.0) > 1.0 / n_classes).astype(np.uint8)
    plurality = ((counts == counts.max(axis=1, keepdims=True)) & (total > 0)).astype(np.uint8)
    return RaterLabels(
        counts=counts.astype(np.int32),
        distribution=dist,
        multihot=multihot,
        plurality=plurality,
    )


def label_statistics(labels: RaterLabels, class_names: list[str]) -> dict[str, object]:
    """What ``avx store info`` reports per rater modality.

    - ``rated``: clips with at least one vote;
    - ``plurality_counts``: clips per class among those with a unique plurality;
    - ``ties``: rated clips whose plurality is tied;
    - ``multilabel_rate``: fraction of rated clips with more than one class above 1/C;
    - ``multihot_counts``: clips per class in the multi-hot labels;
    - ``agreement``: mean fraction of a clip's votes that went to its plurality class
      (CREMA-D's ``agreement`` column), and ``mean_votes`` per rated clip.
    """
    total = labels.counts.sum(axis=1)
    rated = total > 0
    hard = labels.hard_labels()
    n_rated = int(rated.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = labels.counts.max(axis=1)[rated] / total[rated]
    return {
        "rated": n_rated,
        "plurality_counts": {c: int((hard == i).sum()) for i, c in enumerate(class_names)},
        "ties": int((rated & (hard < 0)).sum()),
        "multilabel_rate": float((labels.multihot[rated].sum(axis=1) > 1).mean()) if n_rated else 0.0,
        "multilabel_clips": int((labels.multihot[rated].sum(axis=1) > 1).sum()),
        "multihot_counts": {c: int(labels.multihot[:, i].sum()) for i, c in enumerate(class_names)},
        "agreement": float(agreement.mean()) if n_rated else float("nan"),
        "mean_votes": float(total[rated].mean()) if n_rated else 0.0,
    }
