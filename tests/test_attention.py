"""The attention seam (model/attention/): every registered mechanism behaves as an
attention, the config offers exactly the registered ones, and forward attention is
monotonic by construction."""

from __future__ import annotations

import typing

import pytest
import torch

from tacotune.config.schema import ModelConfig
from tacotune.model.attention import ATTENTIONS, AttentionDims, ForwardAttention, build_attention

DIMS = AttentionDims(
    query_dim=16, memory_dim=12, attention_dim=8, location_filters=4, location_kernel_size=5
)


@torch.no_grad()
def run_steps(name: str, steps: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    """(B, steps, N) weights of `steps` steps of attention `name` with random queries."""
    torch.manual_seed(seed)
    attention = build_attention(name, DIMS).eval()
    n = max(lengths)
    memory = torch.randn(len(lengths), n, DIMS.memory_dim)
    mask = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    processed = attention.process_memory(memory)
    derived = attention.step_weights()
    state = tuple(torch.zeros(len(lengths), n) for _ in attention.STATE)
    rows = []
    for _ in range(steps):
        query = 3 * torch.randn(len(lengths), DIMS.query_dim)
        out = attention(query, memory, processed, mask, state, derived)
        assert out.context.shape == (len(lengths), DIMS.memory_dim)
        assert len(out.state) == len(attention.STATE)
        assert all(t.shape == (len(lengths), n) for t in out.state)
        state = out.state
        rows.append(out.weights)
    return torch.stack(rows, dim=1)


def test_the_config_offers_exactly_the_registered_attentions() -> None:
    hints = typing.get_type_hints(ModelConfig)
    assert set(typing.get_args(hints["attention"])) == set(ATTENTIONS)


def test_an_unknown_attention_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown attention 'gmm'; expected one of location"):
        build_attention("gmm", DIMS)


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_weights_are_a_distribution_over_the_real_characters(name: str) -> None:
    weights = run_steps(name, steps=12, lengths=[9, 5])
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 12))
    assert torch.all(weights >= 0)
    assert torch.all(weights[1, :, 5:] == 0)  # padded characters get exactly nothing


def test_forward_attention_starts_at_the_first_character_and_moves_at_most_one_per_step() -> None:
    weights = run_steps("forward", steps=15, lengths=[11, 7], seed=3)
    # a_0 is on the first character and every step moves at most one on: the mass of
    # step t (counted from 0) lies within the first t + 2 characters
    for step in range(15):
        beyond = weights[:, step, step + 2 :].sum(dim=1)
        assert torch.all(beyond < 1e-6), (step, beyond)
    position = weights.argmax(dim=2)
    assert torch.all(position[:, 0] <= 1)


def test_location_attention_is_not_monotonic_by_construction() -> None:
    """The property above is forward attention's own: the same random queries make
    location-sensitive attention jump ahead (so the test above can fail)."""
    weights = run_steps("location", steps=15, lengths=[11, 7], seed=3)
    assert float(weights[:, 0, 2:].sum()) > 0.1  # step 0 already beyond the second character


def test_the_transition_agent_decides_how_fast_forward_attention_moves() -> None:
    """With uniform energies the mass moves only by the agent: u -> 1 walks one character
    per step (from a_0 on the first one), u -> 0 stays on the first character."""
    attention = ForwardAttention(DIMS).eval()
    n = 6
    memory = torch.zeros(1, n, DIMS.memory_dim)
    mask = torch.zeros(1, n, dtype=torch.bool)
    with torch.no_grad():
        attention.v.weight.zero_()  # every energy 0: softmax uniform
        attention.transition.weight.zero_()
    for bias, expected in ((20.0, [1, 2, 3, 4]), (-20.0, [0, 0, 0, 0])):
        with torch.no_grad():
            attention.transition.bias.fill_(bias)
        state = (torch.zeros(1, n), torch.zeros(1, n))
        argmax = []
        for _ in range(4):
            with torch.no_grad():
                out = attention(
                    torch.zeros(1, DIMS.query_dim),
                    memory,
                    attention.process_memory(memory),
                    mask,
                    state,
                    attention.step_weights(),
                )
            state = out.state
            argmax.append(int(out.weights.argmax()))
        assert argmax == expected, bias
