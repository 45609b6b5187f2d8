"""``tlstm``: transformer + LSTM model-level fusion (Huang et al., ICASSP 2020,
"Multimodal transformer fusion for continuous emotion recognition"), VAVL's baseline
"TLSTM" (paper 003; "TSLTM" in paper 002).

No public code exists; built from that paper's description, with every size our choice:

1. per modality, a linear projection to ``d_model`` plus sinusoidal positions, and a
   transformer encoder of ``encoder_depth`` layers (self-attention over the modality's
   own frames: its long-term temporal dependencies);
2. model-level fusion into a shared space with multi-head attention and no
   encoder-decoder: each modality's frames attend to the other's (audio queries over
   video keys and the reverse, one multi-head attention each), and the two attended
   sequences, resampled to the audio stream's frame count, are concatenated per frame
   and projected to ``d_model``;
3. an LSTM (``lstm_layers``, ``d_model`` hidden) over the fused frames; per sequence,
   the mean of its outputs over real frames, per frame the outputs themselves, then a
   linear head.

Defaults (width 68, 4 heads, 2 encoder layers, 1 LSTM layer) give 0.48M parameters with
1,024-D audio and 1,408-D video inputs (VAVL's paper: 485k). An absent modality is
masked: its attention output is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import FrameProjection, SelfAttention, key_padding
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
class TlstmConfig:
    d_model: int = 68
    heads: int = 4
    encoder_depth: int = 2
    lstm_layers: int = 1
    dropout: float = 0.1


def resample_frames(x: torch.Tensor, mask: torch.Tensor, ref_mask: torch.Tensor) -> torch.Tensor:
    """``x [B, T', D]`` onto the clock of ``ref_mask [B, T]``: reference frame ``i`` of a
    sample with ``L`` real frames takes frame ``floor(i / L * L')`` of its ``L'`` real
    ones (nearest earlier, by the fraction of the clip); zeros where either has none."""
    ref_len = ref_mask.sum(1, keepdim=True).clamp_min(1)
    own_len = mask.sum(1, keepdim=True)
    pos = torch.arange(ref_mask.shape[1], device=x.device).unsqueeze(0)
    idx = (pos * own_len // ref_len).clamp(max=x.shape[1] - 1)
    out = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    keep = ref_mask & (own_len > 0)
    return out * keep.unsqueeze(-1).to(x.dtype)


class Tlstm(FusionMethod):
    config_class = TlstmConfig

    def __init__(self, config: TlstmConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, d = config, config.d_model
        self.proj = nn.ModuleList(FrameProjection(i.dim, d, c.dropout) for i in inputs.values())
        self.encoders = nn.ModuleList(SelfAttention(d, c.heads, c.encoder_depth, c.dropout) for _ in inputs)
        self.cross = nn.ModuleList(
            nn.MultiheadAttention(d, c.heads, dropout=c.dropout, batch_first=True) for _ in inputs
        )
        self.fuse = nn.Linear(2 * d * (len(inputs) - 1), d)
        self.lstm = nn.LSTM(d, d, num_layers=c.lstm_layers, batch_first=True)
        self.head = nn.Linear(d, task.n_outputs)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        masks = [batch.masks[s] for s in self.streams]
        h = [
            enc(p(feats[s]), m)
            for p, enc, s, m in zip(self.proj, self.encoders, self.streams, masks, strict=True)
        ]
        # the first stream's clock is the fused sequence's
        ref_mask = masks[0]
        parts = []
        for k in range(len(h)):
            for n in range(len(h)):
                if n == k:
                    continue
                padding, empty = key_padding(masks[n])
                a = self.cross[k](h[k], h[n], h[n], key_padding_mask=padding, need_weights=False)[0]
                a = a.masked_fill(empty[:, None, None], 0.0)
                parts.append(resample_frames(a, masks[k], ref_mask) if k else a)
        fused = torch.relu(self.fuse(torch.cat(parts, -1))) * ref_mask.unsqueeze(-1).to(h[0].dtype)
        out, _ = self.lstm(fused)
        z = out if self.task.frame_level else masked_mean(out, ref_mask)
        return FusionOutput(logits=self.head(z))


METHODS.register(
    MethodCard(
        "tlstm",
        Tlstm,
        tasks=ALL_TASKS,
        frame_level=True,
        needs_alignment=False,
        min_streams=2,
        max_streams=2,
        summary="transformer per modality → cross-modal multi-head attention into a shared space → LSTM",
        paper="Huang et al. (ICASSP 2020); VAVL (003) baseline TLSTM",
    )
)
