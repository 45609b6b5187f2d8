"""``auxformer``: AuxFormer (Goncalves & Busso, 2022), VAVL's baseline (paper 003).

MulT-style crossmodal transformers with auxiliary unimodal networks:

- per modality, a kernel-1 projection to ``d_model`` = 50 plus sinusoidal positions,
  embedding dropout 0.25;
- the audio-visual network: crossmodal transformers A←V (audio frames attend to video)
  and V←A, ``depth`` = 5 layers each, then per direction ``depth`` self-attention layers
  whose residual branches are gated by learnable scalars; each direction is
  represented by its last real frame; the two are concatenated and a residual two-layer
  MLP (output dropout 0.2) predicts ``pred_av``;
- the auxiliary unimodal networks: one self-attention encoder (``depth`` layers) whose
  weights both modalities share, each modality's last real frame through its own head:
  ``pred_a``, ``pred_v``.

Loss: ``(L_av + L_a + L_v) / 3``. Prediction: the mean of the three heads'
probabilities (values for regression), the averaging of prediction heads the VAVL paper
describes. Attention dropout, ReLU dropout and residual dropout are 0.1, 10 heads.
With ``causal`` (the public code's default) a frame attends only to frames that start
no later than it ends, on each sequence's own clock: key ``j`` of ``L_k`` real frames is
visible to query ``i`` of ``L_q`` when ``j / L_k < (i + 1) / L_q``.

Modality dropout (p = 0.2 per modality in the paper) is the trainer's
``--dropout prob:0.2``; an absent modality is shown as zeros, as that dropout trains it.
The public code's optimisation (Adam, lr 7.25e-4, 30 epochs, batch 32) is the
``auxformer-paper`` preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import CrossModalBlock, FrameProjection
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    Objective,
    TaskSpec,
    _key,
)
from avx.fuse.tasks import from_probs, to_probs


@dataclass(frozen=True)
class AuxformerConfig:
    d_model: int = 50
    heads: int = 10
    depth: int = 5
    embed_dropout: float = 0.25
    attn_dropout: float = 0.1
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    out_dropout: float = 0.2
    causal: bool = True


@dataclass
class AuxformerOutput(FusionOutput):
    """:class:`FusionOutput` plus the AV network's own scores (its loss term)."""

    av_logits: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def attention_mask(q_mask: torch.Tensor, k_mask: torch.Tensor, causal: bool, heads: int) -> torch.Tensor:
    """``[B * heads, Tq, Tk]`` bool, True = not attended: padded keys, and with ``causal``
    keys that start after the query ends (each on its own clock). A sample with no real
    key keeps its first key visible (its output is zeroed by the caller)."""
    lq, lk = q_mask.sum(1), k_mask.sum(1)
    blocked = ~k_mask[:, None, :].expand(-1, q_mask.shape[1], -1)
    if causal:
        i = torch.arange(q_mask.shape[1], device=q_mask.device)[None, :, None]
        j = torch.arange(k_mask.shape[1], device=k_mask.device)[None, None, :]
        blocked = blocked | ~(j * lq[:, None, None] < (i + 1) * lk[:, None, None])
    blocked[lk == 0, :, 0] = False
    return blocked.repeat_interleave(heads, 0)


class AuxStack(nn.Module):
    def __init__(self, c: AuxformerConfig, gated: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CrossModalBlock(
                c.d_model,
                c.heads,
                c.res_dropout,
                attn_dropout=c.attn_dropout,
                relu_dropout=c.relu_dropout,
                gated=gated,
            )
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.causal, self.heads = c.causal, c.heads

    def forward(
        self,
        q: torch.Tensor,
        q_mask: torch.Tensor,
        kv: torch.Tensor | None = None,
        k_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k_mask = q_mask if k_mask is None else k_mask
        mask = attention_mask(q_mask, k_mask, self.causal, self.heads)
        for layer in self.layers:
            q, _ = layer(q, q if kv is None else kv, k_mask, attn_mask=mask)
        return self.norm(q) * q_mask.unsqueeze(-1).to(q.dtype)


def last_frame(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's last real frame ``[B, D]`` (zeros when it has none)."""
    idx = (mask.sum(1) - 1).clamp_min(0)
    out = h[torch.arange(len(h), device=h.device), idx]
    return out * mask.any(1, keepdim=True).to(h.dtype)


class Auxformer(FusionMethod):
    config_class = AuxformerConfig

    def __init__(self, config: AuxformerConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, d, k = config, config.d_model, task.n_outputs
        self.proj = nn.ModuleDict(
            {_key(s): FrameProjection(i.dim, d, c.embed_dropout) for s, i in inputs.items()}
        )
        a, v = self.streams
        self.cross = nn.ModuleDict({_key(a): AuxStack(c, gated=False), _key(v): AuxStack(c, gated=False)})
        self.self_attn = nn.ModuleDict({_key(a): AuxStack(c, gated=True), _key(v): AuxStack(c, gated=True)})
        self.aux_encoder = AuxStack(c, gated=True)  # shared by both modalities
        self.aux_head = nn.ModuleDict({_key(s): nn.Linear(d, k) for s in self.streams})
        self.mlp = nn.Sequential(
            nn.Linear(2 * d, 2 * d), nn.ReLU(), nn.Dropout(c.out_dropout), nn.Linear(2 * d, 2 * d)
        )
        self.head = nn.Linear(2 * d, k)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        h = {s: self.proj[_key(s)](feats[s]) for s in self.streams}
        m = batch.masks
        a, v = self.streams
        reps = []
        for tgt, src in ((a, v), (v, a)):  # A <- V, then V <- A
            x = self.cross[_key(tgt)](h[tgt], m[tgt], h[src], m[src])
            x = self.self_attn[_key(tgt)](x, m[tgt])
            reps.append(last_frame(x, m[tgt]))
        z = torch.cat(reps, -1)
        av = self.head(z + self.mlp(z))
        uni = {
            s: self.aux_head[_key(s)](last_frame(self.aux_encoder(h[s], m[s]), m[s])) for s in self.streams
        }
        probs = torch.stack([to_probs(x, self.task.kind) for x in (av, *uni.values())]).mean(0)
        return AuxformerOutput(logits=from_probs(probs, self.task.kind), modality_logits=uni, av_logits=av)

    def loss(self, out: AuxformerOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        """``(L_av + L_a + L_v) / 3`` on every clip (an absent modality is zeros, as the
        modality dropout it is trained with shows it)."""
        terms = {"task_av": objective(out.av_logits, batch, None) / 3}
        for s, lg in out.modality_logits.items():
            terms[f"task_{_key(s)}"] = objective(lg, batch, None) / 3
        return terms


METHODS.register(
    MethodCard(
        "auxformer",
        Auxformer,
        tasks=ALL_TASKS,
        min_streams=2,
        max_streams=2,
        missing="zeros",
        summary="crossmodal A←V, V←A + gated self-attention; shared auxiliary encoder; 3 heads averaged",
        paper="AuxFormer (Goncalves & Busso, 2022); VAVL (003) baseline",
    )
)
