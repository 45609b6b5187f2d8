"""``twostage``: learning from voice-only, face-only and audio-visual-rated labels (paper 002,
Goncalves et al., OJSP 2025).

CREMA-D was rated three times: from the voice alone, from the face alone and from the
audio-visual clip. The paper trains the layers that see one modality on labels elicited
by that modality *and* on the audio-visual labels, then trains shared layers on the
audio-visual labels with the unimodal layers frozen (Sec. IV-B, Fig. 1).

The model (Sec. V-D):

- acoustic input: the learnable weighted sum of a stream's layers (LW-Sum, Eq. 6;
  :class:`~avx.fuse.methods.base.LayerMix`, softmax-normalised weights over the 25
  WavLM hidden states read from the store, ``audio/wavlm-large@all``); visual input:
  ``ReLU(Conv1D(x))`` to ``d_model`` = 1,024 (Eq. 7, ``conv_kernel`` frames, stride 1).
  A multi-layer stream whose width is not ``d_model``, or a single-layer stream, gets
  the Conv1D + ReLU too;
- a *branch* per modality and label source: the input layer and ``audio_layers`` /
  ``video_layers`` = 3 transformer encoder layers (post-norm, Vaswani et al.'s block;
  width ``d_model``, feed-forward ``ff_dim`` = 512, 8 heads);
- stage-1 heads: per branch, attentive statistics pooling
  (:class:`~avx.fuse.layers.AttentiveStatsPool`) and FC layers;
- shared layers: ``shared_layers`` = 2 transformer layers with one set of weights that
  every branch's frames pass through in turn, with a residual connection over them; an
  AS-Pool per branch, the pooled vectors concatenated, FC layers to the outputs.

Training (``stages`` = 2, the method's stages as data: :meth:`TwoStage.stages`):

1. stage ``1``: every branch and its head train on the branch's own label source, the
   acoustic and visual branches independently (their losses share no parameter); the
   sources are ``stage1`` (``audio=voice+av,video=face+av``: two equal acoustic
   branches, one on voice-only, one on AV ratings; two visual ones on face-only and AV);
   the stage is selected on the dev loss of those heads;
2. stage ``2``: every stage-1 parameter frozen (no gradient, evaluation mode); the shared
   layers, pools and FC train on the run's ``--labels`` (the AV ratings).

``stages`` = 1 trains one branch per stream and (with more than one stream) the shared
layers and FC together in one step, on the run's training labels (``--train-labels``,
default ``--labels``): the paper's models 1-9. The per-stream outputs
(``modality_logits``) are the stage-1 heads of that stream's branches (their
probabilities averaged); one stage over several streams has no such heads, and its
per-stream results are the fused model with the other streams absent, as for any method
without per-stream heads. Every choice the paper leaves open: docs/methods/twostage.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import AttentiveStatsPool, SelfAttention, mlp_head
from avx.fuse.methods.base import (
    METHODS,
    FusionMethod,
    FusionOutput,
    LayerMix,
    MethodCard,
    Objective,
    TaskSpec,
    _key,
)
from avx.fuse.tasks import from_probs, to_probs

STAGE1, STAGE2 = "1", "2"


@dataclass(frozen=True)
class TwoStageConfig:
    """The paper's architecture (Sec. V-D) and its training stages.

    ``d_model`` is the width both inputs are brought to (1,024: WavLM-large's hidden
    size, Eqs. 6-7) and the transformer width; ``ff_dim`` is the "encoder hidden layer of
    512 dimensions". ``stage1`` maps a modality (or a stream name) to the label sources
    of its branches, ``+``-separated, one branch per source.
    """

    d_model: int = 1024
    ff_dim: int = 512
    heads: int = 8
    audio_layers: int = 3
    video_layers: int = 3
    shared_layers: int = 2
    conv_kernel: int = 3
    dropout: float = 0.1
    head_dropout: float = 0.2
    stages: int = 2
    stage1: str = "audio=voice+av,video=face+av"


def parse_stage1(spec: str) -> dict[str, list[str]]:
    """``audio=voice+av,video=face+av`` -> ``{"audio": ["voice", "av"], "video": [...]}``."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        what, eq, sources = part.partition("=")
        names = [s.strip() for s in sources.split("+") if s.strip()]
        if not eq or not what.strip() or not names:
            raise AvxError(f"stage-1 labels '{spec}': write MODALITY=SOURCE[+SOURCE], e.g. audio=voice+av")
        out[what.strip()] = names
    return out


