"""Building blocks shared by fusion methods: temporal networks and cross-modal attention.

Everything takes ``x [B, T, D]`` with ``mask [B, T]`` (True = real frame, padding at
the end) and returns per-frame states, so a method can pool them for per-sequence
targets or keep them for per-frame targets.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from avx.errors import AvxError


class TemporalGRU(nn.Module):
    """COLD's temporal context network: a bidirectional GRU over real frames only.

    Padding never leaks into the backward direction (packed sequences). Samples with no
    frame (a missing modality) get zero states. Output size ``2 * hidden``.
    """

    def __init__(self, input_size: int, hidden: int = 256, layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.gru = nn.GRU(
            input_size,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out_size = 2 * hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.dropout(h) * mask.unsqueeze(-1).to(h.dtype)


def sinusoidal_positions(t: int, d: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


def key_padding(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key_padding_mask, empty)`` for ``nn.MultiheadAttention`` from a real-frame mask.

    A sequence with no real key (an absent modality) would make the softmax undefined
    (NaN); it gets its first frame as a dummy key instead, and ``empty`` [B] marks those
    sequences so a caller can zero their attention output. The one place this is done.
    """
    empty = ~mask.any(1)
    safe = mask.clone()
    safe[empty, 0] = True
    return ~safe, empty


