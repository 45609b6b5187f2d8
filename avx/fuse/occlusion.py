"""Face occlusion at test time: a stand-in for COLD's face-mask corruption.

A fraction ``p`` of each clip's face crops (one run of consecutive frames at a random,
seeded start, as COLD masks faces in its Fig. 5) gets a lower-face patch — a flat
light-blue rectangle from just below the nose to the chin, like a surgical mask — and
the visual stream's backbone is re-run on those crops. The backbone is rebuilt from the
stream's provenance (name, weights, options such as ``color``); before trusting it,
the clean crops of the first clip are re-encoded and compared with the stored features, so an occlusion result
never silently mixes two different feature extractors.

Needs the ``faces`` stream, a visual backbone stream computed from it, and the run's
features in memory. An end-to-end run (``video/faces`` input) gets the occluded crops
themselves, and its own fine-tuned backbone encodes them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from avx.errors import AvxError
from avx.fuse.data import FusionData
from avx.store_schema import spec as S

if TYPE_CHECKING:
    from avx.extract.backbones.base import VisualBackbone

PATCH_RGB = (170, 200, 225)
PATCH_ROWS = (0.58, 0.98)
PATCH_COLS = (0.14, 0.86)


def occlude_crops(crops: np.ndarray) -> np.ndarray:
    """Crops ``[T, S, S, 3]`` uint8 with the lower-face patch pasted on."""
    out = crops.copy()
    s = crops.shape[1]
    r0, r1 = (round(f * s) for f in PATCH_ROWS)
    c0, c1 = (round(f * crops.shape[2]) for f in PATCH_COLS)
    out[:, r0:r1, c0:c1] = np.asarray(PATCH_RGB, np.uint8)
    return out


def _backbone(data: FusionData, stream: str, device: str) -> VisualBackbone:
    from avx.extract.backbones import create_backbone

    prov = data.streams[stream].provenance
    if prov.get("input_stream") != "faces":
        raise AvxError(f"--occlude: stream {stream} was not computed from face crops")
    return create_backbone(prov, device=device, amp=False)


def occluded_data(
    data: FusionData, p: float, split: str, *, seed: int = 0, device: str = "cpu"
) -> FusionData:
    """A copy of ``data`` whose visual features on ``split`` come from occluded crops.

    The copy carries ``corrupted[stream][i]``: a boolean per processed frame of sample
    ``i`` (True = occluded), for analyses of per-frame fusion weights.
    """
    if not data.in_memory:
        raise AvxError("--occlude needs the selected features in memory (raise --memory-gb)")
    if "faces" not in data.store.streams:
        raise AvxError(f"{data.store.url}: --occlude needs the faces stream")
    visual = [s for s in data.stream_names if s.startswith("video/")]
    if not visual:
        raise AvxError("--occlude needs a visual backbone stream (video/<backbone>) in the run")
    faces = data.store.stream("faces")
    out = copy.copy(data)
    out.features = dict(data.features)
    out.corrupted = {}
    rng = np.random.default_rng(seed)
    idx = [
        i for i in data.indices(split) if data.ids[i] in faces and all(data.available[v][i] for v in visual)
    ]
    ids = [data.ids[i] for i in idx]
    if not ids:
        raise AvxError(f"--occlude: no sample of split '{split}' has face crops")
    crops_all = faces.read_many(ids)
    chosen = []
    for crops in crops_all:
        t = len(crops)
        k = round(p * t)
        sel = np.zeros(t, bool)
        start = int(rng.integers(0, t - k + 1))
        sel[start : start + k] = True
        chosen.append(sel)
    for s in visual:
        if s in data.raw:  # end to end: the crops themselves, which the run's backbone encodes
            feats = list(out.features[s])
            corrupted = [None] * len(data.ids)
            times_all = faces.read_many(ids, S.TIMESTAMPS) if data.align else [None] * len(ids)
            for i, crops, m, times in zip(idx, crops_all, chosen, times_all, strict=True):
                hidden = crops.copy()
                hidden[m] = occlude_crops(crops[m])
                ref = data.ref_times[i] if data.align else None
                feats[i] = data._process(s, hidden, times, ref)  # aligned as the clean crops
                corrupted[i] = data.place(s, m, times, ref)
            out.features[s], out.corrupted[s] = feats, corrupted
            continue
        bb = _backbone(data, s, device)
        stored = data.streams[s]
        raws = stored.read_many(ids)  # one read per part, as the data layer reads
        times_all = stored.read_many(ids, S.TIMESTAMPS) if data.align else [None] * len(ids)
        clean, _ = bb(crops_all[0])
        ref = raws[0].reshape(clean.shape).astype(np.float32)
        err = float(np.abs(clean - ref).max() / (np.abs(ref).max() + 1e-12))
        if err > 1e-2:
            raise AvxError(
                f"--occlude: re-running {s} does not reproduce the stored features "
                f"(relative error {err:.3g}); the weights in its provenance are not available here"
            )
        feats = list(out.features[s])
        corrupted: list[np.ndarray | None] = [None] * len(data.ids)
        new = bb(np.concatenate([occlude_crops(c[m]) for c, m in zip(crops_all, chosen, strict=True)]))[0]
        pos = 0
        for i, m, raw, times in zip(idx, chosen, raws, times_all, strict=True):
            raw = raw.astype(np.float32)  # a copy: the stored block stays untouched
            raw[m] = new[pos : pos + m.sum()].reshape(raw[m].shape)
            pos += int(m.sum())
            ref = data.ref_times[i]
            feats[i] = data._process(s, raw, times, ref)
            corrupted[i] = data.place(s, m.astype(np.float32)[:, None], times, ref)[:, 0] > 0.5
        out.features[s] = feats
        out.corrupted[s] = corrupted
    return out
