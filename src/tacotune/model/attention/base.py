"""What every attention mechanism of the decoder provides (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import Tensor, nn

MASK_VALUE = -1e4  # energy of padded characters; finite so that fp16 softmax stays finite


@dataclass(frozen=True)
class AttentionDims:
    """Sizes of one attention mechanism (a mechanism may ignore some)."""

    query_dim: int  # attention-LSTM units
    memory_dim: int  # encoder output channels
    attention_dim: int  # query/key projection size
    location_filters: int  # location-feature convolution filters
    location_kernel_size: int  # location-feature convolution width (odd)


class AttentionStep(NamedTuple):
    """One attention step."""

    context: Tensor  # (B, memory_dim) weighted sum of the encoder outputs
    weights: Tensor  # (B, N) the attention weights (one alignment row)
    state: tuple[Tensor, ...]  # the next state, in `STATE` order, each (B, N)


class Attention(nn.Module, ABC):
    """One decoder step's attention over the encoder outputs, with its own state."""

    STATE: ClassVar[tuple[str, ...]]  # names of the carried state tensors, each (B, N)

    def process_memory(self, memory: Tensor) -> Tensor:
        """(B, N, memory_dim) -> (B, N, K): the keys, computed once per utterance."""
        return memory

    def step_weights(self) -> Tensor | None:
        """A weight derived from the parameters once per forward (not per step), or None."""
        return None

    @abstractmethod
    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        processed_memory: Tensor,
        mask: Tensor,
        state: tuple[Tensor, ...],
        derived: Tensor | None,
    ) -> AttentionStep:
        """One decoder step.

        Args:
            query: (B, query_dim) attention-LSTM state.
            memory: (B, N, memory_dim) encoder outputs.
            processed_memory: (B, N, K) from `process_memory`.
            mask: (B, N) True at padded characters.
            state: the previous state, in `STATE` order (zeros before the first step).
            derived: what `step_weights` returned for this forward.
        """
