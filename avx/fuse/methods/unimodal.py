"""``unimodal``: one stream through COLD's temporal network and an output layer.

The reference every fusion result is compared against (COLD's Table 4 unimodal rows).
"""

from __future__ import annotations

from dataclasses import dataclass

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
class UnimodalConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.5


class Unimodal(FusionMethod):
    config_class = UnimodalConfig

    def __init__(self, config: UnimodalConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        (self.stream,) = self.streams
        self.encoder = TemporalGRU(inputs[self.stream].dim, config.hidden, config.layers, config.dropout)
        self.head = nn.Linear(self.encoder.out_size, task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        x = self.features(batch)[self.stream]
        mask = batch.masks[self.stream]
        h = self.encoder(x, mask)
        logits = self.head(h if self.task.frame_level else masked_mean(h, mask))
        return FusionOutput(logits=logits, modality_logits={self.stream: logits})


METHODS.register(
    MethodCard(
        "unimodal",
        Unimodal,
        tasks=ALL_TASKS,
        frame_level=True,
        min_streams=1,
        max_streams=1,
        summary="one stream → 2-layer BiGRU → head",
        paper="COLD (000) unimodal baseline",
    )
)
