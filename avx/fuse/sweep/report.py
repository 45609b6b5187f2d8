"""``avx fuse report SWEEP --out report/``: a sweep's table as a paper prints it.

Writes ``results.md`` and ``results.csv`` (the numbers), ``report.html`` (one
self-contained file: tables, figures as inline PNGs, no server; :mod:`.html`) and
``provenance.json``.

How every number is made (``results.md`` states it under the table):

- a table cell is one row of the sweep (its axis values) under one column: an
  evaluation setting (``[report] columns = "settings"``: SFAV's AV / A / V / M) or a
  metric on the clean test set (``"metrics"``);
- **mean ± std** over the row's trials (folds or seeds; std with ddof = 1);
- **[lo, hi]**: the 95% percentile bootstrap interval (``n_boot`` resamples of clips) of
  the metric on the trials' test predictions pooled (a clip tested in several folds
  counts once per fold); for M, the mean over the modality rows of replicates drawn on
  the same clips;
- **\\***: a paired two-tailed t-test over the trials both rows ran (scipy's
  ``ttest_rel``) against the row of the reference method with the same other axis
  values, significant at 0.05 after Holm's correction across every test in the table
  (:func:`avx.fuse.metrics.holm`); raw and adjusted p-values are in ``results.csv``;
- **bold**: the best mean of its column within its block (``[report] groups``).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.sweep.execute import cell_dir, cell_state, read_sweep, result_dir, sweep_cells
from avx.fuse.sweep.spec import Cell
from avx.fuse.tasks import eval_multihot

CLEAN = "clean"


@dataclass
class CellResult:
    """One finished cell's files, each read once (the prediction files when first used)."""

    cell: Cell
    run: Path
    metrics: dict[str, Any]
    eval_table: pd.DataFrame | None
    eval_settings: list[str]  # the setting names in eval_predictions.csv, by table row
    search: dict[str, Any] | None = None
    table_rows: int = 0  # leading eval-table rows forming the modality table (with M)

    @cached_property
    def test_predictions(self) -> pd.DataFrame:
        """The clean test rows of ``predictions.csv``."""
        df = pd.read_csv(self.run / "predictions.csv")
        return df[df["split"] == "test"]

    @cached_property
    def eval_predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.run / "eval_predictions.csv")


@dataclass
class SweepResults:
    path: Path
    meta: dict[str, Any]
    cells: list[CellResult]
    pending: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.cells[0].metrics["task"]

    @property
    def names(self) -> list[str]:
        return list(self.cells[0].metrics["names"])

    def rows(self) -> list[str]:
        return list(dict.fromkeys(c.cell.row for c in self.cells))

    def of(self, row: str) -> list[CellResult]:
        return [c for c in self.cells if c.cell.row == row]


def collect(sweep: str | Path) -> SweepResults:
    """Every done cell of ``sweep`` with its metrics and evaluation table."""
    sweep = Path(sweep)
    meta = read_sweep(sweep)
    cells, ev = sweep_cells(sweep)
    out, pending, failed = [], 0, []
    for c in cells:
        st = cell_state(sweep, c, ev)
        if st != "done":
            pending += st == "pending"
            if st == "failed":
                err = json.loads((cell_dir(sweep, c) / "error.json").read_text())["error"]
                failed.append({"row": c.row, "trial": c.trial, "error": err})
            continue
        folder = cell_dir(sweep, c)
        run = result_dir(folder)
        table = pd.read_csv(run / "eval.csv") if (run / "eval.csv").exists() else None
        settings, table_rows = [], 0
        if table is not None:
            ev_json = json.loads((run / "eval.json").read_text())
            settings = _table_settings(list(table["setting"]), list(ev_json["settings"]))
            table_rows = int(ev_json.get("modality_rows", 0))
        search = (
            json.loads((folder / "search.json").read_text()) if (folder / "search.json").exists() else None
        )
        metrics = json.loads((run / "metrics.json").read_text())
        out.append(CellResult(c, run, metrics, table, settings, search, table_rows))
    if not out:
        raise AvxError(f"{sweep}: no finished cell to report on (avx fuse sweep --status {sweep})")
    return SweepResults(sweep, meta, out, pending, failed)


