"""SFAV: self-attention fusion of a 1-D convolutional audio and visual branch (paper 001).

The paper's architecture (Table I) on cached features: a visual branch of four
Conv1d(k=3, same) + BatchNorm + ReLU blocks (stage 1: ->64->64, stage 2: ->128->128) over
per-frame face features (EfficientFace's 1024-D in the paper; any visual stream), and an
audio branch of four Conv1d(k=3, valid) + BatchNorm + ReLU + MaxPool(2, stride 1) blocks
(stage 1: ->64->128, stage 2: ->256->128) over MFCCs (any audio stream). Each branch
ends in global average pooling over its real frames; the pooled vectors are
concatenated and classified by one linear layer.

Fusion variants, one class each, registered as ``sfav.lt1`` .. ``sfav.ia4`` for the
paper's Table II rows (``heads`` 1 or 4; the older names ``sfav-lt1`` .. still resolve):

- ``lt`` late transformer: after stage 2, a transformer block in each branch: audio
  queries attend to video keys/values (Eq. 2) and the reverse.
- ``it`` intermediate transformer: the same blocks after stage 1; their outputs are
  added to the branch they were computed for, then stage 2 runs on the sum.
- ``ia`` intermediate attention: after stage 1, only the attention map
  ``A = softmax(Phi_a W_q (Phi_v W_k)^T / sqrt(d))`` (Eq. 3, averaged over heads) is
  used; summed over its query axis it is an importance vector over the other
  modality's time steps, which multiplies that modality's features (both directions).
  No features cross between branches; ``W_q``/``W_k`` have no bias, so a zeroed
  modality gives a constant importance vector, as the paper notes.

The paper's comparison baselines, built on the same branches (``sfav.tav``,
``sfav.tva``, ``sfav.mult``):

- ``tav`` / ``tva`` (Huang et al. [16]): one transformer block after stage 2 fusing
  audio into video (video queries, audio keys/values) or video into audio, with the
  block's feed-forward layers as 1-D convolutions (k=3), as the paper adapts them; the
  fused branch alone is pooled and classified.
- ``mult`` (MulT [14] restricted to audio and video): the late transformer plus a
  self-attention transformer block in each branch after its crossmodal block.

The transformer block is the paper's (Fig. 2): pre-norm, with residual connections
around the attention and the feed-forward layers. Where the official code differs, an
option reproduces it (``docs/methods/sfav.md`` lists every difference):
``residual_attention=false`` (no residual around the attention), ``qkv_bias=false``
(no query/key/value projection biases), ``dropout=0`` (no attention/MLP dropout) and
``attention_dim=0`` (IA's query/key width is the query branch's own: 128 for audio
queries, 64 for video). A missing modality is presented as zeros, the way the paper
and its modality dropout present it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avx.errors import AvxError
from avx.fuse.data import Batch, StreamInfo
from avx.fuse.layers import key_padding
from avx.fuse.methods.base import (
    ALL_TASKS,
    METHODS,
    FusionMethod,
    FusionOutput,
    MethodCard,
    TaskSpec,
    masked_mean,
)

_FILL = -1e4  # masked attention logit (finite: fully masked rows stay defined in float16)


@dataclass(frozen=True)
class SfavConfig:
    """SFAV options; the widths default to the paper's Table I.

    ``fusion`` names the variant and is set by the registered name (``sfav.lt4`` is
    ``fusion=lt, heads=4``); each class accepts only its own. ``attention_dim``: IA's
    query/key width (0 = the query branch's width, as the official code).
    """

    fusion: str = "ia"
    heads: int = 1
    video_widths: tuple[int, ...] = (64, 64, 128, 128)
    audio_widths: tuple[int, ...] = (64, 128, 256, 128)
    mlp_ratio: int = 2
    dropout: float = 0.1
    attention_dim: int = 64
    residual_attention: bool = True  # the paper's block; False = the official code's
    qkv_bias: bool = True  # False = the official code's projections


class ConvBlock(nn.Module):
    """Conv1d(k=3) + BatchNorm + ReLU, with the audio branch's MaxPool(2, stride 1).

    ``same`` padding keeps the length (visual branch); ``valid`` convolution and the
    pool shorten it by 3 frames (audio branch), and the mask shrinks with it: an output
    frame is real when every input frame it saw was real.
    """

    def __init__(self, c_in: int, c_out: int, valid: bool) -> None:
        super().__init__()
        self.valid = valid
        self.conv = nn.Conv1d(c_in, c_out, 3, padding=0 if valid else 1)
        self.bn = nn.BatchNorm1d(c_out)
        self.pool = nn.MaxPool1d(2, stride=1) if valid else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * mask.unsqueeze(1).to(x.dtype)  # padding never leaks into real frames
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        if self.valid:
            mask = mask.unfold(1, 4, 1).all(-1)
        return x, mask


class Branch(nn.Module):
    """Two stages of two :class:`ConvBlock` each, over ``[B, C, T]``."""

    def __init__(self, c_in: int, widths: tuple[int, ...], valid: bool) -> None:
        super().__init__()
        if len(widths) != 4:
            raise AvxError(f"sfav: a branch has 4 convolution widths, got {list(widths)}")
        chans = (c_in, *widths)
        blocks = [ConvBlock(chans[i], chans[i + 1], valid) for i in range(4)]
        self.stage1, self.stage2 = nn.ModuleList(blocks[:2]), nn.ModuleList(blocks[2:])
        self.min_frames = 13 if valid else 1  # four valid blocks remove 12 frames

    def run(self, stage: int, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1 or 2 on ``x [B, C, T]`` and its mask (which shrinks with it)."""
        for b in self.stage1 if stage == 1 else self.stage2:
            x, m = b(x, m)
        return x, m


class FeedForward(nn.Module):
    """The block's MLP over ``[B, T, D]``: linear layers, or 1-D convolutions (k=3)."""

    def __init__(self, d: int, ratio: int, dropout: float, conv: bool) -> None:
        super().__init__()
        hidden = d * ratio
        self.conv = conv
        make = (lambda a, b: nn.Conv1d(a, b, 3, padding=1)) if conv else nn.Linear
        self.fc1, self.fc2 = make(d, hidden), make(hidden, d)
        self.act, self.drop = nn.GELU(), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        m = mask.unsqueeze(1).to(x.dtype)  # convolutions must not read padded frames
        h = self.drop(self.act(self.fc1(x.transpose(1, 2) * m)))
        return self.drop(self.fc2(h * m).transpose(1, 2))


class TransformerBlock(nn.Module):
    """Paper Fig. 2: ``x + Attn(LN(x), LN(y))`` then ``x + MLP(LN(x))``.

    Queries come from ``x`` (width ``d``), keys and values from ``y`` (width
    ``d_kv``; ``y = x`` for self-attention), so the intermediate transformer can fuse
    the 128-wide audio stage into the 64-wide video stage and back.
    """

    def __init__(
        self, d: int, d_kv: int, heads: int, cfg: SfavConfig, conv_ff: bool = False, cross: bool = True
    ) -> None:
        super().__init__()
        if d % heads:
            raise AvxError(f"sfav: {heads} heads do not divide the width {d}")
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d_kv) if cross else None
        self.attn = nn.MultiheadAttention(
            d, heads, dropout=cfg.dropout, kdim=d_kv, vdim=d_kv, batch_first=True
        )
        if not cfg.qkv_bias:
            self.attn.in_proj_bias = None  # the output projection keeps its bias
        self.norm_ff = nn.LayerNorm(d)
        self.ff = FeedForward(d, cfg.mlp_ratio, cfg.dropout, conv_ff)
        self.residual = cfg.residual_attention

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
    ) -> torch.Tensor:
        q = self.norm_q(x)
        kv = self.norm_kv(y) if self.norm_kv is not None else q
        padding, _ = key_padding(y_mask)  # a sequence with no real key attends to its first frame
        a, _ = self.attn(q, kv, kv, key_padding_mask=padding, need_weights=False)
        x = x + a if self.residual else a
        x = x + self.ff(self.norm_ff(x), x_mask)
        return x * x_mask.unsqueeze(-1).to(x.dtype)


