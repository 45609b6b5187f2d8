"""Predicting and scoring: one path for dev selection, test reports, robustness runs.

:func:`predict` runs a model over samples and keeps everything a report needs (scores,
per-stream scores, fusion weights, uncertainties); :func:`report` turns predictions
into the metrics of ``metrics.json``. Robustness settings are :class:`Perturbation`
objects applied to batches (missing modality, noise, frame masking); face occlusion
changes the features themselves (:mod:`avx.fuse.occlusion`).

Per-stream predictions come from the method's own per-stream heads when it has them,
otherwise from the fused model with every other stream removed (the way the method
presents a missing modality), so every method can report them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.data import Batch, FusionData
from avx.fuse.methods.base import FusionMethod
from avx.fuse.tasks import decide, eval_multihot, to_probs


@dataclass
class Predictions:
    """Model outputs for samples ``index`` (positions in ``FusionData.ids``).

    Per-sequence tasks: ``y`` and ``scores`` have one row per sample. Per-frame tasks:
    one row per valid frame, ``owner`` giving each row's sample (position in ``ids``).
    ``per_stream`` scores are NaN where the stream is absent.
    """

    ids: list[str]
    index: np.ndarray
    y: np.ndarray
    scores: np.ndarray
    per_stream: dict[str, np.ndarray]
    owner: np.ndarray
    weights: list[np.ndarray] = field(default_factory=list)
    uncertainty: dict[str, list[np.ndarray]] = field(default_factory=dict)
    frame_scores: list[np.ndarray] = field(default_factory=list)
    frame_stream_scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    corrupted: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def sample_rows(self) -> list[np.ndarray]:
        """The rows of each sample (``predict`` writes them grouped by sample, in order)."""
        counts = np.bincount(self.owner, minlength=len(self.ids))
        return np.split(np.arange(len(self.owner)), np.cumsum(counts)[:-1])


@dataclass(frozen=True)
class Perturbation:
    """A test-time corruption of batches.

    Attributes:
        kind: ``missing`` (streams absent), ``noise`` (replaced by N(0, 1), or N(0, s²)
            added for ``snr`` dB; when ``p`` > 0 only on one run of consecutive frames
            covering a fraction ``p`` of each sample, at a random start, as COLD
            corrupts faces, else on every frame), ``mask`` (a random fraction ``p`` of
            frames zeroed, each frame drawn independently, as VAVL masks).
        streams: the affected streams.
        p / snr: the amount.
        policy: how ``missing`` is presented: ``mask`` (presence mask off) or ``zeros``.

    ``noise`` and ``mask`` record the frames they changed in ``Batch.corrupted``, so a
    report can compare fusion weights on corrupted and clean frames.
    """

    kind: str
    streams: tuple[str, ...]
    p: float = 0.0
    snr: float | None = None
    policy: str = "mask"
    seed: int = 0

    def apply(self, batch: Batch, generator: torch.Generator) -> Batch:
        inputs, masks, present = dict(batch.inputs), dict(batch.masks), dict(batch.present)
        corrupted = dict(batch.corrupted)
        expand = lambda t, x: t.view(*t.shape, *[1] * (x.dim() - 2)).to(x.dtype)  # noqa: E731
        if self.kind == "missing":
            return drop_streams(batch, self.streams, self.policy)
        for s in self.streams:
            x, m = inputs[s], masks[s]
            if self.kind == "noise":
                noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
                hit = m if self.p <= 0 else _span(m, self.p, generator)
                mm = expand(hit, x)
                if self.snr is None:
                    inputs[s] = x * (1 - mm) + noise * mm
                else:
                    real = expand(m, x)
                    dims = tuple(range(1, x.dim()))
                    power = (x**2 * real).sum(dims, keepdim=True) / (
                        real.sum(dims, keepdim=True) * x[0, 0].numel()
                    ).clamp_min(1)
                    scale = (power / 10 ** (self.snr / 10)).sqrt()
                    inputs[s] = x + noise * scale * mm
                corrupted[s] = hit
            elif self.kind == "mask":
                drop = (torch.rand(m.shape, generator=generator).to(m.device) < self.p) & m
                inputs[s] = x * expand(~drop, x)
                corrupted[s] = drop
            else:
                raise ValueError(f"unknown perturbation {self.kind}")
        return replace(batch, inputs=inputs, masks=masks, present=present, corrupted=corrupted)

    @property
    def name(self) -> str:
        what = ",".join(self.streams)
        if self.kind == "missing":
            return f"missing {what}"
        if self.kind == "noise":
            frac = f" on {self.p:g} of frames" if self.p > 0 else ""
            return f"noise {what}" + (f" @{self.snr:g} dB" if self.snr is not None else " N(0,1)") + frac
        return f"mask {self.p:g} of frames"


def drop_streams(
    batch: Batch, streams: tuple[str, ...] | list[str], policy: str, rows: torch.Tensor | None = None
) -> Batch:
    """``streams`` absent in every sample, or only where ``rows [B]`` is True, presented
    by ``policy``: zero features, and with ``mask`` also the frame and presence masks
    off. One definition for test-time ``--missing`` and training's modality dropout."""
    inputs, masks, present = dict(batch.inputs), dict(batch.masks), dict(batch.present)
    for s in streams:
        x, m = inputs[s], masks[s]
        r = torch.ones(len(m), dtype=torch.bool, device=m.device) if rows is None else rows.to(m.device)
        inputs[s] = x.masked_fill(r.view(-1, *[1] * (x.dim() - 1)), 0.0)
        if policy == "mask":
            masks[s] = m & ~r.view(-1, 1)
            present[s] = present[s] & ~r
    return replace(batch, inputs=inputs, masks=masks, present=present)


