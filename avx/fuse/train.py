"""The one trainer: every fusion method trains and evaluates through :func:`train`.

Reproducible by construction: the seed fixes model initialisation, batch order and
resampling (a private ``torch.Generator``); deterministic algorithms are requested;
the resolved configuration is written next to the metrics. Model selection and early
stopping read the dev split only; the test split is predicted once, after training,
with the selected weights. ``RUN/checkpoint/`` is written atomically after every epoch
(:mod:`avx.fuse.checkpoint`), so an interrupted run, even one killed mid-write, resumes
(``resume=True``) where it stopped and ends bit-identical to an uninterrupted one. The
finished run is written by :meth:`FusionRun.save_pretrained`
(:mod:`avx.fuse.run_folder`): JSON and safetensors, no pickle.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.checkpoint import load_checkpoint, save_checkpoint
from avx.fuse.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from avx.fuse.cost import cost_report, reset_peaks
from avx.fuse.data import FusionData
from avx.fuse.dropout import ModalityDropout
from avx.fuse.end2end import EndToEnd, build_end_to_end, fit_statistics
from avx.fuse.evaluate import (
    Predictions,
    ReportOptions,
    calibration,
    complexity,
    jsonable,
    predict,
    probabilities,
    report,
    score,
    write_predictions,
)
from avx.fuse.methods import METHODS, FusionMethod, create_method
from avx.fuse.methods.base import TaskSpec, method_config
from avx.fuse.run_files import CHECKPOINT_FOLDER, RUN_FILES, is_finished
from avx.fuse.run_folder import FusionRun, read_config_extras, run_key, write_config
from avx.fuse.targets import Targets
from avx.fuse.tasks import (
    Objective,
    class_weights,
    eval_multihot,
    resampling_weights,
    tune_threshold,
)
from avx.prefetch import Prefetch
from avx.progress import PlainLines
from avx.serialization import save_tensors, to_dict, write_json
from avx.store_schema import open_store
from avx.threads import announce

__all__ = ["OPTIMIZERS", "SCHEDULERS", "TrainConfig", "Trainer", "train"]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN (a debugging aid against
    # ops that read uninitialised memory); in a packed GRU's backward that fill took 18%
    # of an epoch (profiled: 3.4 of 18.4 s). Results of correct ops do not depend on it.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return torch.Generator().manual_seed(seed)


def build_optimizers(model: FusionMethod, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per :meth:`~FusionMethod.parameter_groups` group; end-to-end
    backbone parameters form their own parameter group at ``backbone_lr``."""
    out = {}
    backbone = {id(p) for p in model.backbone_parameters()}
    e2e = cfg.end_to_end
    backbone_lr = cfg.lr / 10 if e2e is None or e2e.backbone_lr is None else e2e.backbone_lr
    for name, group in model.parameter_groups().items():
        params: list[dict[str, Any]] = [
            {"params": ps, "lr": lr}
            for ps, lr in (
                ([p for p in group if id(p) not in backbone], cfg.lr),
                ([p for p in group if id(p) in backbone], backbone_lr),
            )
            if ps
        ]
        params = params or group  # an empty group: torch's own error, as before
        if cfg.optimizer == "sgd":
            out[name] = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            out[name] = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        else:
            out[name] = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
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
    """The run's loss on ``--labels``, with one objective per extra label source
    (``objective.labels(source)``), each weighted by its own training class counts."""
    main = _objective(cfg, data, data.targets_all, "")
    main.labels_name = cfg.data.labels
    main.extra = {src: _objective(cfg, data, t, src) for src, t in data.extra_targets.items()}
    return main


def _objective(cfg: TrainConfig, data: FusionData, targets: Targets, source: str) -> Objective:
    weights = None
    if data.task in ("multiclass", "multilabel") and cfg.class_weights != "none":
        w = class_weights(_train_labels(data, targets, source), len(data.names), cfg.class_weights)
        weights = None if w is None else torch.as_tensor(w)
    soft = targets.soft
    table = None if soft is None else torch.as_tensor(soft[data.rows], dtype=torch.float32)
    return Objective(data.task, weights, cfg.regression_loss, soft=table, source=source)


