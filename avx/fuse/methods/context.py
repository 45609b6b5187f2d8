"""``context``: per-stream temporal networks whose context vectors are concatenated
into one shared output layer (COLD's "temporal context fusion", its strongest baseline).

Per sequence, each stream's context states are averaged over its real frames before
concatenation; per frame (aligned streams), frame i's context vectors ``h_i^V, h_i^A``
are concatenated. A missing stream contributes a zero context vector. Per-stream heads
on each context vector are trained jointly when ``unimodal_weight`` > 0 (0 by default;
COLD trains unimodal branches in all its fusion models, so compare with ``cold`` at 1);
untrained heads are never reported: a stream's own prediction is then the fused model
with the other streams absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import TemporalGRU
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    TaskSpec,
    masked_mean,
)


@dataclass(frozen=True)
class ContextConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.5
    unimodal_weight: float = 0.0


class Context(FusionMethod):
    config_class = ContextConfig

    def __init__(self, config: ContextConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        self.encoders = nn.ModuleList(
            TemporalGRU(i.dim, config.hidden, config.layers, config.dropout) for i in inputs.values()
        )
        out = self.encoders[0].out_size
        joint = config.unimodal_weight > 0
        self.heads = nn.ModuleList(nn.Linear(out, task.n_outputs) for _ in self.streams) if joint else None
        self.head = nn.Linear(out * len(self.streams), task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        ctx, logits = [], {}
        t = max(x.shape[1] for x in feats.values())
        for k, s in enumerate(self.streams):
            h = self.encoders[k](feats[s], batch.masks[s])
            z = (
                nn.functional.pad(h, (0, 0, 0, t - h.shape[1]))
                if self.task.frame_level
                else masked_mean(h, batch.masks[s])
            )
            ctx.append(z)
            if self.heads is not None:
                logits[s] = self.heads[k](z)
        return FusionOutput(logits=self.head(torch.cat(ctx, dim=-1)), modality_logits=logits)


METHODS.register(
    MethodCard(
        "context",
        Context,
        tasks=ALL_TASKS,
        frame_level=True,
        summary="BiGRU per stream; context vectors concatenated → shared head",
        paper='COLD (000) "temporal context fusion"',
    )
)
