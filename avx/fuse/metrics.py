"""Evaluation metrics with the reference libraries' definitions.

Every function takes numpy arrays like scikit-learn's (``f(y_true, y_pred)`` or
``f(y_true, probs)``) and is tested against scikit-learn, torchmetrics or fairlearn on
random inputs. :data:`SCORERS` is the one table of named metrics: how each is
computed, whether greater is better, the tasks it applies to and its display name;
model selection, headlines, tables, ``compare`` and trials all read it.

Conventions worth knowing when comparing with papers:

- ``unweighted_accuracy`` (UA) is the mean per-class recall (balanced accuracy);
  ``weighted_accuracy`` (WA) is plain accuracy, the emotion-recognition literature's
  names for the two.
- ``ccc`` on per-frame targets is computed over all valid frames of the split
  concatenated (the AVEC convention COLD follows), not averaged per sequence.
- ``brier`` is averaged per class (the two-stage paper's Eq. 1): for each class the
  mean over samples of (p_c - y_c)^2, then the mean over classes.
- Fairness metrics use fairlearn's definitions, applied one-vs-rest per class and
  averaged over classes (fairlearn defines them for binary decisions only).
- ``f1_bias`` is the two-stage paper's Eq. 2 as its Tables 4 and 5 compute it: the mean
  absolute difference of per-group macro-F1 over pairs of groups (see :func:`f1_bias`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

# -- classification --------------------------------------------------------------------


def prf(y_true: np.ndarray, y_pred: np.ndarray, average: str, labels: Sequence[int] | None = None) -> dict:
    """Precision, recall and F1 with scikit-learn's ``average`` (zero_division=0)."""
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average=average, labels=labels, zero_division=0
    )
    return {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}


