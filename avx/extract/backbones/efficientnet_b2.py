"""EfficientNet-B2: VAVL's visual front end, 1408-D per frame after global pooling.

VAVL used HSEmotion's AffectNet model ``enet_b2_8`` (a timm ``efficientnet_b2`` whose
classifier was replaced by an 8-way linear layer) with the classifier removed, on
224×224 face crops with ImageNet normalisation. Accepted ``--weights``:

- an HSEmotion file (``enet_b2_8.pt``/``enet_b2_7.pt`` pickle the whole timm model; it
  is unpickled with a warning) or any timm ``efficientnet_b2`` state dict;
- a torchvision ``efficientnet_b2`` state dict (keys ``features.*``), mapped onto the
  torchvision architecture, which yields the same 1408-D pooled features;
- a timm or HF hub id (``timm/efficientnet_b2.ra_in1k``; needs network once);
- ``none`` (random init).

The classifier of any checkpoint is ignored, so heads of any size load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import ImagePreprocess, Runtime, VisualBackbone, seeded
from avx.extract.weights import (
    hub_snapshot,
    load_into,
    load_state_dict,
    resolve_weights,
    sha256_file,
    sha256_folder,
)


@dataclass(frozen=True)
class EfficientNetB2Config(ImagePreprocess):
    """Input preprocessing: 224×224 with ImageNet mean/std, as HSEmotion and VAVL used it."""


class EfficientNetB2(VisualBackbone):
    config_class = EfficientNetB2Config
    frame_shape = (1408,)
    expects = "HSEmotion enet_b2_8.pt, a timm/torchvision efficientnet_b2 state dict, or a timm hub id"

    def __init__(
        self,
        config: EfficientNetB2Config,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "efficientnet-b2",
    ) -> None:
        import timm  # heavy imports stay out of `avx list backbones`
        from torchvision.models import efficientnet_b2

        self.name, self.config = name, config
        self.preprocess = config
        self.runtime = runtime = runtime or Runtime.create()
        unpickled = False
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        sha: Any = None
        self.layout = "timm"
        if src.kind == "file":
            state = load_state_dict(src.path, trust_pickle=runtime.trust_pickle)
            unpickled = state.unpickled
            if any(k.startswith("features.") for k in state):
                self.layout = "torchvision"
                with seeded():
                    tv = efficientnet_b2()
                load_into(tv, state, src.path, ignore=("classifier.",))
                net: torch.nn.Module = torch.nn.Sequential(tv.features, torch.nn.AdaptiveAvgPool2d(1))
            else:
                with seeded():
                    net = timm.create_model("efficientnet_b2", pretrained=False, num_classes=0)
                load_into(net, state, src.path, ignore=("classifier.",))
            sha = sha256_file(src.path)
        elif src.kind == "hub":
            hub = src.spec.removeprefix("hf-hub:").removeprefix("hf_hub:")
            try:
                net = timm.create_model(f"hf-hub:{hub}", pretrained=True, num_classes=0)
            except Exception as e:
                raise AvxError(
                    f"efficientnet-b2: cannot load hub weights '{hub}' ({type(e).__name__})"
                ) from None
            folder = hub_snapshot(hub)
            sha = sha256_folder(folder) if folder else None
        elif src.kind == "random-init":
            with seeded():
                net = timm.create_model("efficientnet_b2", pretrained=False, num_classes=0)
        else:
            raise AvxError(f"efficientnet-b2: weights '{src.spec}' not supported ({self.expects} or none)")
        self.weights = src.provenance(sha, unpickled=unpickled)
        self.model = net.eval().to(runtime.device)

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": f"{self.layout} efficientnet_b2, global average pooled (classifier removed)",
            **self.weights,
            **self.runtime_provenance(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)

    def export_state(self) -> dict[str, torch.Tensor]:
        """timm's keys, or torchvision's (``features.*``) for a model loaded from them."""
        state = self.model.state_dict()
        if self.layout == "torchvision":  # Sequential(features, pool): "0.*" are the features
            return {f"features.{k.removeprefix('0.')}": v for k, v in state.items()}
        return state


BACKBONES.register(
    BackboneCard(
        "efficientnet-b2",
        EfficientNetB2,
        EfficientNetB2Config(),
        shape="[T, 1408]",
        rate="face frames",
        paper="HSEmotion enet_b2_8 (Savchenko); VAVL's visual front end",
        licence="Apache-2.0 (HSEmotion)",
    )
)
