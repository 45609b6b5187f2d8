"""Collation: processed samples padded into a :class:`~avx.fuse.datatypes.Batch`.

The last of the three steps from a store to batches (:mod:`avx.fuse.selection` decides
what, :mod:`avx.fuse.data` reads and normalises).
"""

from __future__ import annotations

import numpy as np
import torch

from avx.fuse.datatypes import AlignedRaw, Batch, Normalizer
from avx.fuse.selection import Selection
from avx.fuse.targets import Targets


def collate(
    sel: Selection, idx: np.ndarray, feats: dict[str, list], tgts: list | None, norm: Normalizer
) -> Batch:
    """Pad processed samples ``idx`` (positions in ``sel.ids``) into a :class:`Batch`.

    Features are normalised with ``norm``, padded at the end to the longest sample (or
    to a ``pad:N``/``resample:N`` length), with masks of the real frames and a presence
    flag per stream; targets come per sequence from the selection or per frame from
    ``tgts`` (-1 / NaN frames are masked out). Raw inputs stay as stored; aligned ones
    also give the backbone output frames to hand on (``frame_index``, see AlignedRaw).
    """
    inputs, masks, present, frame_index = {}, {}, {}, {}
    b = len(idx)
    fixed = {s: n for s, (k, n) in sel.length.items() if k in ("pad", "resample")}
    for s in sel.stream_names:
        seqs = feats[s]
        if sel.align is not None and s in sel.raw:
            lengths = [0 if f is None else len(f.frames) for f in seqs]
            index = np.full((b, fixed.get(s) or max(1, *lengths)), -1, np.int64)
            for j, f in enumerate(seqs):
                if isinstance(f, AlignedRaw):
                    index[j, : len(f.frames)] = f.frames
            frame_index[s] = torch.from_numpy(index)
            seqs = [None if f is None else f.data for f in seqs]
        lengths = [0 if f is None else len(f) for f in seqs]
        raw = sel.raw.get(s)
        # a waveform's length is in samples: its backbone decides how many frames it makes
        t = (None if raw is not None and raw.waveform else fixed.get(s)) or max(1, *lengths)
        if raw is not None:  # end-to-end input: as stored (uint8 crops, float32 samples)
            x = np.zeros((b, t, *raw.shape), raw.dtype)
        else:
            shape = (sel.info[s].layers, sel.info[s].dim) if sel.info[s].layers > 1 else (sel.info[s].dim,)
            x = np.zeros((b, t, *shape), np.float32)
        m = np.zeros((b, t), bool)
        for j, f in enumerate(seqs):
            if f is not None and len(f):
                if raw is not None:
                    x[j, : len(f)] = f
                else:
                    norm(s, f, out=x[j, : len(f)])
                m[j, : len(f)] = True
        inputs[s], masks[s] = torch.from_numpy(x), torch.from_numpy(m)
        present[s] = torch.tensor([n > 0 for n in lengths])
    rows = sel.rows[idx]
    tv = sel.targets_all
    if tgts is not None:
        t = max(max(x.shape[1] for x in inputs.values()), *(len(f) for f in tgts))
        k = () if tv.task == "multiclass" else (tv.n_outputs,)
        y = np.zeros((b, t, *k), np.int64 if tv.task == "multiclass" else np.float32)
        tm = np.zeros((b, t), bool)
        if tv.task == "multiclass":
            y[:] = -1
        for j, f in enumerate(tgts):
            y[j, : len(f)] = f
            ok = f >= 0 if tv.task == "multiclass" else np.isfinite(f).all(-1)
            tm[j, : len(f)] = ok
        y = np.nan_to_num(y) if y.dtype != np.int64 else y
        targets, tmask = torch.from_numpy(y), torch.from_numpy(tm)
    else:
        targets = _sequence_targets(tv, rows)
        tmask = torch.ones(b, dtype=torch.bool)
    extra = {src: _sequence_targets(t, rows) for src, t in sel.extra_targets.items()}
    extra_masks = {src: torch.from_numpy(sel.extra_labelled[src][rows]) for src in sel.extra_targets}
    return Batch(
        ids=[str(sel.ids[i]) for i in idx],
        index=np.asarray(idx),
        inputs=inputs,
        masks=masks,
        present=present,
        targets=targets,
        target_mask=tmask,
        extra_targets=extra,
        extra_masks=extra_masks,
        raw=tuple(s for s in sel.stream_names if s in sel.raw),
        frame_index=frame_index,
    )


def _sequence_targets(t: Targets, rows: np.ndarray) -> torch.Tensor:
    """Per-sequence targets of ``rows``: class indices (long) or values (float, NaN as 0:
    masks say which count)."""
    v = t.values[rows]
    if t.task == "multiclass":
        return torch.as_tensor(v, dtype=torch.long)
    return torch.as_tensor(np.nan_to_num(v), dtype=torch.float32)
