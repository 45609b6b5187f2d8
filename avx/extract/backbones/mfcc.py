"""MFCC (librosa): the classic hand-crafted audio front end.

Presets are data, not code branches: each name's card holds an :class:`MFCCConfig`.
``mfcc`` is 40 coefficients of 25 ms / 10 ms frames at 16 kHz; ``mfcc.sfav`` is SFAV's
setting (22,050 Hz, 10 coefficients, librosa's default 2048 / 512 window and hop), so
its stored frames match that paper's (10, 156) input for a 3.6 s clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import librosa
import numpy as np

from avx.errors import MediaError
from avx.extract.backbones import BACKBONES, AudioBackbone, BackboneCard
from avx.extract.backbones.base import Runtime


@dataclass(frozen=True)
class MFCCConfig:
    """``librosa.feature.mfcc`` arguments (every field is an ``--opt`` option)."""

    sample_rate: int = 16_000
    n_mfcc: int = 40
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = True


class MFCC(AudioBackbone):
    config_class = MFCCConfig
    default_dtype = "float32"
    expects = "none (hand-crafted, librosa)"

    def __init__(
        self,
        config: MFCCConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "mfcc",
    ) -> None:
        # Hand-crafted: ``weights`` is ignored (a generic ``--weights`` names other backbones').
        self.config, self.name = config, name
        self.sample_rate = config.sample_rate
        self.frame_shape = (config.n_mfcc,)
        self.frame_rate = config.sample_rate / config.hop_length

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "implementation": f"librosa {version('librosa')} feature.mfcc",
            "weights": "none (hand-crafted)",
            "weights_sha256": None,
            **asdict(self.config),
        }

    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if len(waveform) < c.win_length:
            raise MediaError(
                f"{source or 'audio'}: too short ({len(waveform) / c.sample_rate:.3f} s <"
                f" one {c.win_length / c.sample_rate:.3f} s window)"
            )
        m = librosa.feature.mfcc(
            y=waveform,
            sr=c.sample_rate,
            n_mfcc=c.n_mfcc,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            n_mels=c.n_mels,
            fmin=c.fmin,
            fmax=c.fmax,
            center=c.center,
        )
        feats = np.ascontiguousarray(m.T, dtype=np.float32)
        offset = 0.0 if c.center else c.win_length / 2 / c.sample_rate
        times = np.arange(len(feats)) * (c.hop_length / c.sample_rate) + offset
        return feats, times


BACKBONES.register(
    BackboneCard(
        "mfcc",
        MFCC,
        MFCCConfig(),
        shape="[T, 40]",
        rate="100 Hz",
        paper="librosa MFCC",
        licence="ISC (librosa)",
    )
)
BACKBONES.register(
    BackboneCard(
        "mfcc.sfav",
        MFCC,
        MFCCConfig(sample_rate=22_050, n_mfcc=10, n_fft=2048, win_length=2048, hop_length=512, n_mels=128),
        shape="[T, 10]",
        rate="43.07 Hz (22,050 / 512)",
        paper="SFAV (001): 10 MFCCs at 22,050 Hz, hop 512",
        licence="ISC (librosa)",
    )
)
