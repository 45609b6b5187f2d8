"""Self-supervised speech models through transformers: wav2vec2, WavLM, HuBERT.

Every hidden state is stored, ``[frames, L+1, D]`` (25 × 1024 for large models): index
0 is the transformer's input (CNN features after projection and the positional
convolution), index ``l`` the output of transformer layer ``l``. Methods that learn a
weighted sum of layers (the two-stage paper's LW-Sum) or cut the model (VAVL keeps
wav2vec2-large-robust's first 12 layers) read what they need from one stream;
``layers=0,12,24`` stores a subset. Frames are 20 ms apart (50 Hz) and stamped at the
centre of their 25 ms receptive field.

``--weights`` is any HF hub id (network on first use, then the HF cache) or a local
``save_pretrained`` folder; presets name the checkpoints the papers used. The waveform
is normalised to zero mean / unit variance when the checkpoint's feature extractor
says so (``do_normalize``; models with layer-norm feature encoders were trained that way).

Precision: always float32. One clip per forward pass is launch-bound on a GPU, and
float16 autocast measured *slower* there (H100, wav2vec2-large size, 4 s clip: 24.8 ms
with AMP against 19.4 ms without), so ``--amp`` does not apply to these models.

Long audio: clips up to ``window`` seconds (60 by default, longer than any utterance in
the supported corpora) go through the model whole, exactly as the model defines.
Longer clips are cut into windows with ``context`` seconds of extra audio on each side
whose frames are dropped. For layer-norm feature encoders (the large checkpoints) the
transformer input (index 0) then equals a whole-clip pass to float tolerance; group-norm
encoders (the base checkpoints) normalise over their whole input, and transformer
layers attend over it, so those are an approximation. ``window``/``context`` are recorded in provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from avx.errors import AvxError, MediaError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import AudioBackbone, Runtime, seeded
from avx.extract.weights import resolve_weights, sha256_folder, unavailable

SAMPLE_RATE = 16_000
STRIDE, FIELD = 320, 400  # total CNN stride and receptive field in samples (all three families)

Arch = Literal["wav2vec2", "wavlm", "hubert"]


def frame_times(n_samples: int) -> np.ndarray:
    """Times (s) of the frames a speech model makes from ``n_samples`` at 16 kHz: the
    centre of each 25 ms receptive field, 20 ms apart (none under one field)."""
    n = 0 if n_samples < FIELD else 1 + (n_samples - FIELD) // STRIDE
    return (np.arange(n) * STRIDE + FIELD / 2) / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechSSLConfig:
    """Which model family, which hidden states, and how long audio is windowed.

    ``layers``: ``"all"``, ``"0,12,24"``, ``"0-12"`` or a tuple of indices (stored in the
    canonical form: ``"all"`` or the comma-separated list). ``window``/``context``: in
    seconds, see the module docstring.
    """

    arch: Arch = "wav2vec2"
    layers: str | tuple[int, ...] = "all"
    window: float = 60.0
    context: float = 5.0


def _parse_layers(value: Any, n_layers: int) -> list[int]:
    """``"all"``, ``"0,12,24"``, ``"0-12"`` or a list -> sorted unique layer indices."""
    if value is None or value == "all":
        return list(range(n_layers + 1))
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    out: set[int] = set()
    for item in items:
        s = str(item).strip()
        a, sep, b = s.partition("-")
        try:
            out |= set(range(int(a), int(b) + 1)) if sep else {int(s)}
        except ValueError:
            raise AvxError(f"layers: cannot parse '{s}' (use all, 0,12,24 or 0-12)") from None
    bad = [i for i in out if not 0 <= i <= n_layers]
    if bad:
        raise AvxError(f"layers {sorted(bad)} out of range: this model has hidden states 0..{n_layers}")
    return sorted(out)


def random_model(arch: str, **config: Any) -> Any:
    """A randomly initialised ``arch`` model (transformers), ``config`` overriding the
    base-size defaults; seed torch first for repeatable weights."""
    import transformers as tf

    config_cls, model_cls = {
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
        "wavlm": (tf.WavLMConfig, tf.WavLMModel),
        "hubert": (tf.HubertConfig, tf.HubertModel),
    }[arch]
    return model_cls(config_cls(**config))


def save_random_model(arch: str, folder: str | Path, seed: int = 0, **config: Any) -> Path:
    """:func:`random_model` saved with ``save_pretrained`` (and a feature extractor) into
    ``folder``: a ``--weights FOLDER`` that loads through the same code as a downloaded
    checkpoint, for offline tests and benchmarks (its features mean nothing)."""
    import transformers as tf

    torch.manual_seed(seed)
    random_model(arch, **config).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return Path(folder)


def _load_model(arch: str, spec: str | None, name: str) -> tuple[Any, dict[str, Any], bool]:
    """(model, weights provenance, do_normalize) for ``spec``."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    src = resolve_weights(spec, default=None, backbone=name, expects="a HF hub id or save_pretrained folder")
    if src.kind == "random-init":
        with seeded():
            model = random_model(arch)
        return model, src.provenance(), model.config.feat_extract_norm == "layer"
    if src.kind not in ("folder", "hub"):
        raise AvxError(f"{name}: weights '{src.spec}' must be a HF hub id or a save_pretrained folder")
    try:
        config = AutoConfig.from_pretrained(src.spec)
    except Exception as e:
        raise unavailable(src.spec, name, "a transformers config", e) from None
    if config.model_type != arch:
        raise AvxError(f"{src.spec}: a '{config.model_type}' checkpoint, not {arch}; use that backbone name")
    try:
        model = AutoModel.from_pretrained(src.spec)
    except Exception as e:
        raise unavailable(src.spec, name, "the model weights", e) from None
    folder = src.local_folder()
    normalize = config.feat_extract_norm == "layer"
    if folder is not None and (folder / "preprocessor_config.json").exists():
        normalize = bool(
            json.loads((folder / "preprocessor_config.json").read_text()).get("do_normalize", normalize)
        )
    sha = sha256_folder(folder) if folder is not None else None
    return model, src.provenance(sha), normalize


