"""Figures: per-frame behaviour over time (COLD Figs. 5-6) and scores against the share
of masked frames (VAVL Fig. 2).

:func:`plot_masking` draws the ``masking.csv`` that ``avx fuse eval --mask-frames``
writes: one curve per head (fused, each stream's own), mean ± std over folds for a
``--trials`` directory. :func:`plot_frames` reads the ``frames.npz`` that
``avx fuse predict`` writes and draws, for one sample, the target and the fused and
per-stream predictions (top) and each stream's fusion weight (bottom), shading the
frames given as ``corrupted`` (e.g. the flags a test-time corruption recorded). Both
need matplotlib (``pip install 'avx[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avx.errors import AvxError
from avx.fuse.evaluate import probabilities


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AvxError("plotting needs matplotlib: pip install 'avx[plot]'") from None
    return plt


def plot_masking(run: str | Path, out: str | Path, *, metric: str | None = None) -> Path:
    """Draw ``RUN/masking.csv``: ``metric`` (default: the first metric column, the
    task's headline) against the masking rate, one line per head."""
    import pandas as pd

    p = Path(run)
    p = p / "masking.csv" if p.is_dir() else p
    if not p.exists():
        raise AvxError(f"{p}: no masking.csv here; write one with `avx fuse eval RUN --mask-frames 0.1,0.5`")
    df = pd.read_csv(p)
    cols = [c for c in df.columns if c not in ("rate", "masked", "head") and not c.endswith(" std")]
    metric = metric or cols[0]
    if metric not in df.columns:
        raise AvxError(f"{p}: no metric '{metric}'; it has {', '.join(cols)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    masked = ", ".join(sorted({str(m) for m in df["masked"].dropna() if str(m) != "none"})) or "every stream"
    for head, g in df.groupby("head", sort=False):
        g = g.sort_values("rate")
        ax.plot(g["rate"], g[metric], marker="o", lw=1.5, label=str(head))
        if f"{metric} std" in g:
            sd = g[f"{metric} std"].fillna(0.0)
            ax.fill_between(g["rate"], g[metric] - sd, g[metric] + sd, alpha=0.15)
    ax.set_xlabel(f"fraction of frames masked ({masked})")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _load(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    p = p / "frames.npz" if p.is_dir() else p
    if not p.exists():
        raise AvxError(f"{p}: no frames.npz here; write one with `avx fuse predict RUN`")
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def _track(scores: np.ndarray, task: str, output: int, target: np.ndarray | None) -> np.ndarray:
    """One curve from per-frame scores: the value of ``output`` (regression) or the
    probability of the target class (classification; of ``output`` without targets)."""
    if task == "regression":
        return scores[:, output] if scores.ndim == 2 else scores
    probs = probabilities(scores, task)
    if task == "multilabel":
        return probs[:, output]
    if target is not None and target.ndim == 1 and len(target) >= len(probs):
        cls = np.clip(target[: len(probs)].astype(int), 0, probs.shape[1] - 1)
        return probs[np.arange(len(probs)), cls]
    return probs[:, output]


def plot_frames(
    frames: str | Path,
    sample_id: str,
    out: str | Path,
    *,
    output: int = 0,
    corrupted: np.ndarray | None = None,
) -> Path:
    """Draw sample ``sample_id`` of ``frames`` (a predict directory or its
    ``frames.npz``) into ``out`` (any format matplotlib writes, by suffix)."""
    plt = _pyplot()
    arr = _load(frames)
    prefix = f"{sample_id}/"
    mine = {k[len(prefix) :]: v for k, v in arr.items() if k.startswith(prefix)}
    if not mine:
        raise AvxError(f"{frames}: no per-frame outputs for sample '{sample_id}'")
    streams = [str(s) for s in arr.get("_meta/streams", [])]
    task = str(arr.get("_meta/task", "regression"))
    names = [str(n) for n in arr.get("_meta/names", [])]
    weights = mine.get("fusion_weights")
    n = len(weights) if weights is not None else len(mine.get("scores", []))
    if not n:
        raise AvxError(f"{frames}: sample '{sample_id}' has neither per-frame scores nor weights")
    times = mine.get("times")
    t = times[:n] if times is not None and len(times) >= n else np.arange(n)
    target = mine.get("target")
    panels = 2 if weights is not None and "scores" in mine else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if "scores" in mine:
        label = names[output] if task == "regression" and output < len(names) else "target class"
        if target is not None and task == "regression":
            y = target[:n, output] if target.ndim == 2 else target[:n]
            ax.plot(t[: len(y)], y, color="black", lw=2, label="target")
        ax.plot(t, _track(mine["scores"][:n], task, output, target), lw=2, label="fused")
        for s in streams:
            if f"scores/{s}" in mine:
                ax.plot(t, _track(mine[f"scores/{s}"][:n], task, output, target), lw=1, ls="--", label=s)
        ax.set_ylabel(label if task == "regression" else f"p({label})")
        ax.legend(loc="best", fontsize=7)
        ax = axes[-1, 0]
    if weights is not None:
        for k, s in enumerate(streams or [f"stream {k}" for k in range(weights.shape[1])]):
            ax.plot(t, weights[:n, k], lw=1.5, label=f"w {s}")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fusion weight")
        ax.legend(loc="best", fontsize=7)
    if corrupted is not None:
        for a in axes[:, 0]:
            c = np.asarray(corrupted[:n], bool)
            a.fill_between(t[: len(c)], 0, 1, where=c, transform=a.get_xaxis_transform(), alpha=0.15)
    axes[-1, 0].set_xlabel("time (s)" if times is not None else "frame")
    fig.suptitle(sample_id, fontsize=9)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
