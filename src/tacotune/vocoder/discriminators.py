"""HiFi-GAN discriminators (Kong, Kim, Bae 2020, arXiv:2010.05646, section 2.2).

Multi-period (MPD): for each period p in (2, 3, 5, 7, 11) ("to avoid overlaps as much as
possible") the waveform is reshaped to (N / p, p) and judged by 2-D convolutions whose kernel is 1
wide along the period axis, so every column is processed independently; weight
normalization throughout. Multi-scale (MSD, from MelGAN): three sub-discriminators
of strided, grouped 1-D convolutions on the raw audio, the audio average-pooled once and
twice (kernel 4, stride 2); the raw-audio one uses spectral normalization (it "stabilizes
training"), the others weight normalization. Layer sizes follow the authors' reference
implementation (github.com/jik876/hifi-gan, models.py). Every sub-discriminator returns
its logits (least-squares GAN, section 2.3) and the feature map after each layer (for the
feature-matching loss).

`divisor` (vocoder.discriminator_divisor) divides every hidden channel count, and a
grouped convolution keeps as many groups as still divide its channels: 1 is the paper's
70M-parameter pair; larger divisors are for CPU trials and tests, where the full
discriminators cost seconds per 1024-sample segment (bench/vocoder.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LEAKY_SLOPE = 0.1
PERIODS = (2, 3, 5, 7, 11)  # section 2.2: primes, so the periods overlap as little as possible
SCALES = 3  # raw, x2 and x4 average-pooled audio

Norm = Callable[[nn.Module], nn.Module]


class DiscriminatorOutput(NamedTuple):
    """Every sub-discriminator's verdict on one batch of audio, in a fixed order."""

    logits: list[Tensor]  # per sub-discriminator: (B, L_k), one score per output position
    features: list[list[Tensor]]  # per sub-discriminator: the activation after each layer


class PeriodDiscriminator(nn.Module):
    """One MPD sub-discriminator: (B, 1, N) -> logits (B, L) and feature maps."""

    def __init__(
        self, period: int, kernel_size: int = 5, stride: int = 3, divisor: int = 1
    ) -> None:
        super().__init__()
        self.period = period
        channels = (1, *(c // divisor for c in (32, 128, 512, 1024)))
        pad = (kernel_size - 1) // 2
        layers = [
            nn.Conv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=(pad, 0))
            for c_in, c_out in itertools.pairwise(channels)
        ]
        widest = channels[-1]
        layers.append(nn.Conv2d(widest, widest, (kernel_size, 1), 1, padding=(pad, 0)))
        self.convs = nn.ModuleList(weight_norm(layer) for layer in layers)
        self.conv_post = weight_norm(nn.Conv2d(widest, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, N) -> (B, L) logits and the activation of every layer."""
        b, c, n = audio.shape
        if n % self.period:  # reflect-pad the end to whole periods
            audio = F.pad(audio, (0, self.period - n % self.period), mode="reflect")
        x = audio.view(b, c, -1, self.period)  # (B, 1, N / p, p): column j = samples j mod p
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)  # (k, 1) kernels never mix columns
            features.append(x)
        x = self.conv_post(x)  # (B, 1, L', p)
        features.append(x)
        return torch.flatten(x, 1), features


class ScaleDiscriminator(nn.Module):
    """One MSD sub-discriminator: (B, 1, N) -> logits (B, L) and feature maps."""

    # (in, out, kernel, stride, groups) of the reference implementation's layers
    LAYERS = (
        (1, 128, 15, 1, 1),
        (128, 128, 41, 2, 4),
        (128, 256, 41, 2, 16),
        (256, 512, 41, 4, 16),
        (512, 1024, 41, 4, 16),
        (1024, 1024, 41, 1, 16),
        (1024, 1024, 5, 1, 1),
    )

    def __init__(self, norm: Norm = weight_norm, divisor: int = 1) -> None:
        super().__init__()
        layers = []
        for c_in, c_out, kernel, stride, groups in self.LAYERS:
            c_in = c_in if c_in == 1 else c_in // divisor
            c_out //= divisor
            layers.append(
                nn.Conv1d(
                    c_in,
                    c_out,
                    kernel,
                    stride,
                    groups=math.gcd(groups, c_in, c_out),
                    padding=(kernel - 1) // 2,
                )
            )
        self.convs = nn.ModuleList(norm(layer) for layer in layers)
        self.conv_post = norm(nn.Conv1d(1024 // divisor, 1, 3, 1, padding=1))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, N) -> (B, L) logits (L = ceil(N / 64)) and the activation of every layer."""
        x, features = audio, []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return torch.flatten(x, 1), features


class MultiPeriodDiscriminator(nn.Module):
    """MPD: one PeriodDiscriminator per period."""

    def __init__(self, periods: tuple[int, ...] = PERIODS, divisor: int = 1) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, divisor=divisor) for p in periods
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """(B, 1, N) -> one logits tensor and feature list per period."""
        results = [d(audio) for d in self.discriminators]
        return DiscriminatorOutput([r[0] for r in results], [r[1] for r in results])


class MultiScaleDiscriminator(nn.Module):
    """MSD: ScaleDiscriminators on the audio pooled 0, 1, 2, ... times."""

    def __init__(self, scales: int = SCALES, divisor: int = 1) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(spectral_norm if i == 0 else weight_norm, divisor)
            for i in range(scales)
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)  # (B, 1, N) -> (B, 1, N / 2 + 1)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """(B, 1, N) -> one logits tensor and feature list per scale."""
        logits, features = [], []
        for i, discriminator in enumerate(self.discriminators):
            if i:
                audio = self.pool(audio)
            score, maps = discriminator(audio)
            logits.append(score)
            features.append(maps)
        return DiscriminatorOutput(logits, features)


class Discriminator(nn.Module):
    """MPD and MSD together: 5 + 3 sub-discriminators, outputs concatenated (MPD first).

    The paper sums every loss over all sub-discriminators of both (eqs. 5, 6), so one
    list of eight outputs is all the losses need; `mpd` and `msd` stay reachable.
    """

    def __init__(self, divisor: int = 1) -> None:
        """`divisor`: every hidden channel count / divisor (1: the paper's; a power of 2)."""
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(divisor=divisor)
        self.msd = MultiScaleDiscriminator(divisor=divisor)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """(B, 1, N) -> 8 logits tensors and 8 feature lists."""
        period, scale = self.mpd(audio), self.msd(audio)
        return DiscriminatorOutput(period.logits + scale.logits, period.features + scale.features)


def split_batch(
    out: DiscriminatorOutput, first: int
) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
    """A verdict on a batch [real; generated] of two halves -> the verdicts on each: the
    items before `first` and the rest (one pass over both halves is one pass of work)."""
    real, generated = (
        DiscriminatorOutput(
            [logits[part] for logits in out.logits],
            [[feature[part] for feature in maps] for maps in out.features],
        )
        for part in (slice(0, first), slice(first, None))
    )
    return real, generated
