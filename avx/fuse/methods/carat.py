"""``carat``: contrastive feature reconstruction and aggregation (Peng et al., AAAI 2024).

The baseline LDDU (paper 004) compares against most closely, for multi-label emotion
recognition over any number of modalities. Built from the CARAT paper's description
(its code is not copied; ``docs/methods/lddu.md`` lists the choices):

1. **Label-wise attention.** Per modality, a transformer encoder over the frames, then
   q label queries (embeddings of the modality's own) attend over them
   (:class:`~avx.fuse.layers.LabelAttention`): modality-separated, label-specific
   features ``H^m [q, d]``.
2. **Contrastive learning.** A projection head (``d -> d -> 64``, L2-normalised) and
   SupCon over every (sample, modality, label) whose sample carries the label,
   categories (modality, label), with a FIFO queue (:mod:`avx.fuse.contrastive`).
3. **Reconstruction-based fusion.** A per-modality encoder maps ``H^m`` into a shared
   latent space; the shared code of a label is the mean over the present modalities;
   per-modality decoders reconstruct every ``H^m`` from it (MSE against the detached
   ``H^m`` of present modalities). The classifier reads, per label, the concatenation
   over modalities of ``H^m`` (or its reconstruction where the modality is absent) and
   the shared code.
4. **Shuffle-based aggregation.** In training, each modality's label-j features are
   permuted among the batch's samples that agree on label j (positives with positives,
   negatives with negatives): new combinations with known labels, classified with the
   same classifier (BCE, ``aug_weight``), which enriches label co-occurrence.

Loss: ``BCE + scl_weight * L_scl + rec_weight * L_rec + aug_weight * L_aug``.
Decisions at 0.25 in the ``carat-paper`` preset (the threshold CARAT reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.fuse.contrastive import ContrastQueue, multihot, positive_entries, supcon
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import FrameProjection, LabelAttention, SelfAttention
from avx.fuse.methods.base import METHODS, FusionMethod, FusionOutput, MethodCard, Objective, TaskSpec


@dataclass(frozen=True)
class CaratConfig:
    d_model: int = 256
    heads: int = 8
    layers: int = 3
    dropout: float = 0.3
    latent: int = 128
    """Width of the shared (reconstruction) space."""
    projection: int = 64
    """Output width of the contrastive projection head (CARAT: 64)."""
    temperature: float = 0.07
    queue_size: int = 8192
    scl_weight: float = 1.0
    rec_weight: float = 1.0
    aug_weight: float = 1.0


class LabelwiseClassifier(nn.Module):
    """``[B, q, f] -> [B, q]``: a shared hidden layer, then one output unit per label."""

    def __init__(self, f: int, hidden: int, q: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(f, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.weight = nn.Parameter(torch.randn(q, hidden) * hidden**-0.5)
        self.bias = nn.Parameter(torch.zeros(q))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.hidden(x) * self.weight).sum(-1) + self.bias


class Carat(FusionMethod):
    config_class = CaratConfig

    def __init__(self, config: CaratConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, q, m = config, task.n_outputs, len(self.streams)
        self.q = q
        self.proj = nn.ModuleList(FrameProjection(i.dim, c.d_model, c.dropout) for i in inputs.values())
        self.encoders = nn.ModuleList(
            SelfAttention(c.d_model, c.heads, c.layers, c.dropout) for _ in self.streams
        )
        self.label_embeddings = nn.ModuleList(nn.Embedding(q, c.d_model) for _ in self.streams)
        self.attend = nn.ModuleList(LabelAttention(c.d_model, q, c.d_model, e) for e in self.label_embeddings)
        self.projector = nn.Sequential(
            nn.Linear(c.d_model, c.d_model), nn.ReLU(), nn.Linear(c.d_model, c.projection)
        )
        self.to_shared = nn.ModuleList(nn.Linear(c.d_model, c.latent) for _ in self.streams)
        self.from_shared = nn.ModuleList(
            nn.Sequential(nn.Linear(c.latent, c.d_model), nn.ReLU(), nn.Linear(c.d_model, c.d_model))
            for _ in self.streams
        )
        self.classifier = LabelwiseClassifier(m * c.d_model + c.latent, c.d_model, q, c.dropout)
        self.queue = ContrastQueue(c.queue_size, c.projection)

    def forward(self, batch: Batch) -> FusionOutput:
        feats = self.features(batch)
        h = []
        for k, s in enumerate(self.streams):
            mask = batch.masks[s]
            o = self.encoders[k](self.proj[k](feats[s]), mask)
            h.append(self.attend[k](o, mask)[0])  # [B, q, d]
        hs = torch.stack(h, 1)  # [B, M, q, d]
        present = torch.stack([batch.present[s] for s in self.streams], 1)  # [B, M]
        w = present.to(hs.dtype).view(*present.shape, 1, 1)
        codes = torch.stack([f(h[k]) for k, f in enumerate(self.to_shared)], 1)  # [B, M, q, latent]
        shared = (codes * w).sum(1) / w.sum(1).clamp_min(1.0)  # [B, q, latent]
        recon = torch.stack([g(shared) for g in self.from_shared], 1)  # [B, M, q, d]
        filled = torch.where(w > 0, hs, recon)
        logits = self.classifier(self._fuse(filled, shared))
        return FusionOutput(
            logits=logits, extra={"h": hs, "recon": recon, "shared": shared, "filled": filled}
        )

    @staticmethod
    def _fuse(filled: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        b, m, q, d = filled.shape
        return torch.cat([filled.permute(0, 2, 1, 3).reshape(b, q, m * d), shared], -1)

    def loss(self, out: FusionOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        c = self.config
        terms = {"task": objective(out.logits, batch, None)}
        present = torch.stack([batch.present[s] for s in self.streams], 1)
        hs = out.extra["h"]
        if c.scl_weight:
            b_idx, m_idx, j_idx = positive_entries(batch.targets, batch.target_mask, present, self.q)
            z = nn.functional.normalize(self.projector(hs[b_idx, m_idx, j_idx]).float(), dim=-1)
            cats = m_idx * self.q + j_idx
            terms["scl"] = c.scl_weight * supcon(
                z, cats, self.queue.feats, self.queue.cats, c.temperature, "mean"
            )
            if self.training:
                self.queue.push(z, cats)
        if c.rec_weight and present.any():
            err = ((out.extra["recon"].float() - hs.detach().float()) ** 2).mean((-1, -2))  # [B, M]
            terms["rec"] = c.rec_weight * err[present].mean()
        if c.aug_weight and self.training:
            shuffled = self.shuffle(out.extra["filled"], batch)
            terms["aug"] = c.aug_weight * objective(
                self.classifier(self._fuse(shuffled, out.extra["shared"])), batch, None
            )
        return terms

    def shuffle(self, filled: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Each modality's label-j features permuted among samples with the same value of
        label j (positives among positives, negatives among negatives)."""
        y = multihot(batch.targets, self.q)  # [B, q]
        out = filled.clone()
        m, q = filled.shape[1:3]
        for j in range(q):
            for value in (True, False):
                rows = (y[:, j] == value).nonzero(as_tuple=True)[0]
                if len(rows) < 2:
                    continue
                for k in range(m):
                    perm = rows[torch.randperm(len(rows), device=rows.device)]
                    out[rows, k, j] = filled[perm, k, j]
        return out

    def training_state(self) -> dict[str, torch.Tensor]:
        return self.queue.state("queue_")

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.queue.load(state, "queue_")


METHODS.register(
    MethodCard(
        "carat",
        Carat,
        tasks=("multilabel",),
        min_streams=1,
        summary="label-wise attention, SupCon on label-specific features, reconstruction-based fusion,"
        " shuffle-based aggregation",
        paper="CARAT (Peng et al., 2024), LDDU's baseline",
    )
)
