"""``report.html``: one self-contained page (inline CSS, figures as inline PNGs, no
server, no network) with the sweep's tables and figures.

Sections, each a ``<section id=...>``: results (the tables of ``results.md``; every
cell carries its mean in ``data-mean``), cost, confusion matrices (pooled clean test
predictions, row-normalised), reliability diagrams (before and after temperature
scaling, pooled over trials), robustness curves (metric against the masking rate when
``[eval]`` masks frames, else across the evaluation settings), fusion weights (per-frame
weights over one test clip for methods that have them, such as COLD; per-clip mean
weights otherwise), fairness per group (``[eval] groups``), failures and provenance.
A small inline script marks ``<body data-rendered>`` once every figure has decoded,
which the Chromium test reads back.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avx.fuse import metrics as M
from avx.fuse.sweep.report import CellResult, SweepResults, display_row, pooled, search_frame, shown

SECTIONS = (
    "results",
    "cost",
    "confusion",
    "reliability",
    "robustness",
    "fusion-weights",
    "fairness",
    "provenance",
)

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto;
       max-width: 1280px; color: #1d1d1f; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; border-bottom: 1px solid #ddd;
padding-bottom: 4px; margin-top: 32px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f5; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; max-width: 980px; } .bad { color: #b00020; } img { max-width: 100%; }
nav a { margin-right: 12px; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-rendered', ok === imgs.length ? 'ok' : 'broken');
  document.body.setAttribute('data-figures', String(ok));
});
"""