class Branch(nn.Module):
    """One set of unimodal layers after its LW-Sum (kept in the method's ``layer_mix``):
    the Conv1D + ReLU input layer where needed and a transformer encoder;
    ``[B, T, D] -> [B, T, d_model]``, zeros on padded frames."""

    def __init__(self, info: StreamInfo, c: TwoStageConfig, depth: int) -> None:
        super().__init__()
        needs_conv = info.layers == 1 or info.dim != c.d_model
        k = c.conv_kernel
        self.conv = nn.Conv1d(info.dim, c.d_model, k, padding=k // 2) if needs_conv else None
        self.encoder = SelfAttention(c.d_model, c.heads, depth, c.dropout, ff=c.ff_dim, norm_first=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)  # padding never reaches a real frame
            x = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        return self.encoder(x, mask)


class PooledHead(nn.Module):
    """AS-Pool over a branch's frames, then FC layers: ``[B, T, d] -> [B, K]``."""

    def __init__(self, d: int, k: int, dropout: float) -> None:
        super().__init__()
        self.pool = AttentiveStatsPool(d)
        self.fc = mlp_head(self.pool.out_size, k, dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h, mask))


class TwoStage(FusionMethod):
    config_class = TwoStageConfig

    def __init__(self, config: TwoStageConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        c, d, k = config, config.d_model, task.n_outputs
        if c.stages not in (1, 2):
            raise AvxError(f"twostage: stages must be 1 or 2, not {c.stages}")
        # branch key -> (stream, label source; "" = the run's training labels)
        self.plan = branch_plan(c, inputs)
        # every branch has its own LW-Sum (the shared mechanism's ModuleDict, by branch)
        self.layer_mix = nn.ModuleDict(
            {b: LayerMix(inputs[s].layers) for b, (s, _) in self.plan.items() if inputs[s].layers > 1}
        )
        depth = {"audio": c.audio_layers}
        self.branches = nn.ModuleDict(
            {
                b: Branch(inputs[s], c, depth.get(inputs[s].modality, c.video_layers))
                for b, (s, _) in self.plan.items()
            }
        )
        # the shared part: two stages, or one stage over several streams (models 7-12)
        self.joint = c.stages == 2 or len(self.streams) > 1
        # stage-1 heads: what stage 1 trains, or the output of a one-stream, one-stage model;
        # one stage over several streams has none (nothing would train them)
        with_heads = c.stages == 2 or not self.joint
        self.heads = nn.ModuleDict(
            {b: PooledHead(d, k, c.head_dropout) for b in self.plan} if with_heads else {}
        )
        if self.joint:
            self.shared = SelfAttention(d, c.heads, c.shared_layers, c.dropout, ff=c.ff_dim, norm_first=False)
            self.pools = nn.ModuleDict({b: AttentiveStatsPool(d) for b in self.plan})
            self.fc = mlp_head(2 * d * len(self.plan), k, c.head_dropout)
        self.stage: str | None = None  # None: not staged (everything trains, e.g. one stage)

    # -- stages --------------------------------------------------------------------------
    @classmethod
    def label_sources(cls, config: TwoStageConfig) -> tuple[str, ...]:
        if config.stages != 2:
            return ()
        return tuple(dict.fromkeys(s for v in parse_stage1(config.stage1).values() for s in v))

    def stages(self) -> tuple[str, ...]:
        return (STAGE1, STAGE2) if self.config.stages == 2 else ("",)

    def stage_metric(self, stage: str) -> str | None:
        """Stage 1 has no fused output yet: its epoch is selected on the dev loss of the
        branch heads (each on its own label source)."""
        return "loss" if stage == STAGE1 else None

    def unimodal_modules(self) -> list[nn.Module]:
        return [self.layer_mix, self.branches, self.heads]

    def joint_modules(self) -> list[nn.Module]:
        return [self.shared, self.pools, self.fc] if self.joint else []

    def set_stage(self, stage: str) -> None:
        """Stage 1 trains the branches and their heads only; stage 2 freezes them
        (``requires_grad`` off, evaluation mode) and trains the shared part."""
        self.stage = stage or None
        for m in self.unimodal_modules():
            m.requires_grad_(stage != STAGE2)
        for fe in self.front_end_modules():  # end-to-end backbones: unimodal, as the branches
            fe.set_trainable(stage != STAGE2)
        for m in self.joint_modules():
            m.requires_grad_(stage != STAGE1)
        self.train(self.training)

    def train(self, mode: bool = True) -> TwoStage:
        super().train(mode)
        if self.stage == STAGE2:  # frozen layers run as they will at inference
            for m in [*self.unimodal_modules(), *self.front_end_modules()]:
                m.eval()
        return self

    # -- the model -----------------------------------------------------------------------
    def forward(self, batch: Batch) -> FusionOutput:
        hs = {
            b: self.branches[b](self.branch_input(b, batch), batch.masks[s])
            for b, (s, _) in self.plan.items()
        }
        branch_logits = {
            b: self.heads[b](h, batch.masks[self.plan[b][0]]) for b, h in hs.items() if b in self.heads
        }
        per_stream = {s: self._stream_logits(s, branch_logits) for s in self.streams} if branch_logits else {}
        if self.joint and self.stage != STAGE1:
            pooled = []
            for b, h in hs.items():
                mask = batch.masks[self.plan[b][0]]
                out = self.shared(h, mask) + h  # the residual over the shared layers
                pooled.append(self.pools[b](out, mask))
            logits = self.fc(torch.cat(pooled, dim=-1))
        elif not self.joint:
            logits = per_stream[self.streams[0]]
        else:  # stage 1: no fused output yet; the mean of the streams' heads stands in
            logits = self._mean_logits(list(per_stream.values()))
        return FusionOutput(logits=logits, modality_logits=per_stream, extra=branch_logits)

    def branch_input(self, b: str, batch: Batch) -> torch.Tensor:
        """Branch ``b``'s stream, its layers mixed by the branch's own LW-Sum."""
        x = batch.inputs[self.plan[b][0]]
        return self.layer_mix[b](x) if b in self.layer_mix else x

    def _stream_logits(self, s: str, branch_logits: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._mean_logits([lg for b, lg in branch_logits.items() if self.plan[b][0] == s])

    def _mean_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        if len(logits) == 1:
            return logits[0]
        probs = torch.stack([to_probs(lg, self.task.kind) for lg in logits]).mean(0)
        return from_probs(probs, self.task.kind)

    def loss(self, out: FusionOutput, batch: Batch, objective: Objective) -> dict[str, torch.Tensor]:
        """Stage 1: each branch head's loss on its label source, on the clips that have
        its stream (class-balanced by that source's training counts). Otherwise the
        task loss of the output."""
        if self.stage != STAGE1:
            return {"task": objective(out.logits, batch, None)}
        terms = {}
        for b, lg in out.extra.items():
            s, source = self.plan[b]
            terms[f"task_{b}"] = objective.labels(source)(lg, batch, batch.present[s])
        return terms


def branch_plan(c: TwoStageConfig, inputs: dict[str, StreamInfo]) -> dict[str, tuple[str, str]]:
    """Branch key -> (stream, label source): one branch per stage-1 source of each
    stream (two stages), or one per stream trained on the run's labels (one stage)."""
    if c.stages == 1:
        return {_key(s): (s, "") for s in inputs}
    spec = parse_stage1(c.stage1)
    plan = {}
    for s, info in inputs.items():
        sources = spec.get(s) or spec.get(info.modality)
        if not sources:
            raise AvxError(
                f"twostage: stage-1 labels '{c.stage1}' name no source for {s} (modality {info.modality});"
                " add e.g. " + f"{info.modality}=av"
            )
        for i, src in enumerate(sources):
            plan[f"{_key(s)}__{i}_{src}"] = (s, src)
    return plan


METHODS.register(
    MethodCard(
        "twostage",
        TwoStage,
        tasks=("multiclass", "multilabel"),
        min_streams=1,
        max_streams=None,
        summary=(
            "unimodal branches trained on voice-/face-only and AV ratings (stage 1), then frozen; "
            "shared transformer + AS-Pool + FC on AV ratings (stage 2); LW-Sum over all layers"
        ),
        paper="Two-stage (002)",
    )
)