def _train_labels(data: FusionData, targets: Targets | None = None, source: str = "") -> np.ndarray:
    """Training labels of ``targets`` (default: the run's): class indices (per frame,
    flattened, for per-frame targets), or the multi-hot rows metrics score (multi-label)."""
    targets = targets or data.targets_all
    train = data.indices("train")
    if source:
        train = train[data.extra_labelled[source][data.rows[train]]]
    if data.frame_level:
        return np.concatenate([targets.frames[data.rows[i]] for i in train]).astype(np.int64)
    if data.task == "multilabel":
        rows = targets.eval_multihot if targets.eval_multihot is not None else targets.values
        return eval_multihot(rows[data.rows[train]], len(data.names))
    return targets.values[data.rows[train]].astype(np.int64)


def _with_label_sources(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` whose data carries the label sources the method's configuration trains on
    (:meth:`FusionMethod.label_sources`), so every batch has their targets."""
    sources = METHODS.get(cfg.method).cls.label_sources(method_config(cfg.method, **cfg.method_config))
    extra = tuple(dict.fromkeys((*cfg.data.extra_labels, *sources)))
    return cfg if extra == cfg.data.extra_labels else replace(cfg, data=replace(cfg.data, extra_labels=extra))


def _sample_weights(cfg: TrainConfig, data: FusionData) -> np.ndarray | None:
    if cfg.sampling == "none":
        return None
    if data.task != "multiclass" or data.frame_level:
        raise AvxError("--sampling over|under needs per-sequence multiclass targets")
    y = np.full(len(data.ids), -1)
    y[data.indices("train")] = _train_labels(data)
    return resampling_weights(y, cfg.sampling)


def _selection_score(pred: Predictions, data: FusionData, metric: str, opts: ReportOptions) -> float:
    """The dev score model selection maximises (the metric, negated when lower is better)."""
    probs = probabilities(pred.scores, data.task)
    value = score(metric, data.task, data.names, pred.y, probs, opts.threshold)
    return M.SCORERS[metric].sign(value)


class Trainer:
    """Owns one run: data, model, optimisers, schedule, checkpoints (see :func:`train`)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, console: Console | None = None) -> None:
        config.check()
        card = METHODS.get(config.method)
        config = _with_label_sources(config)
        self.cfg, self.out = config, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = console or Console(stderr=True)
        self.gen = seed_everything(config.seed)
        self.store = open_store(config.store)
        e2e = config.end_to_end
        self.data = FusionData(self.store, config.data, align=card.needs_alignment, raw=e2e is not None)
        self.front_end: EndToEnd | None = None
        self.skipped: dict[str, dict[str, Any]] = {}
        self.rss_since = "process"  # what the cost's RSS peak covers (train() resets it: "run")
        if e2e is not None:
            if not self.data.raw:
                raise AvxError(
                    "--end-to-end trains backbones on raw inputs: add video/faces (crops) or"
                    " audio/waveform to --streams"
                )
            self.front_end = build_end_to_end(
                self.store, self.data.raw, e2e, config.device, modalities=config.data.modalities
            )
            self.data.info.update(self.front_end.infos)
            self.skipped = self.data.skip_training_without(list(self.data.raw))
            for s, sk in self.skipped.items():
                first = next(iter(sk["reasons"].items()))
                self.console.print(
                    f"[yellow]warning[/]: {s}: {sk['n']} training clip(s) without it skipped in training"
                    f" (e.g. {first[0]}: {first[1]}); counted in metrics.json",
                    soft_wrap=True,
                )
        self.data.load()
        self.data.normalizer = self.data.fit_normalizer()  # training split only
        self.task = TaskSpec(config.data.task, len(self.data.names), self.data.frame_level)
        self.model = create_method(config.method, self.data.info, self.task, **config.method_config)
        if self.front_end is not None:
            self.model.attach_front_end(self.front_end)
            self.front_end.set_generator(self.gen)
        self.model.to(config.device)
        self.dropout = ModalityDropout.parse(config.dropout, self.model.missing)
        # the loss trains on --train-labels (default --labels); selection and reports score --labels
        self.objective = make_objective(config, self.data).labels(config.data.train_labels)
        self.sample_weights = _sample_weights(config, self.data)
        cuda = str(config.device).startswith("cuda")
        self.amp = bool(config.amp and cuda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history: list[dict[str, Any]] = []
        self.stage_names = self.model.stages()
        self.stage_results: list[dict[str, Any]] = []
        self.enter_stage(0)
        self.threshold: float | None = (
            float(config.threshold) if config.threshold not in (None, "tune") else None
        )

    # -- stages ----------------------------------------------------------------------------
    def enter_stage(self, index: int) -> None:
        """Start stage ``index`` of the method's :meth:`~FusionMethod.stages`: the model
        freezes what the stage leaves alone, then fresh optimisers and schedule over the
        groups it trains, and model selection starts over (on the stage's metric)."""
        self.stage_index = index
        stage = self.stage_names[index]
        self.model.set_stage(stage)
        self.optimizers = build_optimizers(self.model, self.cfg)
        self.schedule = Schedule(self.cfg, self.optimizers)
        self.metric = self.model.stage_metric(stage) or self.cfg.select_metric or M.headline(self.data.task)
        self.epoch = 0
        self.best_score, self.best_epoch, self.best_state = -math.inf, 0, None
        self.bad_epochs = 0

    @property
    def stage(self) -> str:
        return self.stage_names[self.stage_index]

    def finish_stage(self) -> None:
        """Keep a finished (not the last) stage: its selected weights in
        ``RUN/stage-<name>/model.safetensors`` and what selected them in ``stage.json``."""
        folder = self.out / f"stage-{self.stage}"
        result = {
            "stage": self.stage,
            "select_metric": self.metric,
            "selected_epoch": self.best_epoch,
            "best": M.SCORERS[self.metric].sign(self.best_score),
            "trained_parameters": sum(p.numel() for ps in self.model.parameter_groups().values() for p in ps),
        }
        save_tensors(folder / "model.safetensors", self.model.state_dict(), metadata={"stage": self.stage})
        write_json(folder / "stage.json", jsonable(result))
        self.stage_results.append(result)

    def _global_epoch(self) -> int:
        """Epochs done over all stages (names the checkpoint files)."""
        return self.stage_index * self.cfg.epochs + self.epoch

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
            # only what this step updates: a method stepping parameter groups in turn
            # (VAVL) leaves other groups' gradients from earlier steps in place
            params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
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
        it: Any = self.data.batches(
            "train", self.cfg.batch_size, shuffle=True, generator=self._data_generator(),
            sample_weights=self.sample_weights,
        )  # fmt: skip
        if self.front_end is not None:  # raw batches: read and decode ahead, in a thread
            it = Prefetch(it, depth=2, pin=self.cfg.device.startswith("cuda"))
        self.load_wait = 0.0
        for i, batch in enumerate(it):
            self.schedule.set(self.epoch + i / n_batches)
            batch = batch.to(self.cfg.device)
            if batch.raw:  # backbones first, so modality dropout acts on features as cached
                with self._autocast():
                    batch = self.model.encode_raw(batch)
            batch = self.dropout(batch, self.gen)
            terms = self.model.training_step(
                batch, self.objective, self.optimizers, self._step, self._autocast
            )
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v * len(batch)
            n += len(batch)
        self.model.end_epoch()
        if isinstance(it, Prefetch):
            self.load_wait = it.waited  # seconds training waited on data (benchmarks/end2end.py)
        return {f"train_{k}": v / max(n, 1) for k, v in totals.items()}

    def _data_generator(self) -> torch.Generator:
        """The generator that orders this epoch's training batches. The run's own, unless
        an end-to-end run streams its selection: its batches are built in a thread, and
        streamed blocks are shuffled as they are read, while the main thread draws
        dropout and augmentation; those get one seeded by (seed, epoch). (In memory, the
        order is drawn before the first batch, while the main thread waits for it: same
        draws, same order as the cached path, so frozen end to end trains the same.)"""
        if self.front_end is None or self.data.in_memory:
            return self.gen
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self._global_epoch())

    def fit_front_end(self) -> None:
        """Measure the end-to-end features' training statistics once, before the first
        epoch (a resumed run has them in its checkpoint)."""
        if self.front_end is None or all(bool(self.front_end.of(s).fitted) for s in self.front_end.streams):
            return
        self.console.print("measuring the backbones' feature statistics on the training split")
        fit_statistics(
            self.front_end, self.data.batches("train", self.cfg.batch_size, shuffle=False), self.cfg.device
        )

    # -- checkpoints ---------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        """Everything but weights that resuming needs (read back with ``weights_only=True``)."""
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": [self.best_score, self.best_epoch, self.bad_epochs],
            "stage": self.stage_index,
            "stage_epoch": self.epoch,
            "stage_results": self.stage_results,
            "method_state": self.model.training_state(),
        }

    def save_checkpoint(self) -> None:
        save_checkpoint(
            self.out, self._global_epoch(), self.model.state_dict(), self.best_state, self._trainer_state()
        )

    def resume(self) -> bool:
        """Continue from ``RUN/checkpoint`` (False when there is none)."""
        loaded = load_checkpoint(self.out, self.cfg.device)
        if loaded is None:
            return False
        saved = read_config_extras(self.out)
        if saved.get("run") and saved["run"] != run_key(self.cfg):
            raise AvxError(f"{self.out}: holds a different run; use another --out or drop --resume")
        weights, best, ck = loaded
        if ck.get("stage", 0) != self.stage_index:
            self.enter_stage(ck["stage"])
        self.model.load_state_dict(weights)
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        self.schedule.load_state_dict(ck["schedule"])
        self.scaler.load_state_dict(ck["scaler"])
        self.gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        self.history, self.epoch = ck["history"], ck.get("stage_epoch", ck["epoch"])
        self.stage_results = ck.get("stage_results", [])
        self.model.load_training_state(ck.get("method_state", {}))
        self.best_score, self.best_epoch, self.bad_epochs = ck["best"]
        self.best_state = best
        return True

    def dev_loss(self) -> float:
        """The training objective on dev (``--select-metric loss``), without dropout."""
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in self.data.batches("dev", self.cfg.batch_size, shuffle=False):
                batch = batch.to(self.cfg.device)
                terms = self.model.loss(self.model(batch), batch, self.objective)
                total += float(torch.stack(list(terms.values())).sum()) * len(batch)
                n += len(batch)
        return total / n if n else math.nan

    # -- the loop ------------------------------------------------------------------------
    def fit(self, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Train every stage to ``epochs`` (or early stop), selecting on dev after every
        epoch; each stage starts from the previous stage's selected weights."""
        self.fit_front_end()
        writer = _tensorboard(self.out) if self.cfg.tensorboard else None
        lines = PlainLines(self.console)  # one line per epoch when the output is a log
        total = self.cfg.epochs * len(self.stage_names)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total} {task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=lines.enabled,
        ) as progress:
            bar = progress.add_task(self.cfg.method, total=total, completed=self._global_epoch(), info="")
            while True:
                while self.epoch < self.cfg.epochs:
                    row = self._epoch(writer)
                    info = f"dev {self.metric} {row[f'dev_{self.metric}']:.3f}"
                    progress.update(bar, completed=self._global_epoch(), info=info)
                    lines(self._epoch_line(row))
                    if on_epoch_end is not None:
                        on_epoch_end(self._global_epoch(), row)
                    if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                        self.console.print(
                            f"early stop after epoch {self.epoch}{self._stage_label()}: dev {self.metric} has"
                            f" not improved for {self.cfg.patience} epochs"
                        )
                        break
                self.model.load_state_dict(self.best_state)
                if self.stage_index + 1 == len(self.stage_names):
                    self.model.set_stage("")  # trained: the model as users load it, nothing frozen
                    break
                self.finish_stage()
                lines(f"{self.cfg.method}: stage {self.stage} done (epoch {self.best_epoch} selected)")
                self.enter_stage(self.stage_index + 1)
        if writer is not None:
            writer.close()

    def _epoch(self, writer: Any) -> dict[str, Any]:
        """One epoch of the current stage: train, score dev, select, checkpoint."""
        t0 = time.time()
        row = self.train_epoch()
        self.epoch += 1
        if self.metric == "loss":
            dev_value = self.dev_loss()
        else:
            bs, device = self.cfg.batch_size, self.cfg.device
            dev = predict(self.model, self.data, "dev", bs, device, per_stream=False)
            dev_value = score(
                self.metric, self.data.task, self.data.names, dev.y,
                probabilities(dev.scores, self.data.task), self.threshold,
            )  # fmt: skip
        scorer = M.SCORERS[self.metric]
        selection = scorer.sign(dev_value) if math.isfinite(dev_value) else -math.inf
        stage = {"stage": self.stage} if len(self.stage_names) > 1 else {}
        row = {
            "epoch": self.epoch,
            **stage,
            **row,
            f"dev_{self.metric}": dev_value,
            "seconds": round(time.time() - t0, 3),
        }
        self.history.append(row)
        self.schedule.on_dev(selection)
        if self.best_state is None or selection > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = selection, self.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    writer.add_scalar(k, v, self._global_epoch())
        self.save_checkpoint()
        return row

    def _stage_label(self) -> str:
        return f" of stage {self.stage}" if len(self.stage_names) > 1 else ""

    def _epoch_line(self, row: dict[str, Any]) -> str:
        """``method epoch 3/40: train_loss 0.512, dev_macro_f1 0.611 (best 0.630 at 2), 1.2 s``."""
        values = ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds") and isinstance(v, float)
        )
        best = M.SCORERS[self.metric].sign(self.best_score) if math.isfinite(self.best_score) else math.nan
        return (
            f"{self.cfg.method} epoch {self.epoch}/{self.cfg.epochs}{self._stage_label()}: {values}"
            f" (best {best:.4g} at epoch {self.best_epoch}), {row['seconds']:.1f} s"
        )

    def finish(self, started: float) -> dict[str, Any]:
        """Evaluate the selected model on dev then test; write metrics, predictions, model."""
        bs, dev_ = self.cfg.batch_size, self.cfg.device
        dev = predict(self.model, self.data, "dev", bs, dev_)
        if self.cfg.threshold == "tune" and self.data.task == "multilabel" and len(dev.y):
            self.threshold = tune_threshold(
                eval_multihot(dev.y, len(self.data.names)), probabilities(dev.scores, "multilabel")
            )
        timer = time.perf_counter()
        test = predict(self.model, self.data, "test", bs, dev_)
        inference = time.perf_counter() - timer
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
            **({"stages": self.stage_results} if self.stage_results else {}),
            "threshold": self.threshold,
            "n_samples": self.data.counts(),
            "n_left_out_unlabelled": self.data.n_unlabelled,
            "dev": report(dev, self.data, replace(opts, bootstrap=0)),
            "test": report(test, self.data, opts),
            "calibration": calibration(dev, test, self.data),
            "complexity": (cx := complexity(self.model, self.data, "test", dev_)),
            **({"end_to_end": self.end_to_end_report()} if self.front_end is not None else {}),
            "history": self.history,
            "seconds": round(time.time() - started, 2),
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in self.history])), 3)
            if self.history
            else None,
            "cost": cost_report(
                wall_seconds=time.time() - started,
                history=self.history,
                parameters=cx["parameters"],
                device=dev_,
                rss_since=self.rss_since,
                inference_seconds=inference,
                clips=len(self.data.indices("test")),
                frames=self.data.frames("test"),
            ),
        }
        write_predictions(self.out / "predictions.csv", {"dev": dev, "test": test}, self.data, self.threshold)
        write_json(self.out / "metrics.json", jsonable(metrics))
        self.run().save_pretrained(self.out, extras=self.config_extras())
        return metrics

    def end_to_end_report(self) -> dict[str, Any]:
        """What ``metrics.json`` says about the backbones: each one's source, freezing
        and trainable size, and the training clips skipped for a missing raw input."""
        assert self.front_end is not None
        fe = self.front_end
        return {
            "backbones": {
                s: {
                    "backbone": d["backbone"],
                    "source": d["source"],
                    "freeze": d["freeze"],
                    "trainable_parameters": sum(
                        p.numel() for p in fe.of(s).net.parameters() if p.requires_grad
                    ),
                    "parameters": sum(p.numel() for p in fe.of(s).net.parameters()),
                }
                for s, d in fe.described.items()
            },
            "skipped_training_clips": {s: sk["n"] for s, sk in self.skipped.items()},
            "skipped": self.skipped,
        }

    def resolved_config(self) -> TrainConfig:
        """The config with the method's full config (defaults included), as ``config.json`` records it."""
        return replace(self.cfg, method_config=to_dict(self.model.config))

    def run(self) -> FusionRun:
        """The trained run as :class:`~avx.fuse.run_folder.FusionRun` (what ``save_pretrained`` writes)."""
        return FusionRun(
            self.out, self.resolved_config(), self.model, self.data.normalizer, self.threshold,
            list(self.data.names),
        )  # fmt: skip

    def config_extras(self) -> dict[str, Any]:
        """What ``config.json`` records beside the config: run identity, stream provenance, versions."""
        from avx import __version__

        return {
            "run": run_key(self.cfg),
            "names": self.data.names,
            "stream_provenance": {s: st.provenance for s, st in self.data.streams.items()},
            "avx_version": __version__,
            "torch_version": torch.__version__,
        }

    def write_config(self) -> None:
        write_config(self.out, self.resolved_config(), self.config_extras())


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
    overwrite: bool = False,
    keep_checkpoint: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``config.method``; writes ``config.json``, ``metrics.json``, the model
    (``model.json``, ``model.safetensors``, ``normalizer.safetensors``) and
    ``predictions.csv`` into ``out_dir``, and the resumable ``checkpoint/`` while it runs.

    A folder is always one run: an ``out_dir`` that holds a run is refused unless
    ``resume`` (continue an interrupted one) or ``overwrite`` (clear it first). The
    checkpoint is removed once the run is written, unless ``keep_checkpoint``. A run
    that fails before its first checkpoint leaves no folder behind.
    """
    started = time.time()
    out = Path(out_dir)
    created = _claim(out, resume=resume, overwrite=overwrite)
    rss_since = reset_peaks(config.device)
    try:
        trainer = Trainer(config, out, console)
        trainer.rss_since = rss_since
        if resume and trainer.resume():
            trainer.console.print(f"resuming {out} after epoch {trainer.epoch}")
        trainer.write_config()
        announce(trainer.console)  # the thread count, once data, model and folder are checked
        trainer.fit(on_epoch_end)
        metrics = trainer.finish(started)
    except BaseException:
        if created and not (out / CHECKPOINT_FOLDER).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    if not keep_checkpoint:
        shutil.rmtree(out / CHECKPOINT_FOLDER, ignore_errors=True)
    return metrics


def _is_run_config(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()).get("method"), str)
    except (OSError, ValueError, AttributeError):
        return False


def _claim(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check ``out`` may receive this run; True when this call creates it."""
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held:
        if overwrite:
            if held == ["config.json"] and not _is_run_config(out / "config.json"):
                # clearing means rmtree: never of a folder that merely has a config.json
                raise AvxError(f"{out}: holds a config.json that is not an avx run's; refusing to clear it")
            shutil.rmtree(out)
        elif resume and is_finished(out):
            raise AvxError(
                f"{out}: this run is finished (nothing to resume); pass --overwrite to train it again"
            )
        elif not resume:
            raise AvxError(
                f"{out}: already holds a run ({', '.join(held)}); pass --overwrite to replace it,"
                " --resume to continue an interrupted one, or another --out"
            )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return created