class AttentionImportance(nn.Module):
    """Eq. 3 without values: the importance of each of ``y``'s time steps to ``x``.

    ``softmax(x W_q (y W_k)^T / sqrt(d_h))`` per head, averaged over heads and summed
    over the (real) queries: ``[B, T_y]``, zero on padded keys.
    """

    def __init__(self, d_q: int, d_k: int, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise AvxError(f"sfav: {heads} heads do not divide attention_dim {dim}")
        self.q = nn.Linear(d_q, dim, bias=False)
        self.k = nn.Linear(d_k, dim, bias=False)
        self.heads = heads

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
    ) -> torch.Tensor:
        b, tx, _ = x.shape
        ty, h = y.shape[1], self.heads
        q = self.q(x).view(b, tx, h, -1).transpose(1, 2)  # [B, h, Tx, dh]
        k = self.k(y).view(b, ty, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, h, Tx, Ty]
        logits = logits.masked_fill(~y_mask[:, None, None, :], _FILL)
        a = torch.softmax(logits.float(), -1).mean(1)  # [B, Tx, Ty]
        a = a * x_mask.unsqueeze(-1).to(a.dtype)
        return (a.sum(1) * y_mask.to(a.dtype)).to(y.dtype)


# -- the methods: shared branches, one small class per fusion kind ----------------------


