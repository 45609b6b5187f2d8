"""``faces``: the aligned face-crop stream on its own, without any visual backbone.

Extracting ``faces`` first (on the machines that decode video) lets visual backbones be
added or swapped later, and end-to-end training read crops, without re-detecting. The
crop settings are the face pipeline's (``--crop-size``, ``--margin``, ...); the stream
is ``faces`` rather than ``video/faces``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import Backbone, Runtime


@dataclass(frozen=True)
class FacesConfig:
    """No settings of its own: the crop is the face pipeline's (``--crop-size``, ``--margin``, ...)."""


class FacesOnly(Backbone):
    config_class = FacesConfig
    modality = "video"
    name = "faces"
    frame_shape = ()
    expects = "MTCNN weights ship with facenet-pytorch"

    @property
    def stream_name(self) -> str:
        return "faces"

    def __init__(
        self,
        config: FacesConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "faces",
    ) -> None:
        self.config = config

    @classmethod
    def configure(cls, config: Any, options: Mapping[str, Any], *, where: str) -> Any:
        if options:
            raise AvxError(
                f"faces: unknown option(s) {sorted(options)} (set the crop with --crop-size, --margin, ...)"
            )
        return config

    def provenance(self) -> dict[str, Any]:
        return {"backbone": "faces"}


BACKBONES.register(
    BackboneCard(
        "faces",
        FacesOnly,
        FacesConfig(),
        shape="faces [T, S, S, 3] uint8",
        rate="sampled frames",
        paper="MTCNN (facenet-pytorch)",
        licence="MIT (facenet-pytorch)",
    )
)
