"""What a run predicts: labels from the store resolved for a task, once.

``--labels`` names a source in the store and ``--task`` what to do with it:

=================  ============================================================
multiclass         ``voice``/``face``/``av`` (plurality of that rater modality,
                   ties left out), a categorical label (``intended``,
                   ``consensus``), or one dimension (``valence``) binned into 3
                   classes at ``bins`` (default -0.05 / 0.05, as COLD)
                   (with ``soft_targets``, the loss trains on the label-smoothed
                   vote distribution, VAVL's recipe; metrics score the class)
multilabel         ``voice``/``face``/``av`` as multi-hot (distribution > 1/C) or,
                   with ``soft_targets``, the vote distribution itself;
                   ``multilabel`` for corpora with multi-label annotation
regression         one or more dimensions (``valence,arousal``), on [-1, 1]
=================  ============================================================

Dimensions come per clip (``labels/dimensions``) or per frame
(``labels/continuous``, e.g. AVEC); ``level`` picks which (auto: per clip when the
store has it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avx.errors import AvxError, UnknownNameError
from avx.store_schema import FeatureStore

TASKS = ("multiclass", "multilabel", "regression")
LEVELS = ("auto", "sequence", "frame")
BIN_NAMES = ["low", "mid", "high"]


@dataclass
class Targets:
    """Resolved targets for every sample of the store (row order of ``store.samples``).

    Attributes:
        task: ``multiclass``, ``multilabel`` or ``regression``.
        names: class names (classification) or dimension names (regression).
        values: per-sequence targets, ``[N]`` int (-1 = none), ``[N, C]`` float
            (multilabel) or ``[N, K]`` float (regression, NaN = none); None when per frame.
        frames: per-frame targets per sample (``[T_i]`` int or ``[T_i, K]`` float).
        times: per-frame target times (s) per sample.
        eval_multihot: for soft multilabel targets, the multi-hot used for metrics.
        soft: for soft multiclass targets, ``[N, C]`` label-smoothed vote
            distributions the loss trains on; ``values`` (the unique plurality class;
            ties are left out) is what metrics score.
    """

    task: str
    names: list[str]
    values: np.ndarray | None = None
    frames: list[np.ndarray] | None = None
    times: list[np.ndarray] | None = None
    eval_multihot: np.ndarray | None = None
    soft: np.ndarray | None = None

    @property
    def frame_level(self) -> bool:
        return self.frames is not None

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    def labelled(self) -> np.ndarray:
        """Boolean ``[N]``: the sample has a usable target."""
        if self.frame_level:
            return np.array([len(f) > 0 and np.isfinite(np.asarray(f, float)).any() for f in self.frames])
        v = self.values
        if self.task == "multiclass":
            return v >= 0
        return np.isfinite(v).all(axis=1) & (v.sum(axis=1) > 0 if self.task == "multilabel" else True)


VOTE_SMOOTHING = 0.06
"""``(1 - e) * p + e / C`` with ``e`` = 0.06: VAVL's public code's ``0.94 * p + 0.01`` on
CREMA-D's six classes, the same rule for any class count."""


def smoothed_votes(distribution: np.ndarray, e: float = VOTE_SMOOTHING) -> np.ndarray:
    """Label-smoothed vote distributions ``[N, C]`` (rows without votes stay zeros)."""
    p = np.nan_to_num(np.asarray(distribution, np.float64), nan=0.0)
    rated = p.sum(1, keepdims=True) > 0
    return np.where(rated, (1 - e) * p + e / p.shape[1], 0.0).astype(np.float32)


def bin_values(x: np.ndarray, bins: tuple[float, float]) -> np.ndarray:
    """3-class binning: ``x < lo`` -> 0, ``lo <= x <= hi`` -> 1, ``x > hi`` -> 2; NaN -> -1."""
    out = np.where(x < bins[0], 0, np.where(x > bins[1], 2, 1)).astype(np.int64)
    out[~np.isfinite(x)] = -1
    return out


