"""Late fusion: one temporal encoder and classifier per stream, predictions averaged
with learned per-sample confidence weights.

For each stream m: z_m = pool(encoder_m(x_m)), p_m = softmax(W_m z_m), and a confidence
logit c_m = v_m . z_m. The fused prediction is p = sum_m w_m p_m with
w = softmax_m(c_m) over the streams present for that sample, so a missing stream gets
weight 0 and a less reliable one learns a lower weight. Training minimises the NLL of
the fused prediction plus ``aux_weight`` times the mean per-stream cross-entropy,
which keeps every unimodal head a usable classifier on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.fuse.data import Batch
from avx.fuse.methods.base import METHODS, FusionMethod, FusionOutput


@dataclass(frozen=True)
class LateFusionConfig:
    hidden_size: int = 128
    kernel_size: int = 3
    dropout: float = 0.2
    aux_weight: float = 0.5


class TemporalEncoder(nn.Module):
    """Frame projection, one 'same' 1-D convolution, masked mean over time."""

    def __init__(self, input_size: int, hidden_size: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(input_size, hidden_size), nn.GELU(), nn.Dropout(dropout))
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        h = self.proj(x) * m
        h = h + nn.functional.gelu(self.conv(h.transpose(1, 2)).transpose(1, 2))
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.norm(pooled)


@METHODS.register("late-fusion")
class LateFusion(FusionMethod):
    config_class = LateFusionConfig

    def __init__(self, config: LateFusionConfig, input_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(config, input_dims, num_classes)
        self.streams = list(input_dims)
        h = config.hidden_size
        self.encoders = nn.ModuleList(
            TemporalEncoder(d, h, config.kernel_size, config.dropout) for d in input_dims.values()
        )
        self.heads = nn.ModuleList(nn.Linear(h, num_classes) for _ in self.streams)
        self.confidence = nn.ModuleList(nn.Linear(h, 1) for _ in self.streams)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, batch: Batch) -> FusionOutput:
        logits, conf = {}, []
        for s, enc, head, cf in zip(self.streams, self.encoders, self.heads, self.confidence, strict=True):
            z = self.dropout(enc(batch.inputs[s], batch.masks[s]))
            logits[s] = head(z)
            c = cf(z).squeeze(-1)
            conf.append(c.masked_fill(~batch.present[s], float("-inf")))
        weights = torch.softmax(torch.stack(conf, dim=1), dim=1)  # [B, M]
        probs = torch.stack([torch.softmax(logits[s], -1) for s in self.streams], dim=1)
        fused = (weights.unsqueeze(-1) * probs).sum(1).clamp_min(1e-8).log()
        aux = {}
        if self.training and self.config.aux_weight:
            terms = [
                nn.functional.cross_entropy(logits[s][p], batch.targets[p])
                for s in self.streams
                if (p := batch.present[s]).any()
            ]
            aux["unimodal_ce"] = self.config.aux_weight * torch.stack(terms).mean()
        return FusionOutput(logits=fused, modality_logits=logits, fusion_weights=weights, aux_losses=aux)

    def task_loss(self, out: FusionOutput, targets: torch.Tensor) -> torch.Tensor:
        # ``logits`` are log-probabilities of the weighted mixture: NLL, not CE on a softmax.
        return nn.functional.nll_loss(out.logits, targets)
