"""Many runs: trials over folds, comparison tables, console tables.

One run folder's format (``save_pretrained`` / ``from_pretrained``) is
:mod:`avx.fuse.run_folder`. A trials directory holds one run per fold (``fold-K/``,
``--trials``) or per seed on one fold (``seed-S/``, ``--seeds``, the protocol of papers
on a fixed official split: LDDU, CARAT) plus ``trials.json``, ``trials.csv`` and
``trials.md`` (mean ± std over the runs).
Which metrics tables show, and their titles, come from :data:`avx.fuse.metrics.SCORERS`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.run_files import is_finished
from avx.fuse.run_folder import FusionRun, load_run
from avx.fuse.train import TrainConfig, train
from avx.serialization import write_json
from avx.store_schema import open_store

__all__ = ["FusionRun", "LoadedRun", "compare_runs", "load_run", "run_trials"]

LoadedRun = FusionRun  # the name before runs had save_pretrained/from_pretrained


# -- trials ------------------------------------------------------------------------------


def run_trials(
    config: TrainConfig,
    out_dir: str | Path,
    k: int = 0,
    *,
    seeds: int = 0,
    console: Console | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train on folds 0..k-1 of the protocol (``fold-K/``), or ``seeds`` seeds from
    ``config.seed`` on its one fold (``seed-S/``); write the runs and a mean ± std table.

    ``resume`` keeps finished runs (their ``metrics.json``) and continues interrupted
    ones; ``overwrite`` retrains every run (see :func:`~avx.fuse.train.train`).
    """
    out = Path(out_dir)
    if bool(k) == bool(seeds):
        raise AvxError("give either --trials K (folds) or --seeds N (seeds on one fold)")
    if seeds:
        plan = [(f"seed-{s}", replace(config, seed=s)) for s in range(config.seed, config.seed + seeds)]
    else:
        protocol = open_store(config.store).protocol(config.data.protocol)
        if not 1 <= k <= protocol.n_folds:
            raise AvxError(f"--trials {k}: protocol '{protocol.name}' has {protocol.n_folds} folds")
        plan = [(f"fold-{f}", replace(config, data=replace(config.data, fold=f))) for f in range(k)]
    runs = []
    for name, cfg in plan:
        folder = out / name
        if resume and is_finished(folder):
            runs.append(json.loads((folder / "metrics.json").read_text()))
            continue
        runs.append(
            train(
                cfg,
                folder,
                console=console,
                resume=resume,
                overwrite=overwrite,
                keep_checkpoint=keep_checkpoint,
            )
        )
    summary = summarize_trials(runs, over="seed" if seeds else "fold", folders=[n for n, _ in plan])
    write_json(out / "trials.json", summary)
    table = trials_table(summary)
    table.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(markdown(table) + "\n")
    return summary


def test_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The table metrics of one run's test split."""
    test = metrics.get("test") or {}
    cols = M.table_metrics(metrics["task"], metrics.get("names"))
    return {m: test[m] for m in cols if isinstance(test.get(m), int | float)}


def summarize_trials(
    runs: list[dict[str, Any]], over: str = "fold", folders: list[str] | None = None
) -> dict[str, Any]:
    """Mean ± std of the runs' test metrics. ``folds`` lists each run's key, its fold
    (``over="fold"``) or its seed (``over="seed"``), which pairs runs across directories;
    ``runs`` their folders."""
    first = runs[0]
    per_fold = [test_values(r) for r in runs]
    names = list(per_fold[0])
    return {
        "method": first["method"],
        "task": first["task"],
        "streams": first["streams"],
        "labels": first["labels"],
        "protocol": first["protocol"],
        "over": over,
        "folds": [r["fold"] if over == "fold" else r["seed"] for r in runs],
        "runs": folders or [f"fold-{r['fold']}" for r in runs],
        "per_fold": {m: [f.get(m, float("nan")) for f in per_fold] for m in names},
        "mean": {m: float(np.nanmean([f.get(m, np.nan) for f in per_fold])) for m in names},
        "std": {
            m: float(np.nanstd([f.get(m, np.nan) for f in per_fold], ddof=1)) if len(runs) > 1 else 0.0
            for m in names
        },
    }


def trials_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {
            "metric": m,
            "mean": summary["mean"][m],
            "std": summary["std"][m],
            **{f"{summary.get('over', 'fold')} {k}": v for k, v in zip(summary["folds"], vals, strict=True)},
        }
        for m, vals in summary["per_fold"].items()
    ]
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# -- comparison --------------------------------------------------------------------------


