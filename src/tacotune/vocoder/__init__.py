"""Vocoders: log-mel -> waveform.

    griffin_lim.py     phase reconstruction, no training; the default
    presets.py         HiFi-GAN generator sizes v1/v2/v3 (no torch: config validation reads it)
    hifigan.py         HiFi-GAN generator (tensors only)
    discriminators.py  HiFi-GAN multi-period and multi-scale discriminators (tensors only)
    losses.py          HiFi-GAN generator and discriminator losses, every term named
    neural.py          a trained generator behind `Vocoder`, and its checkpoint contract

Everything loads on first use, so validating a config (which reads presets.py) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tacotune.vocoder.griffin_lim import GriffinLim, Vocoder
    from tacotune.vocoder.neural import HifiGanVocoder, vocoder_payload

_LAZY = {
    "GriffinLim": "tacotune.vocoder.griffin_lim",
    "Vocoder": "tacotune.vocoder.griffin_lim",
    "HifiGanVocoder": "tacotune.vocoder.neural",
    "vocoder_payload": "tacotune.vocoder.neural",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tacotune.vocoder' has no attribute {name!r}")


__all__ = ["GriffinLim", "HifiGanVocoder", "Vocoder", "vocoder_payload"]
