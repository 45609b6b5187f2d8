"""EfficientFace (Zhao et al., AAAI 2021): SFAV's visual front end, 1024-D per frame.

A ShuffleNet-V2 trunk (stage repeats [4, 8, 4], channels [29, 116, 232, 464, 1024])
plus two face-specific branches at 56×56: a *local* extractor that runs depthwise
convolutions on the four 28×28 quadrants, and a *modulator* that gates stage 2 with a
channel gate times a spatial gate. Module and parameter names follow the official
AffectNet checkpoint (``{'state_dict': ...}`` saved from DataParallel, so keys carry a
``module.`` prefix), which therefore loads with ``strict=True`` apart from the
classifier ``fc`` (7 or 8 AffectNet classes; not used for features).

Input normalisation (:class:`EfficientFaceConfig`; ``--opt color=sfav`` is a shorthand
for the whole SFAV input, ``--opt color=BGR`` etc. set single fields):

- ``efficientface`` (default): RGB with AffectNet mean/std, how EfficientFace was
  trained: features from any other input are out of its training distribution;
- ``efficientface.sfav``: BGR / 255 without mean/std, what SFAV's released code feeds
  it (reproduces SFAV's numbers, at the price of a colour/scale mismatch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from avx.errors import AvxError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import ImagePreprocess, Runtime, VisualBackbone, seeded
from avx.extract.weights import load_into, load_state_dict, resolve_weights, sha256_file

AFFECTNET_MEAN = (0.554, 0.435, 0.382)
AFFECTNET_STD = (0.248, 0.216, 0.202)


@dataclass(frozen=True)
class EfficientFaceConfig(ImagePreprocess):
    """Input preprocessing; the default is how EfficientFace was trained (RGB, AffectNet mean/std)."""

    mean: tuple[float, float, float] | None = AFFECTNET_MEAN
    std: tuple[float, float, float] | None = AFFECTNET_STD


SFAV_INPUT = EfficientFaceConfig(color="BGR", mean=None, std=None)
"""What SFAV's released code feeds EfficientFace: BGR / 255, no mean/std."""


