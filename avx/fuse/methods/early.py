"""``early``: per-frame concatenation of time-aligned streams into one temporal network.

COLD's "feature fusion": ``Z = [Z_V, Z_A]`` per frame, then ``g_AV: Z -> Y``. Streams
are aligned to one clock by the data layer (the first stream's timestamps unless
``--align`` says otherwise). A missing modality is presented as zero features, the
only thing a concatenation can see.
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
class EarlyConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.5


class Early(FusionMethod):
    config_class = EarlyConfig

    def __init__(self, config: EarlyConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        size = sum(i.dim for i in inputs.values())
        self.encoder = TemporalGRU(size, config.hidden, config.layers, config.dropout)
        self.head = nn.Linear(self.encoder.out_size, task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        t = max(x.shape[1] for x in feats.values())
        pad = lambda x: nn.functional.pad(x, (0, 0, 0, t - x.shape[1]))  # noqa: E731
        x = torch.cat([pad(feats[s]) for s in self.streams], dim=-1)
        mask = torch.stack(
            [nn.functional.pad(batch.masks[s], (0, t - batch.masks[s].shape[1])) for s in self.streams]
        ).any(0)
        h = self.encoder(x, mask)
        return FusionOutput(logits=self.head(h if self.task.frame_level else masked_mean(h, mask)))


METHODS.register(
    MethodCard(
        "early",
        Early,
        tasks=ALL_TASKS,
        frame_level=True,
        needs_alignment=True,
        missing="zeros",
        summary="per-frame concatenation of time-aligned streams → BiGRU → head",
        paper='COLD (000) "feature fusion"',
    )
)