def _span(mask: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Per row of ``mask [B, T]``: one run of ``round(p * n)`` consecutive real frames
    (``n`` real frames) starting at a random frame."""
    n = mask.sum(1)
    k = torch.round(p * n.float()).long()
    start = (torch.rand(len(n), generator=generator) * (n - k + 1).cpu()).long().to(mask.device)
    t = torch.arange(mask.shape[1], device=mask.device)
    return (t >= start[:, None]) & (t < (start + k)[:, None]) & mask


def _only(batch: Batch, keep: str, policy: str) -> Batch:
    others = tuple(s for s in batch.inputs if s != keep)
    return Perturbation("missing", others, policy=policy).apply(batch, torch.Generator())


@torch.inference_mode()
def predict(
    model: FusionMethod,
    data: FusionData,
    split: str | np.ndarray,
    batch_size: int,
    device: str = "cpu",
    perturbation: Perturbation | None = None,
    *,
    per_stream: bool = True,
    keep_frames: bool = False,
) -> Predictions:
    """Outputs of ``model`` on ``split``; deterministic (perturbations seeded)."""
    model.eval()
    gen = torch.Generator().manual_seed(perturbation.seed if perturbation else 0)
    ids, index, ys, scores, owners = [], [], [], [], []
    per: dict[str, list[np.ndarray]] = {s: [] for s in data.stream_names}
    weights: list[np.ndarray] = []
    unc: dict[str, list[np.ndarray]] = {}
    frame_scores: list[np.ndarray] = []
    stream_frames: dict[str, list[np.ndarray]] = {}
    corrupted: dict[str, list[np.ndarray]] = {}
    data_corrupted = getattr(data, "corrupted", {})  # face occlusion marks its frames here
    offset = 0
    for batch in data.batches(split, batch_size):
        batch = batch.to(device)
        if batch.raw:  # end-to-end: perturb the backbones' features, as for cached features
            batch = model.encode_raw(batch)
        if perturbation is not None:
            batch = perturbation.apply(batch, gen)
        out = model(batch)
        tm = batch.target_mask
        y = batch.targets[tm].cpu().numpy()
        ys.append(y)
        scores.append(out.logits[tm].float().cpu().numpy())
        b_owner = (
            np.broadcast_to(np.arange(len(batch))[:, None], tm.shape)[tm.cpu().numpy()]
            if tm.dim() > 1
            else np.arange(len(batch))
        )
        owners.append(b_owner + offset)
        offset += len(batch)
        if per_stream:
            for s in data.stream_names:
                lg = out.modality_logits.get(s)
                if lg is None:
                    lg = model(_only(batch, s, model.missing)).logits
                v = lg[tm].float().cpu().numpy()
                absent = ~batch.present[s].cpu().numpy()[b_owner]
                v[absent] = np.nan
                per[s].append(v)
        ids += batch.ids
        index.append(batch.index)
        # Per-frame arrays are cut to each sample's real length (the longest present stream).
        lengths = torch.stack([m.sum(1) for m in batch.masks.values()]).amax(0).tolist()
        if out.fusion_weights is not None:
            weights += _trim(out.fusion_weights, lengths, 3)
        for s, u in out.uncertainty.items():
            unc.setdefault(s, []).extend(_trim(u, lengths, 2))
        for s, c in batch.corrupted.items():
            corrupted.setdefault(s, []).extend(_trim(c, lengths, 2))
        for s, flags in data_corrupted.items():
            corrupted.setdefault(s, []).extend(
                np.zeros(n, bool) if flags[i] is None else flags[i][:n]
                for i, n in zip(batch.index, lengths, strict=True)
            )
        if keep_frames and out.logits.dim() == 3:
            frame_scores += _trim(out.logits, lengths, 3)
            for s, lg in out.modality_logits.items():
                stream_frames.setdefault(s, []).extend(_trim(lg, lengths, 3))
    cat = lambda xs, k=0: np.concatenate(xs) if xs else np.zeros((0, *([k] if k else [])))  # noqa: E731
    return Predictions(
        ids=ids,
        index=np.concatenate(index) if index else np.zeros(0, int),
        y=cat(ys),
        scores=cat(scores, len(data.names)),
        per_stream={s: cat(v, len(data.names)) for s, v in per.items()},
        owner=cat(owners).astype(int),
        weights=weights,
        uncertainty=unc,
        frame_scores=frame_scores,
        frame_stream_scores=stream_frames,
        corrupted=corrupted,
    )


def mean_weights(pred: Predictions, streams: list[str]) -> dict[str, float]:
    """Mean fusion weight of each stream over every frame (or sample) predicted."""
    w = np.concatenate([x.reshape(-1, x.shape[-1]) for x in pred.weights])
    return {s: float(w[:, k].mean()) for k, s in enumerate(streams)}


def weights_on_corrupted(pred: Predictions, streams: list[str]) -> dict[str, dict[str, float]]:
    """Mean per-frame fusion weight of each corrupted stream on its corrupted and on its
    clean frames (COLD's Fig. 5 as numbers). Empty when the method has no per-frame
    weights or nothing was corrupted frame by frame."""
    out = {}
    for s, flags in pred.corrupted.items():
        if s not in streams or not pred.weights or pred.weights[0].ndim != 2:
            continue
        k = streams.index(s)
        on, off = [], []
        for w, f in zip(pred.weights, flags, strict=True):
            n = min(len(w), len(f))
            col, hit = w[:n, k], f[:n].astype(bool)
            on.append(col[hit])
            off.append(col[~hit])
        on_, off_ = np.concatenate(on), np.concatenate(off)
        if len(on_):
            out[s] = {
                "corrupted": float(on_.mean()),
                "clean": float(off_.mean()) if len(off_) else float("nan"),
                "n_corrupted": len(on_),
                "n_clean": len(off_),
            }
    return out


def _trim(t: torch.Tensor, lengths: list[int], per_frame_dims: int) -> list[np.ndarray]:
    """Per-sample arrays of ``t``, cut to ``lengths`` frames when ``t`` has a time axis
    (``t.dim() == per_frame_dims``: ``[B, T, M]`` weights, ``[B, T]`` uncertainties)."""
    cut = t.dim() == per_frame_dims
    return [(x[:n] if cut else x).numpy() for x, n in zip(t.float().cpu(), lengths, strict=True)]


def probabilities(scores: np.ndarray, task: str, temperature: float = 1.0) -> np.ndarray:
    return to_probs(torch.as_tensor(scores / temperature), task).numpy()


@dataclass(frozen=True)
class ReportOptions:
    """How predictions are scored: decision threshold, bins, temperature, CIs, groups."""

    threshold: float | None = None
    ece_bins: int = 15
    temperature: float = 1.0
    bootstrap: int = 0
    seed: int = 0


def core_metrics(task: str, names: list[str], y: np.ndarray, probs: np.ndarray, opts: ReportOptions) -> dict:
    """Headline metrics of one set of predictions (no groups, no intervals)."""
    if not len(y):
        return {"n": 0}
    if task == "regression":
        out = M.regression_report(y, probs, names)
    elif task == "multiclass":
        pred = decide(probs, task, None)
        out = M.multiclass_report(y.astype(int), pred, len(names))
        out["ece"] = M.expected_calibration_error(y.astype(int), probs, opts.ece_bins)
        out["brier"] = M.brier_per_class(y.astype(int), probs)
    else:
        yb = eval_multihot(y, len(names))
        pred = decide(probs, task, opts.threshold)
        out = M.multilabel_report(yb, pred)
        out["brier"] = M.brier_per_class(yb, probs)
    out["n"] = len(y)
    return out


def report(
    pred: Predictions, data: FusionData, opts: ReportOptions = ReportOptions(), *, fairness: bool = True
) -> dict[str, Any]:
    """Every metric for one split: fused, per stream, per demographic group, CIs."""
    task, names = data.task, data.names
    probs = probabilities(pred.scores, task, opts.temperature)
    out = core_metrics(task, names, pred.y, probs, opts)
    if not len(pred.y):
        return out
    out["per_stream"] = {}
    for s, sc in pred.per_stream.items():
        ok = np.isfinite(sc).all(axis=-1) if sc.ndim > 1 else np.isfinite(sc)
        if ok.any():
            out["per_stream"][s] = core_metrics(task, names, pred.y[ok], probabilities(sc[ok], task), opts)
    if task == "regression":
        y_, p_ = pred.y, probs
    else:
        y_ = pred.y.astype(int) if task == "multiclass" else eval_multihot(pred.y, len(names))
        p_ = decide(probs, task, opts.threshold)
        if not data.frame_level:  # the two-stage paper's Table 3: F1 and Brier score per class
            out["per_class"] = {
                "f1": dict(zip(names, M.per_class_f1(y_, p_, len(names)), strict=True)),
                "brier": dict(zip(names, M.brier_by_class(y_, probs), strict=True)),
            }
    if fairness and task != "regression" and not data.frame_level:
        out["fairness"] = {}
        for g, values in data.groups.items():
            fair = M.fairness_report(y_, p_, values[pred.index], len(names))
            if opts.bootstrap:
                by_group, bias = M.bootstrap_groups(
                    "macro_f1", y_, p_, values[pred.index], n_boot=opts.bootstrap, seed=opts.seed
                )
                fair["macro_f1_ci95_by_group"] = {k: list(v) for k, v in by_group.items()}
                fair["f1_bias_ci95"] = list(bias)
            out["fairness"][g] = fair
    if opts.bootstrap:  # percentile intervals of every table metric with a resampled form
        out["ci95"] = {
            key: list(
                M.bootstrap_scorer(
                    key, y_, p_, pred.owner, len(pred.ids), n_boot=opts.bootstrap, seed=opts.seed
                )
            )
            for key in M.table_metrics(task)
            if M.SCORERS[key].resampled is not None
        }
    return out


def score(
    name: str, task: str, names: list[str], y: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> float:
    """Scorer ``name`` of :data:`~avx.fuse.metrics.SCORERS` on one set of predictions.

    Decisions are made as in reports (argmax; multi-label at ``threshold``), so a
    selection score equals the same metric in ``metrics.json``.
    """
    s = M.get_scorer(name, task)
    if s.fn is None:
        raise ValueError(f"metric '{name}' is computed by the trainer, not from predictions")
    if not len(y):
        return float("nan")
    if s.kind == "values":
        yy, pp = y.reshape(len(y), -1), probs.reshape(len(probs), -1)
        dims = [k for k in range(yy.shape[1]) if s.applies_to(names[k] if k < len(names) else "")]
        if not dims:
            only, have = ", ".join(s.dimensions or ()), ", ".join(names)
            raise AvxError(f"metric '{name}' applies to {only}; the targets are {have}")
        return float(np.mean([s.fn(yy[:, k], pp[:, k]) for k in dims]))
    yt = y.astype(int) if task == "multiclass" else eval_multihot(y, len(names))
    return s.fn(yt, probs if s.kind == "probs" else decide(probs, task, threshold))


def calibration(dev: Predictions, test: Predictions, data: FusionData, bins: int = 15) -> dict[str, Any]:
    """ECE and reliability diagrams on test, before and after temperature scaling fitted on dev."""
    if data.task != "multiclass" or not len(dev.y) or not len(test.y):
        return {}
    t = M.fit_temperature(dev.scores, dev.y.astype(int))
    y = test.y.astype(int)
    before, after = probabilities(test.scores, "multiclass"), probabilities(test.scores, "multiclass", t)
    return {
        "temperature": t,
        "ece_before": M.expected_calibration_error(y, before, bins),
        "ece_after": M.expected_calibration_error(y, after, bins),
        "brier_before": M.brier_per_class(y, before),
        "brier_after": M.brier_per_class(y, after),
        "reliability_before": M.reliability_diagram(y, before, bins),
        "reliability_after": M.reliability_diagram(y, after, bins),
    }


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_predictions(
    path: Path,
    preds: dict[str, Predictions],
    data: FusionData,
    threshold: float | None,
    *,
    column: str = "split",
) -> pd.DataFrame:
    """One row per sample (per frame for per-frame targets): target, fused and per-stream
    outputs (probabilities or values), the decision, and fusion weights when present.
    ``preds`` are keyed by split (or, ``column="setting"``, by evaluation setting)."""
    frames = []
    for split, p in preds.items():
        if not len(p.y):
            continue
        probs = probabilities(p.scores, data.task)
        df = pd.DataFrame({"id": np.asarray(p.ids)[p.owner], column: split})
        if data.frame_level:
            df["frame"] = np.concatenate([np.arange(len(r)) for r in p.sample_rows()])
        _columns(df, "target", p.y, data.names)
        if data.task != "regression":
            _columns(df, "pred", decide(probs, data.task, threshold), data.names)
        _columns(df, "prob" if data.task != "regression" else "value", probs, data.names)
        for s, sc in p.per_stream.items():
            _columns(df, s, probabilities(sc, data.task), data.names)
        if p.weights and not data.frame_level:
            # Per-frame weights (COLD) are summarised by their mean over the sample's frames.
            w = np.stack([x.mean(0) if x.ndim == 2 else x for x in p.weights])
            for k, s in enumerate(data.stream_names):
                df[f"weight:{s}"] = w[:, k]
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.to_csv(path, index=False, float_format="%.6g")
    return out


def _columns(df: pd.DataFrame, prefix: str, values: np.ndarray, names: list[str]) -> None:
    if values.ndim == 1:
        df[prefix] = values
    else:
        for k, n in enumerate(names):
            df[f"{prefix}:{n}"] = values[:, k]


def complexity(
    model: FusionMethod, data: FusionData, split: str, device: str | torch.device, clips: int = 17
) -> dict[str, Any]:
    """Trainable parameters, and inference latency per clip on ``device``: the model's
    forward on one clip at a time (the deployment case the VAVL paper times), median
    over ``clips - 1`` clips of ``split`` after one warm-up clip, data loading excluded."""
    import time

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cuda = str(device).startswith("cuda")
    times: list[float] = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for k, batch in enumerate(data.batches(split, 1)):
            if k >= clips:
                break
            batch = batch.to(device)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(batch)
            if cuda:
                torch.cuda.synchronize()
            if k:
                times.append(time.perf_counter() - t0)
    model.train(was)
    return {
        "parameters": int(n_params),
        "latency_ms_per_clip": round(1000 * float(np.median(times)), 3) if times else None,
        "latency_device": str(device),
        "latency_clips": len(times),
    }
