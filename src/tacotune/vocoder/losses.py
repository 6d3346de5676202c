"""HiFi-GAN losses (Kong, Kim, Bae 2020, arXiv:2010.05646, section 2.3), every term named.

    discriminator:  sum_k E[(D_k(x) - 1)^2] + E[D_k(G(s))^2]               (LSGAN, eq. 1 / 6)
    generator:      adversarial + lambda_fm * feature_matching + lambda_mel * mel     (eq. 5)
        adversarial       sum_k E[(D_k(G(s)) - 1)^2]                              (eq. 1)
        feature_matching  sum_k sum_i mean |D_k^i(x) - D_k^i(G(s))|               (eq. 3)
        mel               mean |mel(x) - mel(G(s))|                               (eq. 2)

with k over the 5 + 3 sub-discriminators and i over their layers; lambda_fm = 2 and
lambda_mel = 45 (VocoderConfig). Both mels come from `tacotune.audio.MelSpectrogram`
with the acoustic model's settings, so the vocoder learns exactly the features it is
given at synthesis. (The reference implementation's loss mel reaches up to the Nyquist
frequency; ours stops at audio.fmax like the input mel, as this project asks.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from tacotune.audio import MelSpectrogram
from tacotune.config.schema import VocoderConfig
from tacotune.vocoder.discriminators import DiscriminatorOutput


class DiscriminatorLoss(NamedTuple):
    """What the discriminator step minimizes, and its two halves."""

    total: Tensor  # real + fake
    real: Tensor  # sum_k mean (D_k(x) - 1)^2: real audio should score 1
    fake: Tensor  # sum_k mean D_k(G(s))^2: generated audio should score 0

    def scalars(self) -> dict[str, float]:
        """Every term as a float, for logging (keys prefixed `d_`)."""
        return {f"d_{name}": float(value.detach()) for name, value in self._asdict().items()}


class GeneratorLoss(NamedTuple):
    """What the generator step minimizes, and each unweighted term."""

    total: Tensor  # adversarial + fm_weight * feature_matching + mel_weight * mel
    adversarial: Tensor  # sum_k mean (D_k(G(s)) - 1)^2
    feature_matching: Tensor  # sum_k sum_i mean |D_k^i(x) - D_k^i(G(s))|
    mel: Tensor  # mean |mel(x) - mel(G(s))|: also the validation metric

    def scalars(self) -> dict[str, float]:
        """Every term as a float, for logging (keys prefixed `g_`)."""
        return {f"g_{name}": float(value.detach()) for name, value in self._asdict().items()}


def discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> DiscriminatorLoss:
    """LSGAN discriminator loss; `fake` must come from DETACHED generator audio."""
    real_term = sum_over(torch.mean((1 - r.float()) ** 2) for r in real.logits)
    fake_term = sum_over(torch.mean(f.float() ** 2) for f in fake.logits)
    return DiscriminatorLoss(real_term + fake_term, real_term, fake_term)


def generator_loss(
    real: DiscriminatorOutput,
    fake: DiscriminatorOutput,
    real_audio: Tensor,
    fake_audio: Tensor,
    mel: MelSpectrogram,
    config: VocoderConfig,
) -> GeneratorLoss:
    """All generator terms for one batch.

    Args:
        real: the discriminators on the real audio (no gradient needed; detached here).
        fake: the discriminators on the generated audio (gradients flow to the generator).
        real_audio: (B, 1, N) or (B, N) ground truth.
        fake_audio: (B, 1, N) or (B, N) generator output, same N.
        mel: the acoustic model's mel extractor.
        config: the loss weights.
    """
    adversarial = sum_over(torch.mean((1 - f.float()) ** 2) for f in fake.logits)
    fm = feature_matching_loss(real, fake)
    mel_term = mel_loss(real_audio, fake_audio, mel)
    total = adversarial + config.feature_matching_weight * fm + config.mel_weight * mel_term
    return GeneratorLoss(total, adversarial, fm, mel_term)


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
    """Eq. 3: L1 between the discriminators' feature maps of real and generated audio."""
    return sum_over(
        torch.mean(torch.abs(r.detach().float() - f.float()))
        for real_maps, fake_maps in zip(real.features, fake.features, strict=True)
        for r, f in zip(real_maps, fake_maps, strict=True)
    )


def mel_loss(real_audio: Tensor, fake_audio: Tensor, mel: MelSpectrogram) -> Tensor:
    """Eq. 2: mean |mel(real) - mel(generated)|, both (B, 1, N) or (B, N), in fp32."""
    if real_audio.shape != fake_audio.shape:
        raise ValueError(
            f"real audio {tuple(real_audio.shape)} and generated audio "
            f"{tuple(fake_audio.shape)} must have the same shape"
        )
    real_mel = mel(real_audio.reshape(real_audio.shape[0], -1).float())  # (B, n_mels, T)
    fake_mel = mel(fake_audio.reshape(fake_audio.shape[0], -1).float())
    return F.l1_loss(fake_mel, real_mel.detach())


def sum_over(terms: Iterable[Tensor]) -> Tensor:
    """Sum of scalar tensors."""
    return torch.stack(list(terms)).sum()
