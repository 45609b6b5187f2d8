"""What every backbone exposes, so the extraction loop never branches on its name.

A backbone is built by a registered factory ``create(tag, weights, device)`` and
returns features per frame: audio backbones take a mono waveform at their
``sample_rate``; visual backbones take aligned face crops ``[T, S, S, 3]`` uint8 from
the ``faces`` stream. ``provenance()`` returns every parameter that determines the
features; a stream can only be resumed with identical provenance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Backbone(ABC):
    """Common surface of audio and visual backbones."""

    modality: ClassVar[str]
    name: str
    """Registry name with tag (``mfcc``, ``mfcc.sfav``): the stream is ``<modality>/<name>``."""
    frame_shape: tuple[int, ...]
    default_dtype: str = "float16"
    frame_rate: float | None = None
    layer_axis: int | None = None

    @property
    def stream_name(self) -> str:
        return f"{self.modality}/{self.name}"

    @abstractmethod
    def provenance(self) -> dict[str, Any]: ...


class AudioBackbone(Backbone):
    modality = "audio"
    sample_rate: int

    @abstractmethod
    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(features [T, ...], timestamps [T] in seconds)`` for one clip."""


class VisualBackbone(Backbone):
    modality = "video"
    crop_size: int = 224

    @abstractmethod
    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """Features ``[T, ...]`` for one clip's aligned face crops ``[T, S, S, 3]`` uint8."""
