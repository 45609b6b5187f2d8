"""EmoFAN (Toisoul et al., Nature Machine Intelligence 2021): COLD's visual front end.

A face-alignment network (FAN: a stem and 2 stacked hourglasses predicting 68 landmark
heatmaps, frozen) whose features, gated by the summed heatmap, feed an emotion head:
``conv1x1_input_emo_2`` (768→256) → ``emo_net_2`` (4 × [ConvBlock, max-pool]) → 4×4
average pool → **256-D** (the stored features) → ``emo_fc_2`` → 8 (or 5) expression
logits, valence and arousal (stored as per-frame fields ``expression``, ``valence``,
``arousal``). Parameter names equal EmoNet's, so ``emonet_8.pth`` / ``emonet_5.pth``
load with ``strict=True``. Input: 256×256 RGB in [0, 1], no mean/std.

EmoNet's module replaces ``nn.InstanceNorm2d`` with ``nn.BatchNorm2d`` for the whole
process when imported (its normalisation layers are therefore batch norms); here the
layers are simply ``nn.BatchNorm2d`` and nothing global is touched.
Expression order of the 8-class head: neutral, happy, sad, surprise, fear, disgust,
anger, contempt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import ImagePreprocess, Runtime, VisualBackbone, seeded
from avx.extract.weights import load_into, load_state_dict, resolve_weights, sha256_file

EXPRESSIONS_8 = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
EXPRESSIONS_5 = ("neutral", "happy", "sad", "surprise", "fear")


class ConvBlock(nn.Module):
    """FAN's hierarchical residual block: three 3×3 convs whose outputs (½, ¼, ¼ of the
    channels) are concatenated, plus a (projected) skip connection."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout // 2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout // 2)
        self.conv2 = nn.Conv2d(cout // 2, cout // 4, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout // 4)
        self.conv3 = nn.Conv2d(cout // 4, cout // 4, 3, 1, 1, bias=False)
        self.downsample = (
            nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, cout, 1, 1, bias=False))
            if cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.conv1(F.relu(self.bn1(x)))
        o2 = self.conv2(F.relu(self.bn2(o1)))
        o3 = self.conv3(F.relu(self.bn3(o2)))
        skip = self.downsample(x) if self.downsample is not None else x
        return torch.cat((o1, o2, o3), 1) + skip


class HourGlass(nn.Module):
    """Recursive hourglass of the given depth; blocks named ``b1_L``, ``b2_L``, ``b2_plus_1``, ``b3_L``."""

    def __init__(self, depth: int = 4, features: int = 256) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return up + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class EmoNetModel(nn.Module):
    """FAN (2 hourglasses) + attention-gated emotion head; returns a dict of outputs."""

    def __init__(self, n_expression: int = 8, n_hourglass: int = 2, n_blocks: int = 4) -> None:
        super().__init__()
        self.n_hourglass = n_hourglass
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2, self.conv3, self.conv4 = ConvBlock(64, 128), ConvBlock(128, 128), ConvBlock(128, 256)
        for i in range(n_hourglass):
            self.add_module(f"m{i}", HourGlass(4, 256))
            self.add_module(f"top_m_{i}", ConvBlock(256, 256))
            self.add_module(f"conv_last{i}", nn.Conv2d(256, 256, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(256))
            self.add_module(f"l{i}", nn.Conv2d(256, 68, 1))
            if i < n_hourglass - 1:
                self.add_module(f"bl{i}", nn.Conv2d(256, 256, 1))
                self.add_module(f"al{i}", nn.Conv2d(68, 256, 1))
        self.conv1x1_input_emo_2 = nn.Conv2d(256 * (n_hourglass + 1), 256, 1)
        blocks: list[nn.Module] = []
        for _ in range(n_blocks):
            blocks += [ConvBlock(256, 256), nn.MaxPool2d(2, 2)]
        self.emo_net_2 = nn.Sequential(*blocks)
        self.emo_fc_2 = nn.Sequential(
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Linear(128, n_expression + 2)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv4(self.conv3(F.max_pool2d(self.conv2(x), 2, stride=2)))
        prev, feats = x, []
        for i in range(self.n_hourglass):
            ll = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](prev))
            ll = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](ll)))
            heat = self._modules[f"l{i}"](ll)
            if i < self.n_hourglass - 1:
                ll = self._modules[f"bl{i}"](ll)
                prev = prev + ll + self._modules[f"al{i}"](heat)
            feats.append(ll)
        gated = torch.cat(feats, dim=1) * heat.sum(dim=1, keepdim=True)
        h = self.emo_net_2(self.conv1x1_input_emo_2(torch.cat((x, gated), dim=1)))
        h = F.avg_pool2d(h, 4).flatten(1)
        out = self.emo_fc_2(h)
        return {"features": h, "expression": out[:, :-2], "valence": out[:, -2], "arousal": out[:, -1]}


@dataclass(frozen=True)
class EmoFANConfig(ImagePreprocess):
    """256×256 RGB in [0, 1] (no mean/std), and the expression head's size (5 or 8).

    A checkpoint's head decides ``n_expression``; the field matters for random init.
    """

    size: int = 256
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    n_expression: int = 8


class EmoFAN(VisualBackbone):
    config_class = EmoFANConfig
    frame_shape = (256,)
    expects = "EmoNet checkpoint emonet_8.pth or emonet_5.pth (face-analysis/emonet)"

    def __init__(
        self,
        config: EmoFANConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "emofan",
    ) -> None:
        self.name = name
        self.preprocess = config
        self.runtime = runtime = runtime or Runtime.create()
        n_expression = config.n_expression
        unpickled = False
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        sha = None
        if src.kind == "file":
            state = load_state_dict(src.path, trust_pickle=runtime.trust_pickle)
            unpickled = state.unpickled
            if "emo_fc_2.3.weight" in state:
                n_expression = int(state["emo_fc_2.3.weight"].shape[0]) - 2
            with seeded():
                net = EmoNetModel(n_expression)
            load_into(net, state, src.path)
            sha = sha256_file(src.path)
        elif src.kind == "random-init":
            with seeded():
                net = EmoNetModel(n_expression)
        else:
            raise AvxError(f"emofan: weights '{src.spec}' not supported (an EmoNet .pth file or none)")
        if n_expression not in (5, 8):
            raise AvxError(f"emofan: {n_expression} expression classes; EmoNet heads have 5 or 8")
        self.n_expression = n_expression
        self.config = replace(config, n_expression=n_expression)
        self.fields = {
            "expression": {"shape": [n_expression], "dtype": "float32"},
            "valence": {"shape": [], "dtype": "float32"},
            "arousal": {"shape": [], "dtype": "float32"},
        }
        self.weights = src.provenance(sha, unpickled=unpickled)
        self.model = net.eval().to(runtime.device)

    def provenance(self) -> dict[str, Any]:
        names = EXPRESSIONS_8 if self.n_expression == 8 else EXPRESSIONS_5
        return {
            "backbone": self.name,
            "architecture": "EmoNet: FAN (2 hourglasses) + emotion head; features = 256-D pooled emo_net_2",
            "expression_names": list(names),
            **self.weights,
            **self.runtime_provenance(),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)


BACKBONES.register(
    BackboneCard(
        "emofan",
        EmoFAN,
        EmoFANConfig(),
        shape="[T, 256] + expression [T, 8], valence, arousal",
        rate="face frames (256×256 input)",
        paper="EmoNet (Toisoul et al., 2021); COLD's visual front end",
        licence="CC BY-NC-ND 4.0 (EmoNet weights)",
    )
)
