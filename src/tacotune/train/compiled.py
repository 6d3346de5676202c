"""train.compile: the decoder step, compiled.

A training step of Tacotron2 runs its decoder step (attention LSTM -> attention ->
decoder LSTM) a few hundred times, each a few dozen small kernels forward and
backward: on a GPU the time goes to launching kernels, not to arithmetic.
torch.compile turns one decoder step into a few fused kernels ("default"), and
"reduce-overhead" also replays them as CUDA graphs (one launch per step and
direction). The step is the same function of the same tensors (`Decoder.advance`,
its dropout masks drawn outside it), so the compiled model computes what the eager
one does, within float tolerance (tests/test_speed.py). Only the training forward uses
it: evaluation and synthesis stay eager.

A step's shapes are the batch size and the number of characters (the attention
memory), not the number of decoder steps; the memory is padded to a multiple of
train.shape_bucket characters (masked: exactly zero attention, the same loss) so that
few shapes are compiled (and, with CUDA graphs, captured).
"""

from __future__ import annotations

import logging

import torch

from tacotune.config.schema import TrainConfig
from tacotune.model.decoder import Decoder
from tacotune.model.tacotron2 import Tacotron2

log = logging.getLogger(__name__)


def shape_bucket(config: TrainConfig) -> int:
    """train.shape_bucket resolved (auto: 16 characters when compiling, else 1: no padding)."""
    if config.shape_bucket == "auto":
        return 16 if config.compile != "off" else 1
    return config.shape_bucket


def compile_decoder_steps(model: Tacotron2, config: TrainConfig) -> None:
    """Give every decoder of `model` a compiled training step (train.compile; off: leave it
    eager) and its memory bucket (train.shape_bucket)."""
    decoders = [m for m in model.modules() if isinstance(m, Decoder)]
    for decoder in decoders:
        decoder.memory_bucket = shape_bucket(config)
    if config.compile == "off":
        return
    for decoder in decoders:
        decoder.deferred_grads = False  # plain autograd inside the compiled graph
        decoder.compiled_step = torch.compile(decoder.advance, mode=config.compile)
    log.info(
        "decoder step compiled (mode %s, %d decoder(s), memory padded to %d characters)",
        config.compile,
        len(decoders),
        shape_bucket(config),
    )
