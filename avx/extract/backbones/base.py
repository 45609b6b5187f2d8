"""What every backbone exposes, so the extraction loop never branches on its name.

A backbone is a class built from its config, ``cls(config, weights=, runtime=, name=)``:
``config`` is a frozen ``<Name>Config`` dataclass holding every setting that shapes the
features (preprocessing included), so a stream's provenance can store it whole and
``create_backbone(provenance)`` rebuild the same extractor. It returns features per frame:

- audio backbones take a mono float32 waveform at their ``sample_rate``;
- visual backbones take aligned face crops ``[T, S, S, 3]`` uint8 from the ``faces``
  stream (any ``S``: crops are resized to the backbone's input size on the device);
- text backbones take one transcript string.

``provenance()`` returns every parameter that determines the features; a stream can
only be resumed with identical provenance, so a stream never mixes settings.
Per-frame side outputs (EmoFAN's expression logits, valence and arousal) are declared
in ``fields`` and stored beside the features.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from avx.errors import AvxError
from avx.serialization import with_options

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(ABC):
    """Common surface of audio, visual and text backbones."""

    modality: ClassVar[str]
    config_class: ClassVar[type]
    """The ``<Name>Config`` dataclass this backbone is built from."""
    config: Any
    """The settings it was built with (recorded whole in the stream's provenance)."""
    name: str
    """Registry name (``mfcc``, ``mfcc.sfav``, ``wavlm-large``): the stream is ``<modality>/<name>``."""
    frame_shape: tuple[int, ...]
    default_dtype: str = "float16"
    frame_rate: float | None = None
    layer_axis: int | None = None
    fields: ClassVar[dict[str, dict[str, Any]]] = {}
    """Extra per-frame outputs, name -> ``{"shape": [...], "dtype": str}``."""
    expects: ClassVar[str] = ""
    """One line for ``avx extract --list``: the weights this backbone expects."""
    options: dict[str, Any] = {}  # noqa: RUF012 (replaced per instance by create_backbone)
    """The ``--opt`` settings it was created with; recorded in provenance (when any) so
    ``create_backbone(provenance)`` rebuilds exactly this extractor."""

    @property
    def stream_name(self) -> str:
        return f"{self.modality}/{self.name}"

    @classmethod
    def configure(cls, config: Any, options: Mapping[str, Any], *, where: str) -> Any:
        """``config`` with the ``--opt`` ``options`` applied (a subclass may add shorthands)."""
        return with_options(config, options, where)

    @abstractmethod
    def provenance(self) -> dict[str, Any]: ...


@dataclass
class Runtime:
    """Device, batch size and precision of a torch backbone.

    ``batch_size=None`` is *auto*: 16 on CPU; on CUDA start at 256 and halve on
    out-of-memory until a batch fits (the fitted size is kept for the rest of the run).
    Mixed precision (float16 autocast) is used on CUDA unless ``amp=False``; it is
    recorded in provenance as ``precision`` because it changes the numbers.
    """

    device: torch.device
    batch_size: int | None = None
    amp: bool = True
    trust_pickle: bool = False
    """Checkpoints that pickle Python objects may be unpickled (``--trust-pickle``)."""

    @classmethod
    def create(
        cls, device: str = "cpu", batch_size: int | None = None, amp: bool = True, trust_pickle: bool = False
    ) -> Runtime:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise AvxError(f"unknown --device '{device}'; use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise AvxError(f"--device {device}: CUDA is not available on this machine")
        return cls(dev, batch_size, amp and dev.type == "cuda", trust_pickle)

    @property
    def precision(self) -> str:
        return "amp-float16" if self.amp else "float32"

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def resolved_batch_size(self) -> int:
        """The batch size now: the given one, or auto's (16 on CPU, 256 on CUDA until an
        out-of-memory error halves it)."""
        if self.batch_size is None:
            self.batch_size = 256 if self.device.type == "cuda" else 16
        return self.batch_size

    def batches(self, n: int, run: Callable[[int, int], None]) -> None:
        """Call ``run(start, stop)`` over ``range(n)`` in batches, halving on CUDA OOM."""
        self.resolved_batch_size()
        a = 0
        while a < n:
            b = min(n, a + self.batch_size)
            try:
                run(a, b)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                warnings.warn(f"CUDA out of memory: batch size lowered to {self.batch_size}", stacklevel=2)
                continue
            a = b


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Random init that is identical in every run (resume must reproduce features)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class AudioBackbone(Backbone):
    modality = "audio"
    sample_rate: int

    @abstractmethod
    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, ...]:
        """``(features [T, ...], timestamps [T] in seconds)`` for one clip, plus a dict of
        per-frame arrays when the backbone declares ``fields`` (the waveform's ``samples``)."""


class TextBackbone(Backbone):
    modality = "text"

    @abstractmethod
    def __call__(self, text: str, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(features [T, ...], timestamps [T])`` for one transcript."""


@dataclass(frozen=True)
class ImagePreprocess:
    """How uint8 RGB crops become a network input (recorded in provenance).

    ``color="BGR"`` swaps the channels first (SFAV fed OpenCV-style BGR crops to
    EfficientFace); ``mean``/``std`` of None skip that normalisation. Visual backbones'
    configs extend this class, so its fields are ``--opt`` options of every one of them.
    """

    size: int = 224
    color: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD

    def describe(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "resize": "bilinear, antialiased, when the crop size differs",
        }


class VisualBackbone(Backbone):
    """A torch image network run over face crops, batched, on any device.

    Subclasses set ``self.model``, ``self.preprocess`` and ``self.runtime`` and implement
    :meth:`forward` on a normalised batch ``[B, 3, S, S]``; it returns the features
    ``[B, D]``, or a dict with ``"features"`` and one tensor per entry of ``fields``.
    """

    modality = "video"
    model: torch.nn.Module
    preprocess: ImagePreprocess
    runtime: Runtime

    @property
    def crop_size(self) -> int:
        return self.preprocess.size

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]: ...

    def to_input(
        self, faces: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """uint8 ``[B, S, S, 3]`` on the device -> normalised float ``[B, 3, size, size]``.

        ``transform`` (end-to-end training's augmentation) acts on the scaled RGB crops
        ``[B, 3, S, S]`` before colour order, resizing and normalisation, so augmented
        crops are normalised exactly as extraction normalised them.
        """
        p = self.preprocess
        x = faces.permute(0, 3, 1, 2).float() * p.scale
        if transform is not None:
            x = transform(x)
        if p.color == "BGR":
            x = x.flip(1)
        if x.shape[-1] != p.size or x.shape[-2] != p.size:
            x = torch.nn.functional.interpolate(x, size=(p.size, p.size), mode="bilinear", antialias=True)
        if p.mean is not None and p.std is not None:
            mean = torch.tensor(p.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(p.std, device=x.device).view(1, 3, 1, 1)
            if p.color == "BGR":
                mean, std = mean.flip(1), std.flip(1)
            x = (x - mean) / std
        return x

    def export_state(self) -> dict[str, torch.Tensor]:
        """``self.model``'s weights under the keys this backbone's ``--weights FILE``
        loader reads (a fine-tuned model saved this way re-extracts features)."""
        return self.model.state_dict()

    def export_weights(self, folder: Path) -> Path:
        """Save the (fine-tuned) weights into ``folder``; returns the ``--weights`` path."""
        from avx.serialization import save_tensors

        path = Path(folder) / "model.safetensors"
        save_tensors(path, self.export_state())  # detached, on the CPU, contiguous
        return path

    def runtime_provenance(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess.describe(), "precision": self.runtime.precision}

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Features ``[T, ...]`` and per-frame fields for crops ``[T, S, S, 3]`` uint8.

        ``T`` may span several clips: the runner batches frames across clips. Every
        forward pass has exactly ``batch_size`` frames (the last batch is zero-padded):
        kernels are chosen by input shape, so a frame's features then do not depend on
        which other frames shared its batch, and a resumed or parallel run, which
        batches clips differently, writes the same bits.
        """
        n = len(faces)
        if n == 0:
            empty = {k: np.zeros((0, *f["shape"]), f["dtype"]) for k, f in self.fields.items()}
            return np.zeros((0, *self.frame_shape), np.float32), empty
        # One host-to-device copy (pinned, asynchronous) and one copy back at the end:
        # no synchronisation between batches.
        x_all = torch.from_numpy(np.ascontiguousarray(faces))
        if self.runtime.device.type == "cuda":
            x_all = x_all.pin_memory().to(self.runtime.device, non_blocking=True)
        outs: dict[str, list[torch.Tensor]] = {"features": [], **{k: [] for k in self.fields}}

        def run(a: int, b: int) -> None:
            x = x_all[a:b]
            pad = (self.runtime.batch_size or 0) - (b - a)
            if pad > 0:
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            with self.runtime.autocast():
                y = self.forward(self.to_input(x))
            y = y if isinstance(y, dict) else {"features": y}
            for k, acc in outs.items():
                acc.append(y[k][: b - a].float())

        self.runtime.batches(n, run)
        out = torch.cat(outs.pop("features")).cpu().numpy()
        fields = {
            k: torch.cat(v).cpu().numpy().astype(self.fields[k]["dtype"]).reshape(n, *self.fields[k]["shape"])
            for k, v in outs.items()
        }
        return out, fields
