"""How fast this machine trains a vocoder: a few real GAN steps on random audio.

`tacotune auto` plans a vocoder with it (on a GPU) and bench/vocoder.py reports it. A
step is the training loop's: the generator renders `vocoder.batch_size` segments, the
discriminators take an AdamW step on real vs detached generated audio, the generator
takes one on adversarial + feature-matching + mel loss; the speed of these networks
does not depend on what the audio holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tacotune.audio import MelSpectrogram
from tacotune.config.schema import Config
from tacotune.vocoder.discriminators import Discriminator, split_batch
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.losses import discriminator_loss, generator_loss


@dataclass(frozen=True)
class VocoderRate:
    """Measured training speed."""

    steps_per_second: float
    segments_per_second: float  # steps/s x batch size
    audio_seconds_per_second: float  # seconds of training audio per wall second


def measure_vocoder_rate(
    config: Config, device: torch.device, steps: int = 2, batch_size: int | None = None
) -> VocoderRate:
    """Time `steps` training steps after one warm-up step (fp32, seeded, on `device`)."""
    v, audio = config.vocoder, config.audio
    batch = batch_size or v.batch_size
    torch.manual_seed(0)
    generator = build_generator(v.generator, audio.n_mels, audio.hop_length, v.generator_channels)
    generator = generator.to(device)
    discriminator = Discriminator(v.discriminator_divisor).to(device)
    mel = MelSpectrogram(audio)
    optim_g, optim_d = (
        torch.optim.AdamW(n.parameters(), v.learning_rate, betas=v.adam_betas)
        for n in (generator, discriminator)
    )
    real = torch.randn(batch, 1, v.segment_size, device=device) * 0.1  # (B, 1, N)
    features = mel(real.squeeze(1))  # (B, n_mels, N / hop)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            _synchronize(device)
            started = time.perf_counter()
        fake = generator(features)
        judged = discriminator(torch.cat([real, fake.detach()]))
        d_loss = discriminator_loss(*split_batch(judged, batch))
        optim_d.zero_grad(set_to_none=True)
        d_loss.total.backward()
        optim_d.step()
        judged = discriminator(torch.cat([real, fake]))
        g_loss = generator_loss(*split_batch(judged, batch), real, fake, mel, v)
        optim_g.zero_grad(set_to_none=True)
        g_loss.total.backward()
        optim_g.step()
    _synchronize(device)
    rate = steps / (time.perf_counter() - started)
    return VocoderRate(rate, rate * batch, rate * batch * v.segment_size / audio.sample_rate)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
