"""Modality dropout for training (``avx fuse train --dropout``), for every method.

SFAV (paper 001, Sec. III-C) trains for missing or noisy modalities by changing the
batches, not the model:

- ``none``;
- ``softhard``: each batch is expanded with the pairs scaled by ``alpha`` and
  ``1 - alpha`` (``alpha`` uniform in [0, 1) per sample: the paper's "soft" dropout),
  and one copy per modality with that modality absent ("hard"); 4x the batch for
  audio-visual pairs, as the paper describes a batch ("pairs of full data, pairs without
  audio, pairs without video, and pairs multiplied with random coefficients");
- ``noise``: expanded with one copy per modality with that modality replaced by N(0, 1)
  (in the normalised feature space, the same noise ``avx fuse eval --noise`` uses);
- ``prob:P``: no expansion; each modality of each sample is absent with probability
  ``P`` (AuxFormer's form, for comparison), never all of a sample's modalities.

Modalities are stream groups (``audio/*``, ``video/*``, ``text/*``), so two audio
streams drop together. With more than two modalities the soft scales are a uniform
Dirichlet draw (for two, exactly ``alpha`` and ``1 - alpha``). An absent modality is
presented the way the method expects at evaluation (its ``missing`` policy: zeros, or
a presence mask), so training and ``avx fuse eval --missing`` agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from avx.errors import AvxError
from avx.fuse.data import Batch
from avx.fuse.evaluate import Perturbation, drop_streams

KINDS = ("none", "softhard", "noise", "prob")


@dataclass(frozen=True)
class ModalityDropout:
    """A parsed ``--dropout`` setting; ``policy`` is the method's ``missing``."""

    kind: str = "none"
    p: float = 0.0
    policy: str = "mask"

    @classmethod
    def parse(cls, spec: str, policy: str = "mask") -> ModalityDropout:
        kind, _, arg = (spec or "none").partition(":")
        if kind not in KINDS:
            raise AvxError(f"--dropout: unknown '{spec}'; valid: none, softhard, noise, prob:P")
        if kind == "prob":
            try:
                p = float(arg)
            except ValueError:
                raise AvxError(f"--dropout {spec}: give a probability, e.g. prob:0.5") from None
            if not 0 < p < 1:
                raise AvxError(f"--dropout {spec}: the probability must be in (0, 1)")
            return cls("prob", p, policy)
        if arg:
            raise AvxError(f"--dropout {kind} takes no argument (got '{spec}')")
        return cls(kind, 0.0, policy)

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.kind == "none":
            return batch
        groups = modality_groups(list(batch.inputs))
        if len(groups) < 2:
            raise AvxError(f"--dropout {self.kind} needs two or more modalities; the run has {list(groups)}")
        if self.kind == "prob":
            return self._prob(batch, groups, generator)
        copies = [batch]
        if self.kind == "softhard":
            copies.append(self._scaled(batch, groups, generator))
            copies += [drop_streams(batch, g, self.policy) for g in groups.values()]
        else:  # the same N(0, 1) on real frames as ``avx fuse eval --noise``
            copies += [Perturbation("noise", tuple(g)).apply(batch, generator) for g in groups.values()]
        return concat(copies)

    # -- the transforms ------------------------------------------------------------------
    def _scaled(self, batch: Batch, groups: dict[str, list[str]], gen: torch.Generator) -> Batch:
        n = len(batch)
        if len(groups) == 2:
            a = torch.rand(n, generator=gen)
            scale = torch.stack([a, 1 - a], 1)
        else:  # uniform Dirichlet: normalised exponentials
            e = -torch.log(torch.rand(n, len(groups), generator=gen).clamp_min(1e-12))
            scale = e / e.sum(1, keepdim=True)
        inputs = dict(batch.inputs)
        for k, streams in enumerate(groups.values()):
            for s in streams:
                x = inputs[s]
                inputs[s] = x * scale[:, k].to(x.device, x.dtype).view(-1, *[1] * (x.dim() - 1))
        return replace(batch, inputs=inputs)

    def _prob(self, batch: Batch, groups: dict[str, list[str]], gen: torch.Generator) -> Batch:
        n, g = len(batch), len(groups)
        drop = torch.rand(n, g, generator=gen) < self.p
        everything = drop.all(1)
        if everything.any():  # keep one modality, chosen uniformly, of a sample that lost all
            keep = torch.randint(0, g, (n,), generator=gen)
            drop[everything, keep[everything]] = False
        for k, streams in enumerate(groups.values()):
            batch = drop_streams(batch, streams, self.policy, drop[:, k])
        return batch


def modality_groups(streams: list[str]) -> dict[str, list[str]]:
    """Streams grouped by modality (the part before ``/``), in order of appearance."""
    out: dict[str, list[str]] = {}
    for s in streams:
        out.setdefault(s.split("/")[0], []).append(s)
    return out


def concat(batches: list[Batch]) -> Batch:
    """One batch holding ``batches`` one after another (same streams, same padding)."""
    first = batches[0]
    cat = lambda get: {k: torch.cat([get(b)[k] for b in batches]) for k in get(first)}  # noqa: E731
    return replace(
        first,
        ids=[i for b in batches for i in b.ids],
        index=np.concatenate([b.index for b in batches]),
        inputs=cat(lambda b: b.inputs),
        masks=cat(lambda b: b.masks),
        present=cat(lambda b: b.present),
        targets=torch.cat([b.targets for b in batches]),
        target_mask=torch.cat([b.target_mask for b in batches]),
        corrupted={},
    )
