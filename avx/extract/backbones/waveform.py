"""``audio/waveform``: the decoded clip itself, so end-to-end training needs only the store.

End-to-end training (``avx fuse train --end-to-end audio=wavlm``) fine-tunes a speech
model on raw audio. Rather than decoding the corpus's files again at training time
(they may not be where the store is: stores are shared over NFS and object storage,
and files move), extraction can store the waveform the speech backbones were given:
mono, resampled to ``sample_rate`` (16 kHz, every HF speech model's rate), float32.
The store stays self-contained and a speech model fed from this stream sees the
same samples bit for bit as at extraction, which the frozen-equivalence test relies on.

Frames are ``frame`` consecutive samples (320: one wav2vec2 / WavLM hop, so 50 Hz),
stamped at their centre; the last frame is zero-padded and the per-frame field
``samples`` says how many of its samples are real, so the exact clip is recovered.
Size: 64 kB per second of audio before compression (CREMA-D, 5.3 h: about 1.2 GB).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from avx.errors import MediaError
from avx.extract.backbones import BACKBONES, AudioBackbone, BackboneCard
from avx.extract.backbones.base import Runtime

SAMPLES = "samples"
"""The per-frame field holding how many of the frame's samples are real."""


@dataclass(frozen=True)
class WaveformConfig:
    """Sample rate and frame size (``--opt sample_rate=...``, ``--opt frame=...``)."""

    sample_rate: int = 16_000
    frame: int = 320


class Waveform(AudioBackbone):
    """The clip's samples, ``[T, frame]`` float32, with ``samples`` real per frame."""

    config_class = WaveformConfig
    default_dtype = "float32"
    expects = "none (the decoded waveform itself)"
    fields: ClassVar[dict[str, dict[str, Any]]] = {SAMPLES: {"shape": [], "dtype": "int32"}}

    def __init__(
        self,
        config: WaveformConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "waveform",
    ) -> None:
        self.config, self.name = config, name
        self.sample_rate = config.sample_rate
        self.frame_shape = (config.frame,)
        self.frame_rate = config.sample_rate / config.frame

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "what": "decoded waveform, mono, resampled; last frame zero-padded (field 'samples')",
            **asdict(self.config),
            "weights": "none (the signal itself)",
            "weights_sha256": None,
        }

    def __call__(
        self, waveform: np.ndarray, *, source: str = ""
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        n, f = len(waveform), self.config.frame
        if n == 0:
            raise MediaError(f"{source or 'audio'}: no samples")
        t = -(-n // f)
        frames = np.zeros(t * f, np.float32)
        frames[:n] = waveform
        samples = np.full(t, f, np.int32)
        samples[-1] = n - (t - 1) * f
        times = (np.arange(t) * f + samples / 2) / self.sample_rate
        return frames.reshape(t, f), times, {SAMPLES: samples}


def waveform_of(frames: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The clip (1-D float32) from its stored frames and their ``samples`` field."""
    return np.concatenate([fr[:k] for fr, k in zip(frames, samples, strict=True)]) if len(frames) else frames


BACKBONES.register(
    BackboneCard(
        "waveform",
        Waveform,
        WaveformConfig(),
        shape="[T, 320] + samples [T]",
        rate="50 Hz (16 kHz audio)",
        paper="the raw audio end-to-end training reads (avx fuse train --end-to-end)",
        licence="-",
    )
)
