"""Vocoders: log-mel -> waveform.

    griffin_lim.py     phase reconstruction, no training; the default
    presets.py         HiFi-GAN generator sizes v1/v2/v3 (no torch: config validation reads it)
    hifigan.py         HiFi-GAN generator (tensors only)
    discriminators.py  HiFi-GAN multi-period and multi-scale discriminators (tensors only)
    losses.py          HiFi-GAN generator and discriminator losses, every term named
    neural.py          a trained generator behind `Vocoder`, its checkpoint contract, loading
    train.py           `tacotune vocoder train`: the GAN training loop (numbered steps)
    session.py         what one vocoder training process holds: networks, optimizers, data
    evaluate.py        validation: the vocoder and Griffin-Lim against the recordings
    teacher.py         teacher-forced (ground-truth aligned) mels of an acoustic model

Everything loads on first use, so validating a config (which reads presets.py) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tacotune.vocoder.griffin_lim import GriffinLim, Vocoder
    from tacotune.vocoder.neural import (
        HifiGanVocoder,
        load_generator,
        load_vocoder,
        vocoder_checkpoint,
        vocoder_payload,
    )
    from tacotune.vocoder.train import VocoderResult, resume_vocoder, train_vocoder

_LAZY = {
    "GriffinLim": "tacotune.vocoder.griffin_lim",
    "Vocoder": "tacotune.vocoder.griffin_lim",
    "HifiGanVocoder": "tacotune.vocoder.neural",
    "vocoder_payload": "tacotune.vocoder.neural",
    "vocoder_checkpoint": "tacotune.vocoder.neural",
    "load_vocoder": "tacotune.vocoder.neural",
    "load_generator": "tacotune.vocoder.neural",
    "train_vocoder": "tacotune.vocoder.train",
    "resume_vocoder": "tacotune.vocoder.train",
    "VocoderResult": "tacotune.vocoder.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tacotune.vocoder' has no attribute {name!r}")


__all__ = [
    "GriffinLim",
    "HifiGanVocoder",
    "Vocoder",
    "VocoderResult",
    "load_generator",
    "load_vocoder",
    "resume_vocoder",
    "train_vocoder",
    "vocoder_checkpoint",
    "vocoder_payload",
]
