"""``vavl``: Versatile Audio-Visual Learning (paper 003, Goncalves et al.).

One model that serves audio-visual, audio-only and video-only input, trained from
paired and unpaired clips alike. Per modality ``m`` (Sec. 3.1, 4.3):

- a temporal convolution (``proj_kernel`` frames, to ``proj_dim`` = 50 features) and a
  linear map to the conformer width ``d_model`` = 512
  (:class:`~avx.fuse.layers.TemporalProjection`);
- a modality conformer of ``modality_blocks`` = 3 blocks (8 heads, dropout 0.1,
  :class:`~avx.fuse.layers.Conformer`);
- the *shared* conformer (``shared_blocks`` = 2, one set of weights θ_s for both
  modalities) with a residual connection over it, a LayerNorm, and the mean over real
  frames: ``z_m = mean_t LN(shared(h_m) + h_m)`` (Sec. 3.2; ``pool="asp"`` takes
  attentive statistics pooling per modality instead, :class:`~avx.fuse.layers.TemporalPool`);
- a prediction head ``z_m -> 512 -> 256 -> K`` and a reconstruction head
  ``z_m -> 512 -> 256 -> D_m`` predicting the time-mean of the modality's input
  features (ReLU, dropout 0.2).

The audio-visual head θ_av maps ``[z_a, z_v]`` (1,024-D) through ``512 -> 256 -> K``.

Training is the paper's Algorithm 1, as the :meth:`Vavl.training_step` hook, per batch:

1. acoustic step: ``L = L_pred(y, pred_a) + alpha * MSE(mean_t A, rec_a)`` on the clips
   that have audio, updating θ_a and θ_s (one optimiser per parameter group);
2. visual step: the same on the clips that have video, updating θ_v and θ_s;
3. audio-visual step, on the clips that have both: θ_a, θ_v, θ_s frozen (run without
   gradients, in evaluation mode), ``L_pred(y, pred_av)`` updates θ_av only.

Inference (Algorithm 1, lines 17-21): the AV head when both modalities are present,
else the head of the one present. ``modality_logits`` carry both unimodal heads.

Ablations (Table 3): ``residual=False`` (Ablt. 1, no residual over the shared layers),
``reconstruction=False`` (Ablt. 2), ``av_head=False`` (Ablt. 3: the AV prediction is the
average of the two unimodal predictions, probabilities for classes). The registered
variants ``vavl.ablt1``, ``vavl.ablt2`` and ``vavl.ablt3`` set them.

Where the paper is silent, and where the public code differs, see docs/methods/vavl.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import Conformer, TemporalPool, TemporalProjection, mlp_head
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    Objective,
    TaskSpec,
    _key,
    masked_mean,
)
from avx.fuse.tasks import from_probs, to_probs

SHARED, AV = "shared", "av"


@dataclass(frozen=True)
class VavlConfig:
    """VAVL's architecture (paper Sec. 4.3) and loss weight.

    ``alpha`` weights the reconstruction MSE (Eq. 1); the paper gives no value, the
    public training script uses 2. ``first`` is the modality of the first unimodal step
    (Algorithm 1 takes the acoustic step first; the public code the visual one).
    """

    d_model: int = 512
    heads: int = 8
    proj_dim: int = 50
    proj_kernel: int = 5
    modality_blocks: int = 3
    shared_blocks: int = 2
    conv_kernel: int = 31
    dropout: float = 0.1
    head_dropout: float = 0.2
    alpha: float = 2.0
    residual: bool = True
    reconstruction: bool = True
    av_head: bool = True
    first: str = "audio"
    pool: str = "mean"


class Vavl(FusionMethod):
    config_class = VavlConfig

    def __init__(self, config: VavlConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, d = config, config.d_model
        modalities = [i.modality for i in inputs.values()]
        if config.first not in modalities:
            raise AvxError(f"vavl: first={config.first!r} names no input modality ({', '.join(modalities)})")
        self.proj = nn.ModuleDict(
            {_key(s): TemporalProjection(i.dim, c.proj_dim, d, c.proj_kernel) for s, i in inputs.items()}
        )
        self.encoder = nn.ModuleDict(
            {
                _key(s): Conformer(d, c.heads, c.modality_blocks, c.conv_kernel, c.dropout)
                for s in self.streams
            }
        )
        self.shared = Conformer(d, c.heads, c.shared_blocks, c.conv_kernel, c.dropout)
        self.shared_norm = nn.LayerNorm(d)
        self.pool = nn.ModuleDict({_key(s): TemporalPool(c.pool, d) for s in self.streams})
        k, z = task.n_outputs, self.pool[_key(self.streams[0])].out_size
        self.head = nn.ModuleDict({_key(s): mlp_head(z, k, c.head_dropout) for s in self.streams})
        recon = {_key(s): mlp_head(z, i.dim, c.head_dropout) for s, i in inputs.items()}
        self.reconstruct = nn.ModuleDict(recon if c.reconstruction else {})
        self.av = mlp_head(z * len(self.streams), k, c.head_dropout) if c.av_head else None
        # steps in Algorithm 1's order: the `first` modality's stream(s), then the others
        self.order = sorted(self.streams, key=lambda s: inputs[s].modality != c.first)
        unique = len(set(modalities)) == len(modalities)
        self.term_names = {s: inputs[s].modality if unique else _key(s) for s in self.streams}

    # -- the model ---------------------------------------------------------------------
    def encode(self, s: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``z_m [B, d]``: stream ``s``'s frames through its branch and the shared layers."""
        h = self.encoder[_key(s)](self.proj[_key(s)](x, mask), mask)
        out = self.shared(h, mask)
        if self.config.residual:
            out = out + h
        return self.pool[_key(s)](self.shared_norm(out), mask)

    def av_logits(self, z: dict[str, torch.Tensor], uni: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.av is not None:
            return self.av(torch.cat([z[s] for s in self.streams], dim=-1))
        probs = torch.stack([to_probs(uni[s], self.task.kind) for s in self.streams]).mean(0)
        return from_probs(probs, self.task.kind)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        z = {s: self.encode(s, feats[s], batch.masks[s]) for s in self.streams}
        uni = {s: self.head[_key(s)](z[s]) for s in self.streams}
        both = torch.stack([batch.present[s] for s in self.streams]).all(0)
        # one modality present: its own head (the first stream's when none is present)
        logits = uni[self.streams[0]]
        for s in reversed(self.streams[1:]):
            logits = torch.where(batch.present[s].unsqueeze(-1), uni[s], logits)
        logits = torch.where(both.unsqueeze(-1), self.av_logits(z, uni), logits)
        return FusionOutput(logits=logits, modality_logits=uni)

    # -- Algorithm 1 -------------------------------------------------------------------
    def branch(self, s: str) -> list[nn.Module]:
        """θ_m: the modules only stream ``s``'s information flows through."""
        k = _key(s)
        mods = [self.proj[k], self.encoder[k], self.pool[k], self.head[k]]
        mods += [self.reconstruct[k]] if k in self.reconstruct else []
        mods += [self.layer_mix[k]] if k in self.layer_mix else []
        return mods + self.front_end_modules(s)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """θ_m per stream (named by stream), θ_s (``shared``) and θ_av (``av``): one
        optimiser each, as Algorithm 1 updates them in different steps."""
        groups = {_key(s): [p for m in self.branch(s) for p in m.parameters()] for s in self.streams}
        groups[SHARED] = [*self.shared.parameters(), *self.shared_norm.parameters()]
        if self.av is not None:
            groups[AV] = list(self.av.parameters())
        return {k: [p for p in v if p.requires_grad] for k, v in groups.items()}

    def unimodal_terms(
        self, s: str, x: torch.Tensor, batch: Batch, objective: Objective
    ) -> dict[str, torch.Tensor]:
        """Eq. 1 for stream ``s`` on the clips where it is present."""
        rows = batch.present[s].nonzero().squeeze(1)
        mask = batch.masks[s][rows]
        z = self.encode(s, x[rows], mask)
        scores = self.head[_key(s)](z)
        full = scores.new_zeros(len(batch), scores.shape[-1]).index_put((rows,), scores)
        name = self.term_names[s]
        terms = {f"task_{name}": objective(full, batch, batch.present[s])}
        if self.config.reconstruction and self.config.alpha:
            target = masked_mean(x[rows].detach().float(), mask)
            rec = self.reconstruct[_key(s)](z).float()
            terms[f"rec_{name}"] = self.config.alpha * nn.functional.mse_loss(rec, target)
        return terms

    def training_step(
        self,
        batch: Batch,
        objective: Objective,
        optimizers: dict[str, torch.optim.Optimizer],
        step: Callable[[torch.Tensor, list[torch.optim.Optimizer]], None],
        autocast: Callable[[], Any],
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.order:
            if not batch.present[s].any():
                continue
            with autocast():
                x = self.stream_features(batch, s)
                terms = self.unimodal_terms(s, x, batch, objective)
                loss = torch.stack(list(terms.values())).sum()
            step(loss, [optimizers[_key(s)], optimizers[SHARED]])
            out.update({k: float(v.detach()) for k, v in terms.items()})
        both = torch.stack([batch.present[s] for s in self.streams]).all(0)
        if self.av is not None and both.any():
            rows = both.nonzero().squeeze(1)
            with autocast():
                with torch.no_grad(), self._frozen_encoders():
                    feats = self.features(batch)
                    z = {s: self.encode(s, feats[s][rows], batch.masks[s][rows]) for s in self.streams}
                scores = self.av(torch.cat([z[s] for s in self.streams], dim=-1))
                full = scores.new_zeros(len(batch), scores.shape[-1]).index_put((rows,), scores)
                loss = objective(full, batch, both)
            step(loss, [optimizers[AV]])
            out["task_av"] = float(loss.detach())
        return out

    @contextlib.contextmanager
    def _frozen_encoders(self) -> Iterator[None]:
        """Everything but θ_av in evaluation mode (no dropout, BatchNorm's running
        statistics used and left alone) for the AV step; the training mode after."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def loss(self, out: FusionOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        """Dev loss: the task loss of what inference outputs, plus each unimodal head's
        on the clips that have its modality (no reconstruction: the dev forward has no
        pooled inputs to compare with)."""
        terms = {"task": objective(out.logits, batch, None)}
        for s, lg in out.modality_logits.items():
            if batch.present[s].any():
                terms[f"task_{_key(s)}"] = objective(lg, batch, batch.present[s])
        return terms


def _card(name: str, defaults: dict[str, Any], summary: str) -> MethodCard:
    return MethodCard(
        name,
        Vavl,
        defaults=defaults,
        tasks=ALL_TASKS,
        min_streams=2,
        max_streams=2,
        summary=summary,
        paper="VAVL (003)",
    )


METHODS.register(
    _card(
        "vavl",
        {},
        "conformer per modality + shared conformer with residual, reconstruction heads; "
        "Algorithm 1 (unimodal steps, then the AV head alone); unpaired clips train their own branch",
    )
)
METHODS.register(_card("vavl.ablt1", {"residual": False}, "VAVL without the residual over the shared layers"))
METHODS.register(_card("vavl.ablt2", {"reconstruction": False}, "VAVL without the reconstruction task"))
METHODS.register(_card("vavl.ablt3", {"av_head": False}, "VAVL, AV output = mean of unimodal predictions"))
