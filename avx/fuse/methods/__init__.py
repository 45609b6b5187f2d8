"""Fusion methods: one file per method, each registered in :data:`METHODS`."""

from avx.fuse.methods.base import METHODS, FusionMethod, FusionOutput, create_method

__all__ = ["METHODS", "FusionMethod", "FusionOutput", "create_method"]