def _table_settings(rows: list[str], names: list[str]) -> list[str]:
    """For each eval-table row, the setting whose predictions it is (the modality
    table calls the clean setting AV; M has none: an empty name)."""
    out = []
    for r in rows:
        if r in names:
            out.append(r)
        elif r.startswith("M (mean"):
            out.append("")
        else:
            out.append(CLEAN)  # the clean row, named by its modalities
    return out


# -- the results table --------------------------------------------------------------------


def results_frame(
    res: SweepResults,
    *,
    reference: str | None = None,
    metric: str | None = None,
    columns: str | None = None,
    n_boot: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The table in long form: one record per (row, column) with mean, std, trials,
    bootstrap interval, raw and Holm-adjusted p-values, significance and best marks."""
    rep = res.meta.get("report") or {}
    reference = reference if reference is not None else rep.get("reference")
    metric = metric or rep.get("metric") or M.headline(res.task)
    columns = columns or rep.get("columns") or "settings"
    n_boot = int(n_boot if n_boot is not None else rep.get("n_boot", 1000))
    groups = list(rep.get("groups") or [])
    use_settings = columns == "settings" and res.cells[0].eval_table is not None
    if use_settings:
        # the modality table only, when there is one; other settings are plotted (robustness)
        cols = list(res.cells[0].eval_table["setting"])[: res.cells[0].table_rows or None]
    else:
        cols = list(M.table_metrics(res.task, res.names))
    records = []
    for row in res.rows():
        cells = res.of(row)
        axes = cells[0].cell.axes
        for col in cols:
            values = {c.cell.trial: _value(c, col, metric, use_settings) for c in cells}
            v = np.array([x for x in values.values() if np.isfinite(x)], float)
            col_metric = metric if use_settings else col
            lo, hi = _interval(res, cells, col, col_metric, use_settings, n_boot, seed)
            records.append({
                "group": " · ".join(f"{g}={axes.get(g)}" for g in groups),
                "row": row,
                "method": axes.get("method") or axes.get("preset"),
                "column": col,
                "metric": col_metric,
                "mean": float(v.mean()) if len(v) else np.nan,
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else np.nan,
                "n_trials": len(v),
                "lo": lo,
                "hi": hi,
                "values": json.dumps({k: round(x, 6) if np.isfinite(x) else None for k, x in values.items()}),
                **{f"axis:{k}": v_ for k, v_ in axes.items()},
            })  # fmt: skip
    df = pd.DataFrame(records)
    df["p"] = np.nan
    if reference:
        _t_tests(df, res, reference, groups)
    df["p_holm"] = M.holm(df["p"].to_numpy())
    df["significant"] = df["p_holm"] < 0.05
    df["best"] = False
    for _, part in df.groupby(["group", "column"], sort=False):
        sign = (
            M.SCORERS[part["metric"].iloc[0]].sign if part["metric"].iloc[0] in M.SCORERS else (lambda x: x)
        )
        scores = part["mean"].map(sign)
        if scores.notna().any():
            df.loc[scores.idxmax(), "best"] = True
    return df


def _value(c: CellResult, col: str, metric: str, use_settings: bool) -> float:
    if use_settings:
        row = c.eval_table[c.eval_table["setting"] == col]
        return float(row[metric].iloc[0]) if len(row) and metric in row else np.nan
    v = (c.metrics.get("test") or {}).get(col)
    return float(v) if isinstance(v, int | float) else np.nan


def _arrays(df: pd.DataFrame, task: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if task == "multiclass":
        return df["target"].to_numpy(int), df["pred"].to_numpy(int)
    if task == "multilabel":
        y = eval_multihot(df[[f"target:{n}" for n in names]].to_numpy(float), len(names))
        return y, df[[f"pred:{n}" for n in names]].to_numpy(int)
    cols = [f"value:{n}" for n in names] if f"value:{names[0]}" in df else ["value"]
    tcols = [f"target:{n}" for n in names] if f"target:{names[0]}" in df else ["target"]
    return df[tcols].to_numpy(float).squeeze(), df[cols].to_numpy(float).squeeze()


def pooled(
    cells: list[CellResult], setting: str | None, task: str, names: list[str], *, owners: bool = False
) -> tuple[np.ndarray, ...]:
    """Targets and decisions of ``cells`` pooled over trials: the clean test predictions
    (``setting`` None) or one evaluation setting's. ``owners``: also each row's clip
    (per trial) and the number of clips, so a bootstrap of per-frame predictions draws
    whole clips."""
    frames = []
    for c in cells:
        if setting is None:
            df = c.test_predictions
        else:
            df = c.eval_predictions[c.eval_predictions["setting"] == setting]
        frames.append(df.assign(_clip=c.cell.trial + "/" + df["id"].astype(str)))
    df = pd.concat(frames, ignore_index=True)
    y, p = _arrays(df, task, names)
    if not owners:
        return y, p
    owner, clips = pd.factorize(df["_clip"])
    return y, p, owner, len(clips)


def _interval(res: SweepResults, cells: list[CellResult], col: str, metric: str, use_settings: bool,
              n_boot: int, seed: int) -> tuple[float, float]:  # fmt: skip
    if not n_boot or metric not in M.SCORERS or M.SCORERS[metric].fn is None:
        return np.nan, np.nan
    try:
        if not use_settings:
            return _bootstrap(metric, *pooled(cells, None, res.task, res.names, owners=True), n_boot, seed)
        k = list(cells[0].eval_table["setting"]).index(col)
        setting = cells[0].eval_settings[k]
        if setting:
            return _bootstrap(metric, *pooled(cells, setting, res.task, res.names, owners=True), n_boot, seed)
        reps = []  # M: the mean over the modality rows, replicate by replicate
        for s in cells[0].eval_settings[:k]:
            y, p = pooled(cells, s, res.task, res.names)
            reps.append(
                M.bootstrap_replicates(metric, y, p, np.arange(len(y)), len(y), n_boot=n_boot, seed=seed)
            )
        return M.percentile_interval(np.mean(reps, axis=0))
    except (FileNotFoundError, KeyError, ValueError):
        return np.nan, np.nan


def _replicates(
    metric: str, y: np.ndarray, p: np.ndarray, owner: np.ndarray, n: int, n_boot: int, seed: int
) -> np.ndarray:
    """The metric on each bootstrap replicate of the ``n`` clips (row ``r`` belongs to clip
    ``owner[r]``): vectorised where the scorer has a resampled form, else one scorer call
    per replicate on the drawn clips' rows (the same draws either way)."""
    if M.SCORERS[metric].resampled is not None:
        return M.bootstrap_replicates(metric, y, p, owner, n, n_boot=n_boot, seed=seed)
    rows_of = [np.flatnonzero(owner == k) for k in range(n)]
    rng = np.random.default_rng(seed)
    fn = M.SCORERS[metric].fn
    out = []
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[k] for k in rng.integers(0, n, n)])
        out.append(fn(y[rows], p[rows]))
    return np.array(out)