class CrossModalBlock(nn.Module):
    """Pre-norm transformer block whose queries come from one modality and keys/values
    from another (MulT's crossmodal attention), with a residual connection and FFN.

    ``attn_dropout`` / ``relu_dropout`` default to ``dropout`` (AuxFormer sets them
    apart); ``gated`` scales the attention and feed-forward branches by two learnable
    scalars (AuxFormer's gated residuals, initialised to 1)."""

    def __init__(
        self,
        d: int,
        heads: int,
        dropout: float,
        *,
        attn_dropout: float | None = None,
        relu_dropout: float | None = None,
        gated: bool = False,
    ) -> None:
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        relu_dropout = dropout if relu_dropout is None else relu_dropout
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(relu_dropout), nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(dropout)
        self.gates = nn.Parameter(torch.ones(2)) if gated else None

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        kv_mask: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attn_mask`` (``[B * heads, Tq, Tk]`` bool, True = not attended, e.g. causal)
        replaces the key padding mask, so it must hide padded keys itself."""
        # A sample whose source is absent attends to nothing: zero its attention output.
        padding, empty = key_padding(kv_mask)
        kvn = self.norm_kv(kv)
        a, w = self.attn(
            self.norm_q(q),
            kvn,
            kvn,
            key_padding_mask=padding if attn_mask is None else None,
            attn_mask=attn_mask,
            need_weights=need_weights,
        )
        a = a.masked_fill(empty[:, None, None], 0.0)
        if self.gates is None:
            x = q + self.dropout(a)
            return x + self.dropout(self.ff(self.norm_ff(x))), w
        x = q + self.gates[0] * self.dropout(a)
        return x + self.gates[1] * self.dropout(self.ff(self.norm_ff(x))), w


class CrossModalTransformer(nn.Module):
    """``depth`` crossmodal blocks: target ``q`` repeatedly attends to source ``kv``."""

    def __init__(self, d: int, heads: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossModalBlock(d, heads, dropout) for _ in range(depth))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            q, _ = b(q, kv, kv_mask)
        return q


class SelfAttention(nn.Module):
    """A small transformer encoder with a key padding mask; padded frames come out zero.

    Pre-norm with a 4·d feed-forward by default; ``ff`` sets the feed-forward width and
    ``norm_first=False`` gives the original post-norm block of Vaswani et al. (the
    two-stage paper's "standard structure")."""

    def __init__(
        self,
        d: int,
        heads: int,
        depth: int,
        dropout: float,
        *,
        ff: int | None = None,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d, heads, ff or 4 * d, dropout, batch_first=True, norm_first=norm_first, activation="relu"
        )
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        padding, _ = key_padding(mask)
        return self.enc(x, src_key_padding_mask=padding) * mask.unsqueeze(-1).to(x.dtype)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of ``h [B, T, H]`` on real frames (zeros when none)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


POOLS = ("mean", "asp")


class TemporalPool(nn.Module):
    """Pooling over real frames chosen by name, so a method can offer it as an option:
    ``mean`` (:func:`masked_mean`, ``[B, D]``) or ``asp`` (:class:`AttentiveStatsPool`,
    ``[B, 2D]``); ``out_size`` says which."""

    def __init__(self, kind: str, d: int) -> None:
        super().__init__()
        if kind not in POOLS:
            raise AvxError(f"unknown pooling '{kind}'; valid: {', '.join(POOLS)}")
        self.asp = AttentiveStatsPool(d) if kind == "asp" else None
        self.out_size = 2 * d if kind == "asp" else d

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(h, mask) if self.asp is None else self.asp(h, mask)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018): ``[B, T, D] -> [B, 2D]``.

    ``h_t = tanh(W x_t + b)``, ``w = softmax_t(h_t · a)`` over the real frames, output
    ``[mu, sigma]`` with ``mu = sum_t w_t x_t`` and
    ``sigma = sqrt(clamp(sum_t w_t x_t² - mu², min=eps))`` (the clamp keeps the square
    root differentiable where a sequence is constant). Padded frames get no weight; a
    sample with no real frame (an absent modality) pools to zeros. ``hidden`` is the
    width of ``W`` (default ``D``).
    """

    def __init__(self, d: int, hidden: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Linear(d, hidden or d)
        self.query = nn.Parameter(torch.empty(hidden or d))
        nn.init.normal_(self.query, std=(hidden or d) ** -0.5)
        self.eps = eps
        self.out_size = 2 * d

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.tanh(self.proj(x)) @ self.query  # [B, T]
        padding, empty = key_padding(mask)
        scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        mu = (w * x).sum(1)
        var = (w * x * x).sum(1) - mu * mu
        out = torch.cat([mu, var.clamp_min(self.eps).sqrt()], dim=-1)
        return out.masked_fill(empty[:, None], 0.0)


class FrameProjection(nn.Module):
    """Per-stream input projection to a common width, plus sinusoidal positions (MulT's
    1-D convolution with kernel 1 is the same as a linear layer)."""

    def __init__(self, input_size: int, d: int, dropout: float, positions: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, d)
        self.dropout = nn.Dropout(dropout)
        self.positions = positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.positions:
            h = h * math.sqrt(h.shape[-1]) + sinusoidal_positions(h.shape[1], h.shape[-1], h.device)
        return self.dropout(h)


# -- Conformer (Gulati et al., 2020) -------------------------------------------------------


def relative_positions(t: int, d: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal encodings ``[2T - 1, d]`` of the relative distances ``T-1 .. -(T-1)``
    (row ``r`` encodes distance ``T - 1 - r``), as Transformer-XL's attention uses."""
    dist = torch.arange(t - 1, -t, -1, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(2 * t - 1, d, device=device)
    pe[:, 0::2] = torch.sin(dist * div)
    pe[:, 1::2] = torch.cos(dist * div)[:, : d // 2]
    return pe


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positional encoding (Transformer-XL,
    Dai et al. 2019), the Conformer's attention.

    ``score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_p p_{i-j}] / sqrt(d_head)``, with
    ``u`` and ``v`` learned per head and ``p`` the sinusoidal encoding of the distance
    ``i - j``. The distance term is gathered by index (no "relative shift" padding trick),
    so each query sees exactly its own distances. Padded keys are masked out; a sequence
    with no real frame (an absent modality) gets zeros.
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} heads")
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.pos = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d)
        self.u = nn.Parameter(torch.empty(heads, self.dk))
        self.v = nn.Parameter(torch.empty(heads, self.dk))
        nn.init.xavier_uniform_(self.u)
        nn.init.xavier_uniform_(self.v)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dk).unbind(2)  # [B, T, H, dk] each
        p = self.pos(relative_positions(t, d, x.device).to(x.dtype)).view(2 * t - 1, self.h, self.dk)
        content = torch.einsum("bihd,bjhd->bhij", q + self.u, k)
        by_distance = torch.einsum("bihd,rhd->bhir", q + self.v, p)  # [B, H, T, 2T-1]
        i = torch.arange(t, device=x.device)
        index = (t - 1 - i[:, None] + i[None, :]).expand(b, self.h, t, t)  # distance i - j
        scores = (content + by_distance.gather(-1, index)) / math.sqrt(self.dk)
        padding, empty = key_padding(mask)
        scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.dropout(torch.softmax(scores, -1))
        h = torch.einsum("bhij,bjhd->bihd", attn, v).reshape(b, t, d)
        return self.out(h).masked_fill(empty[:, None, None], 0.0)


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm over channels whose statistics come from real frames only.

    ``x [B, T, C]``, ``mask [B, T]``. In training the mean and (biased) variance are taken
    over the batch's real frames, and the running estimates are updated with the unbiased
    variance, as ``nn.BatchNorm1d`` does; padded frames never enter them. In evaluation
    the running estimates are used, so no sample depends on another.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = mask.sum()
        if self.training and n > 1:
            m = mask.unsqueeze(-1).to(x.dtype)
            mean = (x * m).sum((0, 1)) / n
            var = (((x - mean) * m) ** 2).sum((0, 1)) / n
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().float(), self.momentum)
                self.running_var.lerp_((var.detach() * n / (n - 1)).float(), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ConformerConvModule(nn.Module):
    """Pointwise conv (2×) + GLU → depthwise conv → BatchNorm → Swish → pointwise conv.

    Padded frames are zeroed before the depthwise convolution, so a sample's output
    equals what it would be with no padding at all (the convolution's own zero padding).
    """

    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the depthwise kernel must be odd (same length out), got {kernel}")
        self.norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = MaskedBatchNorm1d(d)
        self.pointwise_out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        h = nn.functional.glu(self.pointwise_in(self.norm(x)), dim=-1) * m
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        h = nn.functional.silu(self.bn(h, mask))
        return self.dropout(self.pointwise_out(h))


class ConformerFeedForward(nn.Module):
    """LayerNorm → Linear(d, 4d) → Swish → dropout → Linear(4d, d) → dropout."""

    def __init__(self, d: int, dropout: float, expansion: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, expansion * d),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(expansion * d, d),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConformerBlock(nn.Module):
    """One Conformer block (Gulati et al., 2020), batch-first and masked:
    ½·FFN → relative-position MHSA → convolution module → ½·FFN → LayerNorm, each a
    residual branch. Padded frames are kept at zero after every branch, so neither the
    depthwise convolution nor BatchNorm sees them, and no operation mixes samples except
    BatchNorm's training statistics (over real frames)."""

    def __init__(self, d: int, heads: int, kernel: int = 31, dropout: float = 0.1) -> None:
        super().__init__()
        self.ff1, self.ff2 = ConformerFeedForward(d, dropout), ConformerFeedForward(d, dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RelPositionAttention(d, heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConformerConvModule(d, kernel, dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        x = (x + 0.5 * self.ff1(x)) * m
        x = (x + self.attn_dropout(self.attn(self.attn_norm(x), mask))) * m
        x = (x + self.conv(x, mask)) * m
        x = x + 0.5 * self.ff2(x)
        return self.norm(x) * m


class Conformer(nn.Module):
    """``depth`` :class:`ConformerBlock` s of width ``d``: ``x [B, T, d]``, ``mask [B, T]``
    -> ``[B, T, d]`` (zeros on padded frames)."""

    def __init__(self, d: int, heads: int, depth: int, kernel: int = 31, dropout: float = 0.1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConformerBlock(d, heads, kernel, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        for b in self.blocks:
            x = b(x, mask)
        return x


class TemporalProjection(nn.Module):
    """A 1-D temporal convolution (``kernel`` frames, no bias) to ``bottleneck`` features,
    then a linear map to ``d``: VAVL's per-modality input layer, which makes every frame
    aware of its neighbours and brings both modalities to one width. Padded frames are
    zeroed first, so they never reach a real frame."""

    def __init__(self, input_size: int, bottleneck: int, d: int, kernel: int = 5) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the projection kernel must be odd (same length out), got {kernel}")
        self.conv = nn.Conv1d(input_size, bottleneck, kernel, padding=kernel // 2, bias=False)
        self.linear = nn.Linear(bottleneck, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return self.linear(self.conv(x.transpose(1, 2)).transpose(1, 2))


def mlp_head(d_in: int, d_out: int, dropout: float, hidden: tuple[int, ...] = (512, 256)) -> nn.Sequential:
    """Fully connected layers ``d_in -> hidden... -> d_out`` with ReLU and dropout between."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU(), nn.Dropout(dropout)]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, d_out))


# -- label-wise attention (LDDU's emotion space modelling, CARAT's label-specific features)


class LabelAttention(nn.Module):
    """q label queries attend over a modality's frames: ``[B, T, d] -> [B, q, d_out]``.

    LDDU Eqs. 1-2: ``a_ij = softmax_j(Proj_L(l_i) . Proj_O(o_j))`` over real frames,
    ``Z = Linear(A Proj_O(O))``, one attention head, no ``1/sqrt(d)`` scaling (the
    equation has none). ``labels`` are the trainable label embeddings ``L [q, d]``
    (shared by the modalities that use this module's caller; None: no label space, the
    scores come from an MLP over each frame instead, LDDU's "w/o ESM" ablation).
    A sequence with no real frame (absent modality) gets ``Z = 0``. Returns ``(Z, A)``.
    """

    def __init__(self, d: int, q: int, d_out: int, labels: nn.Embedding | None) -> None:
        super().__init__()
        self.labels = labels
        if labels is not None:
            self.label_proj = nn.Linear(labels.embedding_dim, d)
        else:
            self.scores = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, q))
        self.frame_proj = nn.Linear(d, d)
        self.out = nn.Linear(d, d_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padding, empty = key_padding(mask)
        o = self.frame_proj(h)  # Proj(O^m), [B, T, d]
        if self.labels is not None:
            s = torch.einsum("qd,btd->bqt", self.label_proj(self.labels.weight), o)
        else:
            s = self.scores(h).transpose(1, 2)  # [B, q, T]
        a = torch.softmax(s.float().masked_fill(padding.unsqueeze(1), float("-inf")), -1).to(o.dtype)
        z = self.out(a @ o)  # [B, q, d_out]
        return z.masked_fill(empty.view(-1, 1, 1), 0.0), a
