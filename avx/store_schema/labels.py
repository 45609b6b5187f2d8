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