def multiclass_report(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy (WA), UA, macro/weighted/micro P/R/F1."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        ua = float(balanced_accuracy_score(y, pred))
    out: dict[str, float] = {"accuracy": float(accuracy_score(y, pred)), "unweighted_accuracy": ua}
    out["weighted_accuracy"] = out["accuracy"]
    for avg in ("macro", "weighted", "micro"):
        out.update(prf(y, pred, avg))
    return out


def multilabel_report(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Sample-wise Jaccard accuracy, micro/macro/weighted P/R/F1 on multi-hot arrays."""
    out = {"jaccard_accuracy": float(jaccard_score(y, pred, average="samples", zero_division=1))}
    out["accuracy"] = out["jaccard_accuracy"]
    for avg in ("micro", "macro", "weighted"):
        out.update(prf(y, pred, avg))
    out["subset_accuracy"] = float(accuracy_score(y, pred))
    return out


# -- regression ------------------------------------------------------------------------


def ccc(y: np.ndarray, p: np.ndarray) -> float:
    """Lin's concordance correlation coefficient with sample (n - 1) moments, exactly as
    torchmetrics' ``ConcordanceCorrCoef`` (population moments differ by O(1/n))."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if len(y) < 2:
        return float("nan")
    my, mp = y.mean(), p.mean()
    cov = ((y - my) * (p - mp)).sum() / (len(y) - 1)
    return float(2 * cov / (y.var(ddof=1) + p.var(ddof=1) + (my - mp) ** 2 + 1e-12))


def pearson(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) < 2 or np.std(y) == 0 or np.std(p) == 0:
        return float("nan")
    return float(stats.pearsonr(y, p).statistic)


def regression_report(y: np.ndarray, p: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Every regression scorer of :data:`SCORERS` per dimension (``ccc_valence``) and
    its mean over the dimensions it applies to (``ccc``); MOSI/MOSEI's sentiment
    metrics (``acc2_has0`` ...) only for a dimension named ``sentiment``."""
    y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    for k, name in enumerate(names):
        for s in SCORERS.values():
            if s.kind != "values" or "regression" not in s.tasks or not s.applies_to(name):
                continue
            v = s.fn(y[:, k], p[:, k])
            per.setdefault(s.name, []).append(v)
            if len(names) > 1:
                out[f"{s.name}_{name}"] = v
    out.update({m: float(np.mean(v)) for m, v in per.items()})
    return out


# -- CMU-MOSI / MOSEI sentiment (MMSA's regression metrics) -------------------------------
#
# The MOSI/MOSEI community scores a sentiment regressor on [-3, 3] with MMSA's set:
# binary accuracy and weighted F1 "Has0" (negative < 0 <= non-negative, every sample)
# and "Non0" (samples whose truth is 0 left out; positive > 0), 5- and 7-class accuracy
# (values clipped to [-2, 2] / [-3, 3] and rounded half to even, as numpy's round),
# MAE and Pearson correlation.


def _acc2_has0(y: np.ndarray, p: np.ndarray) -> float:
    return float(accuracy_score(y >= 0, p >= 0))


def _f1_has0(y: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(y >= 0, p >= 0, average="weighted", zero_division=0))


def _acc2_non0(y: np.ndarray, p: np.ndarray) -> float:
    keep = y != 0
    return float(accuracy_score(y[keep] > 0, p[keep] > 0)) if keep.any() else float("nan")


def _f1_non0(y: np.ndarray, p: np.ndarray) -> float:
    keep = y != 0
    if not keep.any():
        return float("nan")
    return float(f1_score(y[keep] > 0, p[keep] > 0, average="weighted", zero_division=0))


def _acc_k(bound: float) -> Callable[[np.ndarray, np.ndarray], float]:
    def acc(y: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(y, -bound, bound))))

    return acc


# -- calibration -----------------------------------------------------------------------


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (torchmetrics' ``l1`` norm)."""
    return float(reliability_diagram(y, probs, n_bins)["ece"])


def reliability_diagram(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Per confidence bin: mean confidence, accuracy and count, plus the ECE they give."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    # Bins are (lo, hi], as torchmetrics buckets them.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, acc_sum / count
    ece = float(np.nansum(np.abs(acc - mean_conf) * count) / max(len(y), 1))
    return {
        "edges": edges.tolist(),
        "confidence": np.nan_to_num(mean_conf).tolist(),
        "accuracy": np.nan_to_num(acc).tolist(),
        "count": count.tolist(),
        "ece": ece,
    }


def brier_per_class(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean over classes of scikit-learn's ``brier_score_loss`` for that class.

    ``targets`` is one-hot / multi-hot ``[N, C]`` (or class indices ``[N]``).
    """
    if targets.ndim == 1:
        targets = np.eye(probs.shape[1])[targets]
    return float(((probs - targets) ** 2).mean(0).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, multilabel: bool = False) -> float:
    """Temperature T > 0 minimising the NLL of ``logits / T`` (fitted on dev, Guo et al. 2017)."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        s = z / log_t.exp()
        if multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(s, t.to(s.dtype))
        else:
            loss = torch.nn.functional.cross_entropy(s, t.long())
        loss.backward()
        return loss

    opt.step(nll)
    return float(log_t.detach().exp().clamp(1e-2, 1e2))


# -- fairness and bias -----------------------------------------------------------------


def _rate(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def demographic_parity_difference(y_pred: np.ndarray, groups: np.ndarray) -> float:
    """Binary: max - min over groups of the selection rate P(pred = 1 | group) (fairlearn)."""
    rates = [_rate(y_pred[groups == g]) for g in np.unique(groups)]
    return float(np.nanmax(rates) - np.nanmin(rates))


def equalized_odds_difference(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> float:
    """Binary: the larger of the TPR and FPR between-group differences (fairlearn).

    As in fairlearn, a group without positives has TPR 0 and one without negatives has
    FPR 0 (they are not skipped): ``y = p = [1, 0, 0, 0]`` with groups ``[a, a, b, b]``
    gives 1.0.
    """
    diffs = []
    for positive in (1, 0):
        rates = []
        for g in np.unique(groups):
            hit = (groups == g) & (y_true == positive)
            rates.append(float(y_pred[hit].mean()) if hit.any() else 0.0)
        diffs.append(max(rates) - min(rates) if rates else 0.0)
    return float(max(diffs))


def one_vs_rest(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot ``[N, C]`` views of class indices (multi-hot input is returned as is)."""
    if y_true.ndim == 1:
        eye = np.eye(n_classes, dtype=np.int64)
        return eye[y_true], eye[y_pred]
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def fairness_report(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_classes: int
) -> dict[str, Any]:
    """DPD and EOD (one-vs-rest, mean over classes), per-group macro-F1 and the F1 bias.

    ``y_true``/``y_pred`` are class indices or multi-hot arrays (scikit-learn's macro-F1
    takes both)."""
    groups = np.asarray(groups).astype(str)
    yt, yp = one_vs_rest(y_true, y_pred, n_classes)
    dpd = [demographic_parity_difference(yp[:, c], groups) for c in range(n_classes)]
    eod = [equalized_odds_difference(yt[:, c], yp[:, c], groups) for c in range(n_classes)]
    per_group = {str(g): macro_f1(y_true[groups == g], y_pred[groups == g]) for g in np.unique(groups)}
    return {
        "dpd": float(np.mean(dpd)),
        "eod": float(np.mean(eod)),
        "f1_bias": f1_bias(list(per_group.values())),
        "macro_f1_by_group": per_group,
        "n_by_group": {str(g): int((groups == g).sum()) for g in np.unique(groups)},
    }


def f1_bias(scores: Sequence[float]) -> float:
    """The two-stage paper's macro-F1 bias (Eq. 2): ``1/2 * sum_g sum_{i != g} |A_g - A_i|``
    averaged over the ``G (G - 1) / 2`` pairs, i.e. the mean absolute difference over
    unordered pairs of groups (0 with one group).

    Eq. 2's "mean" is ambiguous; this reading is the one its tables follow (they print
    it x 100): Table 5, model 1, male 0.634 / female 0.653 -> 1.86 (|diff| = 0.019);
    Table 4, model 1, four race groups 0.646 / 0.632 / 0.645 / 0.599 -> 2.60 (the mean of
    the six pairwise differences is 0.0257; half of it would be 1.28).
    """
    pairs = [abs(a - b) for a, b in itertools.combinations(scores, 2)]
    return float(np.mean(pairs)) if pairs else 0.0


# -- uncertainty over samples and trials ----------------------------------------------


def bootstrap_ci(
    fn: Callable[[np.ndarray], float], n: int, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn(indices)`` over ``n`` resampled test samples.

    The general (one call per replicate) form; reports use :func:`bootstrap_scorer`,
    which draws the same replicates and gives the same interval in one pass.
    """
    rng = np.random.default_rng(seed)
    return percentile_interval(np.array([fn(rng.integers(0, n, n)) for _ in range(n_boot)]), alpha)


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` quantiles of the finite ``values`` (NaN if none)."""
    vals = np.asarray(values, float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


BOOTSTRAP_BLOCK = 128
"""Replicates scored together (bounds the ``[block, samples]`` count matrix)."""


def bootstrap_scorer(
    name: str,
    y: np.ndarray,
    pred: np.ndarray,
    owner: np.ndarray,
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of scorer ``name`` over ``n`` resampled samples.

    Row ``r`` of ``y``/``pred`` belongs to sample ``owner[r]`` (one row per sample, or
    one per frame for frame-level targets). Replicate ``b`` draws samples exactly as
    :func:`bootstrap_ci` does (``rng.integers(0, n, n)`` in turn), so the interval is the
    same; but a replicate is scored from how often it drew each sample: per-sample
    sufficient statistics (confusion counts, moments) times the draw counts, one matrix
    product per block of replicates instead of one scikit-learn call per replicate
    (1,000 replicates: ~0.1 s instead of ~25 s). Needs the scorer's ``resampled`` form.
    """
    return percentile_interval(bootstrap_replicates(name, y, pred, owner, n, n_boot=n_boot, seed=seed), alpha)


def bootstrap_replicates(
    name: str,
    y: np.ndarray,
    pred: np.ndarray,
    owner: np.ndarray,
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Scorer ``name`` on each of :func:`bootstrap_scorer`'s replicates, ``[n_boot]``.
    The same ``n`` and ``seed`` draw the same samples, so replicates of several
    conditions scored on the same clips can be combined (a mean over conditions)."""
    scorer = SCORERS[name]
    if scorer.resampled is None:
        raise ValueError(f"metric '{name}' has no resampled form")
    stats_ = scorer.resampled[0](y, pred, np.asarray(owner), n)
    return np.concatenate(
        [scorer.resampled[1](counts @ stats_) for counts in replicate_counts(n, n_boot, seed)]
    )


def replicate_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap replicates over ``n`` samples as ``[block, n]`` float draw counts,
    ``BOOTSTRAP_BLOCK`` replicates at a time; the draws are :func:`bootstrap_ci`'s
    (``rng.integers(0, n, n)`` per replicate, in turn)."""
    rng = np.random.default_rng(seed)
    for a in range(0, n_boot, BOOTSTRAP_BLOCK):
        draws = rng.integers(0, n, (min(BOOTSTRAP_BLOCK, n_boot - a), n))
        offsets = np.arange(len(draws))[:, None] * n
        counts = np.bincount((draws + offsets).ravel(), minlength=len(draws) * n).reshape(len(draws), n)
        yield counts.astype(np.float64)


def _per_sample(owner: np.ndarray, n: int, columns: list[np.ndarray]) -> np.ndarray:
    """``[n, k]``: each column summed over the rows of each sample."""
    return np.stack([np.bincount(owner, weights=c.astype(np.float64), minlength=n) for c in columns], axis=1)


def _counts_macro_f1(y: np.ndarray, pred: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per sample and class: true positives, true count, predicted count, and whether the
    class always counts (multi-label columns do; class indices count where they occur)."""
    if y.ndim == 1:
        c = int(max(y.max(), pred.max())) + 1
        y, pred = np.eye(c)[y.astype(int)], np.eye(c)[pred.astype(int)]
        always = np.zeros_like(y)
    else:
        always = np.ones_like(y, dtype=np.float64)
    y, pred = y.astype(np.float64), pred.astype(np.float64)
    return _per_sample(owner, n, [*(y * pred).T, *y.T, *pred.T, *always.T])


def _f1(tp: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """F1 from true-positive, true and predicted counts: ``2 tp / (t + p)``, 0 where
    ``t + p`` is 0 (scikit-learn's zero_division=0)."""
    return np.where(t + p > 0, 2 * tp / np.where(t + p > 0, t + p, 1), 0.0)


def _macro_f1_from(stats_: np.ndarray) -> np.ndarray:
    """Macro-F1 over scikit-learn's labels: classes present in truth or prediction
    (class indices), every column (multi-label); F1 of a class with neither is 0."""
    tp, t, p, always = np.split(stats_, 4, axis=1)
    counted = ((t + p) > 0) | (always > 0)
    f1 = _f1(tp, t, p)
    return (f1 * counted).sum(1) / np.maximum(counted.sum(1), 1)


def _weighted_f1_from(stats_: np.ndarray) -> np.ndarray:
    """Weighted F1 (scikit-learn's ``average="weighted"``): per-class F1 weighted by the
    class's true count; 0 when no sample has a true label."""
    tp, t, p, _ = np.split(stats_, 4, axis=1)
    f1 = _f1(tp, t, p)
    support = t.sum(1)
    return np.where(support > 0, (f1 * t).sum(1) / np.where(support > 0, support, 1), 0.0)


def bootstrap_per_class_f1(
    y: np.ndarray, pred: np.ndarray, n_classes: int, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> list[tuple[float, float]]:
    """Percentile interval of each class's F1 (:func:`per_class_f1`), one row per sample."""
    yt, yp = one_vs_rest(np.asarray(y).astype(int), np.asarray(pred).astype(int), n_classes)
    n = len(yt)
    stats_ = _counts_macro_f1(yt, yp, np.arange(n), n)
    vals = []
    for counts in replicate_counts(n, n_boot, seed):
        tp, t, p, _ = np.split(counts @ stats_, 4, axis=1)
        vals.append(_f1(tp, t, p))
    f1 = np.concatenate(vals)
    return [percentile_interval(f1[:, c], alpha) for c in range(n_classes)]


def per_class_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float]:
    """F1 of every class (scikit-learn's ``average=None`` over ``labels=range(C)``)."""
    yt, yp = one_vs_rest(np.asarray(y).astype(int), np.asarray(pred).astype(int), n_classes)
    return [float(v) for v in f1_score(yt, yp, average=None, zero_division=0)]


def brier_by_class(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    """Each class's Brier score, the terms :func:`brier_per_class` averages (Table 3)."""
    if targets.ndim == 1:
        targets = np.eye(probs.shape[1])[targets]
    return [float(v) for v in ((probs - targets) ** 2).mean(0)]


def bootstrap_groups(
    name: str,
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Percentile intervals of scorer ``name`` within each group, and of the
    :func:`f1_bias` between the groups, from the same replicates: each replicate draws
    the samples as :func:`bootstrap_scorer` does (one row per sample), scores every
    group on its drawn members, then the bias of those scores."""
    scorer = SCORERS[name]
    if scorer.resampled is None:
        raise ValueError(f"metric '{name}' has no resampled form")
    groups = np.asarray(groups).astype(str)
    n = len(y)
    owner = np.arange(n)
    names = list(np.unique(groups))
    stats_ = scorer.resampled[0](y, pred, owner, n)
    per = {g: stats_ * (groups == g)[:, None] for g in names}
    vals: dict[str, list[np.ndarray]] = {g: [] for g in names}
    for counts in replicate_counts(n, n_boot, seed):
        for g in names:
            drawn = counts @ (groups == g).astype(np.float64)
            v = scorer.resampled[1](counts @ per[g])
            vals[g].append(np.where(drawn > 0, v, np.nan))  # a group not drawn has no score
    by_group = {g: np.concatenate(v) for g, v in vals.items()}
    matrix = np.stack([by_group[g] for g in names], axis=1)  # [n_boot, G]
    ok = np.isfinite(matrix).all(1)
    bias = np.array([f1_bias(list(row)) for row in matrix[ok]])
    return {g: percentile_interval(v, alpha) for g, v in by_group.items()}, percentile_interval(bias, alpha)


def _counts_micro_f1(y: np.ndarray, pred: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 1:  # class indices: micro-F1 is accuracy
        return _per_sample(owner, n, [y == pred, np.ones(len(y)), np.ones(len(y))])
    y, pred = y.astype(bool), pred.astype(bool)
    return _per_sample(owner, n, [(y & pred).sum(1), y.sum(1), pred.sum(1)])


def _micro_f1_from(stats_: np.ndarray) -> np.ndarray:
    tp, t, p = stats_.T
    return _f1(tp, t, p)


def _moments_ccc(y: np.ndarray, pred: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per sample and dimension: rows, and sums of y, p, y², p², yp (centred on the
    overall mean first, which leaves CCC unchanged and keeps the sums well conditioned)."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    p = np.asarray(pred, np.float64).reshape(len(pred), -1)
    shift = np.concatenate([y, p]).mean(0)
    y, p = y - shift, p - shift
    cols = [np.ones(len(y))]
    for k in range(y.shape[1]):
        cols += [y[:, k], p[:, k], y[:, k] ** 2, p[:, k] ** 2, y[:, k] * p[:, k]]
    return _per_sample(owner, n, cols)


def _ccc_from(stats_: np.ndarray) -> np.ndarray:
    """Mean over dimensions of :func:`ccc` (sample moments) from summed moments."""
    m = stats_[:, 0]
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in range((stats_.shape[1] - 1) // 5):
            sy, sp, syy, spp, syp = stats_[:, 1 + 5 * k : 6 + 5 * k].T
            my, mp = sy / m, sp / m
            vy, vp = (syy - m * my**2) / (m - 1), (spp - m * mp**2) / (m - 1)
            cov = (syp - m * my * mp) / (m - 1)
            out.append(np.where(m >= 2, 2 * cov / (vy + vp + (my - mp) ** 2 + 1e-12), np.nan))
    return np.mean(out, axis=0)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-tailed paired t-test p-value across trials (scipy's ``ttest_rel``). When every
    difference is the same there is no variance: 1.0 if it is zero (no evidence), 0.0
    otherwise (the t statistic is unbounded; scipy would warn of cancellation); NaN with
    fewer than two pairs. The one definition: eval ``--against``, compare, tables, sweeps."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(a) != len(b):
        return float("nan")
    d = a - b
    if np.allclose(d, d[0]):
        return 1.0 if np.allclose(d, 0) else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979; statsmodels' ``multipletests(...,
    method="holm")``): the k-th smallest of m p-values is multiplied by m - k + 1, made
    non-decreasing, capped at 1. NaN p-values (no test) stay NaN and do not count in m."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes in ``y_true`` or ``y_pred``."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


# -- the scorer table ------------------------------------------------------------------

TASKS = ("multiclass", "multilabel", "regression")


@dataclass(frozen=True)
class Scorer:
    """One named metric, the way scikit-learn's scorers are: the single place that says
    how it is computed, whether greater is better, which tasks it applies to, how tables
    title it and in which task tables it is a column.

    ``fn`` takes ``(y_true, y_pred)`` of its ``kind``: ``labels`` (class indices, or
    multi-hot for multi-label), ``probs`` (true labels and probabilities ``[N, C]``) or
    ``values`` (one regression dimension; averaged over dimensions). ``loss`` has no
    function: the trainer computes it on dev with the training objective.
    """

    name: str
    display: str
    greater_is_better: bool
    tasks: tuple[str, ...]
    kind: str = "labels"
    fn: Callable[[np.ndarray, np.ndarray], float] | None = None
    table: tuple[str, ...] = ()
    """Tasks whose tables show this metric (columns in this table's order, headline first)."""
    headline: tuple[str, ...] = ()
    """Tasks judged by this metric: model-selection default, first column, bootstrap CI
    (macro-F1 for multiclass, micro-F1 for multi-label as LDDU/M3ED report, CCC)."""
    resampled: tuple[Callable[..., np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None
    """For :func:`bootstrap_scorer`: ``(stats(y, pred, owner, n) -> [n, k] per-sample
    sums, score(counts @ stats) -> [B])``, the metric of many resamples at once."""
    dimensions: tuple[str, ...] | None = None
    """Regression only: the dimensions it is defined for (None: every one); MOSI/MOSEI's
    sentiment metrics apply to ``sentiment`` alone."""

    def applies_to(self, dimension: str) -> bool:
        return self.dimensions is None or dimension in self.dimensions

    def sign(self, value: float) -> float:
        """``value`` oriented so that greater is better (for model selection)."""
        return float(value) if self.greater_is_better else -float(value)


def _sk(fn: Callable[..., Any], **kw: Any) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y: np.ndarray, p: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
            return float(fn(y, p, **kw))

    return score


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.abs(y - p).mean())


def _mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(((y - p) ** 2).mean())


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Plain accuracy for class indices; for multi-hot rows the sample-wise Jaccard
    accuracy, which is what multi-label emotion papers (LDDU, M3ED) call accuracy."""
    if y.ndim == 2:
        return float(jaccard_score(y, p, average="samples", zero_division=1))
    return float(accuracy_score(y, p))


def _row_scores(y: np.ndarray, pred: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per sample: the sum of its rows' scores (correct, or the row's Jaccard index with
    1 for an empty union, as ``_accuracy``) and its row count."""
    if y.ndim == 2:
        inter, union = (
            (y.astype(bool) & pred.astype(bool)).sum(1),
            (y.astype(bool) | pred.astype(bool)).sum(1),
        )
        score = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    else:
        score = (y == pred).astype(np.float64)
    return _per_sample(owner, n, [score, np.ones(len(score))])


def _mean_from(stats_: np.ndarray) -> np.ndarray:
    return stats_[:, 0] / np.maximum(stats_[:, 1], 1)


def _ece(y: np.ndarray, probs: np.ndarray) -> float:
    return expected_calibration_error(y, probs)


_MC, _ML, _RG = ("multiclass",), ("multilabel",), ("regression",)
_CLS = ("multiclass", "multilabel")

SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer(
            "macro_f1",
            "mF1",
            True,
            _CLS,
            fn=_sk(f1_score, average="macro", zero_division=0),
            table=_CLS,
            headline=_MC,
            resampled=(_counts_macro_f1, _macro_f1_from),
        ),
        Scorer(
            "micro_f1",
            "µF1",
            True,
            _CLS,
            fn=_sk(f1_score, average="micro", zero_division=0),
            table=_ML,
            headline=_ML,
            resampled=(_counts_micro_f1, _micro_f1_from),
        ),
        Scorer(
            "weighted_f1",
            "wF1",
            True,
            _CLS,
            fn=_sk(f1_score, average="weighted", zero_division=0),
            table=_CLS,
            resampled=(_counts_macro_f1, _weighted_f1_from),
        ),
        Scorer("accuracy", "acc", True, _CLS, fn=_accuracy, table=_MC, resampled=(_row_scores, _mean_from)),
        Scorer(
            "weighted_accuracy", "WA", True, _MC, fn=_sk(accuracy_score), resampled=(_row_scores, _mean_from)
        ),
        Scorer("unweighted_accuracy", "UA", True, _MC, fn=_sk(balanced_accuracy_score), table=_MC),
        Scorer(
            "jaccard_accuracy",
            "jacc",
            True,
            _ML,
            fn=_sk(jaccard_score, average="samples", zero_division=1),
            table=_ML,
        ),
        Scorer(
            "micro_precision",
            "P",
            True,
            _CLS,
            fn=_sk(precision_score, average="micro", zero_division=0),
            table=_ML,
        ),
        Scorer(
            "micro_recall", "R", True, _CLS, fn=_sk(recall_score, average="micro", zero_division=0), table=_ML
        ),
        Scorer("subset_accuracy", "subset", True, _ML, fn=_sk(accuracy_score)),
        Scorer("ece", "ECE", False, _MC, kind="probs", fn=_ece, table=_MC),
        Scorer(
            "brier", "Brier", False, _CLS, kind="probs", fn=lambda y, p: brier_per_class(y, p), table=_CLS
        ),
        Scorer(
            "ccc",
            "CCC",
            True,
            _RG,
            kind="values",
            fn=ccc,
            table=_RG,
            headline=_RG,
            resampled=(_moments_ccc, _ccc_from),
        ),
        Scorer("pearson", "r", True, _RG, kind="values", fn=pearson, table=_RG),
        Scorer("mae", "MAE", False, _RG, kind="values", fn=_mae, table=_RG),
        Scorer("mse", "MSE", False, _RG, kind="values", fn=_mse, table=_RG),
        *(
            Scorer(name, display, True, _RG, kind="values", fn=fn, table=_RG, dimensions=("sentiment",))
            for name, display, fn in (
                ("acc2_has0", "Acc2 (has0)", _acc2_has0),
                ("f1_has0", "F1 (has0)", _f1_has0),
                ("acc2_non0", "Acc2 (non0)", _acc2_non0),
                ("f1_non0", "F1 (non0)", _f1_non0),
                ("acc5", "Acc5", _acc_k(2.0)),
                ("acc7", "Acc7", _acc_k(3.0)),
            )
        ),
        Scorer("loss", "loss", False, TASKS, kind="loss"),
    )
}
"""Every metric usable for ``--select-metric``, tables, ``compare`` and trials."""


def table_metrics(task: str, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The metrics a task's tables show, headline first; with the run's class or
    dimension ``names``, dimension-specific metrics of those dimensions too (a
    ``sentiment`` regressor's table gets MOSI/MOSEI's Acc2/F1/Acc5/Acc7)."""
    cols = [
        s.name
        for s in SCORERS.values()
        if task in s.table and (s.dimensions is None or any(s.applies_to(n) for n in names or ()))
    ]
    head = headline(task)
    return (head, *(c for c in cols if c != head))


def headline(task: str) -> str:
    """The metric a task is judged by: model-selection default, first table column, CIs."""
    return next(s.name for s in SCORERS.values() if task in s.headline)


def get_scorer(name: str, task: str | None = None) -> Scorer:
    """The scorer ``name``; unknown names or names that do not apply to ``task`` are errors."""
    from avx.errors import AvxError

    if name not in SCORERS:
        raise AvxError(f"unknown metric '{name}'; valid: {', '.join(SCORERS)}")
    s = SCORERS[name]
    if task is not None and task not in s.tasks:
        valid = [k for k, v in SCORERS.items() if task in v.tasks]
        raise AvxError(f"metric '{name}' does not apply to {task} targets; valid: {', '.join(valid)}")
    return s
