"""One generic registry for corpora, backbones and fusion methods.

The way timm registers models: a module defines a factory and decorates it with
``@REGISTRY.register("name")``; the registry imports every module of its package on
first use, so adding a backbone or a method is one file with one decorator and nothing
else to edit. Names are matched with ``-`` and ``_`` treated alike.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from avx.errors import UnknownNameError

T = TypeVar("T")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Maps names to entries (factories or classes) for one kind of component.

    Args:
        kind: what is registered, used in error messages ("backbone", "fusion method").
        package: dotted package whose modules register entries when imported.
    """

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names are a bug."""

        def deco(obj: T) -> T:
            key = _key(name)
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> T:
        """The entry registered as ``name``; unknown names raise a one-line error listing the valid ones."""
        self._load()
        try:
            return self._entries[_key(name)]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return _key(name) in self._entries
