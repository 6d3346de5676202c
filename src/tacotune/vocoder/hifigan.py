"""HiFi-GAN generator (Kong, Kim, Bae 2020, "HiFi-GAN: Generative Adversarial Networks for
Efficient and High Fidelity Speech Synthesis", arXiv:2010.05646): log-mel -> waveform.

Section 2.1 and Figure 1 of the paper: a 7-wide convolution to h_u channels, then per
stage a leaky ReLU and a transposed convolution that upsamples by u (kernel k_u, channels
halved), followed by a multi-receptive field fusion (MRF) module: the mean of |k_r|
residual blocks with kernel sizes k_r and dilations D_r. A final convolution to one
channel and tanh give the waveform. Appendix A of the paper defines V1, V2, V3 (`PRESETS`).
Details the paper leaves open follow the authors' reference implementation
(github.com/jik876/hifi-gan, models.py): leaky ReLU slope 0.1 (0.01 before the last
convolution), N(0, 0.01) initialization, padding (k_u - u) / 2, weight normalization
on every convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from tacotune.errors import ConfigError

LEAKY_SLOPE = 0.1  # every leaky ReLU inside the network (reference implementation)
LAST_LEAKY_SLOPE = 0.01  # the one before conv_post (reference: F.leaky_relu's default)
INIT_STD = 0.01  # weights of the upsampling, residual and output convolutions ~ N(0, 0.01)


@dataclass(frozen=True)
class GeneratorSpec:
    """The sizes of one generator (the paper's notation in comments)."""

    upsample_initial_channel: int  # h_u: channels after the input convolution
    upsample_rates: tuple[int, ...]  # u per transposed convolution; their product is the hop
    upsample_kernel_sizes: tuple[int, ...]  # k_u
    resblock: Literal[1, 2]  # 1: two convolutions per dilation (V1, V2); 2: one (V3)
    resblock_kernel_sizes: tuple[int, ...]  # k_r: one residual block per kernel size
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]  # D_r: dilations of each block

    @property
    def total_upsampling(self) -> int:
        """Samples per mel frame."""
        return math.prod(self.upsample_rates)


# Appendix A of the paper (and config_v1/v2/v3.json of the reference code)
PRESETS: dict[str, GeneratorSpec] = {
    "v1": GeneratorSpec(512, (8, 8, 2, 2), (16, 16, 4, 4), 1, (3, 7, 11), ((1, 3, 5),) * 3),
    "v2": GeneratorSpec(128, (8, 8, 2, 2), (16, 16, 4, 4), 1, (3, 7, 11), ((1, 3, 5),) * 3),
    "v3": GeneratorSpec(256, (8, 8, 4), (16, 16, 8), 2, (3, 5, 7), ((1, 2), (2, 6), (3, 12))),
}


def check_spec(spec: GeneratorSpec, hop_length: int) -> None:
    """Raise ConfigError unless `spec` turns every mel frame into exactly hop_length samples."""
    if spec.total_upsampling != hop_length:
        raise ConfigError(
            f"the generator upsamples by {' x '.join(map(str, spec.upsample_rates))} = "
            f"{spec.total_upsampling} samples per mel frame, but the mels have a hop of "
            f"{hop_length} samples; choose upsample rates whose product is {hop_length}"
        )
    if len(spec.upsample_rates) != len(spec.upsample_kernel_sizes):
        raise ConfigError("the generator needs one upsample kernel size per upsample rate")
    for u, k in zip(spec.upsample_rates, spec.upsample_kernel_sizes, strict=True):
        if k < u or (k - u) % 2:
            raise ConfigError(
                f"upsample kernel {k} for rate {u}: need k >= u and k - u even, so that a "
                f"transposed convolution turns T frames into exactly T * {u}"
            )
    if len(spec.resblock_kernel_sizes) != len(spec.resblock_dilation_sizes):
        raise ConfigError("the generator needs one dilation list per residual kernel size")
    if spec.upsample_initial_channel % 2 ** len(spec.upsample_rates):
        raise ConfigError("upsample_initial_channel must survive halving at every stage")


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


