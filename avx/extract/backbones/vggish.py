"""VGGish (Hershey et al., 2017): 128-D embeddings of 0.96 s log-mel patches.

Front end as in the released model: 16 kHz mono, 25 ms Hann windows every 10 ms
(512-point FFT magnitude), 64 mel bands 125–7500 Hz (HTK mel scale), ``log(mel + 0.01)``,
patches of 96 frames × 64 bands. Patches start every ``hop`` seconds: 0.96 (no overlap,
the AudioSet setting) by default, 0.1 in the ``vggish.cold`` preset (COLD's 1 s windows
with 0.1 s hop). Each embedding is stamped at its patch's centre.

The network's parameter names equal torchvggish's (``features.*``, ``embeddings.*``), so
``vggish-10086976.pth`` loads with ``strict=True``. ``relu=False`` (default) returns the
embedding before the final ReLU, which is what TensorFlow's released embeddings are;
``relu=True`` matches torchvggish's output. The PCA whitening + 8-bit quantisation
post-processing is off by default (it is a compression for AudioSet distribution, not
part of the model); ``postprocess=true`` needs the PCA parameters (``pproc.pca_matrix``,
``pproc.pca_means``) in the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from avx.errors import AvxError, MediaError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import AudioBackbone, Runtime, seeded
from avx.extract.weights import load_into, load_state_dict, resolve_weights, sha256_file

SAMPLE_RATE = 16_000
WIN, STEP, NFFT = 400, 160, 512
PATCH_FRAMES, N_MELS = 96, 64
PATCH_SECONDS = (PATCH_FRAMES - 1) * STEP / SAMPLE_RATE + WIN / SAMPLE_RATE  # 0.975 s of audio


@dataclass(frozen=True)
class VGGishConfig:
    """Patch hop in seconds, whether to apply the final ReLU, and PCA post-processing."""

    hop: float = 0.96
    relu: bool = False
    postprocess: bool = False


@cache
def mel_matrix() -> np.ndarray:
    """``[257, 64]`` triangular HTK-mel filters over 125–7500 Hz, DC bin excluded."""
    mel = lambda hz: 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)  # noqa: E731
    bins = mel(np.linspace(0, SAMPLE_RATE / 2, NFFT // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), N_MELS + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins[:, None] - lo) / (mid - lo), (hi - bins[:, None]) / (hi - mid)))
    w[0, :] = 0.0
    return w


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """``[frames, 64]`` log-mel spectrogram of a 16 kHz waveform (no padding)."""
    n = 1 + (len(waveform) - WIN) // STEP
    idx = np.arange(WIN)[None, :] + STEP * np.arange(n)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)  # periodic Hann
    spec = np.abs(np.fft.rfft(waveform[idx].astype(np.float64) * window, NFFT))
    return np.log(spec @ mel_matrix() + 0.01).astype(np.float32)


class VGGishNet(nn.Module):
    """VGG 64-M-128-M-256-256-M-512-512-M and a 4096-4096-128 MLP, in torchvggish's layout."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(True),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Linear(4096, 128),
            nn.ReLU(True),
        )

    def forward(self, patches: torch.Tensor, relu: bool) -> torch.Tensor:
        x = self.features(patches[:, None])  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # TensorFlow's NHWC flattening order
        return self.embeddings(x) if relu else self.embeddings[:-1](x)


class VGGish(AudioBackbone):
    config_class = VGGishConfig
    sample_rate = SAMPLE_RATE
    frame_shape = (128,)
    expects = "torchvggish state dict (vggish-10086976.pth)"

    def __init__(
        self,
        config: VGGishConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "vggish",
    ) -> None:
        self.name, self.config = name, config
        if self.config.hop <= 0:
            raise AvxError("vggish: hop must be > 0 seconds")
        self.frame_rate = 1 / self.config.hop
        self.runtime = runtime = runtime or Runtime.create()
        unpickled = False
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        with seeded():
            net = VGGishNet()
        sha, self.pca = None, None
        if src.kind == "file":
            state = load_state_dict(src.path, trust_pickle=runtime.trust_pickle)
            unpickled = state.unpickled
            load_into(net, state, src.path, ignore=("pproc.",))
            if self.config.postprocess:
                if "pproc.pca_matrix" not in state:
                    raise AvxError(
                        f"{src.path}: postprocess=true needs pproc.pca_matrix/pca_means in the file"
                    )
                self.pca = (state["pproc.pca_matrix"].float(), state["pproc.pca_means"].float().reshape(-1))
            sha = sha256_file(src.path)
        elif src.kind != "random-init":
            raise AvxError(f"vggish: weights '{src.spec}' not supported ({self.expects} or none)")
        elif self.config.postprocess:
            raise AvxError("vggish: postprocess=true needs a checkpoint with PCA parameters")
        self.weights = src.provenance(sha, unpickled=unpickled)
        self.model = net.eval().to(runtime.device)

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": "VGGish (torchvggish layout)",
            **self.weights,
            **asdict(self.config),
            "sample_rate": SAMPLE_RATE,
            "stft": {"window_s": 0.025, "hop_s": 0.010, "fft": NFFT, "window": "periodic hann"},
            "mel": {"bands": N_MELS, "fmin": 125.0, "fmax": 7500.0, "scale": "htk", "log_offset": 0.01},
            "patch_frames": PATCH_FRAMES,
            "timestamps": "patch centre",
            "precision": self.runtime.precision,
        }

    @torch.inference_mode()
    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        if len(waveform) < PATCH_SECONDS * SAMPLE_RATE:
            raise MediaError(
                f"{source or 'audio'}: too short ({len(waveform) / SAMPLE_RATE:.3f} s < one"
                f" {PATCH_SECONDS:.3f} s VGGish patch)"
            )
        mel = log_mel(waveform)
        hop = max(1, round(self.config.hop * SAMPLE_RATE / STEP))
        n = 1 + (len(mel) - PATCH_FRAMES) // hop
        starts = hop * np.arange(n)
        patches = mel[starts[:, None] + np.arange(PATCH_FRAMES)[None, :]]
        out = np.zeros((n, 128), np.float32)

        def run(a: int, b: int) -> None:
            x = torch.from_numpy(patches[a:b]).to(self.runtime.device)
            with self.runtime.autocast():
                e = self.model(x, relu=self.config.relu).float()
            if self.pca is not None:
                m, mu = (t.to(e.device) for t in self.pca)
                e = ((e - mu) @ m.T).clamp(-2.0, 2.0)
                e = torch.round((e + 2.0) * (255.0 / 4.0))
            out[a:b] = e.cpu().numpy()

        self.runtime.batches(n, run)
        times = starts * (STEP / SAMPLE_RATE) + PATCH_SECONDS / 2
        return out, times


BACKBONES.register(
    BackboneCard(
        "vggish",
        VGGish,
        VGGishConfig(),
        shape="[T, 128]",
        rate="1.04 Hz (0.96 s hop)",
        paper="VGGish (Hershey et al., 2017)",
        licence="Apache-2.0",
    )
)
BACKBONES.register(
    BackboneCard(
        "vggish.cold",
        VGGish,
        VGGishConfig(hop=0.1),
        shape="[T, 128]",
        rate="10 Hz (0.1 s hop)",
        paper="VGGish with COLD's (000) 0.1 s hop",
        licence="Apache-2.0",
    )
)
