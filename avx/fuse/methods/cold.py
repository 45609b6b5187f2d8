"""``cold``: Calibrated and Ordinal Latent Distributions for uncertainty-aware fusion.

Paper 000 (TPAMI), no official code: this file is the reference implementation. Per
stream, a temporal context network (2-layer bidirectional GRU, 256 hidden, dropout 0.5)
ends in an output layer that predicts, per frame ``i``, the mean ``mu_i`` and the
log-variance of a diagonal normal over the temporal context vector. Training samples
``h_i ~ N(mu_i, sigma_i)`` by reparameterisation; evaluation uses ``h_i = mu_i``.

Fusion (Eqs. 1-2) weights each present modality ``m`` at frame ``i`` by the L2 norm of
its standard-deviation vector, ``w_m = ||sigma_m|| / sum_k ||sigma_k||``, and feeds
``h_AV = sum_m w_m h_m`` to the output layer that every branch shares.

**Convention (the paper's, kept on purpose).** ``||sigma||`` is *informativeness*, not
uncertainty: the calibration/ordinality loss matches ``S = 1/||sigma||`` to the
prediction error, so a frame expected to be badly predicted gets a small ``||sigma||``
and hence a small weight. ``FusionOutput.uncertainty`` therefore reports
``1/||sigma||`` per frame (the quantity calibrated to the error); the weights are the
paper's ``w``.

Loss (Eq. 8)::

    L = L_emo + lambda_COm * sum_m L_CO(m) + lambda_COAV * L_CO(cross) + lambda_R * L_regu

- ``L_emo``: the task objective (class-weighted cross-entropy, ``(1 - CCC) + MSE`` with
  ``--regression-loss ccc+mse``) on the fused prediction plus ``unimodal_weight`` x the
  sum over streams of the same objective on each stream's prediction (the shared output
  layer applied to that stream's context alone).
- Distance vectors ``D_m = [d_1 .. d_N]``: per-frame cross-entropy (classification;
  binary cross-entropy summed over labels for multi-label) or squared error averaged
  over outputs (regression) between the stream's per-frame prediction and the target
  (the sequence target for every frame when targets are per sequence).
- Variance-norm vectors ``S_m = [1/||sigma_1|| .. 1/||sigma_N||]`` (Eq. 5).
- ``L_CO = KL(P_D || P_S) + KL(P_S || P_D)``, ``P = softmax`` over the vector (Eq. 6):
  intramodal over each stream's N frames, crossmodal over the interleaved
  concatenation of all streams (M x N entries; only for samples with two or more
  streams present). Padding and unlabelled frames are left out of every softmax.
- ``L_regu = KL(N(mu, sigma) || N(0, I)) = -1/2 sum_d (1 + log sigma^2 - mu^2 - sigma^2)``
  (Eq. 7), summed over latent dimensions, averaged over real frames, summed over streams.

Choices the paper leaves open, made explicit: ``D`` is a target for the variances, so
no gradient flows from ``L_CO`` into the predictions (``detach_distance``); the output
layer is linear, so pooling the fused context over frames (per-sequence targets) equals
averaging per-frame scores.

Ablations (paper Table 8): ``ablation=no-intra`` (lambda_COV = lambda_COA = 0),
``no-cross`` (lambda_COAV = 0), ``no-regu`` (lambda_R = 0), ``no-constraints`` (all
zero). Defaults are the paper's: lambda_CO* = 1e-3, lambda_R = 1e-4; its optimisation
settings (Adam, batch 4, lr 5e-3, weight decay 1e-4, SGDR T_0 = 1, T_mult = 2) are the
``cold-paper`` preset (``avx fuse train --preset cold-paper``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import TemporalGRU
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    Objective,
    TaskSpec,
    masked_mean,
)

ABLATIONS = ("none", "no-intra", "no-cross", "no-regu", "no-constraints")
_FILL = -1e9  # stands for -inf in a masked softmax without inf - inf = nan


@dataclass(frozen=True)
class ColdConfig:
    """COLD's options; ``lambda_intra`` is one value for every stream or a mapping from
    a modality (``audio``) or stream name to its own lambda_CO."""

    hidden: int = 256
    layers: int = 2
    dropout: float = 0.5
    latent: int = 0  # 0: the GRU output size (the context vector itself, as in the paper)
    lambda_intra: float | dict[str, float] = 1e-3
    lambda_cross: float = 1e-3
    lambda_regu: float = 1e-4
    ablation: str = "none"
    unimodal_weight: float = 1.0
    sample: bool = True
    detach_distance: bool = True


@dataclass
class ColdOutput(FusionOutput):
    """:class:`FusionOutput` plus what COLD's loss needs, per frame ``[B, T, M, ...]``."""

    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    available: torch.Tensor | None = None  # [B, T, M] bool: real frame of a present stream
    frame_logits: torch.Tensor | None = None  # [B, T, M, K] per-stream per-frame scores


