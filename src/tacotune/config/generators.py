"""HiFi-GAN generator sizes (Kong, Kim, Bae 2020, arXiv:2010.05646, Appendix A), torch-free.

`config.rules.validate` checks the preset named by `vocoder.generator` against the hop length
without importing torch; `hifigan.Generator` builds the network from a spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tacotune.errors import ConfigError


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
