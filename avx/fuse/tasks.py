"""Task definitions: links, losses, class weights, resampling and decisions.

One place for what differs between multiclass, multilabel and regression, so methods
only ever produce scores and the trainer only ever calls :func:`make_objective`.

Losses:

- multiclass: cross-entropy, optionally class-weighted (``inverse``: N / (C n_c), the
  scikit-learn "balanced" weights; ``effective``: (1 - beta) / (1 - beta^n_c), Cui et
  al. 2019, normalised to sum to C);
- multilabel: binary cross-entropy on multi-hot or distributional targets, optionally
  class-weighted the same two ways (a class's count is its positive training samples;
  see :class:`Objective` for how a weight reaches a multi-label sample);
- regression: ``ccc`` (1 - CCC, mean over dimensions), ``ccc+mse`` (COLD), ``mse``,
  ``l1`` (CMU-MOSEI sentiment).

Per-frame targets are flattened over their valid frames, so CCC is computed over all
frames of the batch together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch

REGRESSION_LOSSES = ("ccc", "ccc+mse", "mse", "l1")


def to_probs(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Scores to probabilities (regression values pass through)."""
    if kind == "multiclass":
        return torch.softmax(scores, -1)
    if kind == "multilabel":
        return torch.sigmoid(scores)
    return scores


def from_probs(p: torch.Tensor, kind: str) -> torch.Tensor:
    """The scores whose :func:`to_probs` is ``p`` (inverse link)."""
    if kind == "multiclass":
        return p.clamp_min(1e-8).log()
    if kind == "multilabel":
        p = p.clamp(1e-6, 1 - 1e-6)
        return (p / (1 - p)).log()
    return p


def class_weights(y: np.ndarray, n_classes: int, scheme: str) -> np.ndarray | None:
    """Per-class loss weights from training labels ``y``: class indices ``[N]`` (-1
    ignored) or multi-hot rows ``[N, C]`` (a class's count is its positive samples).

    ``none``, ``inverse`` or ``effective[:beta]`` (beta default 0.999).
    """
    if scheme in ("none", "", None):
        return None
    if y.ndim == 2:
        counts = (np.asarray(y) > 0).sum(0).astype(np.float64)
        total = float(len(y))
    else:
        y = y[y >= 0]
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        total = float(len(y))
    return weights_from_counts(counts, scheme, total)


def weights_from_counts(counts: np.ndarray, scheme: str, total: float | None = None) -> np.ndarray:
    """``inverse``: N / (C' n_c) (scikit-learn's "balanced", C' = classes present);
    ``effective[:beta]``: (1 - beta) / (1 - beta^n_c) normalised to sum to C' (Cui et
    al. 2019, Eq. 3 and Sec. 4). Classes with no sample get weight 0."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if scheme == "inverse":
        n = counts.sum() if total is None else total
        w = np.where(present, n / (present.sum() * np.maximum(counts, 1)), 0.0)
        return w.astype(np.float32)
    if scheme.startswith("effective"):
        beta = float(scheme.partition(":")[2] or 0.999)
        if not 0 <= beta < 1:
            raise AvxError(f"effective-number beta must be in [0, 1); got {beta}")
        eff = (1 - np.power(beta, counts)) / (1 - beta)
        w = np.where(present, 1.0 / np.maximum(eff, 1e-12), 0.0)
        return (w * present.sum() / w.sum()).astype(np.float32)
    raise AvxError(f"unknown class weighting '{scheme}'; valid: none, inverse, effective[:beta]")


def resampling_weights(y: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-sample draw counts for one epoch: ``over`` brings every class up to the
    largest, ``under`` down to the smallest (random, with replacement)."""
    if mode in ("none", "", None):
        return None
    if mode not in ("over", "under"):
        raise AvxError(f"unknown --sampling '{mode}'; valid: none, over, under")
    counts = np.bincount(y[y >= 0])
    target = counts[counts > 0].max() if mode == "over" else counts[counts > 0].min()
    w = np.zeros(len(y))
    ok = y >= 0
    w[ok] = target / counts[y[ok]]
    return w


