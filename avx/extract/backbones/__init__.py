"""Backbone registry: one file per backbone in this package, registered by name.

Names may carry a preset tag after a dot, the way timm names variants
(``mfcc.sfav`` is the ``mfcc`` factory with its ``sfav`` preset).
"""

from __future__ import annotations

from collections.abc import Callable

from avx.errors import UnknownNameError
from avx.extract.backbones.base import AudioBackbone, Backbone, VisualBackbone
from avx.registry import Registry

BackboneFactory = Callable[..., Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone", "avx.extract.backbones")


def _presets(arch: str) -> dict[str, object]:
    """A factory's preset tags (``""`` is the plain architecture); one place reads them."""
    return getattr(BACKBONES.get(arch), "presets", {"": None})


def create_backbone(name: str, *, weights: str | None = None, device: str = "cpu") -> Backbone:
    """Build backbone ``name`` (``arch`` or ``arch.tag``) with ``weights`` on ``device``."""
    arch, _, tag = name.partition(".")
    if arch not in BACKBONES or tag not in _presets(arch):
        raise UnknownNameError("backbone", name, list_backbones())
    return BACKBONES.get(arch)(tag=tag, weights=weights, device=device)


def list_backbones() -> list[str]:
    """Every backbone name, presets included."""
    names = []
    for arch in BACKBONES.names():
        names += [f"{arch}.{t}" if t else arch for t in _presets(arch)]
    return names


__all__ = [
    "BACKBONES",
    "AudioBackbone",
    "Backbone",
    "VisualBackbone",
    "create_backbone",
    "list_backbones",
]
