"""Paper-style result tables from finished runs: overall scores with bootstrap intervals
and significance against a reference, per-class scores, and per-demographic-group scores.

The layouts are those of the two-stage paper (002): Table 1 (macro- and weighted-F1 with
2.5-97.5% bootstrap intervals, significance against a reference model), Table 3 (F1 per
emotion and the Brier score), Tables 4 and 5 (macro-F1 per group, macro-F1 bias, DPD and
EOD). Any classification run can be tabulated this way.

Where the numbers come from:

- a run's **test predictions** (``predictions.csv``, written by training); for a
  ``--trials`` directory the test predictions of every fold are pooled (a clip tested
  in several folds, as random speaker partitions allow, counts once per fold), every
  one made by a model that never saw the clip's speaker, and the bootstrap resamples
  the pooled predictions;
- the **reference test** is the paired two-tailed t-test over the folds both runs ran
  (``scipy.stats.ttest_rel`` on each fold's metric, as ``avx fuse eval --against``), a
  ``*`` where p < 0.05 (none with fewer than two common folds);
- **groups** come from the store's sample metadata (``sex``, ``race``, ``age`` = the
  age bands of :func:`avx.fuse.selection.age_group`); DPD and EOD are fairlearn's,
  one-vs-rest per class and averaged over classes (:func:`avx.fuse.metrics.fairness_report`);
  the bias is :func:`avx.fuse.metrics.f1_bias`, printed x 100 as the paper prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.run_files import trial_runs
from avx.fuse.tasks import eval_multihot

GROUP_COLUMNS = {"sex": "sex", "race": "race", "age": "age_group", "age_group": "age_group"}


@dataclass
class Pooled:
    """One run's (or trials directory's) test predictions, pooled over folds."""

    path: Path
    task: str
    names: list[str]
    ids: np.ndarray
    y: np.ndarray  # class indices [N] or multi-hot [N, C]
    pred: np.ndarray  # decisions, same shape
    probs: np.ndarray  # [N, C]
    folds: dict[int, dict[str, float]]  # per-fold test metrics (metrics.json)
    store: str
    inputs: str = ""  # the modalities of its streams, e.g. audio+video
    trained_on: str = ""  # the label sources its loss trained on (stage 1 -> stage 2)

    def groups(self, column: str) -> np.ndarray:
        """Each pooled clip's value of a demographic column (``age``: the age bands)."""
        from avx.fuse.selection import age_group
        from avx.store_schema import open_store

        name = GROUP_COLUMNS.get(column, column)
        samples = open_store(self.store).samples.set_index("id")
        if name == "age_group" and "age" in samples:
            values = pd.Series(age_group(samples["age"].to_numpy()), index=samples.index)
        elif name in samples:
            values = samples[name].fillna("unknown").astype(str)
        else:
            have = ", ".join(c for c in ("sex", "race", "age") if GROUP_COLUMNS[c] in samples or c in samples)
            raise AvxError(f"{self.store}: no sample column '{column}' for groups; valid: {have or 'none'}")
        return values.reindex(self.ids).fillna("unknown").astype(str).to_numpy()


Runs = str | Path | Pooled
"""A table row's run: its folder, or its predictions already pooled (:func:`pooled_test`),
so that several tables of the same runs read each run once."""


def _folders(path: Path) -> list[Path]:
    if (path / "trials.json").exists():
        return [folder for _, folder in trial_runs(path)]
    if (path / "metrics.json").exists():
        return [path]
    raise AvxError(f"{path}: no metrics.json or trials.json (not a finished run directory)")


def load(run: Runs) -> Pooled:
    """``run`` pooled: as given when it already is, else :func:`pooled_test` of its folder."""
    return run if isinstance(run, Pooled) else pooled_test(run)


def pooled_test(path: str | Path) -> Pooled:
    """The test predictions of run ``path`` (every fold's for a trials directory)."""
    path = Path(path)
    frames, folds = [], {}
    task = names = store = None
    for folder in _folders(path):
        m = json.loads((folder / "metrics.json").read_text())
        if m["task"] == "regression" or m.get("frame_level"):
            raise AvxError(f"{folder}: tables score per-clip classification runs, not {m['task']}")
        task, names = m["task"], list(m["names"])
        config = json.loads((folder / "config.json").read_text())
        store = config["store"]
        folds[int(m["fold"])] = {k: v for k, v in (m.get("test") or {}).items() if isinstance(v, int | float)}
        df = pd.read_csv(folder / "predictions.csv")
        frames.append(df[df["split"] == "test"])
    df = pd.concat(frames, ignore_index=True)
    if task == "multiclass":
        y, pred = df["target"].to_numpy(int), df["pred"].to_numpy(int)
    else:
        y = eval_multihot(df[[f"target:{n}" for n in names]].to_numpy(float), len(names))
        pred = df[[f"pred:{n}" for n in names]].to_numpy(int)
    probs = df[[f"prob:{n}" for n in names]].to_numpy(float)
    inputs = "+".join(dict.fromkeys(s.split("/")[0] for s in m["streams"]))
    ids = df["id"].astype(str).to_numpy()
    return Pooled(path, task, names, ids, y, pred, probs, folds, store, inputs, _trained_on(config))