def _bootstrap(
    metric: str, y: np.ndarray, p: np.ndarray, owner: np.ndarray, n: int, n_boot: int, seed: int
) -> tuple[float, float]:
    return M.percentile_interval(_replicates(metric, y, p, owner, n, n_boot, seed))


def _t_tests(df: pd.DataFrame, res: SweepResults, reference: str, groups: list[str]) -> None:
    """Each row against the reference method's row with the same other axes."""

    def others(axes: dict[str, Any]) -> tuple:
        return tuple(sorted((k, str(v)) for k, v in axes.items() if k != "method"))

    ref_rows = {
        others(res.of(r)[0].cell.axes): r
        for r in res.rows()
        if res.of(r)[0].cell.axes.get("method") == reference
    }
    for i, rec in df.iterrows():
        axes = res.of(rec["row"])[0].cell.axes
        if axes.get("method") == reference:
            continue
        ref = ref_rows.get(others(axes))
        if ref is None:
            continue
        mine = json.loads(rec["values"])
        match = df[(df["row"] == ref) & (df["column"] == rec["column"])]
        if not len(match):
            continue
        theirs = json.loads(match["values"].iloc[0])
        common = [t for t in mine if t in theirs and mine[t] is not None and theirs[t] is not None]
        df.loc[i, "p"] = M.paired_ttest([mine[t] for t in common], [theirs[t] for t in common])


