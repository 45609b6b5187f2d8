"""The surface every fusion method shares, so one trainer serves them all.

A method is one file with a frozen ``<Name>Config`` dataclass, an ``nn.Module``
subclass of :class:`FusionMethod`, and one :class:`MethodCard` per registered name
(``METHODS.register(MethodCard("late", Late, tasks=ALL_TASKS, ...))``) stating what it
supports. It receives a :class:`~avx.fuse.data.Batch` and returns a
:class:`FusionOutput`; the trainer never branches on the method's name. The registry
test builds every card's method for every declared task, sequence or frame level, and
single- or multi-layer input, so a card's claims are tested, not trusted.

Outputs are *scores before the task's link*: class logits (multiclass, multilabel) or
values (regression), ``[B, K]`` per sequence or ``[B, T, K]`` per frame. A method that
fuses probabilities (late fusion) returns the logits of its fused probabilities.

Hooks a method may override (VAVL alternates per-modality updates; two-stage training
freezes layers) without forking the trainer:

- :meth:`FusionMethod.parameter_groups` — several optimisers, one per group;
- :meth:`FusionMethod.training_step` — the update for one batch;
- :meth:`FusionMethod.loss` — the objective from the output;
- :meth:`FusionMethod.stages` / :meth:`FusionMethod.set_stage` /
  :meth:`FusionMethod.stage_metric` — training in stages, each a full run of epochs
  with its own optimisers and model selection, in one run folder (the two-stage method);
- :meth:`FusionMethod.label_sources` — label sources beside ``--labels`` that parts of
  the model train on (``objective.labels(source)`` in the loss);
- :meth:`FusionMethod.end_epoch` / :meth:`FusionMethod.training_state` /
  :meth:`FusionMethod.load_training_state` — bookkeeping a method keeps across batches
  and epochs that is not a weight (LDDU's per-sample correctness history and its
  contrastive queue): the trainer calls ``end_epoch`` after every training epoch and
  saves the state in the checkpoint, so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import masked_mean  # noqa: F401  (methods import it from here)
from avx.registry import Card, Registry

ALL_TASKS = ("multiclass", "multilabel", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """What the method must output: ``kind`` task, ``n_outputs`` scores, per frame or not."""

    kind: str
    n_outputs: int
    frame_level: bool = False


@dataclass
class FusionOutput:
    """What a method returns for a batch.

    Attributes:
        logits: fused scores ``[B, K]`` or ``[B, T, K]``.
        modality_logits: per-stream scores, same shape, for unimodal evaluation and
            jointly trained unimodal heads.
        fusion_weights: modality weights ``[B, M]`` or per frame ``[B, T, M]`` (streams
            in input order), when the method has them.
        uncertainty: per-stream uncertainty ``[B]`` or ``[B, T]`` when the method has it.
        aux_losses: named extra loss terms, already weighted, added to the task loss.
        extra: named further outputs the method's own :meth:`FusionMethod.loss` reads
            (the two-stage method's per-branch heads).
    """

    logits: torch.Tensor
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    fusion_weights: torch.Tensor | None = None
    uncertainty: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


Objective = Callable[[torch.Tensor, Batch, torch.Tensor | None], torch.Tensor]
"""``objective(scores, batch, sample_mask)``: the task loss (see :mod:`avx.fuse.tasks`)."""


class LayerMix(nn.Module):
    """Learnable softmax-weighted sum over a stream's layers (SUPERB's featurizer; the
    two-stage paper's LW-Sum, Eq. 6): ``sum_l softmax(w)_l x_l``, weights starting equal.

    Computed by :class:`_LayerSum`, which keeps a reference to the batch's
    ``[B, T, L, D]`` input for the backward pass and allocates nothing of its size: an
    ``einsum`` (or ``x * w``) saves or builds a full copy of the input (measured 5x the
    input's bytes for forward + backward, against a quarter of it here), which for
    WavLM-large's 25 layers is the largest tensor of a step.
    """

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, L, D] -> [B, T, D]
        return _LayerSum.apply(x, torch.softmax(self.weights, 0))


class _LayerSum(torch.autograd.Function):
    """``out[..., d] = sum_l w[l] x[..., l, d]`` as one batched matrix product, saving
    ``x`` itself (no copy) for the weights' gradient ``sum_{..., d} x[..., l, d] g[..., d]``."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        n, layers, d = x.shape[:-2].numel(), x.shape[-2], x.shape[-1]
        out = torch.bmm(w.to(x.dtype).view(1, 1, layers).expand(n, 1, layers), x.reshape(n, layers, d))
        return out.view(*x.shape[:-2], d)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, w = ctx.saved_tensors
        n, layers, d = x.shape[:-2].numel(), x.shape[-2], x.shape[-1]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = g.unsqueeze(-2) * w.to(g.dtype).view(layers, 1)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(x.reshape(n, layers, d), g.reshape(n, d, 1).to(x.dtype)).sum(0).view(layers)
            gw = gw.to(w.dtype)
        return gx, gw


class FusionMethod(nn.Module):
    """Base class: ``__init__(config, inputs, task)`` and ``forward(batch)``.

    What a method supports is stated by its :class:`MethodCard`, not by the class;
    :func:`create_method` attaches the card as ``self.card``.
    """

    config_class: ClassVar[type]
    card: MethodCard

    @property
    def missing(self) -> str:
        """How this method is shown an absent modality (its card's ``missing``)."""
        return self.card.missing

    def __init__(self, config: Any, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__()
        self.config, self.inputs, self.task = config, dict(inputs), task
        self.streams = list(inputs)
        self.layer_mix = nn.ModuleDict(
            {_key(s): LayerMix(i.layers) for s, i in inputs.items() if i.layers > 1}
        )

    # -- end-to-end training -------------------------------------------------------------
    def __call__(self, batch: Batch, *args: Any, **kwargs: Any) -> Any:
        """``forward`` on ``batch``, its raw inputs (crops, waveform) first encoded by the
        end-to-end front end (:meth:`encode_raw`), so every caller gets it for free."""
        if batch.raw:
            batch = self.encode_raw(batch)
        return super().__call__(batch, *args, **kwargs)

    @property
    def end_to_end(self) -> Any:
        """The attached end-to-end front end (:class:`~avx.fuse.end2end.EndToEnd`), or None."""
        return self._modules.get("front_end")

    def attach_front_end(self, front_end: nn.Module) -> None:
        """Put trainable backbones in front of the method (:mod:`avx.fuse.end2end`):
        their parameters join :meth:`parameter_groups` and the state dict."""
        self.front_end = front_end

    def encode_raw(self, batch: Batch) -> Batch:
        """``batch`` with its raw inputs replaced by the front end's features."""
        front = self.end_to_end
        if front is None:
            raise AvxError(f"{', '.join(batch.raw)}: raw inputs, but this model has no end-to-end front end")
        return front(batch)

    def front_end_modules(self, stream: str | None = None) -> list[nn.Module]:
        """The front end of ``stream`` (all of them when None); [] without one. Methods
        that group or freeze parameters per stream (VAVL, two-stage) include these."""
        front = self.end_to_end
        if front is None:
            return []
        streams = front.streams if stream is None else [s for s in front.streams if s == stream]
        return [front.of(s) for s in streams]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the end-to-end backbones (trained at ``--backbone-lr``)."""
        front = self.end_to_end
        return [] if front is None else front.backbone_parameters()

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``[B, T, D]`` per stream, multi-layer streams mixed by their learned weights."""
        return {s: self.stream_features(batch, s) for s in self.streams}

    def stream_features(self, batch: Batch, s: str) -> torch.Tensor:
        """:meth:`features` of one stream only."""
        x = batch.inputs[s]
        return self.layer_mix[_key(s)](x) if _key(s) in self.layer_mix else x

    # -- training hooks ------------------------------------------------------------------
    @classmethod
    def label_sources(cls, config: Any) -> tuple[str, ...]:
        """Label sources beside the run's ``--labels`` that this configuration trains on;
        the data layer resolves them and every batch carries them
        (``Batch.extra_targets``). Default: none."""
        return ()

    def stages(self) -> tuple[str, ...]:
        """The training stages, in order (default: one). The trainer runs ``--epochs``
        per stage with fresh optimisers over :meth:`parameter_groups` as they stand
        after :meth:`set_stage`, selects each stage's best dev epoch and starts the next
        from it; finished stages are kept in ``RUN/stage-<name>/``."""
        return ("",)

    def set_stage(self, stage: str) -> None:
        """Enter ``stage`` (freeze what it does not train); ``""`` (after training, and
        as constructed): nothing frozen. Default: nothing to do."""

    def stage_metric(self, stage: str) -> str | None:
        """The dev metric that selects ``stage``'s best epoch (None: the run's)."""
        return None

    def end_epoch(self) -> None:
        """Called by the trainer after each training epoch (before dev scoring).
        Default: nothing."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """Training-time state that is not in ``state_dict`` (not part of the trained
        model) but must survive a resume: tensors only, as checkpoints are read with
        ``weights_only=True``. Default: none."""
        return {}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`training_state` returned."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimiser each (default: one group)."""
        return {"all": [p for p in self.parameters() if p.requires_grad]}

    def loss(self, out: FusionOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        """Named loss terms; the trainer backpropagates their sum.

        Default: the task loss on the fused scores, plus ``unimodal_weight`` (config,
        when present) times the mean task loss of the per-stream heads, each on the
        samples where that stream is present.
        """
        terms = {"task": objective(out.logits, batch, None)}
        w = getattr(self.config, "unimodal_weight", 0.0)
        if w and out.modality_logits:
            uni = [
                objective(lg, batch, batch.present[s])
                for s, lg in out.modality_logits.items()
                if batch.present[s].any()
            ]
            if uni:
                terms["unimodal"] = w * torch.stack(uni).mean()
        terms.update(out.aux_losses)
        return terms

    def training_step(
        self,
        batch: Batch,
        objective: Objective,
        optimizers: dict[str, torch.optim.Optimizer],
        step: Callable[[torch.Tensor, list[torch.optim.Optimizer]], None],
        autocast: Callable[[], Any],
    ) -> dict[str, float]:
        """One update. ``step(loss, optimizers)`` does backward, clipping and stepping
        (with the AMP scaler when enabled); methods with custom schedules call it
        several times with different optimisers."""
        with autocast():
            out = self(batch)
            terms = self.loss(out, batch, objective)
            loss = torch.stack(list(terms.values())).sum()
        step(loss, list(optimizers.values()))
        return {k: float(v.detach()) for k, v in terms.items()}


def _key(stream: str) -> str:
    return stream.replace("/", "__").replace(".", "_")


@dataclass(frozen=True)
class MethodCard(Card):
    """A registered fusion method: its class, its variant's option defaults, and what it supports.

    The defaults are conservative (multiclass only, per sequence only, two or more
    streams): a card claims a capability only when the method really has it, and the
    registry test checks each claim.

    Attributes:
        cls: the :class:`FusionMethod` subclass.
        defaults: config options this variant sets (``sfav.lt4`` = ``fusion=lt, heads=4``).
        tasks: targets it can be trained on.
        min_streams / max_streams: how many input streams it takes (None: any).
        frame_level: it can output one prediction per frame.
        needs_alignment: all its streams must share one clock (per-frame fusion).
        missing: how an absent modality is presented to it: ``mask`` (presence mask
            off) or ``zeros`` (zero features, real-looking masks).
    """

    cls: type[FusionMethod] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("multiclass",)
    min_streams: int = 2
    max_streams: int | None = None
    frame_level: bool = False
    needs_alignment: bool = False
    missing: str = "mask"

    columns = ("tasks", "streams", "per_frame", "missing", "paper")

    def __post_init__(self) -> None:
        if self.cls is None or not issubclass(self.cls, FusionMethod):
            raise TypeError(f"method card {self.name}: cls must be a FusionMethod subclass")
        if bad := set(self.tasks) - set(ALL_TASKS):
            raise ValueError(f"method card {self.name}: unknown task(s) {sorted(bad)}")
        if self.missing not in ("mask", "zeros"):
            raise ValueError(f"method card {self.name}: missing must be mask or zeros")
        if bad := set(self.defaults) - {f.name for f in fields(self.cls.config_class)}:
            raise ValueError(f"method card {self.name}: unknown default option(s) {sorted(bad)}")

    @property
    def streams(self) -> str:
        hi = self.max_streams if self.max_streams is not None else "any"
        return str(self.min_streams) if hi == self.min_streams else f"{self.min_streams}..{hi}"

    @property
    def per_frame(self) -> str:
        return "yes" if self.frame_level else "no"


METHODS: Registry[MethodCard] = Registry("fusion method", "avx.fuse.methods")


def create_method(
    name: str, inputs: dict[str, StreamInfo], task: TaskSpec, *, config: Any = None, **overrides: Any
) -> FusionMethod:
    """Build method ``name`` from ``config`` (its config dataclass; default: the card's
    variant defaults) updated by ``overrides``, after checking the card supports the task."""
    card = METHODS.get(name)
    cls = card.cls
    assert cls is not None
    _check_options(name, cls, overrides)
    if config is not None and not isinstance(config, cls.config_class):
        raise AvxError(f"{name}: config must be a {cls.config_class.__name__}, not {type(config).__name__}")
    if task.kind not in card.tasks:
        raise AvxError(f"{name} does not support task '{task.kind}'; it supports {', '.join(card.tasks)}")
    n = len(inputs)
    if n < card.min_streams or (card.max_streams is not None and n > card.max_streams):
        raise AvxError(f"{name} takes {card.streams} streams; got {n}")
    if task.frame_level and not card.frame_level:
        raise AvxError(f"{name} predicts per sequence only; per-frame targets need another method")
    config = method_config(name, **overrides) if config is None else replace(config, **overrides)
    model = cls(config, inputs, task)
    model.card = card
    return model


def method_config(name: str, **overrides: Any) -> Any:
    """Method ``name``'s config dataclass: its card's variant defaults updated by
    ``overrides`` (unknown options are a one-line error naming the valid ones)."""
    card = METHODS.get(name)
    assert card.cls is not None
    _check_options(name, card.cls, overrides)
    return card.cls.config_class(**{**card.defaults, **overrides})


def _check_options(name: str, cls: type[FusionMethod], options: dict[str, Any]) -> None:
    valid = {f.name for f in fields(cls.config_class)}
    if bad := set(options) - valid:
        raise AvxError(f"{name}: unknown option(s) {sorted(bad)}; valid: {sorted(valid)}")
