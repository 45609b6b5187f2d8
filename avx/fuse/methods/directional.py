"""``tav`` / ``tva``: one-direction crossmodal transformer fusion of two streams.

``tav`` (audio -> video): the video stream's frames attend to the audio stream's
(queries from video, keys/values from audio); ``tva`` the reverse. The attended
target sequence goes through a self-attention layer, is pooled and classified. The
baselines SFAV compares its fusions against. Roles follow the streams' modalities
(``audio/...``, ``video/...``); with two streams of one modality, the first listed is
the "audio" role.
"""

from __future__ import annotations

from dataclasses import dataclass

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
class DirectionalConfig:
    d_model: int = 64
    heads: int = 4
    cross_depth: int = 2
    self_depth: int = 1
    dropout: float = 0.1


class Directional(FusionMethod):
    config_class = DirectionalConfig
    audio_is_source: bool

    def __init__(self, config: DirectionalConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        audio = next((s for s in self.streams if inputs[s].modality == "audio"), self.streams[0])
        video = next(s for s in self.streams if s != audio)
        self.source, self.target = (audio, video) if self.audio_is_source else (video, audio)
        d = config.d_model
        self.proj_src = FrameProjection(inputs[self.source].dim, d, config.dropout)
        self.proj_tgt = FrameProjection(inputs[self.target].dim, d, config.dropout)
        self.cross = CrossModalTransformer(d, config.heads, config.cross_depth, config.dropout)
        self.selfattn = SelfAttention(d, config.heads, config.self_depth, config.dropout)
        self.head = nn.Linear(d, task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        m_t = batch.masks[self.target]
        q = self.proj_tgt(feats[self.target])
        z = self.cross(q, self.proj_src(feats[self.source]), batch.masks[self.source])
        z = self.selfattn(z, m_t)
        return FusionOutput(logits=self.head(z if self.task.frame_level else masked_mean(z, m_t)))


class TAV(Directional):
    audio_is_source = True


class TVA(Directional):
    audio_is_source = False


METHODS.register(
    MethodCard(
        "tav",
        TAV,
        tasks=ALL_TASKS,
        frame_level=True,
        max_streams=2,
        summary="one-direction crossmodal transformer, audio → video",
        paper="SFAV (001) baseline [16]",
    )
)
METHODS.register(
    MethodCard(
        "tva",
        TVA,
        tasks=ALL_TASKS,
        frame_level=True,
        max_streams=2,
        summary="one-direction crossmodal transformer, video → audio",
        paper="SFAV (001) baseline [16]",
    )
)
