"""End-to-end training: backbones as trainable modules in front of any fusion method.

Cached features answer "which fusion is best on frozen features"; papers also report
models whose front ends are fine-tuned (SFAV trains EfficientFace with its fusion from
face crops; the two-stage and VAVL papers fine-tune their extractors, then freeze them).
``avx fuse train --end-to-end video=efficientface,audio=wavlm-base-plus --streams
video/faces,audio/waveform`` puts those backbones in front of the method: the method,
trainer, metrics, eval, predict, trials and compare are the ones cached features use.

Inputs come from the store only (a training run never reads corpus files, and never
writes into the store):

- ``video/faces`` is the stored ``faces`` stream: the aligned uint8 crops extraction
  made, so no re-detection. The length policy picks crops (``--length
  video=resample:15``) before the backbone, so only those are encoded.
- ``audio/waveform`` is the stored waveform (``avx extract --backbone waveform``): the
  samples the speech backbones were given at extraction, bit for bit.

Each backbone is rebuilt the way extraction built it: when the store holds the cached
stream ``<modality>/<backbone>``, from that stream's provenance (its config, so a crop is
normalised exactly as it was at extraction, and its weights); otherwise from the
backbone's card. ``--backbone-weights video=PATH`` and ``--backbone-opt video:KEY=VALUE``
override. A :class:`FrontEnd` then maps a raw batch to what the cached path would read:
the backbone's features, divided by the per-dimension mean/std of the training split
(measured once, before training, with the initial backbone: the statistics the cached
path's normaliser computes from the stored features). With every backbone frozen and
augmentation off, the method therefore sees the cached path's inputs, to the precision
the store keeps (``tests/test_end2end.py`` checks it).

Freezing (``--freeze``): ``none`` (default: fine-tune everything), ``all``, ``N`` (the
first N blocks: a speech model's CNN, projection and first N transformer layers; a
visual network's first N top-level modules) or ``feature-extractor`` (wav2vec2's CNN);
per modality as ``video=all,audio=feature-extractor``. Frozen parts stay in evaluation
mode (BatchNorm statistics and dropout untouched). Backbone parameters train at
``--backbone-lr`` (default: a tenth of ``--lr``), the rest at ``--lr``: the usual recipe.

HF speech models: SpecAugment masking (``apply_spec_augment``) is switched off, since it
draws from NumPy's global generator, which a resumed run cannot restore, and so is
LayerDrop, which skips layers whose hidden states the layer mix reads; dropout inside
the model, ``--augment`` and modality dropout are the regularisers. Models with layer-norm feature encoders
(the large checkpoints) run batched with an attention mask, which gives every clip the
frames a single-clip pass gives; group-norm encoders (the base checkpoints) normalise
over their whole input, so they run one clip at a time, as extraction did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.datatypes import Batch, StreamInfo
from avx.fuse.methods.base import _key
from avx.serialization import to_dict

MODALITIES = ("audio", "video")
FREEZE = ("none", "all", "feature-extractor")
ROTATION_DEGREES = 10.0
NO_GRAD_CHUNK = 256  # crops per visual forward pass when nothing needs their gradients


@dataclass(frozen=True)
class EndToEndConfig:
    """What ``--end-to-end`` trains (saved in ``RUN/config.json`` as ``end_to_end``).

    Attributes:
        backbones: ``MODALITY=BACKBONE`` per raw input (``video=efficientface``).
        weights: ``MODALITY=PATH_OR_ID`` overriding the weights the backbone would load.
        options: ``MODALITY:KEY=VALUE`` backbone options (``video:size=112``, ``audio:layers=0,6,12``).
        freeze: ``none``, ``all``, ``N``, ``feature-extractor``, or ``MODALITY=POLICY,...``.
        backbone_lr: learning rate of backbone parameters (None: ``lr / 10``).
        augment: per-clip horizontal flip and rotation of the crops (±10°, the same for
            every frame of a clip) while training.
        gradient_checkpointing: recompute transformer activations in the backward pass
            (HF speech models): less memory, about a third more compute.
        trust_pickle: backbone checkpoints that pickle Python objects may be unpickled
            (as ``avx extract --trust-pickle``).
        batchnorm: ``frozen`` (default): a trainable backbone's BatchNorm layers keep
            normalising with their stored running statistics (their scale and shift
            still train), so the features keep the statistics measured before training
            and a batch of frames from a few clips does not set them; ``train``: batch
            statistics while training, running ones updated (SFAV's released code).
    """

    backbones: tuple[str, ...]
    weights: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    freeze: str = "none"
    backbone_lr: float | None = None
    augment: bool = False
    gradient_checkpointing: bool = False
    trust_pickle: bool = False
    batchnorm: str = "frozen"

    def backbone_of(self) -> dict[str, str]:
        return _pairs(self.backbones, "--end-to-end", "MODALITY=BACKBONE")

    def weights_of(self) -> dict[str, str]:
        return _pairs(self.weights, "--backbone-weights", "MODALITY=PATH")

    def options_of(self, modality: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.options:
            mod, sep, kv = item.partition(":")
            key, eq, value = kv.partition("=")
            if not sep or not eq or mod not in MODALITIES or not key:
                raise AvxError(f"--backbone-opt '{item}': expected MODALITY:KEY=VALUE (audio or video)")
            if mod == modality:
                out[key.strip()] = value.strip()
        return out

    def freeze_of(self, modality: str) -> str:
        """The freezing policy of ``modality``'s backbone."""
        items = [x.strip() for x in self.freeze.split(",") if x.strip()]
        if len(items) == 1 and "=" not in items[0]:
            return _freeze_value(items[0])
        per = _pairs(tuple(items), "--freeze", "POLICY or MODALITY=POLICY")
        return _freeze_value(per.get(modality, "none"))

    def check(self) -> None:
        if not self.backbones:
            raise AvxError("--end-to-end needs MODALITY=BACKBONE, e.g. video=efficientface")
        for m in MODALITIES:
            self.freeze_of(m)
            self.options_of(m)
        self.weights_of()
        if self.batchnorm not in ("frozen", "train"):
            raise AvxError(f"--backbone-bn '{self.batchnorm}': use frozen or train")
        if self.backbone_lr is not None and self.backbone_lr < 0:
            raise AvxError("--backbone-lr must be >= 0")


def _pairs(items: Iterable[str], flag: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in MODALITIES or not value:
                raise AvxError(f"{flag} '{part}': expected {form} with MODALITY audio or video")
            out[key] = value
    return out


def _freeze_value(v: str) -> str:
    if v in FREEZE or v.isdigit():
        return v
    raise AvxError(f"--freeze '{v}': use none, all, N (first N blocks) or feature-extractor")


# -- front ends --------------------------------------------------------------------------


class FrontEnd(nn.Module):
    """One raw input -> normalised features ``[B, T, D]`` (``[B, T, L, D]`` with layers).

    ``net`` is the backbone's network (its parameters are the run's backbone
    parameters); ``mean``/``std`` are the training split's feature statistics
    (:func:`fit_statistics`), fixed while training, as the cached path's normaliser is.
    """

    def __init__(
        self,
        backbone: Any,
        info: StreamInfo,
        freeze: str,
        feature_shape: tuple[int, ...],
        batchnorm: str = "frozen",
    ) -> None:
        super().__init__()
        self.backbone = backbone  # the avx Backbone (preprocessing, export); not a module
        self.net: nn.Module = backbone.model
        self.info, self.policy, self.batchnorm = info, freeze, batchnorm
        self.feature_shape = feature_shape
        self.register_buffer("mean", torch.zeros(feature_shape))
        self.register_buffer("std", torch.ones(feature_shape))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.set_trainable(True)

    # -- freezing ------------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """The parts ``self.policy`` freezes (subclasses say what N blocks are)."""
        return [self.net] if self.policy == "all" else []

    def set_trainable(self, flag: bool) -> None:
        """Everything the policy leaves trainable gets ``requires_grad = flag``; frozen
        parts never train (a method's stage switches cannot unfreeze them)."""
        self.net.requires_grad_(flag)
        for m in self.frozen_modules():
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> FrontEnd:
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        if self.batchnorm == "frozen":
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- forward -------------------------------------------------------------------------
    def features(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised features and their frame mask."""
        raise NotImplementedError

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's features and mask; with ``index`` (an aligned input, see
        ``Batch.frame_index``) only the output frames it picks."""
        y, m = self.features(x, mask)
        return (y, m) if index is None else _gather_frames(y, m, index)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, m = self.encode(x, mask, index)
        y = (y.float() - self.mean) / self.std
        return y * m.view(*m.shape, *[1] * (y.dim() - 2)).to(y.dtype), m


class VisualFrontEnd(FrontEnd):
    """Face crops ``[B, T, S, S, 3]`` uint8 -> per-frame features ``[B, T, D]``; only
    real frames are encoded, all clips' frames in one batch."""

    def __init__(self, backbone: Any, info: StreamInfo, freeze: str, augment: bool, batchnorm: str) -> None:
        super().__init__(backbone, info, freeze, (info.dim,), batchnorm)
        self.augment = augment
        self.generator: torch.Generator | None = None  # the trainer's, for reproducible draws
        self.channels_last = False

    def frozen_modules(self) -> list[nn.Module]:
        if self.policy.isdigit():
            return list(self.net.children())[: int(self.policy)]
        if self.policy == "feature-extractor":
            raise AvxError("--freeze feature-extractor is a speech model's CNN; for video use all, none or N")
        return super().frozen_modules()

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = mask.shape
        flat = x[mask]
        out = torch.zeros(b, t, *self.feature_shape, device=x.device)
        if not len(flat):
            return out, mask
        transform = None
        if self.augment and self.training:
            clip = torch.arange(b, device=x.device).view(b, 1).expand(b, t)[mask]
            transform = clip_augmentation(clip, b, self.generator)
        # Without gradients (evaluation, the feature statistics) memory need not grow
        # with the batch: encode in chunks. With them, the activations are kept anyway.
        n = len(flat) if torch.is_grad_enabled() or transform is not None else NO_GRAD_CHUNK
        out[mask] = torch.cat([self._encode(flat[a : a + n], transform) for a in range(0, len(flat), n)])
        return out, mask

    def _encode(self, crops: torch.Tensor, transform: Any) -> torch.Tensor:
        inp = self.backbone.to_input(crops, transform)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        y = self.backbone.forward(inp)
        y = y["features"] if isinstance(y, dict) else y
        return y.float().reshape(len(crops), -1)


def clip_augmentation(
    clip: torch.Tensor, n_clips: int, generator: torch.Generator | None, degrees: float = ROTATION_DEGREES
) -> Any:
    """A transform of crops ``[N, 3, S, S]`` whose frame ``i`` belongs to clip ``clip[i]``:
    each clip is flipped horizontally with probability 1/2 and rotated by an angle
    uniform in ±``degrees``, the same for all its frames (a face does not flip from one
    frame to the next); draws come from ``generator`` on the CPU, so they are seeded."""
    flip = torch.rand(n_clips, generator=generator) < 0.5
    angle = (torch.rand(n_clips, generator=generator) * 2 - 1) * math.radians(degrees)

    def apply(x: torch.Tensor) -> torch.Tensor:
        f = torch.where(flip, -1.0, 1.0).to(x.device)[clip]
        a = angle.to(x.device)[clip]
        cos, sin = torch.cos(a), torch.sin(a)
        zero = torch.zeros_like(a)
        theta = torch.stack(
            [torch.stack([cos * f, -sin, zero], -1), torch.stack([sin * f, cos, zero], -1)], 1
        )
        grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply


class SpeechFrontEnd(FrontEnd):
    """Waveforms ``[B, N]`` (16 kHz, mask of real samples) -> hidden states
    ``[B, T, L, D]`` of the backbone's layers (``[B, T, D]`` for one layer), 50 Hz."""

    def __init__(self, backbone: Any, info: StreamInfo, freeze: str, checkpointing: bool) -> None:
        shape = (info.layers, info.dim) if info.layers > 1 else (info.dim,)
        super().__init__(backbone, info, freeze, shape)
        self.net.config.apply_spec_augment = False  # NumPy-random: see the module docstring
        self.net.config.layerdrop = 0.0  # a dropped layer has no hidden state for the layer mix
        self.layers = list(backbone.layers)
        self.batched = self.net.config.feat_extract_norm == "layer"
        if checkpointing:
            self.net.gradient_checkpointing_enable()

    def frozen_modules(self) -> list[nn.Module]:
        net = self.net
        front = [net.feature_extractor, net.feature_projection]
        if self.policy == "feature-extractor":
            return [net.feature_extractor]
        if self.policy.isdigit():
            enc = net.encoder
            # base models normalise the transformer input; large ones each layer's output
            pre_norm = net.config.do_stable_layer_norm
            embed = [enc.pos_conv_embed, *([] if pre_norm else [enc.layer_norm])]
            return [*front, *embed, *list(enc.layers)[: int(self.policy)]]
        return super().frozen_modules()

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from avx.extract.backbones.hf_audio import FIELD, STRIDE

        lengths = mask.sum(1)
        x = x.float() * mask
        if self.backbone.normalize:  # per clip over its real samples, as extraction did
            n = lengths.clamp_min(1).unsqueeze(1).float()
            mean = x.sum(1, keepdim=True) / n
            var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * mask
        frames = torch.where(lengths >= FIELD, 1 + (lengths - FIELD) // STRIDE, 0)
        t = max(1, int(frames.max()))
        out = torch.zeros(len(x), t, *self.feature_shape, device=x.device)
        if self.batched:
            hs = self.net(x, attention_mask=mask.long(), output_hidden_states=True).hidden_states
            out[:, : hs[0].shape[1]] = self._stack(hs).float()
        else:
            for i in torch.nonzero(frames > 0).flatten().tolist():
                hs = self.net(x[i : i + 1, : int(lengths[i])], output_hidden_states=True).hidden_states
                out[i, : int(frames[i])] = self._stack(hs)[0].float()
        m = torch.arange(t, device=x.device).view(1, t) < frames.view(-1, 1)
        return out, m

    def _stack(self, hs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        y = torch.stack([hs[i] for i in self.layers], dim=2)
        return y[:, :, 0] if len(self.layers) == 1 else y


def _gather_frames(
    y: torch.Tensor, m: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``index`` ([B, T], -1 = padding) of features ``y`` ([B, T', ...]) and their
    mask: a frame is real where it is picked and the model made it."""
    index = index.to(y.device)
    pick = index.clamp(0, y.shape[1] - 1)
    ok = (index >= 0) & (index < y.shape[1]) & m.gather(1, pick)
    out = y.gather(1, pick.view(*pick.shape, *[1] * (y.dim() - 2)).expand(-1, -1, *y.shape[2:]))
    return out * ok.view(*ok.shape, *[1] * (y.dim() - 2)), ok


class EndToEnd(nn.Module):
    """The run's front ends, one per raw input: ``forward(batch)`` returns the batch the
    method reads (features in place of crops and waveforms, their masks and presence)."""

    def __init__(self, front_ends: Mapping[str, FrontEnd], described: Mapping[str, dict[str, Any]]) -> None:
        super().__init__()
        self.streams = list(front_ends)
        self.front = nn.ModuleDict({_key(s): fe for s, fe in front_ends.items()})
        self.described = dict(described)

    def of(self, stream: str) -> FrontEnd:
        return self.front[_key(stream)]  # type: ignore[return-value]

    @property
    def infos(self) -> dict[str, StreamInfo]:
        return {s: self.of(s).info for s in self.streams}

    def forward(self, batch: Batch) -> Batch:
        inputs, masks, present = dict(batch.inputs), dict(batch.masks), dict(batch.present)
        for s in batch.raw:
            y, m = self.of(s)(batch.inputs[s], batch.masks[s], batch.frame_index.get(s))
            inputs[s], masks[s], present[s] = y, m, present[s] & m.any(1)
        return replace(batch, inputs=inputs, masks=masks, present=present, raw=())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for s in self.streams for p in self.of(s).net.parameters()]

    def set_generator(self, generator: torch.Generator) -> None:
        for s in self.streams:
            fe = self.of(s)
            if isinstance(fe, VisualFrontEnd):
                fe.generator = generator

    def head_state(self, state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """``state`` without the backbone weights (they are saved in the backbone's own
        format by :meth:`export`), keeping the feature statistics."""
        nets = tuple(f"{prefix}front.{_key(s)}.net." for s in self.streams)
        return {k: v for k, v in state.items() if not k.startswith(nets)}

    def export(self, folder: Path) -> dict[str, dict[str, Any]]:
        """Each backbone's (fine-tuned) weights in ``folder/<stream>/``, in the format its
        ``--weights`` loader reads; returns :attr:`described` with each ``weights`` path
        (relative to the run folder)."""
        out = {}
        for s in self.streams:
            sub = folder / _key(s)
            sub.mkdir(parents=True, exist_ok=True)
            path = self.of(s).backbone.export_weights(sub)
            out[s] = {**self.described[s], "weights": str(path.relative_to(folder.parent))}
        return out


# -- building ----------------------------------------------------------------------------


def build_end_to_end(
    store: Any,
    raw: Mapping[str, Any],
    config: EndToEndConfig,
    device: str = "cpu",
    *,
    modalities: tuple[str, ...] = (),
) -> EndToEnd:
    """Front ends for the raw inputs ``raw`` (``Selection.raw``) of a run on ``store``.

    ``modalities``: the run's ``--modalities`` (a backbone of a modality it leaves out
    is not an error: one command line serves a grid of unimodal and bimodal rows).
    """
    from avx.extract.backbones import BACKBONES, create_backbone
    from avx.extract.backbones.base import VisualBackbone
    from avx.extract.backbones.hf_audio import SpeechSSL

    config.check()
    chosen = {m: b for m, b in config.backbone_of().items() if not modalities or m in modalities}
    given = config.weights_of()
    inputs = {s.split("/")[0]: s for s in raw}
    if missing := sorted(set(inputs) - set(chosen)):
        raise AvxError(
            f"--streams has raw {', '.join(inputs[m] for m in missing)} but --end-to-end names no"
            f" backbone for {', '.join(missing)} (e.g. --end-to-end {missing[0]}=...)"
        )
    if unused := sorted(set(chosen) - set(inputs)):
        want = {"video": "video/faces", "audio": "audio/waveform"}
        raise AvxError(
            f"--end-to-end {unused[0]}={chosen[unused[0]]}: add its raw input {want[unused[0]]} to --streams"
        )
    fronts: dict[str, FrontEnd] = {}
    described: dict[str, dict[str, Any]] = {}
    for s, r in raw.items():
        modality = s.split("/")[0]
        name, options = chosen[modality], config.options_of(modality)
        cached = f"{modality}/{name}"
        w = given.get(modality)
        if cached in store.streams and not options:
            backbone = create_backbone(
                store.stream(cached).provenance,
                weights=w,
                device=device,
                amp=False,
                trust_pickle=config.trust_pickle,
            )
            source = f"provenance of the store's {cached}"
        else:
            if w is None and BACKBONES.get(name).default_weights is None:
                raise AvxError(
                    f"--end-to-end {modality}={name}: the store has no {cached} to take weights from and"
                    f" {name} has no default; pass --backbone-weights {modality}=PATH"
                    f" ({modality}=none: random init)"
                )
            backbone = create_backbone(
                name, weights=w, options=options, device=device, amp=False, trust_pickle=config.trust_pickle
            )
            source = f"backbone card {name}" + (f" with {options}" if options else "")
        if r.waveform:
            if not isinstance(backbone, SpeechSSL):
                raise AvxError(f"--end-to-end audio={name}: not a speech model (wav2vec2, wavlm, hubert ...)")
            rate = store.stream(r.stored).provenance.get("sample_rate")
            if rate != backbone.sample_rate:
                raise AvxError(f"{r.stored}: stored at {rate} Hz; {name} needs {backbone.sample_rate} Hz")
        elif not isinstance(backbone, VisualBackbone):
            raise AvxError(f"--end-to-end video={name}: not a visual backbone")
        policy = config.freeze_of(modality)
        fronts[s] = _front_end(backbone, r.waveform, modality, policy, config, device)
        described[s] = {
            "backbone": backbone.name,
            "source": source,
            "waveform": r.waveform,
            "options": dict(backbone.options),
            "config": to_dict(backbone.config),
            "provenance": backbone.provenance(),
            "freeze": policy,
            "output": to_dict(fronts[s].info),
        }
    return EndToEnd(fronts, described)


def _front_end(
    backbone: Any, waveform: bool, modality: str, policy: str, config: EndToEndConfig, device: str
) -> FrontEnd:
    """The front end of one built backbone, on ``device``."""
    if waveform:
        layers, dim = backbone.frame_shape
        fe: FrontEnd = SpeechFrontEnd(
            backbone, StreamInfo(dim, layers, modality), policy, config.gradient_checkpointing
        )
    else:
        info = StreamInfo(int(np.prod(backbone.frame_shape)), 1, modality)
        fe = VisualFrontEnd(backbone, info, policy, config.augment, config.batchnorm)
        if str(device).startswith("cuda"):  # convolutions run faster on NHWC tensors
            fe.net.to(memory_format=torch.channels_last)
            fe.channels_last = True
    return fe.to(device)


def load_end_to_end(
    described: Mapping[str, dict[str, Any]], run: Path, config: EndToEndConfig, device: str = "cpu"
) -> EndToEnd:
    """A saved run's front ends: each backbone rebuilt from its recorded config with the
    fine-tuned weights the run exported (``model.json``'s ``end_to_end``); the feature
    statistics come with the run's other weights."""
    from avx.extract.backbones import create_backbone

    fronts = {}
    for s, d in described.items():
        spec = {"backbone": d["backbone"], "config": d["config"], "options": d.get("options") or {}}
        backbone = create_backbone(spec, weights=str(run / d["weights"]), device=device, amp=False)
        fronts[s] = _front_end(backbone, bool(d["waveform"]), s.split("/")[0], d["freeze"], config, device)
    return EndToEnd(fronts, described)


@torch.no_grad()
def fit_statistics(front: EndToEnd, batches: Iterable[Batch], device: str = "cpu") -> None:
    """Per-dimension mean/std of each front end's features over ``batches`` (the
    training split), with the backbones as they are now, in evaluation mode and without
    augmentation: what the cached path's normaliser computes from stored features
    (same floor on the std)."""
    was = front.training
    front.eval()
    acc: dict[str, list[torch.Tensor]] = {}
    n = dict.fromkeys(front.streams, 0)
    for batch in batches:
        batch = batch.to(device)
        for s in front.streams:
            y, m = front.of(s).encode(batch.inputs[s], batch.masks[s], batch.frame_index.get(s))
            v = y[m].double()
            if s not in acc:
                acc[s] = [torch.zeros(v.shape[1:], dtype=torch.float64, device=v.device)] * 2
            acc[s] = [acc[s][0] + v.sum(0), acc[s][1] + (v**2).sum(0)]
            n[s] += len(v)
    for s in front.streams:
        if not n[s]:
            raise AvxError(f"{s}: no training frames to measure the backbone's feature statistics on")
        mean = acc[s][0] / n[s]
        std = (acc[s][1] / n[s] - mean**2).clamp_min(0).sqrt()
        std = torch.maximum(std, 1e-6 * mean.abs().max().clamp_min(1e-12) + 1e-12)
        fe = front.of(s)
        fe.mean.copy_(mean.float())
        fe.std.copy_(std.float())
        fe.fitted.fill_(True)
    front.train(was)
