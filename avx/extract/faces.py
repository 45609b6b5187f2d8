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

    def provenance(self) -> dict[str, object]:
        return self.describe(self.config)

    @staticmethod
    def describe(config: FaceConfig) -> dict[str, object]:
        """Provenance of crops made with ``config`` (without building MTCNN)."""
        cfg = asdict(config)
        cfg["thresholds"] = list(config.thresholds)
        cfg["sampling"] = config.sampling.describe()
        cfg.pop("batch_size")  # no effect on the output
        return {
            "detector": "mtcnn",
            "detector_package": f"facenet-pytorch {version('facenet-pytorch')}",
            "detector_weights_sha256": mtcnn_weights_sha256(),
            "color": "RGB",
            **cfg,
        }

    def detect(self, frames: np.ndarray, prev: np.ndarray | None = None) -> Detections:
        """Run MTCNN over ``frames`` [T, H, W, 3] uint8 in batches; pick one face per frame.

        ``prev`` is the subject's box in the frame before these (tracking across chunks).
        """
        n = len(frames)
        boxes = np.full((n, 4), np.nan)
        probs = np.zeros(n, dtype=np.float32)
        lms = np.full((n, 5, 2), np.nan)
        bs = self.config.batch_size
        for a in range(0, n, bs):
            with torch.inference_mode():
                b, p, lm = self.mtcnn.detect(frames[a : a + bs], landmarks=True)
            for j in range(len(b)):
                if b[j] is None:
                    continue
                cb = np.asarray(b[j], dtype=float).reshape(-1, 4)
                cp = np.asarray(p[j], dtype=float).reshape(-1)
                cl = np.asarray(lm[j], dtype=float).reshape(-1, 5, 2)
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
        _, h, w, _ = frames.shape
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + self.config.margin)
        if self.config.align:
            eye = lms[:, 1] - lms[:, 0]
            angle = np.nan_to_num(np.arctan2(eye[:, 1], eye[:, 0]))
        else:
            angle = np.zeros(len(boxes))
        cos, sin = np.cos(angle), np.sin(angle)
        theta = np.stack(
            [
                np.stack([side / w * cos, -side / w * sin, 2 * cx / w - 1], axis=1),
                np.stack([side / h * sin, side / h * cos, 2 * cy / h - 1], axis=1),
            ],
            axis=1,
        )
        s = self.config.crop_size
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
        grid = F.affine_grid(
            torch.as_tensor(theta, dtype=torch.float32, device=self.device),
            [len(frames), 3, s, s],
            align_corners=False,
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
        """Detect, track and crop a clip streamed as ``(frames, times)`` chunks.

        Only crops are kept, never the decoded frames, so a long clip costs
        ``crop_size² × 3`` bytes per sampled frame. In ``reuse`` mode, frames before the
        first detection wait (at most ``MAX_PENDING`` of them) to take the first box;
        earlier ones stay all-zero. A clip with no face in any frame raises
        :class:`MediaError`.
        """
        crops, times, dets = [], [], []
        pending: list[tuple[int, np.ndarray]] = []  # (chunk index, frames) before any detection
        last: tuple[np.ndarray, np.ndarray] | None = None  # last good (box, landmarks)
        prev_box = None
        n_frames = 0
        for frames, ts in _rebatch(chunks, self.config.batch_size):
            if min(frames.shape[1:3]) < self.config.min_face_size:
                # MTCNN's image pyramid is empty for frames smaller than its smallest face
                raise MediaError(
                    f"{source or 'video'}: frames of {frames.shape[2]}×{frames.shape[1]} px are smaller"
                    f" than the smallest face searched for ({self.config.min_face_size} px, --min-face-size)"
                )
            det = self.detect(frames, prev_box)
            good = np.flatnonzero(det.detected)
            if len(good):
                prev_box = det.boxes[good[-1]]
            boxes, lms = det.boxes.copy(), det.landmarks.copy()
            if self.config.missing == "reuse":
                if last is not None or len(good):
                    # index of the last good frame at or before each frame (-1: none in this chunk)
                    src = np.maximum.accumulate(np.where(det.detected, np.arange(len(frames)), -1))
                    carry = last if last is not None else (det.boxes[good[0]], det.landmarks[good[0]])
                    boxes = np.where((src >= 0)[:, None], det.boxes[np.maximum(src, 0)], carry[0])
                    lms = np.where((src >= 0)[:, None, None], det.landmarks[np.maximum(src, 0)], carry[1])
                if len(good):
                    if last is None and pending:
                        first = (det.boxes[good[0]], det.landmarks[good[0]])
                        for ci, fr in pending:
                            crops[ci] = self._crop_with(fr, first)
                        pending = []
                    last = (det.boxes[good[-1]], det.landmarks[good[-1]])
                elif last is None and sum(len(f) for _, f in pending) + len(frames) <= MAX_PENDING:
                    pending.append((len(crops), frames))
            crops.append(self._crop(frames, boxes, lms))
            times.append(ts)
            dets.append(det)
            n_frames += len(frames)
        if not dets or not any(d.detected.any() for d in dets):
            raise MediaError(f"{source or 'clip'}: no face found in {n_frames} frame(s)")
        fields = {
            "detected": np.concatenate([d.detected for d in dets]),
            "prob": np.concatenate([d.probs for d in dets]).astype(np.float32),
            "box": np.concatenate([d.boxes for d in dets]).astype(np.float32),
            "landmarks": np.concatenate([d.landmarks for d in dets]).astype(np.float32),
        }
        return np.concatenate(crops), np.concatenate(times), fields

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
