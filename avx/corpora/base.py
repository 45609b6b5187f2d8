"""What a corpus adapter produces: metadata only, no media decoding.

One adapter per file in this package, registered with ``@CORPORA.register(name)``.
An adapter reads a corpus in its official layout and returns :class:`CorpusMetadata`;
the store writer turns that into the ``samples`` and ``labels`` groups, and the
extraction loop uses the media paths (relative to the corpus root) it lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from avx.registry import Registry

REQUIRED_COLUMNS = ("id", "speaker", "duration", "audio_path", "video_path", "split")


@dataclass
class CorpusMetadata:
    """Everything a store needs about a corpus before any feature is extracted.

    Attributes:
        name: registry name of the corpus.
        samples: one row per clip with at least ``REQUIRED_COLUMNS``; media paths are
            relative to the corpus root ("" when a clip lacks that modality), duration in
            seconds (NaN when unknown without decoding).
        class_names: categorical classes in label order.
        votes: vote counts ``[n_samples, n_classes]`` per rater modality
            (``voice``/``face``/``av``); derived labels are computed by the store.
        intended: intended class index per clip from the corpus design (-1 unknown).
        intended_level: intended intensity per clip (e.g. CREMA-D ``LO/MD/HI/XX``).
        protocols: split column name -> one-line description of the protocol.
        attrs: corpus-level facts recorded in the store (licence, source, version).
    """

    name: str
    samples: pd.DataFrame
    class_names: list[str]
    votes: dict[str, np.ndarray] = field(default_factory=dict)
    intended: np.ndarray | None = None
    intended_level: np.ndarray | None = None
    protocols: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in self.samples.columns]
        if missing:
            raise ValueError(f"corpus {self.name}: samples lack columns {missing}")
        if self.samples["id"].duplicated().any():
            dup = self.samples["id"][self.samples["id"].duplicated()].iloc[0]
            raise ValueError(f"corpus {self.name}: duplicate sample id {dup!r}")
        n = len(self.samples)
        for rater, counts in self.votes.items():
            if counts.shape != (n, len(self.class_names)):
                raise ValueError(f"corpus {self.name}: {rater} votes have shape {counts.shape}")


class CorpusAdapter(Protocol):
    """A registered corpus: ``load(root)`` reads the official layout's metadata."""

    def __call__(self, root: Path) -> CorpusMetadata: ...


CORPORA: Registry[CorpusAdapter] = Registry("corpus", "avx.corpora")


def load_corpus(name: str, root: str | Path) -> CorpusMetadata:
    """Read corpus ``name`` at ``root`` (metadata only)."""
    adapter = CORPORA.get(name)
    return adapter(Path(root))