def ccc_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - CCC per column of ``[N, K]`` (the metric's definition), averaged over columns."""
    mp, my = pred.mean(0), y.mean(0)
    vp, vy = pred.var(0), y.var(0)
    cov = ((pred - mp) * (y - my)).sum(0) / (len(y) - 1)
    return (1 - 2 * cov / (vp + vy + (mp - my) ** 2 + 1e-8)).mean()


@dataclass
class Objective:
    """The task loss, callable as ``objective(scores, batch, sample_mask)``.

    ``source`` names the label source scored: ``""`` is the run's ``--labels``
    (``batch.targets``, named ``labels``), any other one of ``DataConfig.label_sources()``
    (``batch.extra_targets[source]``); :meth:`labels` gives the objective of a source,
    with that source's own class weights and soft targets.

    Class weights ``weights [C]`` weight each sample by its target's class (Cui et al.
    2019's class-balanced loss ``alpha_y * L(p, y)``): cross-entropy's ``weight``
    (multiclass); for multi-label targets each sample's binary terms are weighted by
    ``sum_c alpha_c y_c / sum_c y_c``, the expected class weight under its target
    distribution (``alpha_y`` for a one-hot row, the mean over its classes for a
    multi-hot one), then averaged over samples and classes.
    """

    kind: str
    weights: torch.Tensor | None = None
    regression_loss: str = "ccc"
    soft: torch.Tensor | None = None  # [N, C] multiclass training distributions by Batch.index
    source: str = ""
    extra: dict[str, Objective] = field(default_factory=dict)
    labels_name: str = ""

    def labels(self, source: str | None) -> Objective:
        """The objective on label source ``source`` (``None``, ``""`` or the run's
        ``--labels``: this one)."""
        if not source or source == self.labels_name or source == self.source:
            return self
        if source in self.extra:
            return self.extra[source]
        have = ", ".join([self.labels_name or "labels", *self.extra])
        raise AvxError(f"the loss needs label source '{source}', which the data does not carry ({have})")

    def _targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.source:
            return batch.targets, batch.target_mask
        if self.source not in batch.extra_targets:
            have = ", ".join(batch.extra_targets) or "none"
            raise AvxError(
                f"the loss needs label source '{self.source}', which the data does not carry "
                f"(extra labels: {have})"
            )
        return batch.extra_targets[self.source], batch.extra_masks[self.source]

    def __call__(self, scores: torch.Tensor, batch: Batch, sample_mask: torch.Tensor | None) -> torch.Tensor:
        y, m = self._targets(batch)
        if sample_mask is not None:
            m = m & sample_mask.view(-1, *[1] * (m.dim() - 1))
        scores = scores.float()
        if scores.dim() == 3 and scores.shape[1] != m.shape[1]:  # per-frame outputs, padded length
            t = min(scores.shape[1], m.shape[1])
            scores, y, m = scores[:, :t], y[:, :t], m[:, :t]
        s, y = scores[m], y[m]
        if not len(s):
            return scores.sum() * 0.0
        if self.kind == "multiclass":
            w = None if self.weights is None else self.weights.to(s.device)
            if self.soft is not None and scores.dim() == 2:  # vote distributions, per sequence
                rows = torch.as_tensor(batch.index, device=self.soft.device)
                y = self.soft[rows].to(s.device)[m]
            return nn.functional.cross_entropy(s, y, weight=w)
        if self.kind == "multilabel":
            y = y.float()
            if self.weights is None:
                return nn.functional.binary_cross_entropy_with_logits(s, y)
            alpha = self.weights.to(s.device)
            mass = y.sum(-1, keepdim=True)
            per = torch.where(mass > 0, (y * alpha).sum(-1, keepdim=True) / mass.clamp_min(1e-12), 1.0)
            return nn.functional.binary_cross_entropy_with_logits(s, y, weight=per.expand_as(s))
        y = y.float()
        if self.regression_loss == "l1":
            return nn.functional.l1_loss(s, y)
        if self.regression_loss == "mse":
            return nn.functional.mse_loss(s, y)
        loss = ccc_loss(s, y) if len(s) > 1 else nn.functional.mse_loss(s, y)
        if self.regression_loss == "ccc+mse":
            loss = loss + nn.functional.mse_loss(s, y)
        return loss


def decide(probs: np.ndarray, kind: str, threshold: float | None) -> np.ndarray:
    """Decisions from probabilities: argmax (multiclass); multilabel: a class is on when
    its share of the summed probabilities exceeds 1/C (``threshold=None``, the
    two-stage paper's rule) or its probability exceeds ``threshold``."""
    if kind == "multiclass":
        return probs.argmax(-1)
    if kind == "multilabel":
        if threshold is None:
            share = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12)
            return (share > 1.0 / probs.shape[-1]).astype(np.int64)
        return (probs > threshold).astype(np.int64)
    return probs


def eval_multihot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Multi-label targets as the multi-hot metrics score against: multi-hot targets as
    they are, distributional (soft) targets as share > 1/C (the store's multi-hot rule)."""
    if set(np.unique(y)) <= {0, 1}:
        return y.astype(int)
    return (y > 1.0 / n_classes).astype(int)


def tune_threshold(y: np.ndarray, probs: np.ndarray) -> float:
    """The global probability threshold maximising micro-F1 on dev."""
    from sklearn.metrics import f1_score

    grid = np.linspace(0.05, 0.95, 19)
    scores = [f1_score(y, (probs > t).astype(int), average="micro", zero_division=0) for t in grid]
    return float(grid[int(np.argmax(scores))])
