"""Building blocks: Xavier-initialized linear/conv layers, prenet, postnet, encoder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Gain = Literal["linear", "relu", "tanh", "sigmoid"]  # nonlinearity after the layer


class LinearNorm(nn.Linear):
    """nn.Linear with Xavier-uniform weights scaled for the following nonlinearity."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, gain: Gain = "linear") -> None:
        super().__init__(in_dim, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.weight, gain=nn.init.calculate_gain(gain))


class ConvNorm(nn.Conv1d):
    """Same-padded nn.Conv1d with Xavier-uniform weights."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        gain: Gain = "linear",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        nn.init.xavier_uniform_(self.weight, gain=nn.init.calculate_gain(gain))


class Prenet(nn.Module):
    """Two ReLU layers with dropout that stays ON at inference (Tacotron2 §2.2).

    Always-on dropout is the noise that keeps autoregressive decoding robust;
    pass a `generator` for reproducible synthesis, or the keep-masks themselves
    (the exported ONNX decoder step takes them as an input).
    """

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                LinearNorm(in_dim, dim, bias=False, gain="relu"),
                LinearNorm(dim, dim, bias=False, gain="relu"),
            ]
        )
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        masks: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """(..., in_dim) -> (..., dim); `masks`: one 0/1 keep-mask (..., dim) per layer,
        used instead of drawing them."""
        for index, layer in enumerate(self.layers):
            x = F.relu(layer(x))
            if self.dropout > 0:
                keep = (
                    torch.empty_like(x).bernoulli_(1 - self.dropout, generator=generator)
                    if masks is None
                    else masks[index]
                )
                x = x * keep / (1 - self.dropout)
        return x


class ConvBlock(nn.Module):
    """Conv1d -> BatchNorm -> tanh/ReLU (none for "linear") -> dropout."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: Gain,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv = ConvNorm(in_channels, out_channels, kernel_size, gain=activation)
        self.norm = nn.BatchNorm1d(out_channels)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) -> (B, C_out, T)"""
        x = self.norm(self.conv(x))
        if self.activation == "tanh":
            x = torch.tanh(x)
        elif self.activation == "relu":
            x = F.relu(x)
        return self.dropout(x)


class Postnet(nn.Module):
    """`layers` convolutions (five in the paper) predicting a residual that sharpens the
    decoder's mel."""

    def __init__(
        self, n_mels: int, dim: int, kernel_size: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        channels = [n_mels] + [dim] * (layers - 1) + [n_mels]
        self.blocks = nn.ModuleList(
            ConvBlock(
                channels[i],
                channels[i + 1],
                kernel_size,
                "tanh" if i < layers - 1 else "linear",
                dropout,
            )
            for i in range(layers)
        )

    def start_as_identity(self) -> None:
        """Zero the last block's BatchNorm scale: the residual is 0, so the postnet mel is the
        decoder's, until training gives it one (a fresh postnet adds unit-variance noise)."""
        last: ConvBlock = self.blocks[-1]  # type: ignore[assignment]  # ModuleList is untyped
        nn.init.zeros_(last.norm.weight)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, n_mels, T) residual"""
        x = mel
        for block in self.blocks:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Character embedding -> convolutions -> BiLSTM."""

    def __init__(
        self,
        n_symbols: int,
        embedding_dim: int,
        dim: int,
        conv_layers: int,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_symbols, embedding_dim)
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (n_symbols + embedding_dim))
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.convs = nn.ModuleList(
            ConvBlock(embedding_dim if i == 0 else dim, dim, kernel_size, "relu", dropout)
            for i in range(conv_layers)
        )
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, text: Tensor, lengths: Tensor) -> Tensor:
        """(B, N) ids, (B,) lengths -> (B, N, dim); padded positions are zeros."""
        x = self.embedding(text).transpose(1, 2)  # (B, E, N)
        for conv in self.convs:
            x = conv(x)
        packed = nn.utils.rnn.pack_padded_sequence(
            x.transpose(1, 2), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        self.lstm.flatten_parameters()
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=text.shape[1])
        return out
