"""HiFi-GAN generator (Kong, Kim, Bae 2020, "HiFi-GAN: Generative Adversarial Networks for
Efficient and High Fidelity Speech Synthesis", arXiv:2010.05646): log-mel -> waveform.

Section 2.1 and Figure 1 of the paper: a 7-wide convolution to h_u channels, then per
stage a leaky ReLU and a transposed convolution that upsamples by u (kernel k_u, channels
halved), followed by a multi-receptive field fusion (MRF) module: the mean of |k_r|
residual blocks with kernel sizes k_r and dilations D_r. A final convolution to one
channel and tanh give the waveform. Appendix A of the paper defines V1, V2, V3 (`PRESETS`,
kept torch-free in config/generators.py so that validating a config does not import torch).
Details the paper leaves open follow the authors' reference implementation
(github.com/jik876/hifi-gan, models.py): leaky ReLU slope 0.1 (0.01 before the last
convolution), N(0, 0.01) initialization, padding (k_u - u) / 2, weight normalization
on every convolution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from tacotune.config.generators import PRESETS, GeneratorSpec, check_spec
from tacotune.errors import ConfigError

__all__ = ["PRESETS", "Generator", "GeneratorSpec", "build_generator", "check_spec"]

LEAKY_SLOPE = 0.1  # every leaky ReLU inside the network (reference implementation)
LAST_LEAKY_SLOPE = 0.01  # the one before conv_post (reference: F.leaky_relu's default)
INIT_STD = 0.01  # weights of the upsampling, residual and output convolutions ~ N(0, 0.01)


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
        self.planar = False  # True after to_channels_last_2d(): tensors are (B, C, 1, N)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, 1, T * hop_length)"""
        x = mel
        if self.planar:  # (B, n_mels, T) -> (B, n_mels, 1, T), channels-last
            x = mel.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        x = self.conv_pre(x)  # (B, h_u, T)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))  # (B, C, N) -> (B, C / 2, N * u)
            x = mrf(x)  # (B, C / 2, N * u)
        x = torch.tanh(self.conv_post(F.leaky_relu(x, LAST_LEAKY_SLOPE)))  # (B, 1, T * hop)
        return x.squeeze(2) if self.planar else x

    def remove_weight_norm(self) -> Generator:
        """Fold every weight norm into a plain weight (for inference: same output, faster).

        Returns self; training afterwards is possible but no longer weight-normalized.
        """
        with torch.enable_grad():  # under no_grad the folded weights would not be Parameters
            for module in self.modules():
                if parametrize.is_parametrized(module, "weight"):
                    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self

    def to_channels_last_2d(self) -> Generator:
        """Swap every 1-D convolution for its 2-D twin with a (1, k) kernel, and run on
        (B, C, 1, N) channels-last tensors: the same weights and outputs (to float rounding)
        in 1.5-2x less CPU time, as oneDNN's fastest CPU kernels want that layout
        (bench/vocoder.py). For CPU inference after `remove_weight_norm`; returns self.
        """
        if any(parametrize.is_parametrized(m) for m in self.modules()):
            raise ValueError("call remove_weight_norm() before to_channels_last_2d()")
        _swap_to_2d(self)
        self.planar = True
        return self


def _swap_to_2d(module: nn.Module) -> None:
    """Replace every Conv1d / ConvTranspose1d below `module` with its (1, k) Conv2d twin."""
    for name, child in module.named_children():
        if not isinstance(child, nn.Conv1d | nn.ConvTranspose1d):
            _swap_to_2d(child)
            continue
        shape: dict[str, Any] = {
            "in_channels": child.in_channels,
            "out_channels": child.out_channels,
            "kernel_size": (1, child.kernel_size[0]),
            "stride": (1, child.stride[0]),
            "padding": (0, cast(int, child.padding[0])),
            "dilation": (1, child.dilation[0]),
            "groups": child.groups,
            "bias": child.bias is not None,
        }
        twin: nn.Conv2d | nn.ConvTranspose2d
        if isinstance(child, nn.ConvTranspose1d):
            twin = nn.ConvTranspose2d(**shape, output_padding=(0, child.output_padding[0]))
        else:
            twin = nn.Conv2d(**shape)
        weight = child.weight.detach().unsqueeze(2)  # (out, in, k) -> (out, in, 1, k)
        twin.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last))
        if child.bias is not None:
            twin.bias = nn.Parameter(child.bias.detach().clone())
        twin.requires_grad_(child.weight.requires_grad)
        setattr(module, name, twin)


def build_generator(name: str, n_mels: int, hop_length: int, channels: int = 0) -> Generator:
    """The generator of a preset ("v1", "v2", "v3"); `channels` > 0 replaces its h_u
    (vocoder.generator_channels: smaller generators for tests and CPU trials)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown HiFi-GAN generator {name!r}; presets: {sorted(PRESETS)}")
    spec = PRESETS[name]
    if channels:
        spec = dataclasses.replace(spec, upsample_initial_channel=channels)
    return Generator(spec, n_mels, hop_length)
