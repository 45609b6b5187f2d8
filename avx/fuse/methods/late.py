"""``late``: per-stream temporal networks and heads, predictions averaged by confidence.

COLD's "decision fusion": each stream m predicts ``p_m`` on its own (trained jointly,
``unimodal_weight``), and the fused prediction is ``sum_m w_m p_m`` over the streams
present, with ``w`` proportional to each prediction's confidence:

- ``confidence="predictive"`` (default): the top-class probability (multiclass), the
  mean distance of each sigmoid from 0.5 times 2 (multilabel); regression has no
  predictive confidence and uses the learned form;
- ``confidence="learned"``: ``w = softmax_m(v_m . z_m)`` from each stream's pooled state.

Probabilities are averaged, so the fused output is returned as the logits of the fused
probability (its softmax / sigmoid gives the average back).
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
from avx.fuse.tasks import from_probs, to_probs


@dataclass(frozen=True)
class LateConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.5
    confidence: str = "predictive"
    unimodal_weight: float = 1.0


class Late(FusionMethod):
    config_class = LateConfig

    def __init__(self, config: LateConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        if config.confidence not in ("predictive", "learned"):
            raise ValueError(f"late: confidence must be predictive or learned, not {config.confidence!r}")
        self.encoders = nn.ModuleList(
            TemporalGRU(i.dim, config.hidden, config.layers, config.dropout) for i in inputs.values()
        )
        out = self.encoders[0].out_size
        self.heads = nn.ModuleList(nn.Linear(out, task.n_outputs) for _ in self.streams)
        learned = config.confidence == "learned" or task.kind == "regression"
        self.confidence = nn.ModuleList(nn.Linear(out, 1) for _ in self.streams) if learned else None

    def _confidence(self, k: int, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.confidence is not None:
            return self.confidence[k](z).squeeze(-1)
        p = to_probs(logits, self.task.kind)
        c = p.amax(-1) if self.task.kind == "multiclass" else (2 * p - 1).abs().mean(-1)
        return c.detach().clamp_min(1e-6).log()  # softmax of log-confidence = normalised confidence

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        logits, conf = {}, []
        for k, s in enumerate(self.streams):
            mask = batch.masks[s]
            h = self.encoders[k](feats[s], mask)
            z = h if self.task.frame_level else masked_mean(h, mask)
            logits[s] = self.heads[k](z)
            absent = ~batch.present[s]
            c = self._confidence(k, z, logits[s])
            conf.append(c.masked_fill(absent.view(-1, *[1] * (c.dim() - 1)), float("-inf")))
        weights = torch.softmax(torch.stack(conf, dim=-1), dim=-1)  # [B(, T), M]
        weights = torch.nan_to_num(weights)  # a sample with no stream at all
        probs = torch.stack([to_probs(logits[s], self.task.kind) for s in self.streams], dim=-2)
        fused = (weights.unsqueeze(-1) * probs).sum(-2)
        return FusionOutput(
            logits=from_probs(fused, self.task.kind), modality_logits=logits, fusion_weights=weights
        )


METHODS.register(
    MethodCard(
        "late",
        Late,
        tasks=ALL_TASKS,
        frame_level=True,
        summary="BiGRU + head per stream; probabilities averaged by predictive confidence",
        paper='COLD (000) "decision fusion"',
    )
)