class Sfav(FusionMethod):
    """The two branches and the classifier every SFAV variant shares.

    A variant overrides :meth:`fuse_stage1` (between the two convolution stages, on
    ``[B, C, T]``) and/or :meth:`fuse_stage2` (after them, on ``[B, T, C]``, returning
    the pooled vector the head classifies); the defaults fuse nothing and concatenate
    the pooled branches.
    """

    config_class = SfavConfig
    fusions: tuple[str, ...] = ()

    def __init__(self, config: SfavConfig, inputs: dict[str, StreamInfo], task: TaskSpec) -> None:
        super().__init__(config, inputs, task)
        if config.fusion not in self.fusions:
            raise AvxError(
                f"sfav: fusion '{config.fusion}' is not built by {type(self).__name__} (it builds"
                f" {', '.join(self.fusions)}); choose the method sfav.<fusion><heads> instead"
            )
        if config.heads < 1:
            raise AvxError(f"sfav: heads must be >= 1, got {config.heads}")
        self.audio = next((s for s in self.streams if inputs[s].modality == "audio"), self.streams[0])
        self.video = next(s for s in self.streams if s != self.audio)
        self.widths_a, self.widths_v = tuple(config.audio_widths), tuple(config.video_widths)
        self.branch_a = Branch(inputs[self.audio].dim, self.widths_a, valid=True)
        self.branch_v = Branch(inputs[self.video].dim, self.widths_v, valid=False)
        self.build()
        self.head = nn.Linear(self.pooled_width(), task.n_outputs)

    def build(self) -> None:
        """Create the fusion modules (after the branches, before the head)."""

    def pooled_width(self) -> int:
        return self.widths_a[3] + self.widths_v[3]

    def fuse_stage1(
        self, xa: torch.Tensor, ma: torch.Tensor, xv: torch.Tensor, mv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return xa, xv

    def fuse_stage2(
        self, ta: torch.Tensor, ma: torch.Tensor, tv: torch.Tensor, mv: torch.Tensor
    ) -> torch.Tensor:
        return torch.cat([masked_mean(ta, ma), masked_mean(tv, mv)], -1)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Channels-first inputs and masks; absent samples are zeros (their masks kept)."""
        feats = self.features(batch)
        out = []
        for s in (self.audio, self.video):
            x, m = feats[s], batch.masks[s]
            x = x * batch.present[s].view(-1, 1, 1).to(x.dtype)
            need = self.branch_a.min_frames if s == self.audio else 1
            short = batch.present[s] & (m.sum(1) < need)
            if short.any():  # only the audio branch can be too short (need = 1 for video)
                i = int(short.nonzero()[0, 0])
                raise AvxError(
                    f"sfav: sample {batch.ids[i]} has {int(m[i].sum())} frames of {s}; the audio branch "
                    f"needs >= {need} (four k=3 convolutions, each with a 2-frame pooling)"
                )
            if x.shape[1] < need:  # only absent samples can be this short: pad them
                x = nn.functional.pad(x, (0, 0, 0, need - x.shape[1]))
                m = nn.functional.pad(m, (0, need - m.shape[1]))
            out += [x.transpose(1, 2), m]
        return tuple(out)

    def forward(self, batch: Batch) -> FusionOutput:
        xa, ma, xv, mv = self._inputs(batch)
        xa, ma = self.branch_a.run(1, xa, ma)
        xv, mv = self.branch_v.run(1, xv, mv)
        xa, xv = self.fuse_stage1(xa, ma, xv, mv)
        xa, ma = self.branch_a.run(2, xa, ma)
        xv, mv = self.branch_v.run(2, xv, mv)
        z = self.fuse_stage2(xa.transpose(1, 2), ma, xv.transpose(1, 2), mv)
        return FusionOutput(logits=self.head(z))


class SfavLate(Sfav):
    """``lt``: after stage 2, audio queries attend to video and video queries to audio."""

    fusions = ("lt",)

    def build(self) -> None:
        a2, v2, c, h = self.widths_a[3], self.widths_v[3], self.config, self.config.heads
        self.fuse_a = TransformerBlock(a2, v2, h, c)  # audio queries, video keys/values
        self.fuse_v = TransformerBlock(v2, a2, h, c)

    def attend(
        self, ta: torch.Tensor, ma: torch.Tensor, tv: torch.Tensor, mv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage-2 sequences after the crossmodal blocks."""
        return self.fuse_a(ta, ma, tv, mv), self.fuse_v(tv, mv, ta, ma)

    def fuse_stage2(
        self, ta: torch.Tensor, ma: torch.Tensor, tv: torch.Tensor, mv: torch.Tensor
    ) -> torch.Tensor:
        ta, tv = self.attend(ta, ma, tv, mv)
        return super().fuse_stage2(ta, ma, tv, mv)


class SfavMult(SfavLate):
    """``mult`` (MulT restricted to audio and video): the late transformer, then a
    self-attention block in each branch."""

    fusions = ("mult",)

    def build(self) -> None:
        super().build()
        a2, v2, c, h = self.widths_a[3], self.widths_v[3], self.config, self.config.heads
        self.self_a = TransformerBlock(a2, a2, h, c, cross=False)
        self.self_v = TransformerBlock(v2, v2, h, c, cross=False)

    def attend(
        self, ta: torch.Tensor, ma: torch.Tensor, tv: torch.Tensor, mv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tv = super().attend(ta, ma, tv, mv)
        return self.self_a(ta, ma, ta, ma), self.self_v(tv, mv, tv, mv)


class SfavIntermediate(Sfav):
    """``it``: the transformer blocks after stage 1, each output added to its branch."""

    fusions = ("it",)

    def build(self) -> None:
        a1, v1, c, h = self.widths_a[1], self.widths_v[1], self.config, self.config.heads
        self.fuse_a = TransformerBlock(a1, v1, h, c)
        self.fuse_v = TransformerBlock(v1, a1, h, c)

    def fuse_stage1(
        self, xa: torch.Tensor, ma: torch.Tensor, xv: torch.Tensor, mv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tv = xa.transpose(1, 2), xv.transpose(1, 2)
        return (
            xa + self.fuse_a(ta, ma, tv, mv).transpose(1, 2),
            xv + self.fuse_v(tv, mv, ta, ma).transpose(1, 2),
        )


class SfavAttention(Sfav):
    """``ia``: after stage 1, each modality's importance vector (from the other's
    queries) re-weights its frames; no features cross between the branches."""

    fusions = ("ia",)

    def build(self) -> None:
        a1, v1, c = self.widths_a[1], self.widths_v[1], self.config
        self.importance_v = AttentionImportance(a1, v1, c.attention_dim or a1, c.heads)  # audio asks video
        self.importance_a = AttentionImportance(v1, a1, c.attention_dim or v1, c.heads)

    def fuse_stage1(
        self, xa: torch.Tensor, ma: torch.Tensor, xv: torch.Tensor, mv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tv = xa.transpose(1, 2), xv.transpose(1, 2)
        w_v = self.importance_v(ta, ma, tv, mv)  # [B, Tv]
        w_a = self.importance_a(tv, mv, ta, ma)  # [B, Ta]
        return xa * w_a.unsqueeze(1), xv * w_v.unsqueeze(1)


class SfavDirectional(Sfav):
    """``tav`` (audio fused into video: video queries) / ``tva`` (the reverse): one block
    with a convolutional feed-forward after stage 2; only the fused branch is pooled."""

    fusions = ("tav", "tva")

    def build(self) -> None:
        a2, v2, c, h = self.widths_a[3], self.widths_v[3], self.config, self.config.heads
        if self.config.fusion == "tav":
            self.fuse = TransformerBlock(v2, a2, h, c, conv_ff=True)
        else:
            self.fuse = TransformerBlock(a2, v2, h, c, conv_ff=True)

    def pooled_width(self) -> int:
        return self.widths_v[3] if self.config.fusion == "tav" else self.widths_a[3]

    def fuse_stage2(
        self, ta: torch.Tensor, ma: torch.Tensor, tv: torch.Tensor, mv: torch.Tensor
    ) -> torch.Tensor:
        if self.config.fusion == "tav":
            return masked_mean(self.fuse(tv, mv, ta, ma), mv)
        return masked_mean(self.fuse(ta, ma, tv, mv), ma)


# -- registered variants (SFAV Table II rows) --------------------------------------------


def _card(name: str, cls: type[Sfav], fusion: str, heads: int, summary: str) -> MethodCard:
    """One Table II row: ``sfav.<fusion><heads>``, also reachable by its older ``sfav-`` name."""
    return MethodCard(
        name,
        cls,
        defaults={"fusion": fusion, "heads": heads},
        aliases=(name.replace(".", "-"),),
        tasks=ALL_TASKS,
        min_streams=2,
        max_streams=2,
        missing="zeros",
        summary=summary,
        paper="SFAV (001)",
    )


METHODS.register(_card("sfav.lt1", SfavLate, "lt", 1, "late transformer, 1 head"))
METHODS.register(_card("sfav.lt4", SfavLate, "lt", 4, "late transformer, 4 heads"))
METHODS.register(_card("sfav.it1", SfavIntermediate, "it", 1, "intermediate transformer, 1 head"))
METHODS.register(_card("sfav.it4", SfavIntermediate, "it", 4, "intermediate transformer, 4 heads"))
METHODS.register(_card("sfav.ia1", SfavAttention, "ia", 1, "intermediate attention, 1 head"))
METHODS.register(_card("sfav.ia4", SfavAttention, "ia", 4, "intermediate attention, 4 heads"))
METHODS.register(
    _card("sfav.tav", SfavDirectional, "tav", 1, "TAV baseline (audio into video) on SFAV's branches")
)
METHODS.register(
    _card("sfav.tva", SfavDirectional, "tva", 1, "TVA baseline (video into audio) on SFAV's branches")
)
METHODS.register(_card("sfav.mult", SfavMult, "mult", 1, "MulT (AV) baseline on SFAV's branches"))