def _run_values(path: Path) -> tuple[str, str, dict[int, dict[str, float]], dict[str, Any]]:
    """(method, task, {fold or seed: test metrics}, ci95 of a single run)."""
    if (path / "trials.json").exists():
        s = json.loads((path / "trials.json").read_text())
        folds = {f: {m: v[i] for m, v in s["per_fold"].items()} for i, f in enumerate(s["folds"])}
        return s["method"], s["task"], folds, {}
    if (path / "metrics.json").exists():
        m = json.loads((path / "metrics.json").read_text())
        return m["method"], m["task"], {m["fold"]: test_values(m)}, (m.get("test") or {}).get("ci95", {})
    raise AvxError(f"{path}: no metrics.json or trials.json (not a run directory)")


def compare_runs(paths: list[str | Path], metric: str | list[str] | None = None) -> pd.DataFrame:
    """One row per run: each metric (mean and std over folds or seeds, or a single run's
    value with its bootstrap 95% CI), and the paired two-tailed t-test p-value of the
    first metric against the first run over the folds (seeds) both ran (NaN with fewer
    than two in common).

    ``metric``: one name, several (a list or comma-separated: ``jaccard_accuracy,
    micro_precision,micro_recall,micro_f1`` is LDDU's Table 1), or None for the task's headline metric;
    with several, each metric ``m`` has an ``m std`` column."""
    loaded = [(Path(p), *_run_values(Path(p))) for p in paths]
    task = loaded[0][2]
    if any(t != task for _, _, t, _, _ in loaded):
        raise AvxError("runs to compare must share a task")
    names = metric.split(",") if isinstance(metric, str) else list(metric or [])
    metrics = [M.get_scorer(m.strip(), task).name for m in names] or [M.headline(task)]
    ref = loaded[0][3]
    rows = []
    for path, method, _, folds, ci in loaded:
        row: dict[str, Any] = {"run": str(path), "method": method, "folds": len(folds)}
        for j, name in enumerate(metrics):
            vals = [folds[f].get(name, np.nan) for f in sorted(folds)]
            row[name] = float(np.nanmean(vals))
            sd = float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else float("nan")
            row["std" if len(metrics) == 1 else f"{name} std"] = sd
            if j == 0:
                lo, hi = ci.get(name, [np.nan, np.nan])
                ci95 = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) else ""
        common = sorted(set(folds) & set(ref))
        first = metrics[0]
        row["ci95"] = ci95
        row["p_vs_first"] = (
            M.paired_ttest([ref[f][first] for f in common], [folds[f][first] for f in common])
            if len(common) > 1
            else float("nan")
        )
        rows.append(row)
    return pd.DataFrame(rows)


# -- console tables ----------------------------------------------------------------------


def metrics_table(metrics: dict[str, Any], title: str = "results") -> Table:
    """Dev and test metrics of one run: the fused model, then each stream's own output."""
    cols = M.table_metrics(metrics["task"])[:3]
    table = Table(title=title)
    table.add_column("model", overflow="fold")  # long stream names wrap; numbers never shrink
    for split in ("dev", "test"):
        for c in cols:
            table.add_column(f"{split}\n{M.SCORERS[c].display}", justify="right", no_wrap=True)
    rows = [(metrics["method"], {sp: metrics.get(sp) or {} for sp in ("dev", "test")})]
    for s in metrics["streams"]:
        rows.append(
            (
                f"  {s}",
                {sp: (metrics.get(sp) or {}).get("per_stream", {}).get(s, {}) for sp in ("dev", "test")},
            )
        )
    for name, res in rows:
        table.add_row(name, *(_fmt(res[sp].get(c)) for sp in ("dev", "test") for c in cols))
    return table


def comparison_table(results: list[dict[str, Any]], title: str = "comparison") -> Table:
    """Test metrics of several runs side by side (``avx demo``), with bootstrap CIs."""
    task = results[0]["task"]
    cols = M.table_metrics(task, results[0].get("names"))
    key = M.headline(task)
    table = Table(title=title)
    table.add_column("method", overflow="fold")
    for c in cols:
        table.add_column(M.SCORERS[c].display, justify="right", no_wrap=True)
    table.add_column(f"{M.SCORERS[key].display} 95% CI", justify="right", overflow="fold")
    table.add_column("s/epoch", justify="right", no_wrap=True)
    for m in results:
        test = m.get("test") or {}
        lo, hi = test.get("ci95", {}).get(key, [None, None])
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        table.add_row(
            m["method"], *(_fmt(test.get(c)) for c in cols), ci, _fmt(m.get("seconds_per_epoch"), 2)
        )
    return table


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and v == v else "-"
