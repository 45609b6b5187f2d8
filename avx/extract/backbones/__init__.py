"""Backbone registry: one file per backbone in this package, registered by name.

Each name has a :class:`BackboneCard` registered in its module, written out in full.
Names may carry a preset tag after a dot, the way timm names variants (``mfcc.sfav``
is the ``mfcc`` factory with its ``sfav`` preset). Checkpoints the papers used keep
their own names (``wavlm-large`` is ``wavlm`` with ``microsoft/wavlm-large`` as
default weights), because a backbone's name is its stream's name in existing stores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from avx.errors import AvxError
from avx.extract.backbones.base import AudioBackbone, Backbone, Runtime, TextBackbone, VisualBackbone
from avx.registry import Card, Registry

BackboneFactory = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneCard(Card):
    """One backbone name (``arch`` or ``arch.tag``): how to build it and what it writes.

    Attributes:
        factory: ``factory(tag=, weights=, runtime=, **options)`` builds the backbone.
        tag: the preset this name selects (``mfcc.sfav`` is ``mfcc``'s ``sfav``).
        cls: the backbone class; the modality and, unless ``weights`` is given, the
            expected weights are read from it (``cls.modality``, ``cls.expects``).
        shape / rate: what it writes per frame and how often (the registry test checks
            the shape against the features the backbone really produces).
        weights: the weights it expects (``avx list backbones``).
        licence: of the code or weights it runs.
    """

    factory: BackboneFactory | None = None
    tag: str = ""
    cls: type[Backbone] | None = None
    shape: str = "?"
    rate: str = "?"
    weights: str = ""
    licence: str = ""

    columns = ("modality", "shape", "rate", "weights", "paper")

    def __post_init__(self) -> None:
        if self.factory is None or self.cls is None:
            raise TypeError(f"backbone card {self.name}: factory and cls are required")
        if not self.weights:
            object.__setattr__(self, "weights", self.cls.expects)

    @property
    def modality(self) -> str:
        return self.cls.modality if self.cls is not None else "?"


BACKBONES: Registry[BackboneCard] = Registry("backbone", "avx.extract.backbones")


def create_backbone(
    name: str | Mapping[str, Any],
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

    ``name`` may instead be a stream's provenance (``store.stream(s).provenance``): the
    backbone that wrote the stream is rebuilt with the same name, weights and options
    (preprocessing presets included), the way occlusion and re-extraction need it.
    """
    if isinstance(name, Mapping):
        prov = name
        name = str(prov.get("backbone"))
        if weights is None:
            recorded = prov.get("weights")
            weights = "none" if recorded in (None, "random-init") else str(recorded)
        if options is None:
            options = dict(prov.get("options") or {})
    card = BACKBONES.get(name)
    assert card.factory is not None
    runtime = runtime or Runtime.create(device, batch_size, amp, trust_pickle)
    try:
        backbone = card.factory(tag=card.tag, weights=weights, runtime=runtime, **(options or {}))
        backbone.options = dict(options or {})
        return backbone
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise AvxError(
                f"backbone '{name}': unknown option ({str(e).split('argument')[-1].strip()})"
            ) from None
        raise


def list_backbones() -> list[str]:
    """Every backbone name, presets included."""
    return BACKBONES.names()


__all__ = [
    "BACKBONES",
    "AudioBackbone",
    "Backbone",
    "BackboneCard",
    "Runtime",
    "TextBackbone",
    "VisualBackbone",
    "create_backbone",
    "list_backbones",
]