def _trained_on(config: dict) -> str:
    """``voice`` (one source), or ``audio=voice+av,video=face+av -> av`` for a method
    that trains parts of itself on further sources first (the two-stage method)."""
    data, method = config["data"], config.get("method_config") or {}
    main = data.get("train_labels") or data["labels"]
    stage1 = method.get("stage1") if method.get("stages", 1) > 1 else None
    return f"{stage1} -> {main}" if stage1 else main


def _ci(value: float, ci: tuple[float, float], digits: int = 3) -> str:
    return f"{value:.{digits}f} ({ci[0]:.{digits}f}, {ci[1]:.{digits}f})"


def results_table(
    runs: dict[str, Runs],
    *,
    reference: str | None = None,
    metrics: tuple[str, ...] = ("macro_f1", "weighted_f1"),
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1: one row per run, each metric on the pooled test predictions with its
    bootstrap interval, and a paired t-test over folds against ``reference`` (a key of
    ``runs``). Returns ``(shown, numbers)``: strings as printed, and the numbers."""
    pooled = {k: load(p) for k, p in runs.items()}
    ref = pooled.get(reference) if reference else None
    if reference and ref is None:
        raise AvxError(f"reference '{reference}' is not one of the runs ({', '.join(runs)})")
    shown, numbers = [], []
    for label, r in pooled.items():
        row = {"model": label, "inputs": r.inputs, "trained on": r.trained_on}
        num = {**row, "run": str(r.path), "folds": len(r.folds)}
        for m in metrics:
            s = M.get_scorer(m, r.task)
            value = s.fn(r.y, r.pred)
            lo, hi = M.bootstrap_scorer(
                m, r.y, r.pred, np.arange(len(r.y)), len(r.y), n_boot=n_boot, seed=seed
            )
            p = _p_value(r, ref, m) if ref is not None and r is not ref else float("nan")
            star = "*" if p < 0.05 else ""
            row[s.display] = _ci(value, (lo, hi)) + star
            num.update({m: value, f"{m} lo": lo, f"{m} hi": hi, f"{m} p": p})
        shown.append(row)
        numbers.append(num)
    return pd.DataFrame(shown), pd.DataFrame(numbers)


def _p_value(run: Pooled, ref: Pooled, metric: str) -> float:
    common = sorted(set(run.folds) & set(ref.folds))
    a = [run.folds[f].get(metric, np.nan) for f in common]
    b = [ref.folds[f].get(metric, np.nan) for f in common]
    return M.paired_ttest(a, b)


def per_class_table(
    runs: dict[str, Runs], *, n_boot: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3: each class's F1 with its bootstrap interval, and the Brier score averaged
    over classes (:func:`avx.fuse.metrics.brier_per_class`)."""
    shown, numbers = [], []
    for label, run in runs.items():
        r = load(run)
        f1 = M.per_class_f1(r.y, r.pred, len(r.names))
        cis = M.bootstrap_per_class_f1(r.y, r.pred, len(r.names), n_boot=n_boot, seed=seed)
        brier = M.brier_per_class(r.y, r.probs)
        shown.append(
            {
                "model": label,
                **{n: _ci(v, c) for n, v, c in zip(r.names, f1, cis, strict=True)},
                "BS": f"{brier:.3f}",
            }
        )
        by_class = M.brier_by_class(r.y, r.probs)
        numbers.append(
            {
                "model": label,
                **dict(zip(r.names, f1, strict=True)),
                **{f"{n} lo": c[0] for n, c in zip(r.names, cis, strict=True)},
                **{f"{n} hi": c[1] for n, c in zip(r.names, cis, strict=True)},
                "brier": brier,
                **{f"brier {n}": v for n, v in zip(r.names, by_class, strict=True)},
            }
        )
    return pd.DataFrame(shown), pd.DataFrame(numbers)


def group_table(
    runs: dict[str, Runs], column: str, *, n_boot: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 4 and 5 for one demographic ``column``: macro-F1 per group (interval),
    the macro-F1 bias between groups x 100 (interval), DPD and EOD."""
    shown, numbers = [], []
    for label, run in runs.items():
        r = load(run)
        groups = r.groups(column)
        fair = M.fairness_report(r.y, r.pred, groups, len(r.names))
        by_group, bias = M.bootstrap_groups("macro_f1", r.y, r.pred, groups, n_boot=n_boot, seed=seed)
        row = {"model": label}
        num = {"model": label}
        for g, v in fair["macro_f1_by_group"].items():
            row[f"{g} (n={fair['n_by_group'][g]})"] = _ci(v, by_group[g])
            num.update({g: v, f"{g} lo": by_group[g][0], f"{g} hi": by_group[g][1]})
        row["macro-F1 bias"] = _ci(100 * fair["f1_bias"], (100 * bias[0], 100 * bias[1]), 2)
        row["DPD"], row["EOD"] = f"{fair['dpd']:.3f}", f"{fair['eod']:.3f}"
        num.update({"f1_bias": fair["f1_bias"], "dpd": fair["dpd"], "eod": fair["eod"]})
        shown.append(row)
        numbers.append(num)
    return pd.DataFrame(shown), pd.DataFrame(numbers)
