"""``uavm``: Unified Audio-Visual Model (Gong et al., 2022), VAVL's baseline (paper 003).

Each modality runs *separately* through the model, one at a time:

- its own input layers: LayerNorm (eps 1e-6) → Linear to the width (skipped when the
  stream already has it) → + a learned positional embedding (``max_frames`` positions)
  → ``modality_depth`` pre-norm transformer blocks of its own;
- then the *shared* layers, one set of weights for both modalities: input LayerNorm →
  Linear (skipped at equal width) → + a learned positional embedding →
  ``shared_depth`` pre-norm blocks → mean over real frames → the shared head
  (LayerNorm → Linear).

A block is ViT's: LayerNorm → multi-head self-attention without q/k/v bias → residual;
LayerNorm → MLP (ratio 4, GELU) → residual. Padded frames are masked out of attention
and of the mean.

Training: the task loss of each modality's prediction on the clips that have it, summed
(the shared layers and head learn from both). The audio-visual prediction is the mean
of the two modalities' logits; a clip with one modality gets that modality's.
UAVM's own code predicts one modality at a time and leaves the AV combination open; the
VAVL paper describes its AV output as the shared layers and classifier applied to both:
the mean is our choice (docs/methods/vavl.md, "Baselines").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import key_padding
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    Objective,
    TaskSpec,
    _key,
    masked_mean,
)


@dataclass(frozen=True)
class UavmConfig:
    """Widths chosen so that the VAVL paper's 117M parameters for UAVM come out with
    its 1,024-D audio and 1,408-D video inputs (3 + 3 modality blocks and 3 shared
    blocks of width 1,024: 116.4M)."""

    d_model: int = 1024
    heads: int = 16
    modality_depth: int = 3
    shared_depth: int = 3
    max_frames: int = 512
    dropout: float = 0.1


class ViTBlock(nn.Module):
    """Pre-norm transformer block: LN → MHSA (no q/k/v bias) → residual; LN → MLP → residual."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, bias=False, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        padding, empty = key_padding(mask)
        h = self.norm1(x)
        a = self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        x = x + self.dropout(a.masked_fill(empty[:, None, None], 0.0))
        return x + self.dropout(self.mlp(self.norm2(x)))


class UavmInput(nn.Module):
    """LayerNorm → Linear (identity at equal width) → + learned positions."""

    def __init__(self, d_in: int, d: int, max_frames: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in, eps=1e-6)
        self.proj = nn.Linear(d_in, d) if d_in != d else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(1, max_frames, d))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pos.shape[1]:
            raise AvxError(
                f"uavm: {x.shape[1]} frames exceed its {self.pos.shape[1]} learned positions; "
                "shorten the streams (--length truncate:N) or --set max_frames=N"
            )
        return self.proj(self.norm(x)) + self.pos[:, : x.shape[1]]


class Uavm(FusionMethod):
    config_class = UavmConfig

    def __init__(self, config: UavmConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, d = config, config.d_model
        self.input = nn.ModuleDict({_key(s): UavmInput(i.dim, d, c.max_frames) for s, i in inputs.items()})
        self.blocks = nn.ModuleDict(
            {
                _key(s): nn.ModuleList(ViTBlock(d, c.heads, c.dropout) for _ in range(c.modality_depth))
                for s in self.streams
            }
        )
        self.shared_input = UavmInput(d, d, c.max_frames)
        self.shared = nn.ModuleList(ViTBlock(d, c.heads, c.dropout) for _ in range(c.shared_depth))
        self.head = nn.Sequential(nn.LayerNorm(d, eps=1e-6), nn.Linear(d, task.n_outputs))

    def modality_logits(self, s: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One modality through its own layers, the shared layers and the shared head."""
        h = self.input[_key(s)](x)
        for b in self.blocks[_key(s)]:
            h = b(h, mask)
        h = self.shared_input(h)
        for b in self.shared:
            h = b(h, mask)
        return self.head(masked_mean(h, mask))

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        uni = {s: self.modality_logits(s, feats[s], batch.masks[s]) for s in self.streams}
        w = torch.stack([batch.present[s] for s in self.streams], -1).to(uni[self.streams[0]].dtype)
        logits = sum(w[:, k : k + 1] * uni[s] for k, s in enumerate(self.streams)) / w.sum(
            -1, keepdim=True
        ).clamp_min(1.0)
        return FusionOutput(logits=logits, modality_logits=uni)

    def loss(self, out: FusionOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        """Each modality's task loss on the clips that have it (UAVM's unified training)."""
        terms = {
            f"task_{_key(s)}": objective(lg, batch, batch.present[s])
            for s, lg in out.modality_logits.items()
            if batch.present[s].any()
        }
        return terms or {"task": objective(out.logits, batch, None)}


METHODS.register(
    MethodCard(
        "uavm",
        Uavm,
        tasks=ALL_TASKS,
        min_streams=2,
        max_streams=2,
        summary="per-modality ViT blocks → ViT blocks + head shared by both modalities; AV = mean of the two",
        paper="UAVM (Gong et al., 2022); VAVL (003) baseline",
    )
)
