"""The surface every fusion method shares, so one trainer serves them all.

A method is one file with a frozen ``<Name>Config`` dataclass and an ``nn.Module``
subclass of :class:`FusionMethod`, registered with ``@METHODS.register(name)``. It
receives a :class:`~avx.fuse.data.Batch` and returns a :class:`FusionOutput`; the
trainer never branches on the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from avx.registry import Registry


@dataclass
class FusionOutput:
    """What a method returns for a batch.

    Attributes:
        logits: fused class scores ``[B, C]`` (log-probabilities are fine).
        modality_logits: per-stream scores ``[B, C]``, for unimodal evaluation.
        fusion_weights: per-sample modality weights ``[B, M]`` when the method has them.
        aux_losses: named extra loss terms, already weighted, added to the task loss.
    """

    logits: torch.Tensor
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    fusion_weights: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class FusionMethod(nn.Module):
    """Base class: ``__init__(config, input_dims, num_classes)`` and ``forward(batch)``."""

    config_class: ClassVar[type]

    def __init__(self, config: Any, input_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.config, self.input_dims, self.num_classes = config, dict(input_dims), num_classes

    def task_loss(self, out: FusionOutput, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the fused logits; methods with other objectives override it."""
        return nn.functional.cross_entropy(out.logits, targets)


METHODS: Registry[type[FusionMethod]] = Registry("fusion method", "avx.fuse.methods")


def create_method(name: str, input_dims: dict[str, int], num_classes: int, **overrides: Any) -> FusionMethod:
    """Build method ``name`` with its default config updated by ``overrides``."""
    cls = METHODS.get(name)
    config = cls.config_class(**overrides)
    return cls(config, input_dims, num_classes)