def _plt() -> Any:
    from avx.fuse.plots import _pyplot

    return _pyplot()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(df: pd.DataFrame, *, mean: pd.DataFrame | None = None) -> str:
    """An HTML table; ``mean`` (same shape) adds ``data-mean`` to each cell."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for i, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            text = "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else v
            if isinstance(text, float):
                text = f"{text:,.0f}" if text.is_integer() and abs(text) >= 1 else f"{text:,.2f}"
            text = str(text)
            bold = text.startswith("**") and text.endswith("**")
            text = html.escape(text.strip("*") if bold else text)
            attr = ""
            if mean is not None and c in mean.columns and c != df.columns[0]:
                attr = f' data-mean="{mean.loc[i, c]:.6g}"'
            cells.append(f"<td{attr}>{'<strong>' + text + '</strong>' if bold else text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _grid(n: int, size: float = 3.2) -> tuple[Any, Any]:
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = _plt().subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


# -- sections -----------------------------------------------------------------------------


def _results(df: pd.DataFrame, proc: str) -> str:
    parts = []
    for group, table in shown(df).items():
        part = df[df["group"] == group]
        mean = part.pivot_table(index="row", columns="column", values="mean", sort=False)
        mean.index = [display_row(r, str(group)) for r in mean.index]
        mean = mean.reindex(index=table["model"], columns=[c for c in table.columns if c != "model"])
        mean.index = table.index
        parts.append((f"<h3>{html.escape(group)}</h3>" if group else "") + _table(table, mean=mean))
    metric = df["metric"].iloc[0]
    title = M.SCORERS[metric].display if metric in M.SCORERS else metric
    return (
        f"<p class='note'>Metric: {html.escape(title)} (test).</p>"
        + "".join(parts)
        + (f"<p class='note'>{html.escape(proc)}</p>")
    )


def _confusion(res: SweepResults) -> str:
    if res.task != "multiclass":
        return "<p class='note'>Confusion matrices are drawn for single-label classification.</p>"
    from sklearn.metrics import confusion_matrix

    rows = res.rows()
    fig, axes = _grid(len(rows))
    k = len(res.names)
    for ax, row in zip(axes, rows, strict=False):
        y, p = pooled(res.of(row), None, res.task, res.names)
        cm = confusion_matrix(y, p, labels=list(range(k))).astype(float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(row, fontsize=8)
        ax.set_xticks(range(k), [n[:3] for n in res.names], fontsize=6, rotation=90)
        ax.set_yticks(range(k), [n[:3] for n in res.names], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    return "<p class='note'>Pooled clean test predictions of every trial; rows sum to 1.</p>" + _png(fig)


def _pooled_reliability(cells: list[CellResult], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = acc = count = None
    for c in cells:
        r = (c.metrics.get("calibration") or {}).get(key)
        if not r:
            continue
        n = np.asarray(r["count"], float)
        cs, ac = np.asarray(r["confidence"]) * n, np.asarray(r["accuracy"]) * n
        conf, acc, count = (cs, ac, n) if conf is None else (conf + cs, acc + ac, count + n)
    if count is None:
        return np.array([]), np.array([]), np.array([])
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf / count, acc / count, count


def _reliability(res: SweepResults) -> str:
    rows = [r for r in res.rows() if any((c.metrics.get("calibration") or {}) for c in res.of(r))]
    if not rows:
        return "<p class='note'>No calibration (multiclass runs only).</p>"
    fig, axes = _grid(len(rows))
    summary = []
    for ax, row in zip(axes, rows, strict=False):
        cells = res.of(row)
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        for key, label, colour in (
            ("reliability_before", "before", "#d62728"),
            ("reliability_after", "after T", "#1f77b4"),
        ):
            conf, acc, count = _pooled_reliability(cells, key)
            ok = count > 0
            ax.plot(conf[ok], acc[ok], marker="o", ms=3, label=label, color=colour)
        eb = np.mean([c.metrics["calibration"]["ece_before"] for c in cells if c.metrics.get("calibration")])
        ea = np.mean([c.metrics["calibration"]["ece_after"] for c in cells if c.metrics.get("calibration")])
        summary.append({"model": row, "ECE before": f"{eb:.4f}", "ECE after T": f"{ea:.4f}"})
        ax.set_title(f"{row}\nECE {eb:.3f} → {ea:.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.legend(fontsize=6)
    return (
        "<p class='note'>Test reliability before and after temperature scaling fitted on dev, bins pooled "
        "over trials; ECE is the mean over trials.</p>" + _table(pd.DataFrame(summary)) + _png(fig)
    )


def _robustness(res: SweepResults, metric: str) -> str:
    plt = _plt()
    curves: dict[str, dict[float, list[float]]] = {}
    for c in res.cells:
        f = c.run / "masking.csv"
        if not f.exists():
            continue
        m = pd.read_csv(f)
        m = m[m["head"] == "fused"]
        col = metric if metric in m else m.columns[3]
        for rate, v in zip(m["rate"], m[col], strict=True):
            curves.setdefault(c.cell.row, {}).setdefault(float(rate), []).append(float(v))
    fig, ax = plt.subplots(figsize=(7, 4))
    if curves:
        for row, pts in curves.items():
            x = sorted(pts)
            ax.plot(x, [np.mean(pts[r]) for r in x], marker="o", label=row)
        ax.set_xlabel("share of frames masked")
        note = "Fused output against the share of masked frames (VAVL Fig. 2), mean over trials."
    else:
        settings = [c for c in res.cells if c.eval_table is not None]
        if not settings:
            plt.close(fig)
            return "<p class='note'>The sweep has no [eval] settings, so no robustness curves.</p>"
        names = list(settings[0].eval_table["setting"])
        for row in res.rows():
            vals = [
                [float(c.eval_table[c.eval_table["setting"] == n][metric].iloc[0]) for n in names]
                for c in res.of(row) if c.eval_table is not None and metric in c.eval_table
            ]  # fmt: skip
            if vals:
                ax.plot(range(len(names)), np.mean(vals, axis=0), marker="o", label=row)
        ax.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], rotation=30, fontsize=7)
        ax.set_xlabel("evaluation setting")
        note = "The metric under each evaluation setting (modalities kept, noise, masking), mean over trials."
    title = M.SCORERS[metric].display if metric in M.SCORERS else metric
    ax.set_ylabel(title)
    ax.legend(fontsize=6, ncol=2)
    return f"<p class='note'>{note}</p>" + _png(fig)


def _fusion_weights(res: SweepResults) -> str:
    """Per-frame weights over one test clip (first trial) for methods with per-frame
    weights; the mean weight per stream for methods with per-clip weights."""
    plt = _plt()
    parts = []
    clip_rows = []
    for row in res.rows():
        c = res.of(row)[0]
        test = c.test_predictions
        wcols = [k for k in test.columns if k.startswith("weight:")]
        if not wcols:
            continue
        frames = _frame_weights(c)
        if frames is not None:
            sid, times, w, streams = frames
            fig, ax = plt.subplots(figsize=(7, 2.6))
            for k, s in enumerate(streams):
                ax.plot(times if times is not None else np.arange(len(w)), w[:, k], label=s)
            ax.set_title(f"{row}: fusion weights over test clip {sid}", fontsize=9)
            ax.set_xlabel("time (s)" if times is not None else "frame")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)
            parts.append(_png(fig))
        clip_rows.append({"model": row, **{k.split(":", 1)[1]: f"{test[k].mean():.3f}" for k in wcols}})
    if not clip_rows:
        return "<p class='note'>No method in this sweep reports fusion weights.</p>"
    return (
        "<p class='note'>Mean fusion weight per stream on the test clips (first trial).</p>"
        + _table(pd.DataFrame(clip_rows))
        + "".join(parts)
    )


def _frame_weights(c: CellResult) -> tuple[str, np.ndarray | None, np.ndarray, list[str]] | None:
    from avx.fuse.robustness import predict_run

    try:
        with tempfile.TemporaryDirectory() as tmp:
            predict_run(c.run, out=tmp, split="test")
            with np.load(Path(tmp) / "frames.npz") as z:
                keys = [k for k in z.files if k.endswith("/fusion_weights")]
                if not keys:
                    return None
                sid = keys[0].rsplit("/", 1)[0]
                times = z[f"{sid}/times"] if f"{sid}/times" in z.files else None
                return sid, times, z[keys[0]], [str(s) for s in z["_meta/streams"]]
    except Exception:
        return None


def _fairness(res: SweepResults) -> str:
    groups = list(res.meta["eval"].get("groups") or [])
    if not groups:
        return "<p class='note'>No groups asked for ([eval] groups = [\"sex\", ...]).</p>"
    if res.task == "regression":
        return "<p class='note'>Fairness tables score classification runs.</p>"
    from avx.fuse.tables import Pooled, group_table

    runs = {}
    for row in res.rows():
        cells = res.of(row)
        df = pd.concat([c.test_predictions for c in cells], ignore_index=True)
        y, p = pooled(cells, None, res.task, res.names)
        probs = df[[f"prob:{n}" for n in res.names]].to_numpy(float)
        cfg = json.loads((cells[0].run / "config.json").read_text())
        ids = df["id"].astype(str).to_numpy()
        runs[row] = Pooled(cells[0].run, res.task, res.names, ids, y, p, probs, {}, cfg["store"])
    out = []
    for g in groups:
        try:
            table, _ = group_table(runs, g, n_boot=200)
            out.append(f"<h3>{html.escape(g)}</h3>" + _table(table))
        except Exception as e:
            out.append(f"<p class='bad'>{html.escape(g)}: {html.escape(str(e))}</p>")
    return (
        "<p class='note'>Macro-F1 per group with 95% bootstrap intervals (200 resamples), the macro-F1 bias "
        "x 100, DPD and EOD (fairlearn's definitions, one-vs-rest averaged) on pooled clean test "
        "predictions.</p>" + "".join(out)
    )


def write_html(
    path: Path, res: SweepResults, df: pd.DataFrame, md: str, proc: str, cost: pd.DataFrame
) -> None:
    metric = df["metric"].iloc[0] if df["metric"].nunique() == 1 else M.headline(res.task)
    done = len(res.cells)
    body = [
        f"<h1>{html.escape(res.meta['name'])}</h1>",
        f"<p class='note'>{done} finished cell(s), {len(res.rows())} row(s); {res.pending} pending, "
        f"{len(res.failed)} failed. Sweep folder: {html.escape(str(res.path))}.</p>",
        "<nav>" + "".join(f"<a href='#{s}'>{s}</a>" for s in SECTIONS) + "</nav>",
        _section("results", "Results", _results(df, proc)),
        _section("cost", "Cost per row (mean over trials)", _table(cost)),
        _section("confusion", "Confusion matrices", _confusion(res)),
        _section("reliability", "Reliability diagrams", _reliability(res)),
        _section("robustness", "Robustness", _robustness(res, metric)),
        _section("fusion-weights", "Fusion weights", _fusion_weights(res)),
        _section("fairness", "Fairness per group", _fairness(res)),
    ]
    search = search_frame(res)
    if len(search):
        body.insert(4, _section("search", "Hyper-parameter search (chosen on dev)", _table(search)))
    if res.failed:
        body.append(_section("failures", "Failed cells", _table(pd.DataFrame(res.failed))))
    body.append(
        _section(
            "provenance",
            "Provenance",
            "<p class='note'>avx version, store fingerprints, every cell's resolved config and the machine: "
            "provenance.json beside this file.</p>",
        )
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(res.meta['name'])}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}<script>{SCRIPT}</script></body></html>"
    )
    path.write_text(page)


def _section(sid: str, title: str, content: str) -> str:
    return f"<section id='{sid}'><h2>{html.escape(title)}</h2>{content}</section>"