def sigma_norm(logvar: torch.Tensor) -> torch.Tensor:
    """``||sigma||_2`` over the last axis, from log-variances."""
    return torch.exp(0.5 * logvar).norm(dim=-1).clamp_min(1e-6)


def fusion_weights(norms: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Eq. 2 over the present modalities: ``w_m = ||sigma_m|| / sum_k ||sigma_k||``
    (``norms``, ``available``: ``[..., M]``); zero for an absent modality."""
    n = norms * available.to(norms.dtype)
    return n / n.sum(-1, keepdim=True).clamp_min(1e-12)


def symmetric_softmax_kl(d: torch.Tensor, s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 6, ``KL(P_D || P_S) + KL(P_S || P_D)`` per row of ``[B, N]`` vectors, the
    softmax taken over the ``valid`` entries of each row only."""
    log_pd = torch.log_softmax(d.masked_fill(~valid, _FILL), -1)
    log_ps = torch.log_softmax(s.masked_fill(~valid, _FILL), -1)
    diff = (log_pd - log_ps).masked_fill(~valid, 0.0)
    return ((log_pd.exp() - log_ps.exp()) * diff).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 7, ``KL(N(mu, sigma) || N(0, I))`` summed over the last axis."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


class Cold(FusionMethod):
    config_class = ColdConfig

    def __init__(self, config: ColdConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        if config.ablation not in ABLATIONS:
            raise AvxError(f"cold: unknown ablation '{config.ablation}'; valid: {', '.join(ABLATIONS)}")
        self.encoders = nn.ModuleList(
            TemporalGRU(i.dim, config.hidden, config.layers, config.dropout) for i in inputs.values()
        )
        size = self.encoders[0].out_size
        z = config.latent or size
        self.mean = nn.ModuleList(nn.Linear(size, z) for _ in self.streams)
        self.log_var = nn.ModuleList(nn.Linear(size, z) for _ in self.streams)
        self.head = nn.Linear(z, task.n_outputs)  # shared by the fused and unimodal branches
        self.lambdas = self._lambdas(config)

    def _lambdas(self, c: ColdConfig) -> dict[str, Any]:
        intra = c.lambda_intra
        if isinstance(intra, dict):
            bad = set(intra) - set(self.streams) - {s.split("/")[0] for s in self.streams}
            if bad:
                raise AvxError(f"cold: lambda_intra names no selected stream or modality: {sorted(bad)}")
            per = [float(intra.get(s, intra.get(s.split("/")[0], 0.0))) for s in self.streams]
        else:
            per = [float(intra)] * len(self.streams)
        cross, regu = float(c.lambda_cross), float(c.lambda_regu)
        if c.ablation in ("no-intra", "no-constraints"):
            per = [0.0] * len(per)
        if c.ablation in ("no-cross", "no-constraints"):
            cross = 0.0
        if c.ablation in ("no-regu", "no-constraints"):
            regu = 0.0
        return {"intra": per, "cross": cross, "regu": regu}

    def forward(self, batch: Batch) -> ColdOutput:
        feats = self.features(batch)
        t = max(x.shape[1] for x in feats.values())
        mus, logvars, avail = [], [], []
        for k, s in enumerate(self.streams):
            h = self.encoders[k](feats[s], batch.masks[s])
            h = nn.functional.pad(h, (0, 0, 0, t - h.shape[1]))
            mus.append(self.mean[k](h))
            logvars.append(self.log_var[k](h))
            m = nn.functional.pad(batch.masks[s], (0, t - batch.masks[s].shape[1]))
            avail.append(m & batch.present[s].unsqueeze(1))
        mu, logvar, available = torch.stack(mus, 2), torch.stack(logvars, 2), torch.stack(avail, 2)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std) if (self.training and self.config.sample) else mu
        norms = sigma_norm(logvar)  # [B, T, M]
        w = fusion_weights(norms, available)
        fused = (w.unsqueeze(-1) * z).sum(2)  # Eq. 1
        frame_logits = self.head(z)  # [B, T, M, K]
        if self.task.frame_level:
            logits = self.head(fused)
            per = {s: frame_logits[:, :, k] for k, s in enumerate(self.streams)}
        else:
            logits = self.head(masked_mean(fused, available.any(-1)))
            per = {
                s: self.head(masked_mean(z[:, :, k], available[..., k])) for k, s in enumerate(self.streams)
            }
        return ColdOutput(
            logits=logits,
            modality_logits=per,
            fusion_weights=w,
            uncertainty={
                s: torch.where(available[..., k], 1.0 / norms[..., k], torch.zeros_like(norms[..., k]))
                for k, s in enumerate(self.streams)
            },
            mu=mu,
            logvar=logvar,
            available=available,
            frame_logits=frame_logits,
        )

    # -- the COLD objective ----------------------------------------------------------------
    def distances(self, out: ColdOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``D [B, T, M]`` per-frame distances of each stream's prediction to the target,
        and where they are defined (``[B, T, M]`` bool)."""
        lg = out.frame_logits.float()
        b, t, m, k = lg.shape
        y, tm = batch.targets, batch.target_mask
        if tm.dim() == 1:  # one target per sequence: every frame is scored against it
            y = y.unsqueeze(1).expand(b, t, *y.shape[1:])
            tm = tm.unsqueeze(1).expand(b, t)
        else:
            n = min(t, tm.shape[1])
            pad = t - n
            y = nn.functional.pad(y[:, :n], (0, 0) * (y.dim() - 2) + (0, pad))
            tm = nn.functional.pad(tm[:, :n], (0, pad))
        y = y.unsqueeze(2).expand(b, t, m, *y.shape[2:])
        kind = self.task.kind
        if kind == "multiclass":
            d = nn.functional.cross_entropy(
                lg.reshape(-1, k), y.reshape(-1).clamp_min(0), reduction="none"
            ).view(b, t, m)
        elif kind == "multilabel":
            d = nn.functional.binary_cross_entropy_with_logits(lg, y.float(), reduction="none").sum(-1)
        else:
            d = (lg - y.float()).pow(2).mean(-1)
        valid = out.available & tm.unsqueeze(-1)
        return (d.detach() if self.config.detach_distance else d), valid

    def co_losses(self, out: ColdOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Intramodal ``L_CO`` per stream ``[M]`` and the crossmodal ``L_CO`` (scalars,
        averaged over the sequences where they are defined)."""
        d, valid = self.distances(out, batch)
        s = 1.0 / sigma_norm(out.logvar.float())  # [B, T, M]
        intra = []
        for k in range(d.shape[2]):
            rows = valid[:, :, k].any(1)
            kl = symmetric_softmax_kl(d[:, :, k], s[:, :, k], valid[:, :, k])
            intra.append(kl[rows].mean() if rows.any() else kl.sum() * 0.0)
        b = d.shape[0]
        # Interleaved [d_1^1, d_1^2, .., d_N^M] (Sec. 4.2.1); the order does not change the KL.
        rows = valid.any(1).sum(-1) >= 2
        kl = symmetric_softmax_kl(d.reshape(b, -1), s.reshape(b, -1), valid.reshape(b, -1))
        cross = kl[rows].mean() if rows.any() else kl.sum() * 0.0
        return {"intra": torch.stack(intra), "cross": cross}

    def regulariser(self, out: ColdOutput) -> torch.Tensor:
        """``L_regu`` summed over streams, each averaged over its real frames."""
        kl = gaussian_kl(out.mu.float(), out.logvar.float())  # [B, T, M]
        a = out.available.to(kl.dtype)
        return ((kl * a).sum((0, 1)) / a.sum((0, 1)).clamp_min(1.0)).sum()

    def loss(self, out: ColdOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        terms = {"task": objective(out.logits, batch, None)}
        if self.config.unimodal_weight:
            uni = [
                objective(out.modality_logits[s], batch, batch.present[s])
                for s in self.streams
                if batch.present[s].any()
            ]
            terms["unimodal"] = self.config.unimodal_weight * torch.stack(uni).sum()
        lam = self.lambdas
        if any(lam["intra"]) or lam["cross"]:
            co = self.co_losses(out, batch)
            if any(lam["intra"]):
                terms["co_intra"] = (
                    co["intra"] * torch.tensor(lam["intra"], device=co["intra"].device)
                ).sum()
            if lam["cross"]:
                terms["co_cross"] = lam["cross"] * co["cross"]
        if lam["regu"]:
            terms["regu"] = lam["regu"] * self.regulariser(out)
        return terms


METHODS.register(
    MethodCard(
        "cold",
        Cold,
        tasks=ALL_TASKS,
        frame_level=True,
        needs_alignment=True,
        summary="per-frame Gaussian context per stream, weights ‖σ_m‖/Σ‖σ‖ per frame, L_CO + KL",
        paper="COLD (000, TPAMI)",
    )
)
