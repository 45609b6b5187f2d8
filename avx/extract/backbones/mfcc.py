"""MFCC (librosa): the classic hand-crafted audio front end.

Presets are data, not code branches: ``mfcc`` is 40 coefficients of 25 ms / 10 ms
frames at 16 kHz; ``mfcc.sfav`` is SFAV's setting (22,050 Hz, 10 coefficients,
librosa's default 2048 / 512 window and hop), so its stored frames match that paper's
(10, 156) input for a 3.6 s clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import librosa
import numpy as np

from avx.errors import AvxError, MediaError
from avx.extract.backbones import BACKBONES, AudioBackbone, BackboneCard


@dataclass(frozen=True)
class MFCCConfig:
    sample_rate: int = 16_000
    n_mfcc: int = 40
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = True


PRESETS = {
    "": MFCCConfig(),
    "sfav": MFCCConfig(
        sample_rate=22_050, n_mfcc=10, n_fft=2048, win_length=2048, hop_length=512, n_mels=128
    ),
}


class MFCC(AudioBackbone):
    default_dtype = "float32"

    def __init__(self, config: MFCCConfig, name: str = "mfcc") -> None:
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


def create(tag: str = "", weights: str | None = None, runtime: object = None, **opts: Any) -> MFCC:
    base = asdict(PRESETS[tag])
    if unknown := set(opts) - set(base):
        raise AvxError(f"mfcc: unknown option(s) {sorted(unknown)}; valid: {sorted(base)}")
    kinds = {k: type(v) if v is not None else float for k, v in base.items()}
    config = MFCCConfig(
        **{
            **base,
            **{k: kinds[k](v) if k != "center" else str(v).lower() in {"1", "true"} for k, v in opts.items()},
        }
    )
    return MFCC(config, name=f"mfcc.{tag}" if tag else "mfcc")


BACKBONES.register(
    BackboneCard(
        "mfcc",
        create,
        cls=MFCC,
        shape="[T, 40]",
        rate="100 Hz",
        weights="none (hand-crafted, librosa)",
        paper="librosa MFCC",
        licence="ISC (librosa)",
    )
)
BACKBONES.register(
    BackboneCard(
        "mfcc.sfav",
        create,
        tag="sfav",
        cls=MFCC,
        shape="[T, 10]",
        rate="43.07 Hz (22,050 / 512)",
        weights="none (hand-crafted, librosa)",
        paper="SFAV (001): 10 MFCCs at 22,050 Hz, hop 512",
        licence="ISC (librosa)",
    )
)
