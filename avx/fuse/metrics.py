"""Evaluation metrics as plain functions with scikit-learn's definitions.

``f(y_true, y_pred)`` like scikit-learn; each name in :data:`SCORERS` declares whether
greater is better, so model selection can look a metric up by name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes in ``y_true`` or ``y_pred``."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1 weighted by support in ``y_true``."""
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred))


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall (UA, the emotion-recognition literature's name; balanced accuracy)."""
    return float(balanced_accuracy_score(y_true, y_pred))


SCORERS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "macro_f1": (macro_f1, True),
    "weighted_f1": (weighted_f1, True),
    "accuracy": (accuracy, True),
    "unweighted_accuracy": (unweighted_accuracy, True),
}
"""name -> (function, greater_is_better)."""


def classification_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Every multiclass metric, plus the sample count."""
    out = {name: fn(y_true, y_pred) for name, (fn, _) in SCORERS.items()}
    out["n"] = len(y_true)
    return out