def _conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    """A length-preserving, weight-normalized, N(0, 0.01)-initialized convolution."""
    conv = nn.Conv1d(
        channels,
        channels,
        kernel_size,
        dilation=dilation,
        padding=_same_padding(kernel_size, dilation),
    )
    nn.init.normal_(conv.weight, 0.0, INIT_STD)
    return weight_norm(conv)


class ResBlock1(nn.Module):
    """Figure 1 (V1, V2): per dilation d, lrelu -> conv(d) -> lrelu -> conv(1), + input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, kernel_size, 1) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, N) -> (B, C, N)"""
        for dilated, plain in zip(self.convs1, self.convs2, strict=True):
            step = dilated(F.leaky_relu(x, LEAKY_SLOPE))
            x = x + plain(F.leaky_relu(step, LEAKY_SLOPE))
        return x


class ResBlock2(nn.Module):
    """The lighter block of V3: per dilation d, lrelu -> conv(d), + input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, N) -> (B, C, N)"""
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LEAKY_SLOPE))
        return x


class MRF(nn.Module):
    """Multi-receptive field fusion: the mean of residual blocks of different kernel sizes
    and dilations, all applied to the same input. (B, C, N) -> (B, C, N)"""

    def __init__(self, spec: GeneratorSpec, channels: int) -> None:
        super().__init__()
        block = ResBlock1 if spec.resblock == 1 else ResBlock2
        self.blocks = nn.ModuleList(
            block(channels, k_r, d_r)
            for k_r, d_r in zip(
                spec.resblock_kernel_sizes, spec.resblock_dilation_sizes, strict=True
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, N) -> (B, C, N)"""
        total = self.blocks[0](x)
        for block in self.blocks[1:]:
            total = total + block(x)
        return total / len(self.blocks)


class Generator(nn.Module):
    """(B, n_mels, T) log-mel -> (B, 1, T * hop_length) waveform in (-1, 1)."""

    def __init__(self, spec: GeneratorSpec, n_mels: int, hop_length: int) -> None:
        """Raises ConfigError when `spec` does not upsample by exactly `hop_length`."""
        super().__init__()
        check_spec(spec, hop_length)
        self.spec = spec
        h_u = spec.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(n_mels, h_u, 7, padding=3))
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        for i, (u, k) in enumerate(
            zip(spec.upsample_rates, spec.upsample_kernel_sizes, strict=True)
        ):
            channels = h_u // 2 ** (i + 1)
            up = nn.ConvTranspose1d(2 * channels, channels, k, u, padding=(k - u) // 2)
            nn.init.normal_(up.weight, 0.0, INIT_STD)
            self.ups.append(weight_norm(up))
            self.mrfs.append(MRF(spec, channels))
        post = nn.Conv1d(h_u // 2 ** len(spec.upsample_rates), 1, 7, padding=3)
        nn.init.normal_(post.weight, 0.0, INIT_STD)
        self.conv_post = weight_norm(post)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, 1, T * hop_length)"""
        x = self.conv_pre(mel)  # (B, h_u, T)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))  # (B, C, N) -> (B, C / 2, N * u)
            x = mrf(x)  # (B, C / 2, N * u)
        x = self.conv_post(F.leaky_relu(x, LAST_LEAKY_SLOPE))  # (B, 1, T * hop)
        return torch.tanh(x)

    def remove_weight_norm(self) -> Generator:
        """Fold every weight norm into a plain weight (for inference: same output, faster).

        Returns self; training afterwards is possible but no longer weight-normalized.
        """
        with torch.enable_grad():  # under no_grad the folded weights would not be Parameters
            for module in self.modules():
                if parametrize.is_parametrized(module, "weight"):
                    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self


def build_generator(name: str, n_mels: int, hop_length: int) -> Generator:
    """The generator of a preset ("v1", "v2", "v3")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown HiFi-GAN generator {name!r}; presets: {sorted(PRESETS)}")
    return Generator(PRESETS[name], n_mels, hop_length)
