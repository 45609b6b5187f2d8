"""Backbone registry: one file per backbone in this package, registered by name.

Names may carry a preset tag after a dot, the way timm names variants
(``mfcc.sfav`` is the ``mfcc`` factory with its ``sfav`` preset); checkpoints the
papers used have their own names (``wavlm-large`` is ``wavlm`` with
``microsoft/wavlm-large`` as default weights). Each factory carries an ``info`` line
(modality, frame shape, rate, expected weights) for ``avx extract --list``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avx.errors import AvxError, UnknownNameError
from avx.extract.backbones.base import AudioBackbone, Backbone, Runtime, TextBackbone, VisualBackbone
from avx.registry import Registry

BackboneFactory = Callable[..., Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone", "avx.extract.backbones")


@dataclass(frozen=True)
class BackboneInfo:
    """What ``avx extract --list`` prints for one name."""

    name: str
    modality: str
    shape: str
    rate: str
    weights: str


def _presets(arch: str) -> dict[str, object]:
    """A factory's preset tags (``""`` is the plain architecture); one place reads them."""
    return getattr(BACKBONES.get(arch), "presets", {"": None})


def create_backbone(
    name: str,
    *,
    weights: str | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    amp: bool = True,
    options: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
    trust_pickle: bool = False,
) -> Backbone:
    """Build backbone ``name`` (``arch`` or ``arch.tag``) with ``weights`` on ``device``.

    ``options`` are the backbone's own settings (``layers``, ``hop``, ``color`` ...); an
    unknown option is an error naming the backbone. ``trust_pickle`` allows checkpoints
    that pickle Python objects (refused by default: unpickling runs code from the file).
    """
    arch, _, tag = name.partition(".")
    if arch not in BACKBONES or tag not in _presets(arch):
        raise UnknownNameError("backbone", name, list_backbones())
    runtime = runtime or Runtime.create(device, batch_size, amp, trust_pickle)
    try:
        return BACKBONES.get(arch)(tag=tag, weights=weights, runtime=runtime, **(options or {}))
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise AvxError(
                f"backbone '{name}': unknown option ({str(e).split('argument')[-1].strip()})"
            ) from None
        raise


def list_backbones() -> list[str]:
    """Every backbone name, presets included."""
    names = []
    for arch in BACKBONES.names():
        names += [f"{arch}.{t}" if t else arch for t in _presets(arch)]
    return names


def backbone_info() -> list[BackboneInfo]:
    """One :class:`BackboneInfo` per name (static: nothing is loaded)."""
    out = []
    for arch in BACKBONES.names():
        info = getattr(BACKBONES.get(arch), "info", {})
        for t in _presets(arch):
            name = f"{arch}.{t}" if t else arch
            d = {**info.get("", {}), **info.get(t, {})}  # a preset overrides the plain entry
            out.append(
                BackboneInfo(
                    name,
                    d.get("modality", "?"),
                    d.get("shape", "?"),
                    d.get("rate", "?"),
                    d.get("weights", ""),
                )
            )
    return out


__all__ = [
    "BACKBONES",
    "AudioBackbone",
    "Backbone",
    "BackboneInfo",
    "Runtime",
    "TextBackbone",
    "VisualBackbone",
    "backbone_info",
    "create_backbone",
    "list_backbones",
]