class SpeechSSL(AudioBackbone):
    """wav2vec2 / WavLM / HuBERT hidden states, per 20 ms frame."""

    config_class = SpeechSSLConfig
    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / STRIDE
    layer_axis = 0
    expects = "HF hub id or save_pretrained folder"

    def __init__(
        self,
        config: SpeechSSLConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "wav2vec2",
    ) -> None:
        self.name, self.arch = name, config.arch
        self.runtime = runtime = runtime or Runtime.create()
        model, self.weights, self.normalize = _load_model(config.arch, weights, name)
        self.model = model.eval().to(runtime.device)
        cfg = model.config
        self.layers = _parse_layers(config.layers, cfg.num_hidden_layers)
        every = self.layers == list(range(cfg.num_hidden_layers + 1))
        self.config = replace(config, layers="all" if every else ",".join(map(str, self.layers)))
        self.frame_shape = (len(self.layers), cfg.hidden_size)
        if config.window <= 2 * config.context or config.context < 0:
            raise AvxError(f"{name}: window ({config.window} s) must exceed 2 × context ({config.context} s)")
        self.model_type = cfg.model_type

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": f"transformers {self.model_type}",
            **self.weights,
            "layers": self.layers,
            "layer_meaning": "0 = transformer input (CNN + projection + positional conv); l = layer l output",
            "sample_rate": SAMPLE_RATE,
            "normalize_waveform": self.normalize,
            "window_s": self.config.window,
            "context_s": self.config.context,
            "timestamps": "centre of each frame's 25 ms receptive field, 20 ms apart",
            "precision": "float32",
        }

    def export_weights(self, folder: Path) -> Path:
        """The (fine-tuned) model as a ``save_pretrained`` folder, with the feature
        extractor's ``do_normalize``: ``--weights FOLDER`` loads it back."""
        import transformers as tf
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model.save_pretrained(folder)
        tf.Wav2Vec2FeatureExtractor(do_normalize=self.normalize).save_pretrained(folder)
        return Path(folder)

    def n_frames(self, n_samples: int) -> int:
        return len(frame_times(n_samples))

    @torch.inference_mode()
    def _forward(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(wav)).to(self.runtime.device)[None]
        hs = self.model(x, output_hidden_states=True).hidden_states
        return torch.stack([hs[i][0] for i in self.layers], dim=1).float().cpu().numpy()

    def __call__(self, waveform: np.ndarray, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        n = self.n_frames(len(waveform))
        if n == 0:
            raise MediaError(
                f"{source or 'audio'}: too short ({len(waveform) / SAMPLE_RATE:.4f} s < one"
                f" {FIELD / SAMPLE_RATE:.3f} s frame)"
            )
        wav = waveform.astype(np.float32)
        if self.normalize:
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        if len(wav) <= self.config.window * SAMPLE_RATE:
            feats = self._forward(wav)
        else:
            feats = np.zeros((n, *self.frame_shape), np.float32)
            core = (
                int(self.config.window - 2 * self.config.context) * SAMPLE_RATE // STRIDE
            )  # frames per window
            ctx = int(self.config.context * SAMPLE_RATE) // STRIDE
            for f0 in range(0, n, core):
                f1 = min(n, f0 + core)
                a = max(0, f0 - ctx)  # first frame computed, aligned to the frame grid
                b = min(n, f1 + ctx)
                chunk = self._forward(wav[a * STRIDE : (b - 1) * STRIDE + FIELD])
                feats[f0:f1] = chunk[f0 - a : f1 - a]
        return feats[:n], frame_times(len(wav))


def _card(name: str, arch: Arch, default: str, shape: str, paper: str) -> BackboneCard:
    """A speech SSL entry: ``arch``'s hidden states with ``default`` weights (HF id)."""
    return BackboneCard(
        name,
        SpeechSSL,
        SpeechSSLConfig(arch),
        default_weights=default,
        shape=shape,
        rate="50 Hz",
        weights=f"HF id or folder (default {default})",
        paper=paper,
        licence="MIT (wav2vec2, HuBERT); WavLM: MIT code, check the checkpoint",
    )


_BASE = "[T, L+1, D] (base: 13 × 768)"
_LARGE = "[T, 25, 1024]"
BACKBONES.register(_card("wav2vec2", "wav2vec2", "facebook/wav2vec2-base", _BASE, "wav2vec 2.0"))
BACKBONES.register(_card("wavlm", "wavlm", "microsoft/wavlm-base-plus", _BASE, "WavLM"))
BACKBONES.register(_card("hubert", "hubert", "facebook/hubert-base-ls960", _BASE, "HuBERT"))
BACKBONES.register(
    _card("wavlm-large", "wavlm", "microsoft/wavlm-large", _LARGE, "WavLM Large; the two-stage paper")
)
BACKBONES.register(_card("wavlm-base-plus", "wavlm", "microsoft/wavlm-base-plus", _BASE, "WavLM Base+"))
BACKBONES.register(
    _card(
        "wav2vec2-large-robust",
        "wav2vec2",
        "facebook/wav2vec2-large-robust",
        _LARGE,
        "wav2vec 2.0 Large (LV-60 + robust); VAVL",
    )
)
BACKBONES.register(_card("wav2vec2-base", "wav2vec2", "facebook/wav2vec2-base", _BASE, "wav2vec 2.0 Base"))
BACKBONES.register(_card("hubert-large", "hubert", "facebook/hubert-large-ll60k", _LARGE, "HuBERT Large"))
