"""Moving crops through extraction in bounded pieces.

Two pieces keep memory flat in a clip's length and a chunk's size:

- :class:`~avx.prefetch.BackgroundQueue` runs a clip's crop producer (decode + MTCNN,
  or reads of committed crops) on a background thread, handing windows over a bounded
  queue: the producer can run at most ``WINDOW_DEPTH`` windows ahead of the backbones.
- :class:`VisualFeed` gathers those windows for one visual backbone and forwards full
  batches as soon as it has them, carrying the leftover frames to the next clip, so
  that only a chunk's very last batch is padded; features go to the stream's
  :class:`~avx.store_schema.writer.PartBuilder` clip by clip, in order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avx.errors import MediaError
from avx.extract.backbones import VisualBackbone
from avx.store_schema.writer import PartBuilder

WINDOW_DEPTH = 2
"""Windows a clip's background producer may hold ready before the backbones take them."""


@dataclass
class _Segment:
    row: int
    crops: np.ndarray
    times: np.ndarray


class VisualFeed:
    """One visual backbone's frames in flight, across the clips of a chunk.

    Clips arrive in order, each in windows (:meth:`extend`), and end with :meth:`end`
    or :meth:`fail`. A forward pass runs whenever ``batch_size`` frames are waiting, so
    every pass but the chunk's last (:meth:`finish`) is full: no zero padding between
    clips. A clip's features reach the builder in order and it is closed once the
    next clip's first features arrive (or at :meth:`finish`). A frame's features do not
    depend on the other frames of its batch (fixed batch shape, eval-mode layers), so a
    clip's features are the same however its frames fell into batches.
    """

    def __init__(self, backbone: VisualBackbone, builder: PartBuilder) -> None:
        self.backbone, self.builder = backbone, builder
        self.batch = backbone.runtime.resolved_batch_size()
        self._waiting: deque[_Segment] = deque()
        self.n_waiting = 0
        self._failed: set[int] = set()
        self.forwarded = 0
        """Frames passed to the network, padding included (what the counting test reads)."""

    def extend(self, row: int, crops: np.ndarray, times: np.ndarray) -> None:
        if row in self._failed or not len(crops):
            return
        self._waiting.append(_Segment(row, crops, times))
        self.n_waiting += len(crops)
        while self.n_waiting >= self.batch:
            self._forward(self.batch)

    def end(self, row: int) -> None:
        """Every frame of ``row`` has been given (its features may still be waiting)."""

    def fail(self, row: int, reason: str) -> None:
        """Drop ``row``: its waiting frames, and whatever of it reached the builder."""
        self._failed.add(row)
        kept = deque(s for s in self._waiting if s.row != row)
        self.n_waiting = sum(len(s.crops) for s in kept)
        self._waiting = kept
        self.builder.fail(row, reason)

    def finish(self) -> None:
        """The chunk's last frames (one padded pass at most); closes the last clip."""
        if self.n_waiting:
            self._forward(self.n_waiting)
        if self.builder.open_row is not None:
            self.builder.end()

    def _forward(self, n: int) -> None:
        taken: list[_Segment] = []
        need = n
        while need:
            s = self._waiting[0]
            if len(s.crops) <= need:
                taken.append(self._waiting.popleft())
                need -= len(s.crops)
            else:
                taken.append(_Segment(s.row, s.crops[:need], s.times[:need]))
                self._waiting[0] = _Segment(s.row, s.crops[need:], s.times[need:])
                need = 0
        self.n_waiting -= n
        crops = taken[0].crops if len(taken) == 1 else np.concatenate([s.crops for s in taken])
        feats, fields = self.backbone(crops)
        self.forwarded += max(n, self.batch)
        a = 0
        for s in taken:
            k = len(s.crops)
            if s.row not in self._failed:
                self._write(s.row, feats[a : a + k], s.times, {f: v[a : a + k] for f, v in fields.items()})
            a += k

    def _write(self, row: int, feats: np.ndarray, times: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        b = self.builder
        if b.open_row != row:
            if b.open_row is not None:
                b.end()
            b.begin(row)
        try:
            b.extend(feats, times, **fields)
        except MediaError as e:  # non-finite features: this clip fails in this stream only
            self.fail(row, str(e))