def display_row(row: str, group: str) -> str:
    """A row's label inside its block: without the block's own axis values."""
    drop = set(group.split(" · ")) if group else set()
    return " · ".join(p for p in row.split(" · ") if p not in drop)


def shown(df: pd.DataFrame, digits: int = 3) -> dict[str, pd.DataFrame]:
    """The printed tables, one per block: ``mean ± std [lo, hi]``, ``*`` significant,
    best in bold (markdown ``**``)."""
    out = {}
    for group, part in df.groupby("group", sort=False):
        table = part.pivot_table(index="row", columns="column", values="mean", sort=False)
        text = pd.DataFrame(index=table.index, columns=table.columns, dtype=object)
        for _, r in part.iterrows():
            s = f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
            if np.isfinite(r["lo"]):
                s += f" [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]"
            if r["significant"]:
                s += " *"
            text.loc[r["row"], r["column"]] = f"**{s}**" if r["best"] else s
        text.index = [display_row(r, str(group)) for r in text.index]
        text.index.name = "model"
        out[str(group)] = text.reset_index()
    return out


def procedure(df: pd.DataFrame, res: SweepResults, reference: str | None, n_boot: int) -> str:
    n_tests = int(df["p"].notna().sum())
    trials = sorted({t for c in res.cells for t in [c.cell.trial]})
    text = (
        f"Mean ± std over trials ({', '.join(trials)}); [lo, hi]: 95% percentile bootstrap interval "
        f"({n_boot} resamples) of the pooled test predictions of the trials. "
    )
    if reference:
        text += (
            f"*: paired two-tailed t-test over trials against {reference} (same other settings), "
            f"p < 0.05 after Holm's correction across the {n_tests} tests of the table. "
        )
    return text + "Bold: best mean of its column within its block."


def write_markdown(
    path: Path, res: SweepResults, df: pd.DataFrame, reference: str | None, n_boot: int
) -> str:
    from avx.fuse.runs import markdown

    parts = [f"# {res.meta['name']}", ""]
    metric = df["metric"].iloc[0]
    if df["metric"].nunique() == 1:
        parts.append(f"Metric: {M.SCORERS[metric].display if metric in M.SCORERS else metric} (test).")
        parts.append("")
    for group, table in shown(df).items():
        if group:
            parts += [f"## {group}", ""]
        parts += [markdown(table), ""]
    parts.append(procedure(df, res, reference, n_boot))
    search = search_frame(res)
    if len(search):
        parts += ["", "## Hyper-parameter search (chosen on dev)", "", markdown(search)]
    if res.pending or res.failed:
        parts.append(f"\nNot finished: {res.pending} pending, {len(res.failed)} failed cell(s).")
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    return text


# -- search -------------------------------------------------------------------------------