def _dimensions(store: FeatureStore, names: list[str], level: str) -> tuple[str, list[int]]:
    """Which label group holds ``names`` (``dimensions`` or ``continuous``) and their columns."""
    groups = {}
    if store.dimensions is not None:
        groups["sequence"] = store.dimensions.names
    if store.continuous is not None:
        groups["frame"] = store.continuous.names
    order = ["sequence", "frame"] if level == "auto" else [level]
    for lvl in order:
        have = groups.get(lvl, [])
        if all(n in have for n in names):
            return lvl, [have.index(n) for n in names]
    valid = sorted({n for v in groups.values() for n in v})
    where = "" if level == "auto" else f" at {level} level"
    raise AvxError(
        f"{store.url}: no dimensional label(s) {names}{where}; valid: {', '.join(valid) or 'none'}"
    )


def resolve_targets(
    store: FeatureStore,
    labels: str,
    task: str,
    *,
    level: str = "auto",
    bins: tuple[float, float] = (-0.05, 0.05),
    soft_targets: bool = False,
) -> Targets:
    """Targets for every sample of ``store``; raises a one-line error for unknown names."""
    if task not in TASKS:
        raise UnknownNameError("task", task, list(TASKS))
    if level not in LEVELS:
        raise UnknownNameError("label level", level, list(LEVELS))
    raters = sorted(store.labels)
    categorical = store.categorical_names
    dims = sorted(
        {
            *(store.dimensions.names if store.dimensions else []),
            *(store.continuous.names if store.continuous else []),
        }
    )
    names = [n.strip() for n in labels.split(",") if n.strip()]
    if task == "regression" or (task == "multiclass" and names and names[0] in dims):
        if task == "multiclass" and len(names) != 1:
            raise AvxError("binned classification takes one dimension (e.g. --labels valence)")
        lvl, cols = _dimensions(store, names, level)
        if lvl == "sequence":
            values = store.dimensions.scaled()[:, cols]
            if task == "multiclass":
                return Targets(task, list(BIN_NAMES), values=bin_values(values[:, 0], bins))
            return Targets(task, names, values=values.astype(np.float32))
        cont = store.continuous
        frames = [v[:, cols].astype(np.float32) for v in cont.values]
        if task == "multiclass":
            frames = [bin_values(f[:, 0], bins) for f in frames]
            return Targets(task, list(BIN_NAMES), frames=frames, times=list(cont.times))
        return Targets(task, names, frames=frames, times=list(cont.times))
    if len(names) != 1:
        raise AvxError(f"--labels takes one source for {task}; got '{labels}'")
    src = names[0]
    if task == "multiclass":
        if soft_targets and src not in store.labels:
            want = "|".join(raters)
            raise AvxError(f"--soft-targets trains on rater votes: give --labels {want}, not {src}")
        if src in categorical:
            return Targets(task, store.class_names, values=store.categorical(src))
        if src in store.labels:
            r = store.labels[src]
            soft = smoothed_votes(r.distribution) if soft_targets else None
            return Targets(task, store.class_names, values=r.hard_labels(), soft=soft)
        raise UnknownNameError("label source", src, [*raters, *categorical, *dims])
    # multilabel
    if src in store.labels:
        r = store.labels[src]
        if soft_targets:
            dist = np.nan_to_num(r.distribution.astype(np.float32), nan=0.0)
            return Targets(task, store.class_names, values=dist, eval_multihot=r.multihot.astype(np.float32))
        return Targets(task, store.class_names, values=r.multihot.astype(np.float32))
    if src == "multilabel" and store.multilabel is not None:
        _, presence = store.multilabel
        return Targets(task, store.class_names, values=presence.astype(np.float32))
    valid = [*raters, *(["multilabel"] if store.multilabel is not None else [])]
    raise UnknownNameError("multi-label source", src, valid)
