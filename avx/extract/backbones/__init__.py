"""Backbone registry: one file per backbone in this package, registered by name.

Each name has a :class:`BackboneCard` registered in its module, written out in full:
the class and its config (a ``<Name>Config`` dataclass). Names may carry a preset tag
after a dot, the way timm names variants (``mfcc.sfav`` is the ``MFCC`` class with
SFAV's ``MFCCConfig``). Checkpoints the papers used keep
their own names (``wavlm-large`` is ``wavlm`` with ``microsoft/wavlm-large`` as
default weights), because a backbone's name is its stream's name in existing stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avx.extract.backbones.base import AudioBackbone, Backbone, Runtime, TextBackbone, VisualBackbone
from avx.registry import Card, Registry
from avx.serialization import from_dict


@dataclass(frozen=True)
class BackboneCard(Card):
    """One backbone name (``arch`` or ``arch.tag``): what builds it, with which settings.

    Attributes:
        cls: the backbone class, built as ``cls(config, weights=, runtime=, name=)``; the
            modality and, unless ``weights`` is given, the expected weights are read from it.
        config: this name's settings, an instance of ``cls.config_class`` (``mfcc.sfav``
            is ``mfcc`` with ``MFCCConfig(sample_rate=22_050, ...)``). ``--opt`` options
            replace fields of it; the result is stored whole in the stream's provenance.
        default_weights: used when ``--weights`` is not given (None: it is required).
        shape / rate: what it writes per frame and how often (the registry test checks
            the shape against the features the backbone really produces).
        weights: the weights it expects (``avx list backbones``).
        licence: of the code or weights it runs.
    """

    cls: type[Backbone] | None = None
    config: Any = None
    default_weights: str | None = None
    shape: str = "?"
    rate: str = "?"
    weights: str = ""
    licence: str = ""

    columns = ("modality", "shape", "rate", "weights", "paper")

    def __post_init__(self) -> None:
        if self.cls is None or not isinstance(self.config, self.cls.config_class):
            raise TypeError(
                f"backbone card {self.name}: cls and a {self.cls} config_class instance are required"
            )
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
    options: Mapping[str, Any] | None = None,
    runtime: Runtime | None = None,
    trust_pickle: bool = False,
) -> Backbone:
    """Build backbone ``name`` (``arch`` or ``arch.tag``) with ``weights`` on ``device``.

    ``options`` replace fields of the name's config (``layers``, ``hop``, ``color`` ...;
    command-line text is parsed by the field's type); an unknown option is an error
    naming the backbone and the valid ones. ``trust_pickle`` allows checkpoints that
    pickle Python objects (refused by default: unpickling runs code from the file).

    ``name`` may instead be a stream's provenance (``store.stream(s).provenance``): the
    backbone that wrote the stream is rebuilt from its recorded config and weights, the
    way occlusion, end-to-end training and re-extraction need it. Streams written before
    configs were recorded (no ``config`` key) are rebuilt from their ``options``.
    """
    recorded: Mapping[str, Any] | None = None
    if isinstance(name, Mapping):
        prov = name
        name = str(prov.get("backbone"))
        if weights is None:
            w = prov.get("weights")
            weights = "none" if w in (None, "random-init") else str(w)
        if options is None:
            options = prov.get("options")
        recorded = prov.get("config")
    card = BACKBONES.get(name)
    assert card.cls is not None
    options = dict(options or {})
    if recorded is not None:
        config = from_dict(card.cls.config_class, recorded)
    else:
        config = card.cls.configure(card.config, options, where=card.name)
    runtime = runtime or Runtime.create(device, batch_size, amp, trust_pickle)
    backbone = card.cls(
        config,
        weights=weights if weights is not None else card.default_weights,
        runtime=runtime,
        name=card.name,
    )
    backbone.options = options
    return backbone


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
