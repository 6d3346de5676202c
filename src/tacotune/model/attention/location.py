"""Location-sensitive attention (Chorowski et al. 2015, as in Tacotron2).

    e_j = v^T tanh(W q + V m_j + U f_j),   f = conv([previous weights, cumulative weights])

The location convolution and its dense projection are both linear, so they are
folded into one convolution with `attention_dim` output channels (same function,
one op fewer per decoder step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tacotune.model.attention.base import MASK_VALUE, Attention, AttentionDims, AttentionStep
from tacotune.model.layers import LinearNorm


class LocationSensitiveAttention(Attention):
    """Content + location attention over the encoder outputs."""

    STATE = ("weights", "cumulative")  # previous weights, their running sum

    def __init__(self, dims: AttentionDims) -> None:
        super().__init__()
        d = dims
        self.query_layer = LinearNorm(d.query_dim, d.attention_dim, bias=False, gain="tanh")
        self.memory_layer = LinearNorm(d.memory_dim, d.attention_dim, bias=False, gain="tanh")
        self.v = LinearNorm(d.attention_dim, 1, bias=False)
        # location conv (2 -> filters) and its dense layer (filters -> attention_dim), as in
        # Tacotron2; applied as one folded convolution (`step_weights`)
        self.location_conv = nn.Conv1d(
            2,
            d.location_filters,
            d.location_kernel_size,
            padding=d.location_kernel_size // 2,
            bias=False,
        )
        nn.init.xavier_uniform_(self.location_conv.weight)
        self.location_dense = LinearNorm(
            d.location_filters, d.attention_dim, bias=False, gain="tanh"
        )

    def process_memory(self, memory: Tensor) -> Tensor:
        """(B, N, memory_dim) -> (B, N, attention_dim); computed once per utterance."""
        return self.memory_layer(memory)

    def step_weights(self) -> Tensor:
        """(attention_dim, 2, kernel): dense ∘ conv as one convolution kernel."""
        return torch.einsum("af,fck->ack", self.location_dense.weight, self.location_conv.weight)

    def energies(
        self,
        query: Tensor,
        processed_memory: Tensor,
        mask: Tensor,
        previous: Tensor,
        cumulative: Tensor,
        location_weight: Tensor,
    ) -> Tensor:
        """(B, N) masked energies from the query, the keys and the location features of
        the previous (B, N) and cumulative (B, N) weights."""
        weights_cat = torch.stack([previous, cumulative], dim=1)  # (B, 2, N)
        location = nn.functional.conv1d(
            weights_cat, location_weight, padding=self.location_conv.padding
        )  # (B, A, N)
        energies = self.v(
            torch.tanh(
                self.query_layer(query).unsqueeze(1) + location.transpose(1, 2) + processed_memory
            )
        ).squeeze(-1)  # (B, N)
        return energies.masked_fill(mask, MASK_VALUE)

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        processed_memory: Tensor,
        mask: Tensor,
        state: tuple[Tensor, ...],
        derived: Tensor | None,
    ) -> AttentionStep:
        previous, cumulative = state
        assert derived is not None  # the folded location kernel from `step_weights`
        energies = self.energies(query, processed_memory, mask, previous, cumulative, derived)
        weights = self.attend(energies, query, previous, mask)
        context = torch.bmm(weights.unsqueeze(1).to(memory.dtype), memory).squeeze(1)  # (B, M)
        return AttentionStep(context, weights, (weights, cumulative + weights))

    def attend(self, energies: Tensor, query: Tensor, previous: Tensor, mask: Tensor) -> Tensor:
        """(B, N) masked energies -> (B, N) weights: their softmax. A subclass may also use
        the query, the previous step's (B, N) weights and the (B, N) padding mask."""
        return torch.softmax(energies, dim=1)
