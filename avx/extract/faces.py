"""Face pipeline: MTCNN detection (batched), subject tracking, aligned crops.

MTCNN is facenet-pytorch's, with the real P/R/O-Net weights that ship inside its wheel
(their sha256 goes into provenance). Crops are cut with one batched affine warp
(``grid_sample``) that rotates the eye line to horizontal, scales the box plus margin
to ``crop_size`` and zero-pads outside the image: no Python loop over pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from avx.errors import MediaError
from avx.extract.media import FrameSampling


@dataclass(frozen=True)
class FaceConfig:
    """Everything that decides what a face crop looks like (all recorded in provenance).

    Attributes:
        crop_size: output side in pixels; 0 = automatic: an extraction run uses the
            store's existing crop size, else the largest input of the requested visual
            backbones (224, or 256 with EmoFAN); a pipeline used on its own, 224.
        margin: fraction of the box's longer side added around it.
        align: rotate so the eye line is horizontal (from MTCNN's landmarks).
        min_face_size, thresholds, factor: MTCNN's detection parameters.
        min_face_fraction: smallest face searched for as a fraction of the frame's
            shorter side (the larger of this and ``min_face_size`` applies). A corpus
            hint: frontal single-speaker clips film faces far larger than 20 px, and
            MTCNN's image pyramid spends most of its time on the large scales that
            exist only to find tiny faces (at 540p, 0.15 drops 5 of 10 scales).
        track_iou: a face overlapping the previous frame's subject by at least this IoU
            is preferred to a more confident face elsewhere (temporal continuity).
        missing: frames without a face reuse the nearest earlier good box (``reuse``;
            frames before the first detection take the first one) or become all-zero
            crops (``mark``); either way their ``detected`` flag is False.
        sampling: which video frames to use.
    """

    crop_size: int = 0
    margin: float = 0.25
    align: bool = True
    min_face_size: int = 20
    min_face_fraction: float = 0.0
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    track_iou: float = 0.3
    missing: Literal["reuse", "mark"] = "reuse"
    sampling: FrameSampling = field(default_factory=FrameSampling)
    batch_size: int = 64


@dataclass
class Detections:
    """Chosen subject face per frame; NaN boxes/landmarks where none was found."""

    boxes: np.ndarray  # [T, 4] x1, y1, x2, y2
    probs: np.ndarray  # [T]
    landmarks: np.ndarray  # [T, 5, 2]
    detected: np.ndarray  # [T] bool


@dataclass(frozen=True)
class CropWindow:
    """Consecutive frames of one clip: crops ``[n, S, S, 3]`` uint8, times ``[n]`` and
    the per-frame :data:`FACE_FIELDS`."""

    crops: np.ndarray
    times: np.ndarray
    fields: dict[str, np.ndarray]


def _fields(det: Detections) -> dict[str, np.ndarray]:
    return {
        "detected": det.detected,
        "prob": det.probs.astype(np.float32),
        "box": det.boxes.astype(np.float32),
        "landmarks": det.landmarks.astype(np.float32),
    }


@cache
def mtcnn_weights_sha256() -> dict[str, str]:
    import facenet_pytorch

    data = Path(facenet_pytorch.__file__).parent / "data"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.glob("*net.pt"))}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


class FacePipeline:
    """Detect, track and crop the subject's face in a clip's frames."""

    def __init__(self, config: FaceConfig | None = None, device: str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        self.config = config or FaceConfig()
        if not self.config.crop_size:
            self.config = replace(self.config, crop_size=DEFAULT_CROP)
        self.device = torch.device(device)
        c = self.config
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=c.min_face_size,
            thresholds=list(c.thresholds),
            factor=c.factor,
            post_process=False,
            device=self.device,
        )
        # Channels-last layout: PyTorch's CPU max-pool and small convolutions run 2–5×
        # faster on it than on NCHW for MTCNN's shapes; outputs differ by float rounding.
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def provenance(self) -> dict[str, object]:
        return self.describe(self.config)

    @staticmethod
    def describe(config: FaceConfig) -> dict[str, object]:
        """Provenance of crops made with ``config`` (without building MTCNN)."""
        cfg = asdict(config)
        cfg["thresholds"] = list(config.thresholds)
        cfg["sampling"] = config.sampling.describe()
        cfg.pop("batch_size")  # no effect on the output
        if not config.min_face_fraction:  # stores written before the hint existed match
            cfg.pop("min_face_fraction")
        return {
            "detector": "mtcnn",
            "detector_package": f"facenet-pytorch {version('facenet-pytorch')}",
            "detector_weights_sha256": mtcnn_weights_sha256(),
            "color": "RGB",
            **cfg,
        }

    def min_face(self, height: int, width: int) -> float:
        """Smallest face searched for in frames of this size, in pixels."""
        return max(float(self.config.min_face_size), self.config.min_face_fraction * min(height, width))

    def detect(self, frames: np.ndarray, prev: np.ndarray | None = None) -> Detections:
        """Run MTCNN over ``frames`` [T, H, W, 3] uint8 in batches; pick one face per frame.

        ``prev`` is the subject's box in the frame before these (tracking across chunks).
        """
        from facenet_pytorch.models.utils.detect_face import detect_face

        n = len(frames)
        boxes = np.full((n, 4), np.nan)
        probs = np.zeros(n, dtype=np.float32)
        lms = np.full((n, 5, 2), np.nan)
        bs = self.config.batch_size
        m = self.mtcnn
        minsize = self.min_face(*frames.shape[1:3])
        for a in range(0, n, bs):
            with torch.inference_mode():
                found, points = detect_face(
                    frames[a : a + bs], minsize, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, m.device
                )
            for j, (fb, fp) in enumerate(zip(found, points, strict=True)):
                fb, fp = (
                    np.asarray(fb, dtype=float).reshape(-1, 5),
                    np.asarray(fp, dtype=float).reshape(-1, 5, 2),
                )
                if not len(fb):
                    continue
                order = np.argsort((fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1]))[::-1]  # largest first
                cb, cp, cl = fb[order, :4], fb[order, 4], fp[order]
                k = self._choose(cb, cp, prev)
                boxes[a + j], probs[a + j], lms[a + j] = cb[k], cp[k], cl[k]
                prev = cb[k]
        return Detections(boxes, probs, lms, ~np.isnan(boxes[:, 0]))

    def _choose(self, boxes: np.ndarray, probs: np.ndarray, prev: np.ndarray | None) -> int:
        if prev is not None:
            iou = _iou(prev, boxes)
            near = iou >= self.config.track_iou
            if near.any():
                return int(np.argmax(np.where(near, probs + 1e-3 * iou, -1.0)))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(np.lexsort((area, probs))[-1])  # most confident, then largest

    def _warp(self, frames: np.ndarray, boxes: np.ndarray, lms: np.ndarray) -> np.ndarray:
        """Aligned crops: one batched ``grid_sample`` over the region each crop covers.

        Only that region (the rotated square plus two pixels, zero outside the frame,
        as ``grid_sample``'s zero padding would read it) is converted to float, not the
        whole frame: at 540p that is ~20× less memory traffic. The affine map is
        re-expressed in the region's coordinates, so the crop is the same up to float
        rounding.
        """
        n, h, w, _ = frames.shape
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + self.config.margin)
        if self.config.align:
            eye = lms[:, 1] - lms[:, 0]
            angle = np.nan_to_num(np.arctan2(eye[:, 1], eye[:, 0]))
        else:
            angle = np.zeros(n)
        cos, sin = np.cos(angle), np.sin(angle)
        # the region: a square of side r around each crop, at pixel origin (ox, oy)
        half = side / 2 * (np.abs(cos) + np.abs(sin))
        r = int(np.ceil(2 * half.max())) + 4
        ox = np.floor(cx - r / 2).astype(int)
        oy = np.floor(cy - r / 2).astype(int)
        region = np.zeros((n, r, r, 3), np.uint8)
        for i in range(n):  # n slice copies of r² pixels, no per-pixel work
            x0, y0 = max(ox[i], 0), max(oy[i], 0)
            x1, y1 = min(ox[i] + r, w), min(oy[i] + r, h)
            if x1 > x0 and y1 > y0:
                region[i, y0 - oy[i] : y1 - oy[i], x0 - ox[i] : x1 - ox[i]] = frames[i, y0:y1, x0:x1]
        # output (u, v) in [-1, 1] -> region coordinates in [-1, 1] (align_corners=False)
        theta = np.stack(
            [
                np.stack([side / r * cos, -side / r * sin, (2 * (cx - ox)) / r - 1], axis=1),
                np.stack([side / r * sin, side / r * cos, (2 * (cy - oy)) / r - 1], axis=1),
            ],
            axis=1,
        )
        s = self.config.crop_size
        x = torch.from_numpy(region).to(self.device).permute(0, 3, 1, 2).float()
        grid = F.affine_grid(
            torch.as_tensor(theta, dtype=torch.float32, device=self.device), [n, 3, s, s], align_corners=False
        )
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def __call__(self, frames: np.ndarray, *, source: str = "") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Crops and per-frame fields for one clip's frames held in memory."""
        crops, _, fields = self.process([(frames, np.zeros(len(frames)))], source=source)
        return crops, fields

    def process(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, source: str = ""
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """All crops, timestamps and per-frame fields of a clip (see :meth:`stream`)."""
        windows = list(self.stream(chunks, source=source))
        fields = {k: np.concatenate([w.fields[k] for w in windows]) for k in FACE_FIELDS}
        return np.concatenate([w.crops for w in windows]), np.concatenate([w.times for w in windows]), fields

    def stream(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, source: str = ""
    ) -> Iterator[CropWindow]:
        """Detect, track and crop a clip streamed as ``(frames, times)`` chunks.

        Yields the crops in windows of ``batch_size`` frames as soon as they are final,
        so a clip of any length holds at most a few windows: decoded frames are never
        kept, and neither are crops already handed on. In ``reuse`` mode, frames before
        the first detection wait (at most ``MAX_PENDING`` of them) to take the first
        box; if the face appears later than that, the waiting frames go on all-zero. A
        clip with no face in any frame raises :class:`MediaError` after its last window
        (callers drop what they took of it).
        """
        waiting: list[tuple[CropWindow, np.ndarray]] = []  # (window, frames) before any detection
        last: tuple[np.ndarray, np.ndarray] | None = None  # last good (box, landmarks)
        prev_box = None
        n_frames = n_found = 0
        for frames, ts in _rebatch(chunks, self.config.batch_size):
            if min(frames.shape[1:3]) < self.min_face(*frames.shape[1:3]):
                # MTCNN's image pyramid is empty for frames smaller than its smallest face
                raise MediaError(
                    f"{source or 'video'}: frames of {frames.shape[2]}×{frames.shape[1]} px are smaller"
                    f" than the smallest face searched for ({self.config.min_face_size} px, --min-face-size)"
                )
            det = self.detect(frames, prev_box)
            n_frames += len(frames)
            good = np.flatnonzero(det.detected)
            n_found += len(good)
            if len(good):
                prev_box = det.boxes[good[-1]]
            boxes, lms = det.boxes, det.landmarks
            if self.config.missing == "reuse" and (last is not None or len(good)):
                # index of the last good frame at or before each frame (-1: none in this chunk)
                src = np.maximum.accumulate(np.where(det.detected, np.arange(len(frames)), -1))
                carry = last if last is not None else (det.boxes[good[0]], det.landmarks[good[0]])
                boxes = np.where((src >= 0)[:, None], det.boxes[np.maximum(src, 0)], carry[0])
                lms = np.where((src >= 0)[:, None, None], det.landmarks[np.maximum(src, 0)], carry[1])
            window = CropWindow(self._crop(frames, boxes, lms), ts, _fields(det))
            if self.config.missing == "reuse" and last is None:
                if not len(good):
                    if sum(len(f) for _, f in waiting) + len(frames) <= MAX_PENDING:
                        waiting.append((window, frames))
                        continue
                    yield from (w for w, _ in waiting)  # waited long enough: they stay all-zero
                    waiting = []
                else:
                    first = (det.boxes[good[0]], det.landmarks[good[0]])
                    for w, fr in waiting:
                        yield replace(w, crops=self._crop_with(fr, first))
                    waiting = []
            if len(good):
                last = (det.boxes[good[-1]], det.landmarks[good[-1]])
            yield window
        yield from (w for w, _ in waiting)
        if not n_found:
            raise MediaError(f"{source or 'clip'}: no face found in {n_frames} frame(s)")

    def _crop_with(self, frames: np.ndarray, box_lm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        n = len(frames)
        return self._crop(frames, np.repeat(box_lm[0][None], n, 0), np.repeat(box_lm[1][None], n, 0))

    def _crop(self, frames: np.ndarray, boxes: np.ndarray, lms: np.ndarray) -> np.ndarray:
        """Crops for frames with a box; all-zero crops where the box is NaN."""
        out = np.zeros((len(frames), self.config.crop_size, self.config.crop_size, 3), np.uint8)
        idx = np.flatnonzero(~np.isnan(boxes[:, 0]))
        bs = self.config.batch_size
        for a in range(0, len(idx), bs):
            sel = idx[a : a + bs]
            out[sel] = self._warp(frames[sel], boxes[sel], lms[sel])
        return out


def _rebatch(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same frames in batches of exactly ``size`` (the last one shorter).

    MTCNN's numbers depend (in the last float bits) on the batch shape, so detection
    batches are fixed by the clip alone, not by how decoding happened to chunk it.
    """
    frames: list[np.ndarray] = []
    times: list[np.ndarray] = []
    held = 0
    for f, t in chunks:
        frames.append(f)
        times.append(t)
        held += len(f)
        while held >= size:
            fa, ta = np.concatenate(frames), np.concatenate(times)
            yield fa[:size], ta[:size]
            frames, times, held = [fa[size:]], [ta[size:]], held - size
    if held:
        yield np.concatenate(frames), np.concatenate(times)


DEFAULT_CROP = 224
MAX_PENDING = 256
"""Frames held before the first detection in ``reuse`` mode (bounded memory)."""


FACE_FIELDS = {
    "detected": {"shape": [], "dtype": "bool"},
    "prob": {"shape": [], "dtype": "float32"},
    "box": {"shape": [4], "dtype": "float32"},
    "landmarks": {"shape": [5, 2], "dtype": "float32"},
}
"""Per-frame arrays stored beside the ``faces`` crops."""
