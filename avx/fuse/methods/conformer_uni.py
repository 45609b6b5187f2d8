"""``conformer-uni``: the unimodal conformer baseline of VAVL's paper (003, Baseline 6).

One stream through VAVL's input layer (temporal convolution to 50 features, linear map
to 512), ``blocks`` = 5 conformer blocks (five, to match the depth a modality sees in
VAVL: three of its own and two shared), the mean over real frames, and two fully
connected layers (512 -> 256 -> K, ReLU, dropout 0.2); ``pool="asp"`` pools with
attentive statistics instead (:class:`~avx.fuse.layers.TemporalPool`). Train it once per modality
(``--streams audio/...`` or ``--streams video/...``) for the paper's unimodal rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import Conformer, TemporalPool, TemporalProjection, mlp_head
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    TaskSpec,
)


@dataclass(frozen=True)
class ConformerUniConfig:
    d_model: int = 512
    heads: int = 8
    proj_dim: int = 50
    proj_kernel: int = 5
    blocks: int = 5
    conv_kernel: int = 31
    dropout: float = 0.1
    head_dropout: float = 0.2
    pool: str = "mean"


class ConformerUni(FusionMethod):
    config_class = ConformerUniConfig

    def __init__(self, config: ConformerUniConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        (self.stream,) = self.streams
        c = config
        self.proj = TemporalProjection(inputs[self.stream].dim, c.proj_dim, c.d_model, c.proj_kernel)
        self.encoder = Conformer(c.d_model, c.heads, c.blocks, c.conv_kernel, c.dropout)
        self.pool = TemporalPool(c.pool, c.d_model)
        self.head = mlp_head(self.pool.out_size, task.n_outputs, c.head_dropout, hidden=(256,))

    def forward(self, batch: Batch) -> FusionOutput:
        x, mask = self.stream_features(batch, self.stream), batch.masks[self.stream]
        logits = self.head(self.pool(self.encoder(self.proj(x, mask), mask), mask))
        return FusionOutput(logits=logits, modality_logits={self.stream: logits})


METHODS.register(
    MethodCard(
        "conformer-uni",
        ConformerUni,
        tasks=ALL_TASKS,
        min_streams=1,
        max_streams=1,
        summary="one stream → temporal conv → 5 conformer blocks → mean → 2 FC layers",
        paper="VAVL (003) unimodal baseline",
    )
)
