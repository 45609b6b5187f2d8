"""Store schema v2: names, codes and layout constants (specified in ``docs/store.md``).

Everything that decides where a thing lives in a store is defined here once; the
writer, the reader and the validator import these names rather than spelling paths.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

SCHEMA_VERSION = 2
"""Bumped on any change an older reader could misread; readers refuse other versions.

v2 (issue 3): evaluation protocols moved from a ``split`` sample column to the
``protocols`` group; label kinds beyond votes (categorical, multilabel, dimensions,
continuous) were added."""

SCHEMA_ATTR = "avx_schema"
STREAM_ATTR = "avx_stream"
"""Attribute marking a group as a feature stream (its value is the stream's spec dict)."""

SAMPLES = "samples"
LABELS = "labels"
STREAMS = "streams"
PROTOCOLS = "protocols"
PARTS = "parts"
INDEX = "index"
DATA = "data"
TIMESTAMPS = "timestamps"
LOCK_DIR = ".locks"
"""Lock files live inside the store directory but outside the Zarr hierarchy."""

RATER_MODALITIES = ("voice", "face", "av")
"""Rater modalities: what the raters were shown (audio only, video only, both)."""

RATER_ARRAYS = ("counts", "distribution", "multihot", "plurality")
INTENDED = "intended"
MULTILABEL = "multilabel"
DIMENSIONS = "dimensions"
CONTINUOUS = "continuous"
RESERVED_LABEL_GROUPS = (MULTILABEL, DIMENSIONS, CONTINUOUS)
"""Label groups with their own layout; any other group under ``labels/`` that is not a
rater modality is a named categorical label (``<name>/label``)."""
STREAM_MODALITIES = ("audio", "video", "text")
"""Top-level stream groups; ``faces`` sits directly under ``streams/``."""

FACES = "faces"


class Status(IntEnum):
    """Per-sample status of a stream, column 0 of its ``index`` array."""

    MISSING = 0
    COMMITTED = 1
    FAILED = 2


INDEX_COLUMNS = ("status", "part", "start", "stop")
"""Columns of a stream's ``index`` array ``[n_samples, 4]`` (int64).

``part`` names the part group holding the sample; ``start:stop`` is its frame range
inside that part's arrays. The whole index is one chunk, so rewriting it is a single
atomic file replacement: that write is the commit point of a part.
"""


class StreamIndex:
    """Named columns over a stream's ``index`` array, so no code indexes it by number.

    ``status``, ``part``, ``start`` and ``stop`` are views of the ``[n_samples, 4]``
    int64 array (writing into them writes the array); ``array`` is the array itself,
    what the store holds. Row ``r`` of a sample is its position in ``samples``.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.int64)
        if array.ndim != 2 or array.shape[1] != len(INDEX_COLUMNS):
            raise ValueError(f"a stream index is [n_samples, {len(INDEX_COLUMNS)}], got {array.shape}")
        self.array = array

    @property
    def status(self) -> np.ndarray:
        return self.array[:, 0]

    @property
    def part(self) -> np.ndarray:
        return self.array[:, 1]

    @property
    def start(self) -> np.ndarray:
        return self.array[:, 2]

    @property
    def stop(self) -> np.ndarray:
        return self.array[:, 3]

    @property
    def frames(self) -> np.ndarray:
        """Frames per sample (``stop - start``; 0 unless committed)."""
        return self.stop - self.start

    def committed(self) -> np.ndarray:
        """Boolean mask of committed rows."""
        return self.status == Status.COMMITTED

    def failed(self) -> np.ndarray:
        return self.status == Status.FAILED

    def row(self, r: int) -> tuple[Status, int, int, int]:
        """``(status, part, start, stop)`` of row ``r``."""
        st, k, a, b = (int(v) for v in self.array[r])
        return Status(st), k, a, b

    def copy(self) -> StreamIndex:
        return StreamIndex(self.array.copy())

    def __len__(self) -> int:
        return len(self.array)


TARGET_CHUNK_BYTES = 4 * 2**20
"""Stream data is chunked along frames to roughly this many uncompressed bytes."""

PART_NAME_WIDTH = 6


def part_name(k: int) -> str:
    return f"{k:0{PART_NAME_WIDTH}d}"


def stream_path(name: str) -> str:
    """Zarr path of stream ``name`` (``faces``, ``audio/mfcc`` ...)."""
    return f"{STREAMS}/{name}"


def valid_stream_name(name: str) -> bool:
    parts = name.split("/")
    if name == FACES:
        return True
    return len(parts) == 2 and parts[0] in STREAM_MODALITIES and bool(parts[1])
