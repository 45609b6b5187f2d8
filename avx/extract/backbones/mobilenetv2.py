"""MobileNetV2 (torchvision architecture): 1280-D per face crop after global pooling.

The two-stage paper's visual front end (an AffectNet-finetuned MobileNetV2). Weights:
``imagenet`` (torchvision's IMAGENET1K_V2, downloaded on first use), a local
checkpoint in torchvision's key layout (``{'state_dict': ...}`` and a ``module.``
prefix are accepted; the classifier is ignored, so AffectNet-finetuned heads of any
size load), or ``none`` for random init.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import ImagePreprocess, Runtime, VisualBackbone, seeded
from avx.extract.weights import load_into, load_state_dict, resolve_weights, sha256_file, unavailable


@dataclass(frozen=True)
class MobileNetV2Config(ImagePreprocess):
    """Input preprocessing: 224×224, ImageNet mean/std (torchvision's training recipe)."""


class MobileNetV2(VisualBackbone):
    config_class = MobileNetV2Config
    frame_shape = (1280,)
    expects = "imagenet (torchvision) or an AffectNet-finetuned torchvision mobilenet_v2 checkpoint"

    def __init__(
        self,
        config: MobileNetV2Config,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "mobilenetv2",
    ) -> None:
        from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

        self.name, self.config = name, config
        self.preprocess = config
        self.runtime = runtime = runtime or Runtime.create()
        unpickled = False
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        with seeded():
            model = mobilenet_v2(weights=None)
        sha = None
        if src.kind == "named":
            if src.spec != "imagenet":
                raise AvxError(f"mobilenetv2: unknown weights '{src.spec}' (use imagenet, a file or none)")
            tv = MobileNet_V2_Weights.IMAGENET1K_V2
            try:
                state = tv.get_state_dict(progress=False)
            except Exception as e:  # offline and not in the torch hub cache
                raise unavailable("imagenet", self.name, "torchvision's IMAGENET1K_V2 weights", e) from None
            model.load_state_dict(state)
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(tv.url).name
            sha = sha256_file(cached) if cached.exists() else None
        elif src.kind == "file":
            state = load_state_dict(src.path, trust_pickle=runtime.trust_pickle)
            unpickled = state.unpickled
            load_into(model, state, src.path, ignore=("classifier.",))
            sha = sha256_file(src.path)
        elif src.kind != "random-init":
            raise AvxError(f"mobilenetv2: weights '{src.spec}' not supported (use imagenet, a file or none)")
        self.weights = src.provenance(sha, unpickled=unpickled)
        self.model = model.features.eval().to(runtime.device)

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": "torchvision mobilenet_v2 features + global average pooling",
            **self.weights,
            **self.runtime_provenance(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(dim=(2, 3))

    def export_state(self) -> dict[str, torch.Tensor]:
        """torchvision's layout (``features.*``): ``self.model`` is its ``features``."""
        return {f"features.{k}": v for k, v in self.model.state_dict().items()}


BACKBONES.register(
    BackboneCard(
        "mobilenetv2",
        MobileNetV2,
        MobileNetV2Config(),
        default_weights="imagenet",
        shape="[T, 1280]",
        rate="face frames",
        paper="MobileNetV2 (torchvision); the two-stage paper's visual front end",
        licence="BSD-3 (torchvision)",
    )
)
