"""What a corpus adapter produces: metadata (and, for feature-only corpora, features).

One adapter per file in this package, registered with
``CORPORA.register(CorpusCard(name, load_fn, modalities=..., labels=..., layout=...))``
(shown by ``avx list corpora``). An adapter reads a
corpus in its official layout and returns :class:`CorpusMetadata`; the store writer
turns that into the ``samples``, ``labels`` and ``protocols`` groups, and the
extraction loop uses the media paths (relative to the corpus root) it lists.

Label kinds, all optional, so that every corpus says what it really has:

- ``votes``: categorical vote counts per *rater modality* (what the raters were shown:
  ``voice``, ``face`` or ``av``); distribution, multi-hot and plurality are derived
  by the store, with one definition for every corpus.
- ``categorical``: named single labels per clip (``intended`` = the actor's instructed
  emotion; ``consensus`` = the corpus's own agreed label), class index or -1.
- ``multilabel``: per-class intensities (presence = intensity > 0), e.g. CMU-MOSEI.
- ``dimensions``: utterance-level attributes (valence, arousal, ...) on a stated scale.
- ``continuous``: time-continuous attributes at a label rate (AVEC/SEWA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avx.corpora.protocols import Protocol
from avx.registry import Card, Registry

REQUIRED_COLUMNS = ("id", "speaker", "duration", "audio_path", "video_path")
"""Every corpus has these sample columns; media paths are "" when a clip lacks them.

