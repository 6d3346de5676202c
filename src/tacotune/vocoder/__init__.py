"""Vocoders: log-mel -> waveform.

griffin_lim.py  phase reconstruction, no training; the default
"""

from tacotune.vocoder.griffin_lim import GriffinLim, Vocoder

__all__ = ["GriffinLim", "Vocoder"]
