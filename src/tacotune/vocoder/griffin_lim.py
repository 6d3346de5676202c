"""Griffin-Lim: mel -> waveform with no training; a neural vocoder plugs in behind `Vocoder`."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from tacotune.audio import griffin_lim
from tacotune.config.schema import AudioConfig


class Vocoder(Protocol):
    """Anything that turns a (n_mels, T) log-mel into audio at `sample_rate`."""

    sample_rate: int

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) -> (T * hop_length,) float32 samples."""
        ...


class GriffinLim:
    """Phase reconstruction from the mel magnitude: intelligible, robotic, always available."""

    def __init__(self, config: AudioConfig, seed: int = 0) -> None:
        self.config = config
        self.sample_rate = config.sample_rate
        self.seed = seed

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) -> (T * hop_length,)"""
        return griffin_lim(mel.float().cpu(), self.config, self.seed).numpy()