Recognised optional columns: ``transcript`` (text modality), and ``video_start`` /
``video_end``, a segment (seconds) of a longer video (IEMOCAP utterances inside
dialogue videos), which extraction seeks to."""


@dataclass(frozen=True)
class Dimensions:
    """Utterance-level dimensional labels ``values [n_samples, n_dims]`` (NaN = unrated).

    ``low``/``high`` is the corpus's documented scale (IEMOCAP 1–5, CMU-MOSEI -3–3);
    :meth:`scaled` maps it linearly to [-1, 1], the range COLD and AVEC use.
    """

    names: list[str]
    values: np.ndarray
    low: float
    high: float

    def scaled(self) -> np.ndarray:
        return (2.0 * (self.values - self.low) / (self.high - self.low) - 1.0).astype(np.float32)


@dataclass(frozen=True)
class ContinuousLabels:
    """Time-continuous labels: per sample ``values[i]`` ``[T_i, n_dims]`` at ``times[i]`` (s)."""

    names: list[str]
    rate: float
    values: list[np.ndarray]
    times: list[np.ndarray]
    low: float = -1.0
    high: float = 1.0


@dataclass(frozen=True)
class ImportedStream:
    """Features that ship with the corpus, written as a normal stream at ``store init``.

    ``frames()`` yields ``(row, data [T, *frame_shape], timestamps [T])`` one sample at a
    time, so large releases are streamed into the store rather than held in memory.
    Provenance always carries ``source: corpus-provided`` plus the file and its sha256.
    """

    name: str
    frame_shape: tuple[int, ...]
    frame_rate: float | None
    provenance: dict[str, Any]
    frames: Callable[[], Iterator[tuple[int, np.ndarray, np.ndarray]]]
    dtype: str = "float32"


CorpusAdapter = Callable[[Path], "CorpusMetadata"]
"""A registered corpus's ``load(root)``: reads the official layout's metadata."""


@dataclass(frozen=True)
class CorpusCard(Card):
    """A registered corpus: its adapter, what it offers and where avx looks for it.

    Attributes:
        load: ``load(root)`` reads the official layout's metadata (the adapter).
        modalities / labels / layout: one line each for ``avx list corpora``.
    """

    load: CorpusAdapter | None = None
    modalities: str = "?"
    labels: str = "?"
    layout: str = "?"

    columns = ("modalities", "labels", "layout")

    def __post_init__(self) -> None:
        if self.load is None:
            raise TypeError(f"corpus card {self.name}: load is required")


@dataclass
class CorpusMetadata:
    """Everything a store needs about a corpus before any feature is extracted.

    Attributes:
        name: registry name of the corpus.
        samples: one row per clip with at least ``REQUIRED_COLUMNS``; other columns
            (demographics, session, sentence, ...) become sample attributes usable as
            fairness groups. Duration in seconds (NaN when unknown without decoding).
        class_names: categorical classes in label order (shared by votes, categorical
            and multilabel).
        votes: vote counts ``[n_samples, n_classes]`` per rater modality.
        rater_intensity: mean rated intensity ``[n_samples]`` per rater modality.
        categorical: named hard labels ``[n_samples]`` (class index, -1 = none).
        intended_level: intended intensity per clip (e.g. CREMA-D ``LO/MD/HI/XX``).
        multilabel: per-class intensity ``[n_samples, n_classes]`` (presence = > 0).
        dimensions / continuous: see :class:`Dimensions` / :class:`ContinuousLabels`.
        protocols: evaluation protocols by name; ``default_protocol`` names the one used
            when none is asked for.
        features: corpus-provided feature streams (CMU-MOSEI, M3ED).
        attrs: corpus-level facts recorded in the store (licence, source, version).
    """

    name: str
    samples: pd.DataFrame
    class_names: list[str] = field(default_factory=list)
    votes: dict[str, np.ndarray] = field(default_factory=dict)
    rater_intensity: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    intended_level: np.ndarray | None = None
    multilabel: np.ndarray | None = None
    dimensions: Dimensions | None = None
    continuous: ContinuousLabels | None = None
    protocols: dict[str, Protocol] = field(default_factory=dict)
    default_protocol: str | None = None
    features: list[ImportedStream] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Shape checks: adapters validate values against their files; this catches bugs."""
        missing = [c for c in REQUIRED_COLUMNS if c not in self.samples.columns]
        if missing:
            raise ValueError(f"corpus {self.name}: samples lack columns {missing}")
        if self.samples["id"].duplicated().any():
            dup = self.samples["id"][self.samples["id"].duplicated()].iloc[0]
            raise ValueError(f"corpus {self.name}: duplicate sample id {dup!r}")
        n, c = len(self.samples), len(self.class_names)
        for rater, counts in self.votes.items():
            if counts.shape != (n, c):
                raise ValueError(f"corpus {self.name}: {rater} votes have shape {counts.shape}")
        for key, labels in self.categorical.items():
            labels = np.asarray(labels)
            if labels.shape != (n,) or ((labels < -1) | (labels >= c)).any():
                raise ValueError(f"corpus {self.name}: categorical '{key}' out of range or misshapen")
        if self.multilabel is not None and self.multilabel.shape != (n, c):
            raise ValueError(f"corpus {self.name}: multilabel has shape {self.multilabel.shape}")
        if self.dimensions is not None and self.dimensions.values.shape != (n, len(self.dimensions.names)):
            raise ValueError(f"corpus {self.name}: dimensions have shape {self.dimensions.values.shape}")
        if self.continuous is not None and len(self.continuous.values) != n:
            raise ValueError(
                f"corpus {self.name}: continuous labels for {len(self.continuous.values)} samples"
            )
        for name, p in self.protocols.items():
            if p.assign.shape[0] != n:
                raise ValueError(f"corpus {self.name}: protocol {name} covers {p.assign.shape[0]} samples")
        if self.protocols and self.default_protocol not in self.protocols:
            self.default_protocol = next(iter(self.protocols))

    @property
    def intended(self) -> np.ndarray | None:
        return self.categorical.get("intended")


CORPORA: Registry[CorpusCard] = Registry("corpus", "avx.corpora")


def load_corpus(name: str, root: str | Path) -> CorpusMetadata:
    """Read corpus ``name`` at ``root`` (metadata only; imported features stream lazily)."""
    card = CORPORA.get(name)
    assert card.load is not None
    return card.load(Path(root))
