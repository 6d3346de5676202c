"""Vocoders: log-mel -> waveform.

griffin_lim.py     phase reconstruction, no training; the default
hifigan.py         HiFi-GAN generator, presets v1/v2/v3 (tensors only)
discriminators.py  HiFi-GAN multi-period and multi-scale discriminators (tensors only)
losses.py          HiFi-GAN generator and discriminator losses, every term named
neural.py          a trained generator behind `Vocoder`, its checkpoint contract
"""

from tacotune.vocoder.griffin_lim import GriffinLim, Vocoder
from tacotune.vocoder.neural import HifiGanVocoder, vocoder_payload

__all__ = ["GriffinLim", "HifiGanVocoder", "Vocoder", "vocoder_payload"]
