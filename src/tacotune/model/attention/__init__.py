"""Attention mechanisms of the Tacotron2 decoder, one file each, chosen by `model.attention`.

An attention mechanism is an `Attention`: it owns its per-step state and its step. The
decoder carries the state between steps without knowing what it holds, and the ONNX
export (export/graphs.py) carries it through the decoder-step graph by the names in
`STATE`. Every state tensor is (B, N), one value per character, and starts at zero (the
ONNX runtime starts every carried tensor at zero).

Adding one: a new file here with an `Attention` subclass, its line in `ATTENTIONS`, and
its name in `ModelConfig.attention` (tests/test_attention.py checks the two lists agree).

    location  location-sensitive attention (Chorowski et al. 2015), as in Tacotron2
    forward   forward attention with a transition agent (Zhang et al. 2018) on top of it
"""

from __future__ import annotations

from tacotune.model.attention.base import Attention, AttentionDims, AttentionStep
from tacotune.model.attention.forward import ForwardAttention
from tacotune.model.attention.location import LocationSensitiveAttention

ATTENTIONS: dict[str, type[Attention]] = {
    "location": LocationSensitiveAttention,
    "forward": ForwardAttention,
}


def build_attention(name: str, dims: AttentionDims) -> Attention:
    """The attention mechanism called `name` (a key of ATTENTIONS), sized by `dims`."""
    try:
        kind = ATTENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; expected one of {', '.join(ATTENTIONS)}"
        ) from None
    return kind(dims)


__all__ = [
    "ATTENTIONS",
    "Attention",
    "AttentionDims",
    "AttentionStep",
    "ForwardAttention",
    "LocationSensitiveAttention",
    "build_attention",
]
