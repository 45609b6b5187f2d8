"""``faces``: the aligned face-crop stream on its own, without any visual backbone.

Extracting ``faces`` first (on the machines that decode video) lets visual backbones be
added or swapped later, and end-to-end training read crops, without re-detecting. The
crop settings are the face pipeline's (``--crop-size``, ``--margin``, ...); the stream
is ``faces`` rather than ``video/faces``.
"""

from __future__ import annotations

from typing import Any

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import Backbone, Runtime


class FacesOnly(Backbone):
    modality = "video"
    name = "faces"
    frame_shape = ()
    expects = "MTCNN weights ship with facenet-pytorch"

    @property
    def stream_name(self) -> str:
        return "faces"

    def provenance(self) -> dict[str, Any]:
        return {"backbone": "faces"}


def create(
    tag: str = "", weights: str | None = None, runtime: Runtime | None = None, **opts: Any
) -> FacesOnly:
    if opts:
        raise AvxError(
            f"faces: unknown option(s) {sorted(opts)} (set the crop with --crop-size, --margin, ...)"
        )
    return FacesOnly()


BACKBONES.register(
    BackboneCard(
        "faces",
        create,
        cls=FacesOnly,
        shape="faces [T, S, S, 3] uint8",
        rate="sampled frames",
        paper="MTCNN (facenet-pytorch)",
        licence="MIT (facenet-pytorch)",
    )
)
