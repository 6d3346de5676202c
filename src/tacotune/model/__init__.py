"""Tacotron2 in PyTorch: tensors only (no I/O, logging or config files)."""

from tacotune.model.decoder import DecoderOutput
from tacotune.model.tacotron2 import (
    SynthesisOutput,
    Tacotron2,
    Tacotron2Output,
    pad_multiple,
    reduction_factor_at,
)

__all__ = [
    "DecoderOutput",
    "SynthesisOutput",
    "Tacotron2",
    "Tacotron2Output",
    "pad_multiple",
    "reduction_factor_at",
]
