"""The data layer's vocabulary: what a run selects (:class:`DataConfig`), what a method
is told about each input (:class:`StreamInfo`), what it receives (:class:`Batch`), and
the training-split normaliser. Shared by selection (:mod:`avx.fuse.selection`), loading
(:mod:`avx.fuse.data`) and collation (:mod:`avx.fuse.collate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from avx.errors import AvxError, UnknownNameError

DEMOGRAPHICS = ("sex", "race", "age_group")
BLOCK_SAMPLES = 512


@dataclass(frozen=True)
class DataConfig:
    """Which data a run uses (saved in ``RUN/config.json``).

    Attributes:
        streams: store streams, optionally with layers: ``audio/wavlm-large@all``.
        labels: label source (see :mod:`avx.fuse.targets`).
        task: ``multiclass``, ``multilabel`` or ``regression``.
        level: ``auto``, ``sequence`` or ``frame`` targets for dimensional labels.
        bins: thresholds for binning a dimension into 3 classes.
        soft_targets: multilabel targets are the vote distribution, not multi-hot;
            multiclass training uses the label-smoothed vote distribution (metrics
            still score the plurality class).
        protocol / fold: stored evaluation protocol (None = the store's default).
        length: length policies, ``POLICY`` for all streams or ``STREAM=POLICY``.
        align: None, ``labels``, a stream name or ``rate:R``.
        memory_gb: read everything once when the selection is smaller than this.
        groups: sample columns used for fairness metrics (``age_group`` is derived).
        extra_labels: further label sources resolved for the same task, carried in
            every batch as ``Batch.extra_targets[source]`` (methods that train parts of
            the model on other labels, e.g. the two-stage method's voice-only and
            face-only rated stage 1). Samples are still selected by ``labels``.
        train_labels: the label source the training loss uses (default: ``labels``);
            model selection and every report still score ``labels``. Trains on one
            rater modality and tests on another (the two-stage paper's models 1-9
            learn from voice-only or face-only ratings and are scored on AV ratings).
        modalities: keep only the streams of these modalities (``audio``, ``video``,
            ``text``) from ``streams``; empty keeps all. Lets one ``--streams`` list
            serve a grid whose rows use one modality or both.
    """

    streams: tuple[str, ...]
    labels: str = "av"
    task: str = "multiclass"
    level: str = "auto"
    bins: tuple[float, float] = (-0.05, 0.05)
    soft_targets: bool = False
    protocol: str | None = None
    fold: int = 0
    length: tuple[str, ...] = ()
    align: str | None = None
    memory_gb: float = 8.0
    groups: tuple[str, ...] = DEMOGRAPHICS
    extra_labels: tuple[str, ...] = ()
    train_labels: str | None = None
    modalities: tuple[str, ...] = ()

    def label_sources(self) -> tuple[str, ...]:
        """The sources beside ``labels`` every batch must carry: ``extra_labels`` and
        ``train_labels`` (when it differs from ``labels``), each once."""
        train = (self.train_labels,) if self.train_labels else ()
        return tuple(s for s in dict.fromkeys((*self.extra_labels, *train)) if s != self.labels)


@dataclass(frozen=True)
class StreamInfo:
    """What a method needs to know about one input: feature size, layers, modality."""

    dim: int
    layers: int = 1
    modality: str = "audio"


@dataclass(frozen=True)
class AlignedRaw:
    """A raw input aligned to another stream's clock: the frames its backbone encodes
    and which of the backbone's output frames each aligned frame takes (the frame
    nearest in time, after the length policy: what aligning its cached features picks).

    Crops: each crop picked, once (a 25 fps video aligned to 50 Hz audio picks each
    crop twice; it is encoded once). Waveform: the whole clip, since a speech model's
    frames exist only after the model and each sees its context."""

    data: np.ndarray  # crops [N, S, S, 3] or samples [N]
    frames: np.ndarray  # [T] int, indices into the backbone's output frames


@dataclass
class Batch:
    """A padded batch. ``inputs[s]`` is ``[B, T, D]`` (``[B, T, L, D]`` with layers)."""

    ids: list[str]
    index: np.ndarray
    inputs: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]  # [B, T] bool, True = real frame
    present: dict[str, torch.Tensor]  # [B] bool
    targets: torch.Tensor  # [B] | [B, K] | [B, T] | [B, T, K]
    target_mask: torch.Tensor  # [B] | [B, T] bool
    # Frames a test-time perturbation corrupted, per stream ([B, T] bool), for analyses.
    corrupted: dict[str, torch.Tensor] = field(default_factory=dict)
    # Targets of DataConfig.extra_labels, per source, shaped as ``targets``, and whether
    # each sample has that source's label ([B] bool).
    extra_targets: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # End-to-end inputs still raw (crops, waveform): the model's front end encodes them.
    raw: tuple[str, ...] = ()
    # Aligned raw inputs: which of the backbone's output frames each aligned frame
    # takes, [B, T] long, -1 = padding (see AlignedRaw).
    frame_index: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> Batch:
        mv = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return replace(
            self,
            inputs=mv(self.inputs),
            masks=mv(self.masks),
            present=mv(self.present),
            targets=self.targets.to(device),
            target_mask=self.target_mask.to(device),
            extra_targets=mv(self.extra_targets),
            extra_masks=mv(self.extra_masks),
            frame_index=mv(self.frame_index),
        )

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory, for an asynchronous copy to the GPU."""
        pin = lambda d: {k: v.pin_memory() for k, v in d.items()}  # noqa: E731
        return replace(
            self,
            inputs=pin(self.inputs),
            masks=pin(self.masks),
            present=pin(self.present),
            frame_index=pin(self.frame_index),
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Normalizer:
    """Per-dimension mean/std per stream, fitted on training frames only."""

    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)

    def state_dict(self) -> dict[str, dict[str, list]]:
        return {s: {"mean": self.mean[s].tolist(), "std": self.std[s].tolist()} for s in self.mean}

    @classmethod
    def from_state_dict(cls, d: dict[str, dict[str, list]]) -> Normalizer:
        return cls(
            {s: np.asarray(v["mean"], np.float32) for s, v in d.items()},
            {s: np.asarray(v["std"], np.float32) for s, v in d.items()},
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """``mean:STREAM`` / ``std:STREAM`` tensors, as ``normalizer.safetensors`` holds them."""
        out = {f"mean:{s}": torch.as_tensor(v) for s, v in self.mean.items()}
        out.update({f"std:{s}": torch.as_tensor(v) for s, v in self.std.items()})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Normalizer:
        streams = [k.removeprefix("mean:") for k in t if k.startswith("mean:")]
        return cls(
            {s: t[f"mean:{s}"].numpy().astype(np.float32) for s in streams},
            {s: t[f"std:{s}"].numpy().astype(np.float32) for s in streams},
        )

    def __call__(self, stream: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(x - mean) / std`` in float32; with ``out`` (a float32 slot of a batch, as
        :func:`avx.fuse.collate.collate` passes) written in place: no temporaries, the
        same bits."""
        if out is None:
            return (x - self.mean[stream]) / self.std[stream]
        np.subtract(x, self.mean[stream], out=out)
        return np.divide(out, self.std[stream], out=out)


def parse_stream(spec: str) -> tuple[str, str | None]:
    """``audio/wavlm@6+12`` -> (``audio/wavlm``, ``6+12``)."""
    name, _, layers = spec.partition("@")
    return name.strip(), (layers.strip() or None)


def parse_length(policies: tuple[str, ...], streams: list[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for item in policies:
        target, _, pol = item.rpartition("=")
        kind, _, n = pol.partition(":")
        if kind not in ("truncate", "pad", "resample") or not n.isdigit() or int(n) < 1:
            raise AvxError(f"bad length policy '{item}'; use truncate:N, pad:N or resample:N (N >= 1)")
        hit = [s for s in streams if not target or s == target or s.split("/")[0] == target]
        if not hit:
            raise UnknownNameError("stream or modality in --length", target, streams)
        for s in hit:
            out[s] = (kind, int(n))
    return out
