"""One registry idiom for corpora, backbones, fusion methods and presets: typed cards.

Every entry is a frozen *card* (a dataclass, the way timm describes a pretrained model
with a config): its name, what it is, where it comes from, and the facts that listings
and checks read. A module registers its entries with one call per name, written out in
full so that ``grep`` finds every name::

    METHODS.register(MethodCard("late", Late, tasks=ALL_TASKS, frame_level=True, ...))

The registry imports every module of its package on first use, so adding a backbone or
a method is one file with its ``register`` calls and nothing else to edit. Names are
matched with ``-`` and ``_`` treated alike; a card may list ``aliases`` (older names that
keep resolving, e.g. run folders written before a rename).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Generic, TypeVar

from avx.errors import UnknownNameError


@dataclass(frozen=True)
class Card:
    """What every registry entry states about itself.

    Attributes:
        name: the registry key (``arch`` or ``arch.tag`` for a variant).
        summary: one line for ``avx list``.
        paper: where it comes from (a paper, a library).
        aliases: other names that resolve to this entry.

    These are keyword-only, so a kind of card adds its own positional fields after the
    name (``MethodCard("late", Late, ...)``).
    """

    name: str
    _: KW_ONLY
    summary: str = ""
    paper: str = ""
    aliases: tuple[str, ...] = ()

    columns: ClassVar[tuple[str, ...]] = ("summary", "paper")
    """The attributes ``avx list`` prints, in order, after the name."""

    def row(self) -> dict[str, str]:
        """The listing's columns as strings."""
        return {c: _text(getattr(self, c)) for c in self.columns}


def _text(v: object) -> str:
    if isinstance(v, tuple | list):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


C = TypeVar("C", bound=Card)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[C]):
    """Maps names (and aliases) to cards for one kind of component.

    Args:
        kind: what is registered, used in error messages ("backbone", "fusion method").
        package: dotted package whose modules register entries when imported (or one
            module that registers them all).
    """

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._cards: dict[str, C] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    def register(self, card: C) -> C:
        """Add ``card``; a name or alias registered twice is a bug."""
        for name in (card.name, *card.aliases):
            key = _key(name)
            if key in self._cards or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' registered twice")
        self._cards[_key(card.name)] = card
        self._aliases.update({_key(a): _key(card.name) for a in card.aliases})
        return card

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        if not hasattr(pkg, "__path__"):  # a single module registers everything on import
            return
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> C:
        """The card registered as ``name`` (or aliased); unknown names raise a one-line
        error listing the valid ones."""
        self._load()
        key = _key(name)
        key = self._aliases.get(key, key)
        try:
            return self._cards[key]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        """Every registered name (aliases excluded), sorted."""
        self._load()
        return sorted(self._cards)

    def cards(self) -> list[C]:
        """Every card, sorted by name."""
        self._load()
        return [self._cards[k] for k in sorted(self._cards)]

    def __contains__(self, name: str) -> bool:
        self._load()
        key = _key(name)
        return key in self._cards or key in self._aliases


def card_table(cards: list[Card]) -> Any:
    """A rich table of ``cards``: the name, then the card kind's ``columns`` (``avx list``)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("name", no_wrap=True, style="bold")
    columns = cards[0].columns if cards else ()
    for c in columns:
        table.add_column(c.replace("_", " "), overflow="fold")
    for card in cards:
        table.add_row(escape(card.name), *(escape(v) for v in card.row().values()))
    return table
