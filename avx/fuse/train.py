"""The one trainer: every fusion method trains and evaluates through ``train``.

Reproducible by construction: the seed fixes model initialisation and batch order
(a private ``torch.Generator``), deterministic algorithms are requested, and the
resolved configuration is written next to the metrics. Model selection uses the dev
split only (``select_metric``); the test split is evaluated once, with the selected
checkpoint.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from avx.errors import AvxError
from avx.fuse.data import DataConfig, FusionData
from avx.fuse.methods import METHODS, FusionMethod, create_method
from avx.fuse.metrics import SCORERS, classification_report
from avx.store_schema import open_store


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (written to ``RUN/config.json``)."""

    store: str
    method: str
    data: DataConfig
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    select_metric: str = "macro_f1"
    method_config: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


@torch.inference_mode()
def predict(
    model: FusionMethod, data: FusionData, split: str, batch_size: int, device: str
) -> dict[str, Any]:
    """Fused and per-stream predictions for one split."""
    model.eval()
    y, fused, per = [], [], {s: [] for s in data.features}
    for batch in data.batches(split, batch_size):
        batch = _to(batch, device)
        out = model(batch)
        y.append(batch.targets.cpu())
        fused.append(out.logits.argmax(-1).cpu())
        for s, lg in out.modality_logits.items():
            per[s].append(torch.where(batch.present[s], lg.argmax(-1), -1).cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, np.int64)  # noqa: E731
    return {"y": cat(y), "fused": cat(fused), "per_stream": {s: cat(v) for s, v in per.items()}}


def evaluate(pred: dict[str, Any]) -> dict[str, Any]:
    y = pred["y"]
    if not len(y):
        return {}
    out = classification_report(y, pred["fused"])
    out["per_stream"] = {}
    for s, p in pred["per_stream"].items():
        ok = p >= 0
        if ok.any():
            out["per_stream"][s] = classification_report(y[ok], p[ok])
    return out


def _to(batch: Any, device: str) -> Any:
    if device == "cpu":
        return batch
    batch.inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    batch.masks = {k: v.to(device) for k, v in batch.masks.items()}
    batch.present = {k: v.to(device) for k, v in batch.present.items()}
    batch.targets = batch.targets.to(device)
    return batch


def train(config: TrainConfig, out_dir: str | Path, *, console: Console | None = None) -> dict[str, Any]:
    """Train ``config.method`` and write ``metrics.json``, ``config.json``, ``model.pt``."""
    console = console or Console(stderr=True)
    if config.select_metric not in SCORERS:
        raise AvxError(f"unknown select metric '{config.select_metric}'; valid: {', '.join(SCORERS)}")
    cls = METHODS.get(config.method)
    valid = {f.name for f in fields(cls.config_class)}
    if bad := set(config.method_config) - valid:
        raise AvxError(f"{config.method}: unknown option(s) {sorted(bad)}; valid: {sorted(valid)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    gen = seed_everything(config.seed)
    store = open_store(config.store)
    data = FusionData(store, config.data)
    model = create_method(config.method, data.dims, len(data.class_names), **config.method_config)
    model.to(config.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    score_fn, greater = SCORERS[config.select_metric]
    best_score, best_epoch, best_state = -np.inf, -1, None
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, n = 0.0, 0
        for batch in data.batches("train", config.batch_size, shuffle=True, generator=gen):
            batch = _to(batch, config.device)
            res = model(batch)
            loss = model.task_loss(res, batch.targets) + sum(res.aux_losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch.ids)
            n += len(batch.ids)
        pred = predict(model, data, "dev", config.batch_size, config.device)
        dev = score_fn(pred["y"], pred["fused"]) if len(pred["y"]) else float("nan")
        score = dev if greater else -dev
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), f"dev_{config.select_metric}": dev})
        if best_state is None or score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    metrics = {
        "method": config.method,
        "streams": list(config.data.streams),
        "labels": config.data.labels,
        "selected_epoch": best_epoch,
        "select_metric": config.select_metric,
        "n_samples": data.counts(),
        "n_left_out_unlabelled": data.n_unlabelled,
        "dev": evaluate(predict(model, data, "dev", config.batch_size, config.device)),
        "test": evaluate(predict(model, data, "test", config.batch_size, config.device)),
        "history": history,
    }
    resolved = asdict(config)
    resolved["method_config"] = asdict(model.config)
    resolved["class_names"] = data.class_names
    resolved["stream_provenance"] = {s: store.stream(s).provenance for s in config.data.streams}
    from avx import __version__

    resolved["avx_version"] = __version__
    (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save(
        {
            "method": config.method,
            "method_config": asdict(model.config),
            "input_dims": data.dims,
            "class_names": data.class_names,
            "normalizer": data.normalizer.state_dict(),
            "state_dict": model.state_dict(),
        },
        out / "model.pt",
    )
    metrics["seconds"] = round(time.time() - started, 2)
    return metrics


def results_table(rows: list[tuple[str, dict[str, Any]]], title: str = "results") -> Table:
    """A rich table of dev/test macro-F1 (mF1), weighted-F1 (wF1) and accuracy per result."""
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for split in ("dev", "test"):
        for m in ("mF1", "wF1", "acc"):
            table.add_column(f"{split}\n{m}", justify="right", no_wrap=True)
    for name, res in rows:
        cells = []
        for split in ("dev", "test"):
            r = res.get(split) or {}
            cells += [f"{r.get(k, float('nan')):.3f}" for k in ("macro_f1", "weighted_f1", "accuracy")]
        table.add_row(name, *cells)
    return table


def metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Rows for :func:`results_table`: the fused model, then each stream's own head."""
    rows = [(f"{metrics['method']}", metrics)]
    for s in metrics["streams"]:
        rows.append(
            (f"  {s} head", {sp: metrics[sp].get("per_stream", {}).get(s, {}) for sp in ("dev", "test")})
        )
    return rows
