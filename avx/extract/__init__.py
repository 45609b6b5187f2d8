"""``avx extract``: media -> features, written to a store as committed parts."""

from avx.extract.backbones import BACKBONES, create_backbone, list_backbones

__all__ = ["BACKBONES", "create_backbone", "list_backbones"]
