"""Global style tokens (Wang et al. 2018): a reference encoder and token attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

REFERENCE_FILTERS = (32, 32, 64, 64, 128, 128)  # paper's 6 conv layers, stride 2 each
REFERENCE_DIM = 128  # GRU units summarizing the reference


class ReferenceEncoder(nn.Module):
    """Mel spectrogram -> fixed-size prosody embedding."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        channels = (1, *REFERENCE_FILTERS)
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1),
                nn.BatchNorm2d(channels[i + 1]),
                nn.ReLU(),
            )
            for i in range(len(REFERENCE_FILTERS))
        )
        freq = n_mels
        for _ in REFERENCE_FILTERS:
            freq = math.ceil(freq / 2)
        self.gru = nn.GRU(REFERENCE_FILTERS[-1] * freq, REFERENCE_DIM, batch_first=True)

    def forward(self, mel: Tensor, lengths: Tensor) -> Tensor:
        """(B, n_mels, T), (B,) -> (B, REFERENCE_DIM)"""
        x = mel.transpose(1, 2).unsqueeze(1)  # (B, 1, T, n_mels): time and frequency kept apart
        for conv in self.convs:
            x = conv(x)
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(L / 2)
        batch, channels, frames, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(1, frames).cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.gru(packed)
        return hidden.squeeze(0)


class StyleTokens(nn.Module):
    """Multi-head attention from a reference embedding over learned style tokens."""

    def __init__(self, n_tokens: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = nn.Parameter(torch.randn(n_tokens, dim // heads) * 0.5)
        self.query = nn.Linear(REFERENCE_DIM, dim, bias=False)
        self.key = nn.Linear(dim // heads, dim, bias=False)
        self.value = nn.Linear(dim // heads, dim, bias=False)

    def forward(self, reference: Tensor | None, batch: int) -> Tensor:
        """(B, REFERENCE_DIM) or None (uniform token weights) -> (B, dim)"""
        keys = torch.tanh(self.tokens)  # (K, dim / heads)
        k = self.key(keys).view(-1, self.heads, self.value.out_features // self.heads)
        v = self.value(keys).view_as(k)  # (K, H, D)
        if reference is None:
            weights = keys.new_full((batch, self.heads, keys.shape[0]), 1.0 / keys.shape[0])
        else:
            q = self.query(reference).view(batch, self.heads, -1)  # (B, H, D)
            scores = torch.einsum("bhd,khd->bhk", q, k) / math.sqrt(q.shape[-1])
            weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bhk,khd->bhd", weights, v).reshape(batch, -1)
