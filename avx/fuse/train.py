"""The one trainer: every fusion method trains and evaluates through :func:`train`.

Reproducible by construction: the seed fixes model initialisation, batch order and
resampling (a private ``torch.Generator``); deterministic algorithms are requested;
the resolved configuration is written next to the metrics. Model selection and early
stopping read the dev split only; the test split is predicted once, after training,
with the selected weights. ``RUN/last.pt`` is written after every epoch, so an
interrupted run resumes (``resume=True``) where it stopped and ends bit-identical to
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.data import DataConfig, FusionData
from avx.fuse.dropout import ModalityDropout
from avx.fuse.evaluate import (
    Predictions,
    ReportOptions,
    calibration,
    core_metrics,
    headline,
    jsonable,
    predict,
    probabilities,
    report,
    write_predictions,
)
from avx.fuse.methods import METHODS, FusionMethod, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.tasks import (
    REGRESSION_LOSSES,
    Objective,
    class_weights,
    eval_multihot,
    resampling_weights,
    tune_threshold,
)
from avx.store_schema import open_store

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine-restarts", "warmup-cosine", "step", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (written to ``RUN/config.json``).

    Optimisation: ``optimizer`` (adam, adamw, sgd with ``momentum``), ``lr``,
    ``weight_decay``; ``scheduler``: ``cosine-restarts`` (SGDR, ``t0`` epochs,
    ``t_mult``, stepped per batch), ``warmup-cosine`` (``warmup`` epochs linear, then
    cosine to 0), ``step`` (x ``gamma`` every ``step_size`` epochs), ``plateau``
    (x ``gamma`` when the dev metric stalls for ``step_size`` epochs); ``grad_clip``
    (max L2 norm, 0 = off); ``patience`` (early stopping on dev, 0 = off); ``amp``
    (float16 autocast on CUDA only).

    Robustness: ``dropout`` is the modality dropout applied to every training batch
    (none, softhard, noise, prob:P; :mod:`avx.fuse.dropout`).

    Task: ``class_weights`` (none, inverse, effective[:beta]), ``sampling`` (none,
    over, under), ``regression_loss`` (ccc, ccc+mse, mse, l1), ``threshold`` for
    multi-label decisions (None: share > 1/C; a number; ``tune`` on dev).
    """

    store: str
    method: str
    data: DataConfig
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "none"
    t0: int = 1
    t_mult: int = 2
    warmup: int = 1
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float = 0.0
    patience: int = 0
    select_metric: str | None = None
    class_weights: str = "none"
    sampling: str = "none"
    regression_loss: str = "ccc"
    dropout: str = "none"
    threshold: float | str | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    tensorboard: bool = False
    bootstrap: int = 1000
    method_config: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise AvxError(f"unknown optimizer '{self.optimizer}'; valid: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise AvxError(f"unknown scheduler '{self.scheduler}'; valid: {', '.join(SCHEDULERS)}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise AvxError(
                f"unknown regression loss '{self.regression_loss}'; valid: {', '.join(REGRESSION_LOSSES)}"
            )
        if self.select_metric is not None and self.select_metric not in M.GREATER_IS_BETTER:
            raise AvxError(
                f"unknown select metric '{self.select_metric}'; valid: {', '.join(M.GREATER_IS_BETTER)}"
            )
        if isinstance(self.threshold, str) and self.threshold != "tune":
            raise AvxError(f"--threshold takes a number or 'tune', not '{self.threshold}'")
        ModalityDropout.parse(self.dropout)
        if self.epochs < 1 or self.batch_size < 1:
            raise AvxError("--epochs and --batch-size must be >= 1")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def build_optimizers(model: FusionMethod, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    out = {}
    for name, params in model.parameter_groups().items():
        if cfg.optimizer == "sgd":
            out[name] = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            out[name] = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            out[name] = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return out


class Schedule:
    """Learning-rate schedules over (fractional) epochs, for any number of optimisers."""

    def __init__(self, cfg: TrainConfig, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.cfg, self.opts = cfg, optimizers
        self.base = {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}
        self.plateau_best, self.plateau_wait, self.plateau_scale = -math.inf, 0, 1.0

    def factor(self, epoch: float) -> float:
        c = self.cfg
        if c.scheduler == "cosine-restarts":
            t, period = epoch, float(c.t0)
            while t >= period:
                t -= period
                period *= c.t_mult
            return 0.5 * (1 + math.cos(math.pi * t / period))
        if c.scheduler == "warmup-cosine":
            if epoch < c.warmup:
                return (epoch + 1e-3) / c.warmup
            span = max(c.epochs - c.warmup, 1e-9)
            return 0.5 * (1 + math.cos(math.pi * min(epoch - c.warmup, span) / span))
        if c.scheduler == "step":
            return c.gamma ** int(epoch // c.step_size)
        if c.scheduler == "plateau":
            return self.plateau_scale
        return 1.0

    def set(self, epoch: float) -> None:
        f = self.factor(epoch)
        for k, o in self.opts.items():
            for g, base in zip(o.param_groups, self.base[k], strict=True):
                g["lr"] = base * f

    def on_dev(self, score: float) -> None:
        if self.cfg.scheduler != "plateau":
            return
        if score > self.plateau_best:
            self.plateau_best, self.plateau_wait = score, 0
        else:
            self.plateau_wait += 1
            if self.plateau_wait >= self.cfg.step_size:
                self.plateau_scale *= self.cfg.gamma
                self.plateau_wait = 0

    def state_dict(self) -> dict[str, float]:
        return {"best": self.plateau_best, "wait": self.plateau_wait, "scale": self.plateau_scale}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.plateau_best, self.plateau_wait, self.plateau_scale = d["best"], int(d["wait"]), d["scale"]


def make_objective(cfg: TrainConfig, data: FusionData) -> Objective:
    weights = None
    if data.task == "multiclass" and cfg.class_weights != "none":
        w = class_weights(_train_labels(data), len(data.names), cfg.class_weights)
        weights = torch.as_tensor(w)
    return Objective(data.task, weights, cfg.regression_loss)


def _train_labels(data: FusionData) -> np.ndarray:
    """Training class labels (per frame, flattened, for per-frame targets)."""
    train = data.indices("train")
    if data.frame_level:
        return np.concatenate([data.targets_all.frames[data.rows[i]] for i in train]).astype(np.int64)
    return data.targets_all.values[data.rows[train]].astype(np.int64)


def _sample_weights(cfg: TrainConfig, data: FusionData) -> np.ndarray | None:
    if cfg.sampling == "none":
        return None
    if data.task != "multiclass" or data.frame_level:
        raise AvxError("--sampling over|under needs per-sequence multiclass targets")
    y = np.full(len(data.ids), -1)
    y[data.indices("train")] = _train_labels(data)
    return resampling_weights(y, cfg.sampling)


def _score(pred: Predictions, data: FusionData, metric: str, opts: ReportOptions) -> float:
    probs = probabilities(pred.scores, data.task)
    value = core_metrics(data.task, data.names, pred.y, probs, opts).get(metric, float("nan"))
    return float(value) if M.GREATER_IS_BETTER[metric] else -float(value)


class Trainer:
    """Owns one run: data, model, optimisers, schedule, checkpoints (see :func:`train`)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, console: Console | None = None) -> None:
        config.check()
        self.cfg, self.out = config, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = console or Console(stderr=True)
        cls = METHODS.get(config.method)
        self.gen = seed_everything(config.seed)
        self.store = open_store(config.store)
        self.data = FusionData(self.store, config.data, align=cls.needs_alignment)
        self.task = TaskSpec(config.data.task, len(self.data.names), self.data.frame_level)
        self.model = create_method(config.method, self.data.info, self.task, **config.method_config)
        self.model.to(config.device)
        self.dropout = ModalityDropout.parse(config.dropout, self.model.missing)
        self.optimizers = build_optimizers(self.model, config)
        self.schedule = Schedule(config, self.optimizers)
        self.objective = make_objective(config, self.data)
        self.sample_weights = _sample_weights(config, self.data)
        self.metric = config.select_metric or headline(self.data.task)
        cuda = str(config.device).startswith("cuda")
        self.amp = bool(config.amp and cuda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best_score, self.best_epoch, self.best_state = -math.inf, 0, None
        self.bad_epochs = 0
        self.threshold: float | None = (
            float(config.threshold) if config.threshold not in (None, "tune") else None
        )

    # -- one update --------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _step(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer]) -> None:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            for o in optimizers:
                self.scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for o in optimizers:
            self.scaler.step(o)
        self.scaler.update()

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        totals: dict[str, float] = {}
        n = 0
        train = self.data.indices("train")
        draws = len(train) if self.sample_weights is None else round(float(self.sample_weights[train].sum()))
        n_batches = max(1, math.ceil(draws / self.cfg.batch_size))
        it = self.data.batches(
            "train", self.cfg.batch_size, shuffle=True, generator=self.gen, sample_weights=self.sample_weights
        )
        for i, batch in enumerate(it):
            self.schedule.set(self.epoch + i / n_batches)
            batch = self.dropout(batch.to(self.cfg.device), self.gen)
            terms = self.model.training_step(
                batch, self.objective, self.optimizers, self._step, self._autocast
            )
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v * len(batch)
            n += len(batch)
        return {f"train_{k}": v / max(n, 1) for k, v in totals.items()}

    # -- checkpoints ---------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": (self.best_score, self.best_epoch, self.best_state, self.bad_epochs),
        }

    def resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        ck = torch.load(path, weights_only=False, map_location=self.cfg.device)
        saved = (
            json.loads((self.out / "config.json").read_text()) if (self.out / "config.json").exists() else {}
        )
        if saved.get("run") and saved["run"] != _run_key(self.cfg):
            raise AvxError(f"{self.out}: holds a different run; use another --out or drop --resume")
        self.model.load_state_dict(ck["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        self.schedule.load_state_dict(ck["schedule"])
        self.scaler.load_state_dict(ck["scaler"])
        self.gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        self.history, self.epoch = ck["history"], ck["epoch"]
        self.best_score, self.best_epoch, self.best_state, self.bad_epochs = ck["best"]
        return True

    # -- the loop ------------------------------------------------------------------------
    def fit(self, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Train to ``epochs`` (or early stop), selecting on dev after every epoch."""
        writer = _tensorboard(self.out) if self.cfg.tensorboard else None
        opts = ReportOptions(threshold=self.threshold)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total} {task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            bar = progress.add_task(self.cfg.method, total=self.cfg.epochs, completed=self.epoch, info="")
            while self.epoch < self.cfg.epochs:
                t0 = time.time()
                row = self.train_epoch()
                self.epoch += 1
                dev = predict(
                    self.model, self.data, "dev", self.cfg.batch_size, self.cfg.device, per_stream=False
                )
                score = _score(dev, self.data, self.metric, opts) if len(dev.y) else -math.inf
                dev_value = score if M.GREATER_IS_BETTER[self.metric] else -score
                row = {
                    "epoch": self.epoch,
                    **row,
                    f"dev_{self.metric}": dev_value,
                    "seconds": round(time.time() - t0, 3),
                }
                self.history.append(row)
                self.schedule.on_dev(score)
                if self.best_state is None or score > self.best_score:
                    self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    self.bad_epochs += 1
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, self.epoch)
                torch.save(self._checkpoint(), self.out / "last.pt")
                progress.update(bar, completed=self.epoch, info=f"dev {self.metric} {dev_value:.3f}")
                if on_epoch_end is not None:
                    on_epoch_end(self.epoch, row)
                if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                    self.console.print(
                        f"early stop after epoch {self.epoch}: dev {self.metric} has not improved for "
                        f"{self.cfg.patience} epochs"
                    )
                    break
        if writer is not None:
            writer.close()
        self.model.load_state_dict(self.best_state)

    def finish(self, started: float) -> dict[str, Any]:
        """Evaluate the selected model on dev then test; write metrics, predictions, model."""
        bs, dev_ = self.cfg.batch_size, self.cfg.device
        dev = predict(self.model, self.data, "dev", bs, dev_)
        if self.cfg.threshold == "tune" and self.data.task == "multilabel" and len(dev.y):
            self.threshold = tune_threshold(
                eval_multihot(dev.y, len(self.data.names)), probabilities(dev.scores, "multilabel")
            )
        test = predict(self.model, self.data, "test", bs, dev_)
        opts = ReportOptions(threshold=self.threshold, bootstrap=self.cfg.bootstrap, seed=self.cfg.seed)
        c = self.cfg
        metrics = {
            "method": c.method,
            "task": self.data.task,
            "frame_level": self.data.frame_level,
            "streams": list(self.data.stream_names),
            "labels": c.data.labels,
            "names": self.data.names,
            "seed": c.seed,
            "protocol": self.store.protocol(c.data.protocol).name,
            "fold": c.data.fold,
            "select_metric": self.metric,
            "selected_epoch": self.best_epoch,
            "threshold": self.threshold,
            "n_samples": self.data.counts(),
            "n_left_out_unlabelled": self.data.n_unlabelled,
            "dev": report(dev, self.data, replace(opts, bootstrap=0)),
            "test": report(test, self.data, opts),
            "calibration": calibration(dev, test, self.data),
            "history": self.history,
            "seconds": round(time.time() - started, 2),
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in self.history])), 3)
            if self.history
            else None,
        }
        write_predictions(self.out / "predictions.csv", {"dev": dev, "test": test}, self.data, self.threshold)
        (self.out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2))
        torch.save(self.bundle(), self.out / "model.pt")
        return metrics

    def bundle(self) -> dict[str, Any]:
        """Everything ``avx fuse eval/predict`` needs to rebuild the model (no store paths)."""
        return {
            "method": self.cfg.method,
            "method_config": asdict(self.model.config),
            "inputs": {s: asdict(i) for s, i in self.data.info.items()},
            "task": asdict(self.task),
            "names": self.data.names,
            "normalizer": self.data.normalizer.state_dict(),
            "threshold": self.threshold,
            "state_dict": self.model.state_dict(),
        }

    def write_config(self) -> None:
        from avx import __version__

        resolved = asdict(self.cfg)
        resolved["run"] = _run_key(self.cfg)
        resolved["method_config"] = asdict(self.model.config)
        resolved["names"] = self.data.names
        resolved["stream_provenance"] = {s: st.provenance for s, st in self.data.streams.items()}
        resolved["avx_version"] = __version__
        resolved["torch_version"] = torch.__version__
        (self.out / "config.json").write_text(json.dumps(jsonable(resolved), indent=2, default=str))


def _run_key(cfg: TrainConfig) -> str:
    """Identity of a run's settings (``--resume`` refuses a directory holding another run)."""
    d = asdict(cfg)
    d.pop("device", None)
    return json.dumps(jsonable(d), sort_keys=True, default=str)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AvxError(
            "--tensorboard needs the tensorboard package: pip install 'avx[tensorboard]'"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    console: Console | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``config.method``; writes ``config.json``, ``metrics.json``, ``model.pt``,
    ``predictions.csv`` and the resumable ``last.pt`` into ``out_dir``."""
    started = time.time()
    out = Path(out_dir)
    trainer = Trainer(config, out, console)
    if resume and trainer.resume():
        trainer.console.print(f"resuming {out} after epoch {trainer.epoch}")
    trainer.write_config()
    trainer.fit(on_epoch_end)
    return trainer.finish(started)
