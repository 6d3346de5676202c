"""Forward attention with a transition agent (Zhang et al. 2018, "Forward attention in
sequence-to-sequence acoustic modelling for speech synthesis"), over the energies of
location-sensitive attention (as Coqui TTS's `forward_attn` does).

Each step may only keep its position or move one character on, so the alignment is
monotonic by construction:

    y_t   = softmax(e_t)                                    (location-sensitive energies)
    a_t   = ((1 - u) a_{t-1} + u shift(a_{t-1}) + 1e-8) * y_t,   normalized over characters
    u     = sigmoid(w^T q_t + b)                            (transition agent)

where shift moves every weight one character on and a_0 is all on the first character.
The paper's agent reads the context, the query and the prenet output; this one reads
the query (the attention-LSTM state), which has already seen the previous context and
prenet output. The state starts at zero (package docstring): a zero `alpha` stands for
a_0, all on the first character.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tacotune.model.attention.base import AttentionDims
from tacotune.model.attention.location import LocationSensitiveAttention
from tacotune.model.layers import LinearNorm

FLOOR = 1e-8  # keeps every position reachable, so the normalizer is never zero


class ForwardAttention(LocationSensitiveAttention):
    """Location-sensitive energies, moved at most one character per step."""

    STATE = ("alpha", "cumulative")  # forward variables a_{t-1}; running sum of the weights

    def __init__(self, dims: AttentionDims) -> None:
        super().__init__(dims)
        self.transition = LinearNorm(dims.query_dim, 1, gain="sigmoid")  # the agent: u_t
        torch.nn.init.zeros_(self.transition.bias)  # u = 0.5 for a zero query

    def attend(self, energies: Tensor, query: Tensor, previous: Tensor, mask: Tensor) -> Tensor:
        """(B, N) energies -> (B, N) forward variables a_t, from a_{t-1} = `previous`."""
        attend = torch.softmax(energies.float(), dim=1)  # (B, N)
        alpha = previous.float()
        # a zero alpha (before the first step) is a_0: everything on the first character
        start = ((~mask).long().cumsum(dim=1) == 1) & ~mask  # (B, N): the first character
        alpha = alpha + start * (1 - alpha.sum(dim=1, keepdim=True)).clamp(min=0)
        moved = F.pad(alpha[:, :-1], (1, 0))  # (B, N): shifted one character on
        u = torch.sigmoid(self.transition(query).float())  # (B, 1)
        alpha = ((1 - u) * alpha + u * moved + FLOOR) * attend
        return alpha / alpha.sum(dim=1, keepdim=True)
