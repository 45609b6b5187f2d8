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
    from another (MulT's crossmodal attention), with a residual connection and FFN."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # A sample whose source is absent attends to nothing: zero its attention output.
        padding, empty = key_padding(kv_mask)
        kvn = self.norm_kv(kv)
        a, w = self.attn(self.norm_q(q), kvn, kvn, key_padding_mask=padding, need_weights=need_weights)
        a = a.masked_fill(empty[:, None, None], 0.0)
        x = q + self.dropout(a)
        return x + self.dropout(self.ff(self.norm_ff(x))), w


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
    """A small pre-norm transformer encoder with a key padding mask."""

    def __init__(self, d: int, heads: int, depth: int, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, batch_first=True, norm_first=True, activation="relu"
        )
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        padding, _ = key_padding(mask)
        return self.enc(x, src_key_padding_mask=padding) * mask.unsqueeze(-1).to(x.dtype)


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
