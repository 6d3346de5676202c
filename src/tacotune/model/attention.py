"""Location-sensitive attention (Chorowski et al. 2015, as in Tacotron2).

    e_j = v^T tanh(W q + V m_j + U f_j),   f = conv([previous weights, cumulative weights])

The location convolution and its dense projection are both linear, so they are
folded into one convolution with `attention_dim` output channels (same function,
one op fewer per decoder step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tacotune.model.layers import LinearNorm

MASK_VALUE = -1e4  # energy of padded characters; finite so that fp16 softmax stays finite


class LocationSensitiveAttention(nn.Module):
    """Content + location attention over the encoder outputs."""

    def __init__(
        self,
        query_dim: int,
        memory_dim: int,
        attention_dim: int,
        location_filters: int,
        location_kernel_size: int,
    ) -> None:
        super().__init__()
        self.query_layer = LinearNorm(query_dim, attention_dim, bias=False, gain="tanh")
        self.memory_layer = LinearNorm(memory_dim, attention_dim, bias=False, gain="tanh")
        self.v = LinearNorm(attention_dim, 1, bias=False)
        # location conv (2 -> filters) and its dense layer (filters -> attention_dim), as in
        # Tacotron2; applied as one folded convolution in `location_features`
        self.location_conv = nn.Conv1d(
            2, location_filters, location_kernel_size, padding=location_kernel_size // 2, bias=False
        )
        nn.init.xavier_uniform_(self.location_conv.weight)
        self.location_dense = LinearNorm(location_filters, attention_dim, bias=False, gain="tanh")

    def process_memory(self, memory: Tensor) -> Tensor:
        """(B, N, memory_dim) -> (B, N, attention_dim); computed once per utterance."""
        return self.memory_layer(memory)

    def folded_location_weight(self) -> Tensor:
        """(attention_dim, 2, kernel): dense ∘ conv as one convolution kernel."""
        return torch.einsum("af,fck->ack", self.location_dense.weight, self.location_conv.weight)

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        processed_memory: Tensor,
        weights_cat: Tensor,
        mask: Tensor,
        location_weight: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One decoder step.

        Args:
            query: (B, query_dim) attention-RNN state.
            memory: (B, N, memory_dim) encoder outputs.
            processed_memory: (B, N, attention_dim) from `process_memory`.
            weights_cat: (B, 2, N) previous and cumulative attention weights.
            mask: (B, N) True at padded characters.
            location_weight: (attention_dim, 2, kernel) from `folded_location_weight`.

        Returns:
            context (B, memory_dim) and weights (B, N).
        """
        location = nn.functional.conv1d(
            weights_cat, location_weight, padding=self.location_conv.padding
        )  # (B, A, N)
        energies = self.v(
            torch.tanh(
                self.query_layer(query).unsqueeze(1) + location.transpose(1, 2) + processed_memory
            )
        ).squeeze(-1)  # (B, N)
        energies = energies.masked_fill(mask, MASK_VALUE)
        weights = torch.softmax(energies, dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, memory_dim)
        return context, weights