def search_frame(res: SweepResults) -> pd.DataFrame:
    """Per searched cell: the values chosen on dev, the chosen draw's dev and test score,
    and the spread of dev and test scores across the draws (how sensitive the row is)."""
    records = []
    for c in res.cells:
        s = c.search
        if not s:
            continue
        sp = s["spread"]
        records.append({
            "model": c.cell.row,
            "trial": c.cell.trial,
            "chosen": ", ".join(f"{k}={v}" for k, v in s["values"].items()),
            "metric": s["metric"],
            "dev": s["dev"],
            "test": s["test"],
            "dev over draws": _spread(sp["dev"]),
            "test over draws": _spread(sp["test"]),
            "draws": len(s["draws"]),
        })  # fmt: skip
    return pd.DataFrame(records)


def _spread(d: dict[str, float]) -> str:
    return f"{d['mean']:.3f} ± {d['std']:.3f} [{d['min']:.3f}, {d['max']:.3f}]"


# -- cost ---------------------------------------------------------------------------------

COST_COLUMNS = {
    "wall_seconds": "wall (s)",
    "epochs": "epochs",
    "seconds_per_epoch": "s/epoch",
    "peak_rss_mib": "peak RSS (MiB)",
    "peak_gpu_mib": "peak GPU (MiB)",
    "parameters": "parameters",
    "inference_frames_per_second": "inference frames/s",
}


def cost_frame(res: SweepResults) -> pd.DataFrame:
    """Per row: each cost figure's mean over the row's trials."""
    records = []
    for row in res.rows():
        costs = [c.metrics.get("cost") or {} for c in res.of(row)]
        rec: dict[str, Any] = {"model": row}
        for k, title in COST_COLUMNS.items():
            v = [x[k] for x in costs if isinstance(x.get(k), int | float)]
            rec[title] = float(np.mean(v)) if v else None
        rec["device"] = costs[0].get("device") if costs else None
        records.append(rec)
    return pd.DataFrame(records)


# -- provenance ---------------------------------------------------------------------------


def provenance(res: SweepResults) -> dict[str, Any]:
    """The avx version, each store's fingerprint, every cell's resolved config, the machine."""
    import hashlib

    import torch

    from avx import __version__

    stores: dict[str, Any] = {}
    for c in res.cells:
        cfg = json.loads((c.run / "config.json").read_text())
        store = cfg["store"]
        streams = stores.setdefault(store, {"streams": {}})["streams"]
        for s, prov in (cfg.get("stream_provenance") or {}).items():
            streams[s] = hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()
    for st in stores.values():
        st["fingerprint"] = hashlib.sha256(json.dumps(st["streams"], sort_keys=True).encode()).hexdigest()
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "avx_version": __version__,
        "sweep": res.meta["name"],
        "spec": res.meta.get("spec"),
        "stores": stores,
        "cells": {
            f"{c.cell.folder}": {
                "row": c.cell.row,
                "trial": c.cell.trial,
                "key": c.cell.key,
                "run": str(c.run),
                "config": json.loads((c.run / "config.json").read_text()),
            }
            for c in res.cells
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": __import__("os").cpu_count(),
            "torch": torch.__version__,
            "cuda_devices": cuda,
        },
    }


def write_report(
    sweep: str | Path,
    out: str | Path,
    *,
    reference: str | None = None,
    metric: str | None = None,
    n_boot: int | None = None,
) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``report.html`` and ``provenance.json``."""
    from avx.fuse.sweep.html import write_html
    from avx.serialization import write_json

    res = collect(sweep)
    rep = res.meta.get("report") or {}
    reference = reference if reference is not None else rep.get("reference")
    n_boot = int(n_boot if n_boot is not None else rep.get("n_boot", 1000))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = results_frame(res, reference=reference, metric=metric, n_boot=n_boot)
    df.to_csv(out / "results.csv", index=False, float_format="%.6g")
    md = write_markdown(out / "results.md", res, df, reference, n_boot)
    write_json(out / "provenance.json", provenance(res))
    write_html(out / "report.html", res, df, md, procedure(df, res, reference, n_boot), cost_frame(res))
    return {n: out / n for n in ("results.md", "results.csv", "report.html", "provenance.json")}
