"""eGeMAPS and ComParE acoustic parameters through openSMILE (optional extra).

``pip install 'avx[opensmile]'``. Presets:

- ``egemaps``: eGeMAPS v02 low-level descriptors, 25 per 10 ms frame;
- ``egemaps.functionals``: the 88 eGeMAPS v02 functionals, one frame per clip;
- ``egemaps.compare``: ComParE 2016 low-level descriptors (65 per frame);
- ``egemaps.compare-functionals``: the 6,373 ComParE 2016 functionals.

LLD frames are stamped at their window centre; a functionals frame at the clip centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import numpy as np

from avx.errors import AvxError, MediaError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import AudioBackbone, Runtime

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class OpenSmileConfig:
    """openSMILE's feature set and level (``opensmile.FeatureSet`` / ``FeatureLevel`` names)."""

    feature_set: Literal["eGeMAPSv02", "ComParE_2016"] = "eGeMAPSv02"
    level: Literal["LowLevelDescriptors", "Functionals"] = "LowLevelDescriptors"


class OpenSmile(AudioBackbone):
    config_class = OpenSmileConfig
    sample_rate = SAMPLE_RATE
    default_dtype = "float32"
    expects = "none (hand-crafted; needs the opensmile package)"

    def __init__(
        self,
        config: OpenSmileConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "egemaps",
    ) -> None:
        try:
            import opensmile
        except ImportError:
            raise AvxError(
                "egemaps: the opensmile package is not installed (pip install 'avx[opensmile]')"
            ) from None
        self.name, self.config = name, config  # hand-crafted: ``weights`` is ignored
        self.feature_set, self.level = config.feature_set, config.level
        self.smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, self.feature_set),
            feature_level=getattr(opensmile.FeatureLevel, self.level),
        )
        self.columns = list(self.smile.feature_names)
        self.frame_shape = (len(self.columns),)
        self.functionals = self.level == "Functionals"
        self.frame_rate = None if self.functionals else 100.0

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "implementation": f"opensmile {version('opensmile')}",
            "weights": "none (hand-crafted)",
            "weights_sha256": None,
            "feature_set": self.feature_set,
            "feature_level": self.level,
            "feature_names": self.columns,
            "sample_rate": SAMPLE_RATE,
            "timestamps": "clip centre" if self.functionals else "window centre",
        }

    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        if len(waveform) < 0.06 * SAMPLE_RATE:
            raise MediaError(
                f"{source or 'audio'}: too short ({len(waveform) / SAMPLE_RATE:.3f} s < 0.060 s)"
            )
        df = self.smile.process_signal(waveform, SAMPLE_RATE)
        feats = df.to_numpy(dtype=np.float32)
        if len(feats) == 0:
            raise MediaError(f"{source or 'audio'}: openSMILE produced no frames")
        start = df.index.get_level_values("start").total_seconds().to_numpy()
        end = df.index.get_level_values("end").total_seconds().to_numpy()
        if self.functionals:
            return feats, (start + end) / 2
        # ComParE's LLD configuration can emit its last frame twice: keep one per start time.
        keep = np.concatenate([[True], np.diff(start) > 0])
        feats, start, end = feats[keep], start[keep], end[keep]
        return feats, start + float(np.median(end - start)) / 2  # the last window may be cut short


_OPENSMILE = {"paper": "openSMILE eGeMAPS v02 / ComParE 2016", "licence": "openSMILE: research only"}
BACKBONES.register(
    BackboneCard("egemaps", OpenSmile, OpenSmileConfig(), shape="[T, 25]", rate="100 Hz", **_OPENSMILE)
)
BACKBONES.register(
    BackboneCard(
        "egemaps.functionals",
        OpenSmile,
        OpenSmileConfig(level="Functionals"),
        shape="[1, 88]",
        rate="one per clip",
        **_OPENSMILE,
    )
)
BACKBONES.register(
    BackboneCard(
        "egemaps.compare",
        OpenSmile,
        OpenSmileConfig(feature_set="ComParE_2016"),
        shape="[T, 65]",
        rate="100 Hz",
        **_OPENSMILE,
    )
)
BACKBONES.register(
    BackboneCard(
        "egemaps.compare-functionals",
        OpenSmile,
        OpenSmileConfig(feature_set="ComParE_2016", level="Functionals"),
        shape="[1, 6373]",
        rate="one per clip",
        **_OPENSMILE,
    )
)
