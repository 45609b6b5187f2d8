"""MobileNetV2 (torchvision architecture): 1280-D per face crop after global pooling.

The two-stage paper's visual front end (an AffectNet-finetuned MobileNetV2). Weights:
``imagenet`` (torchvision's IMAGENET1K_V2, downloaded on first use), a local
checkpoint in torchvision's key layout (``{'state_dict': ...}`` and a ``module.``
prefix are accepted; the classifier is ignored, so AffectNet-finetuned heads of any
size load), or ``none`` for random init.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, VisualBackbone
from avx.extract.weights import load_state_dict, resolve_weights, sha256_file


@dataclass(frozen=True)
class Preprocess:
    """Pixel normalisation, recorded in provenance."""

    color: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size: int = 224


class MobileNetV2(VisualBackbone):
    frame_shape = (1280,)

    def __init__(self, weights: str | None, device: str = "cpu", batch_size: int = 64) -> None:
        self.name = "mobilenetv2"
        self.pre = Preprocess()
        self.crop_size = self.pre.size
        self.device = torch.device(device)
        self.batch_size = batch_size
        src = resolve_weights(weights, default="imagenet", backbone=self.name)
        # Random init must be identical in every run (resume = bit-identical features).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = mobilenet_v2(weights=None)
        sha = None
        if src.kind == "named":
            if src.spec != "imagenet":
                raise AvxError(f"mobilenetv2: unknown weights '{src.spec}' (use imagenet, a file or none)")
            tv = MobileNet_V2_Weights.IMAGENET1K_V2
            state = tv.get_state_dict(progress=False)
            model.load_state_dict(state)
            sha = _torchvision_cache_sha(tv.url)
        elif src.kind == "file":
            state = {k: v for k, v in load_state_dict(src.path).items() if k.startswith("features.")}
            missing = model.load_state_dict(state, strict=False).missing_keys
            missing = [k for k in missing if k.startswith("features.")]
            if missing:
                raise AvxError(f"{src.path}: not a MobileNetV2 checkpoint (missing {missing[0]}, ...)")
            sha = sha256_file(src.path)
        elif src.kind != "random-init":
            raise AvxError(f"mobilenetv2: weights '{src.spec}' not supported (use imagenet, a file or none)")
        self.weights = src.provenance(sha)
        self.model = model.features.eval().to(self.device)
        mean = torch.tensor(self.pre.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std, device=self.device).view(1, 3, 1, 1)
        self._mean, self._std = mean, std

    def provenance(self) -> dict[str, Any]:
        pre = asdict(self.pre)
        pre["mean"], pre["std"] = list(self.pre.mean), list(self.pre.std)
        return {
            "backbone": self.name,
            "architecture": "torchvision mobilenet_v2 features + global average pooling",
            **self.weights,
            "preprocess": pre,
            "batching": "per clip",
        }

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray) -> np.ndarray:
        out = []
        for a in range(0, len(faces), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(faces[a : a + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() * self.pre.scale
            if x.shape[-1] != self.pre.size:
                x = torch.nn.functional.interpolate(x, size=self.pre.size, mode="bilinear", antialias=True)
            x = (x - self._mean) / self._std
            out.append(self.model(x).mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def _torchvision_cache_sha(url: str) -> str | None:
    from pathlib import Path

    p = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return sha256_file(p) if p.exists() else None


@BACKBONES.register("mobilenetv2")
def create(tag: str = "", weights: str | None = None, device: str = "cpu") -> MobileNetV2:
    return MobileNetV2(weights, device=device)
