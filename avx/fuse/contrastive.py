"""Supervised contrastive learning over label-specific features, with a FIFO queue.

LDDU (paper 004, Eqs. 4-7) and CARAT contrast *label-specific, modality-specific*
features: every (sample, modality, label) triple whose sample carries the label is one
entry of category ``modality * q + label``; entries of one category are positives of
each other, all other entries are negatives (SupCon, Khosla et al. 2020). A queue of
the most recent entries (LDDU: 8,192) widens each anchor's contrast set beyond the
batch; it lives on the model's device, holds detached features only and wraps around.

:func:`supcon` is the loss on explicit tensors (tests compare it with a hand
computation); :class:`ContrastQueue` is the queue.
"""

from __future__ import annotations

import torch
from torch import nn


def supcon(
    feats: torch.Tensor,
    cats: torch.Tensor,
    bank: torch.Tensor | None = None,
    bank_cats: torch.Tensor | None = None,
    temperature: float = 0.07,
    reduction: str = "sum",
) -> torch.Tensor:
    """SupCon loss of anchors ``feats [n, f]`` (categories ``cats [n]``) against the
    other anchors and the bank ``[m, f]`` (queue; categories ``bank_cats``, -1 = empty).

    For anchor e: ``-1/|P_e| sum_{p in P_e} log(exp(z(e,p)/t) / sum_{a in T_e} exp(z(e,a)/t))``
    with ``z`` the dot product of the features as given (LDDU Eq. 6), ``T_e`` every
    other anchor and every filled bank entry, ``P_e`` those of e's category. Anchors
    without a positive are left out (their term is undefined). ``reduction``: ``sum``
    over anchors (LDDU Eq. 7) or ``mean``.
    """
    if bank is not None and bank_cats is not None:
        keep = bank_cats >= 0
        others, other_cats = (
            torch.cat([feats, bank[keep].to(feats.dtype)]),
            torch.cat([cats, bank_cats[keep]]),
        )
    else:
        others, other_cats = feats, cats
    n = len(feats)
    if n == 0:
        return feats.sum() * 0.0
    logits = feats.float() @ others.float().T / temperature  # [n, n + m]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[:, :n] = torch.eye(n, dtype=torch.bool, device=feats.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (cats.view(-1, 1) == other_cats.view(1, -1)) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return feats.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has])
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


class ContrastQueue(nn.Module):
    """The most recent ``size`` contrast entries (features and categories), on the
    model's device, never part of the autograd graph nor of the saved model (its
    buffers are not persistent; a resumable run keeps it through
    :meth:`~avx.fuse.methods.base.FusionMethod.training_state`)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("feats", torch.zeros(size, dim), persistent=False)
        self.register_buffer("cats", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def push(self, feats: torch.Tensor, cats: torch.Tensor) -> None:
        """Append entries, overwriting the oldest; more than ``size`` keeps the last ones."""
        if self.size == 0 or len(feats) == 0:
            return
        feats, cats = feats.detach()[-self.size :], cats.detach()[-self.size :]
        at = (self.ptr + torch.arange(len(feats), device=self.feats.device)) % self.size
        self.feats[at] = feats.to(self.feats.dtype)
        self.cats[at] = cats.to(self.cats.device)
        self.ptr.fill_(int((self.ptr + len(feats)) % self.size))

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}feats": self.feats.clone(),
            f"{prefix}cats": self.cats.clone(),
            f"{prefix}ptr": self.ptr.clone(),
        }

    def load(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        if f"{prefix}feats" in state:
            self.feats.copy_(state[f"{prefix}feats"])
            self.cats.copy_(state[f"{prefix}cats"])
            self.ptr.copy_(state[f"{prefix}ptr"])


def positive_entries(
    targets: torch.Tensor, labelled: torch.Tensor, present: torch.Tensor, n_labels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which (sample, modality, label) triples enter the contrast: the sample is
    labelled, carries the label and has the modality. ``targets [B, q]`` multi-hot (or
    shares, positive above 1/q), ``present [B, M]``. Returns the indices ``(b, m, j)``."""
    pos = multihot(targets, n_labels) & labelled.view(-1, 1)  # [B, q]
    sel = pos.unsqueeze(1) & present.unsqueeze(2)  # [B, M, q]
    return sel.nonzero(as_tuple=True)


def multihot(targets: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Boolean multi-hot rows, by the rule metrics use (:func:`avx.fuse.tasks.eval_multihot`):
    0/1 targets as they are, distributions as share > 1/q."""
    t = targets.float()
    if bool(((t == 0) | (t == 1)).all()):
        return t > 0.5
    return t > 1.0 / n_labels