def _dw(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3×3 depthwise (grouped by input channel) convolution without bias."""
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=cin, bias=False)


def _conv_bn(cin: int, cout: int, k: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class ShuffleUnit(nn.Module):
    """ShuffleNet-V2 unit: split (or duplicate when downsampling), transform, concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_dw(cin, cin, stride), nn.BatchNorm2d(cin), *_conv_bn(cin, half, 1))
        self.branch2 = nn.Sequential(
            *_conv_bn(cin if stride > 1 else half, half, 1),
            _dw(half, half, stride),
            nn.BatchNorm2d(half),
            *_conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, x2 = x.chunk(2, dim=1)
            y = torch.cat((keep, self.branch2(x2)), dim=1)
        else:
            y = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        b, c, h, w = y.shape  # channel shuffle with 2 groups
        return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class LocalFeatureExtractor(nn.Module):
    """Depthwise convs on each 28×28 quadrant of the 56×56 map, reassembled at 28×28.

    Parameters ``conv{q}_{1,2}``/``bn{q}_{1,2}`` for quadrants q = 1 (top-left), 2
    (bottom-left), 3 (top-right), 4 (bottom-right), as in the official checkpoint.
    """

    def __init__(self, cin: int = 29, cout: int = 116) -> None:
        super().__init__()
        for q in range(1, 5):
            setattr(self, f"conv{q}_1", _dw(cin, cout, 2))
            setattr(self, f"bn{q}_1", nn.BatchNorm2d(cout))
            setattr(self, f"conv{q}_2", _dw(cout, cout, 1))
            setattr(self, f"bn{q}_2", nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def _quadrant(self, q: int, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(getattr(self, f"bn{q}_1")(getattr(self, f"conv{q}_1")(x)))
        return self.relu(getattr(self, f"bn{q}_2")(getattr(self, f"conv{q}_2")(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        tl, bl = self._quadrant(1, x[..., :h, :w]), self._quadrant(2, x[..., h:, :w])
        tr, br = self._quadrant(3, x[..., :h, w:]), self._quadrant(4, x[..., h:, w:])
        return torch.cat([torch.cat([tl, bl], dim=2), torch.cat([tr, br], dim=2)], dim=3)


class _ChannelGate(nn.Module):
    def __init__(self, c: int, r: int = 16) -> None:
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", nn.Flatten())
        self.gate_c.add_module("gate_c_fc_0", nn.Linear(c, c // r))
        self.gate_c.add_module("gate_c_bn_1", nn.BatchNorm1d(c // r))
        self.gate_c.add_module("gate_c_relu_1", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(c // r, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_c(x.mean(dim=(2, 3), keepdim=True))[:, :, None, None]


class _SpatialGate(nn.Module):
    def __init__(self, c: int, r: int = 16, dilation: int = 4) -> None:
        super().__init__()
        m = c // r
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(c, m, 1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(m))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(2):
            self.gate_s.add_module(
                f"gate_s_conv_di_{i}", nn.Conv2d(m, m, 3, padding=dilation, dilation=dilation)
            )
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(m))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(m, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_s(x)


class Modulator(nn.Module):
    """x · sigmoid(channel gate × spatial gate): a BAM-style attention on stage 2."""

    def __init__(self, c: int = 116) -> None:
        super().__init__()
        self.channel_att = _ChannelGate(c)
        self.spatial_att = _SpatialGate(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.channel_att(x) * self.spatial_att(x))


class EfficientFaceNet(nn.Module):
    """The network; ``forward`` returns the 1024-D globally pooled ``conv5`` features."""

    def __init__(
        self,
        repeats: tuple[int, int, int] = (4, 8, 4),
        channels: tuple[int, int, int, int, int] = (29, 116, 232, 464, 1024),
        num_classes: int = 7,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:4], strict=True)):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            cin = cout
        self.local = LocalFeatureExtractor(channels[0], channels[1])
        self.modulator = Modulator(channels[1])
        self.conv5 = nn.Sequential(*_conv_bn(channels[3], channels[4], 1))
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.modulator(self.stage2(x)) + self.local(x)
        x = self.conv5(self.stage4(self.stage3(x)))
        return x.mean(dim=(2, 3))


class EfficientFace(VisualBackbone):
    config_class = EfficientFaceConfig
    frame_shape = (1024,)
    expects = "official EfficientFace AffectNet checkpoint (.pth.tar, {'state_dict'}, module. prefix)"

    def __init__(
        self,
        config: EfficientFaceConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "efficientface",
    ) -> None:
        self.name, self.config = name, config
        self.preprocess = config
        self.runtime = runtime = runtime or Runtime.create()
        unpickled = False
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        with seeded():
            net = EfficientFaceNet()
        sha = None
        if src.kind == "file":
            state = load_state_dict(src.path, trust_pickle=runtime.trust_pickle)
            unpickled = state.unpickled
            load_into(net, state, src.path, ignore=("fc.",))
            sha = sha256_file(src.path)
        elif src.kind != "random-init":
            raise AvxError(f"efficientface: weights '{src.spec}' not supported (a checkpoint file or none)")
        self.weights = src.provenance(sha, unpickled=unpickled)
        self.model = net.eval().to(runtime.device)

    @classmethod
    def configure(cls, config: Any, options: Mapping[str, Any], *, where: str) -> Any:
        """``color=sfav`` (``color=`` for the default) selects a whole input preset,
        the option SFAV users know; other values set the field."""
        options = dict(options)
        if options.get("color") in ("sfav", ""):
            config = SFAV_INPUT if options.pop("color") == "sfav" else EfficientFaceConfig()
        return super().configure(config, options, where=where)

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": "EfficientFace (ShuffleNet-V2 [4, 8, 4] + local + modulator), conv5 mean-pooled",
            **self.weights,
            **self.runtime_provenance(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


BACKBONES.register(
    BackboneCard(
        "efficientface",
        EfficientFace,
        EfficientFaceConfig(),
        shape="[T, 1024]",
        rate="face frames",
        paper="EfficientFace (Zhao et al., AAAI 2021); SFAV's visual front end",
        licence="MIT (official code)",
    )
)
BACKBONES.register(
    BackboneCard(
        "efficientface.sfav",
        EfficientFace,
        SFAV_INPUT,
        shape="[T, 1024]",
        rate="face frames",
        weights=EfficientFace.expects + "; SFAV's BGR/255 input",
        paper="SFAV (001) preprocessing",
        licence="MIT (official code)",
    )
)
