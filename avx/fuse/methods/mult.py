"""``mult``: MulT-style fusion (Tsai et al., 2019) for 2 or 3 streams.

Each stream is projected to ``d`` with positional encodings. For every target stream
m and every other source n, a crossmodal transformer lets m's frames attend to n's
(all directions: A->V, V->A, ...). A target's crossmodal outputs are concatenated, a
self-attention transformer runs over them, and the result is pooled (mean over real
frames; kept per frame for per-frame targets). The pooled vectors of all targets are
concatenated and a residual two-layer MLP predicts the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import CrossModalTransformer, FrameProjection, SelfAttention
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
class MultConfig:
    d_model: int = 40
    heads: int = 4
    cross_depth: int = 2
    self_depth: int = 1
    dropout: float = 0.1


class Mult(FusionMethod):
    config_class = MultConfig

    def __init__(self, config: MultConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        d, m = config.d_model, len(self.streams)
        self.proj = nn.ModuleList(FrameProjection(i.dim, d, config.dropout) for i in inputs.values())
        self.cross = nn.ModuleDict(
            {
                f"{n}_{t}": CrossModalTransformer(d, config.heads, config.cross_depth, config.dropout)
                for t in range(m)
                for n in range(m)
                if n != t
            }
        )
        dc = d * (m - 1)
        self.selfattn = nn.ModuleList(
            SelfAttention(dc, config.heads, config.self_depth, config.dropout) for _ in range(m)
        )
        width = dc * m
        self.mlp = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(width, width)
        )
        self.head = nn.Linear(width, task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        h = [p(feats[s]) for p, s in zip(self.proj, self.streams, strict=True)]
        masks = [batch.masks[s] for s in self.streams]
        outs = []
        for t in range(len(h)):
            parts = [self.cross[f"{n}_{t}"](h[t], h[n], masks[n]) for n in range(len(h)) if n != t]
            z = self.selfattn[t](torch.cat(parts, dim=-1), masks[t])
            outs.append(z if self.task.frame_level else masked_mean(z, masks[t]))
        z = torch.cat(outs, dim=-1)
        return FusionOutput(logits=self.head(z + self.mlp(z)))


METHODS.register(
    MethodCard(
        "mult",
        Mult,
        tasks=ALL_TASKS,
        frame_level=True,
        max_streams=3,
        summary="crossmodal transformers in all directions + self-attention",
        paper="MulT (Tsai et al., 2019)",
    )
)
