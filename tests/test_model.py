"""Tacotron2 tensors: shapes, every parameter learns, masking, bounded inference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tacotune.config import Config, load_config
from tacotune.data.dataset import Collate, Item
from tacotune.losses import guided_attention, tacotron2_loss
from tacotune.model import Tacotron2, pad_multiple, reduction_factor_at
from tacotune.text.symbols import SYMBOLS

from conftest import TINY

N_MELS = 80


def tiny(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def batch(text_lengths: list[int], mel_lengths: list[int], multiple: int, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    items = [
        Item(
            f"u{i}",
            torch.randint(4, len(SYMBOLS), (n,), generator=g),
            torch.randn(N_MELS, t, generator=g),
        )
        for i, (n, t) in enumerate(zip(text_lengths, mel_lengths, strict=True))
    ]
    return Collate(multiple)(items)


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize(("texts", "mels"), [([7], [13]), ([9, 4, 11], [23, 10, 17])])
def test_shapes_for_any_reduction_factor_and_odd_lengths(
    r: int, texts: list[int], mels: list[int]
) -> None:
    cfg = tiny(f"model.reduction_factor={r}")
    b = batch(texts, mels, pad_multiple(cfg.model))
    assert b.mel.shape[2] % r == 0 and b.mel.shape[2] >= max(mels)  # padded, never truncated
    out = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)(
        b.text, b.text_lengths, b.mel, b.mel_lengths, r
    )
    steps = b.mel.shape[2] // r
    assert out.mel.shape == out.mel_postnet.shape == b.mel.shape
    assert out.gate.shape == (len(texts), steps)
    assert out.alignments.shape == (len(texts), steps, max(texts))
    rows = out.alignments.sum(dim=2)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    if len(texts) > 1:  # padded characters get no attention
        assert out.alignments[1, :, texts[1] :].abs().max() < 1e-6


def test_batch_padding_is_a_multiple_of_every_reduction_factor() -> None:
    cfg = tiny(
        "model.reduction_schedule=[[0, 4], [10, 3], [20, 2]]",
        "model.ddc=true",
        "model.ddc_reduction_factor=5",
    )
    assert pad_multiple(cfg.model) == 60
    assert [reduction_factor_at(cfg.model, s) for s in (0, 9, 10, 25)] == [4, 4, 3, 2]
    assert batch([5], [61], pad_multiple(cfg.model)).mel.shape[2] == 120


OPTIONS = {
    "plain": [],
    "ddc": ["model.ddc=true", "model.ddc_reduction_factor=4"],
    "gst": ["model.gst=true"],
    "ctc": ["model.ctc=true", "model.reduction_factor=1"],
    "forward attention": ["model.attention=forward"],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_trainable_parameter_changes(option: str) -> None:
    torch.manual_seed(0)
    cfg = tiny(*OPTIONS[option])
    r = reduction_factor_at(cfg.model, 0)
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # long enough for several reference-encoder GRU steps (the mel shrinks 64x first)
    b = batch([9, 6], [200, 140], pad_multiple(cfg.model))
    for _ in range(3):
        out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, r)
        terms = tacotron2_loss(out, b, cfg.loss, 0)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == [], f"parameters that never learned: {unchanged}"
    if option == "ddc":
        assert terms.ddc_mel is not None and terms.ddc_attn is not None
    if option == "ctc":
        assert terms.ctc is not None and torch.isfinite(terms.ctc)


def test_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    cfg = tiny("model.ddc=true", "model.ddc_reduction_factor=4")
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)
    b = batch([9, 5], [33, 14], pad_multiple(cfg.model))
    out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, 2)

    def total(mel: torch.Tensor, o=out) -> float:  # type: ignore[no-untyped-def]
        return float(tacotron2_loss(o, dataclasses.replace(b, mel=mel), cfg.loss, 0).total.detach())

    garbage_target = b.mel.clone()
    garbage_target[1, :, 14:] = 1e3  # padded frames of the shorter item
    assert total(garbage_target) == pytest.approx(total(b.mel), rel=1e-6)
    perturbed = out._replace(
        mel=out.mel.clone(),
        mel_postnet=out.mel_postnet.clone(),
        gate=out.gate.clone(),
        alignments=out.alignments.clone(),
    )
    perturbed.alignments[1, 7:] = torch.rand_like(perturbed.alignments[1, 7:])
    perturbed.mel[1, :, 14:] += 50.0
    perturbed.mel_postnet[1, :, 14:] -= 50.0
    perturbed.gate[1, 7:] += 30.0  # steps past ceil(14 / 2)
    assert total(b.mel, perturbed) == pytest.approx(total(b.mel), rel=1e-6)


def test_guided_attention_separates_diagonal_from_broken_attention() -> None:
    steps, chars = torch.tensor([40]), torch.tensor([20])
    diagonal = torch.zeros(1, 40, 20)
    diagonal[0, torch.arange(40), torch.arange(40) // 2] = 1
    stuck = torch.zeros(1, 40, 20)
    stuck[0, :, 0] = 1
    assert guided_attention(diagonal, steps, chars, 0.2) < 0.05
    assert guided_attention(stuck, steps, chars, 0.2) > 0.5


@pytest.mark.parametrize("text_length", [1, 3, 50])
def test_inference_is_bounded_and_says_why_it_stopped(text_length: int) -> None:
    torch.manual_seed(0)
    cfg = tiny(
        "model.max_decoder_steps=30",
        "model.max_frames_per_char=4",
        "model.gate_threshold=1.0",
        "model.end_hold_frames=0",
    )  # an untrained gate that never fires
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS).eval()
    text = torch.randint(4, len(SYMBOLS), (1, text_length))
    out = model.infer(text, torch.tensor([text_length]))
    limit = min(30, -(-text_length * 4 // 2))  # steps: min(cap, ceil(k * N / r))
    assert int(out.lengths[0]) == limit * 2
    assert bool(out.hit_max_steps[0]) and not bool(out.stopped_by_gate[0])


def test_batched_inference_stops_each_item_on_its_own() -> None:
    torch.manual_seed(0)
    cfg = tiny("model.max_frames_per_char=2", "model.gate_threshold=1.0", "model.end_hold_frames=0")
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS).eval()
    lengths = torch.tensor([10, 3])
    out = model.infer(torch.randint(4, len(SYMBOLS), (2, 10)), lengths)
    assert out.lengths.tolist() == [20, 6]


def test_style_tokens_accept_a_reference_or_none() -> None:
    cfg = tiny("model.gst=true")
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS).eval()
    text = torch.randint(4, len(SYMBOLS), (1, 6))
    plain = model.infer(text, torch.tensor([6]), generator=torch.Generator().manual_seed(1))
    styled = model.infer(
        text,
        torch.tensor([6]),
        style_mel=torch.randn(1, N_MELS, 50),
        generator=torch.Generator().manual_seed(1),
    )
    assert plain.mel_postnet.shape[1] == styled.mel_postnet.shape[1] == N_MELS


def test_decoder_lstm_math_is_nn_lstmcell() -> None:
    import torch.nn.functional as F

    from tacotune.model.decoder import lstm_pointwise

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(10, 6)
    x, h, c = torch.randn(3, 10), torch.randn(3, 6), torch.randn(3, 6)
    gates = F.linear(
        torch.cat([x, h], dim=1),
        torch.cat([cell.weight_ih, cell.weight_hh], dim=1),
        cell.bias_ih + cell.bias_hh,
    )
    ours = lstm_pointwise(gates, c)
    reference = cell(x, (h, c))
    assert torch.allclose(ours[0], reference[0], atol=1e-6)
    assert torch.allclose(ours[1], reference[1], atol=1e-6)


def test_deferred_weight_gradients_equal_plain_autograd() -> None:
    from tacotune.model.decoder import Decoder

    cfg = tiny("model.ddc=true", "model.ddc_reduction_factor=4")
    b = batch([9, 6], [40, 28], pad_multiple(cfg.model))

    def gradients(deferred: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)
        for decoder in (m for m in model.modules() if isinstance(m, Decoder)):
            decoder.deferred_grads = deferred
        out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, 2)
        tacotron2_loss(out, b, cfg.loss, 0).total.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    deferred, plain = gradients(True), gradients(False)
    assert deferred.keys() == plain.keys()
    for name in plain:
        assert torch.allclose(deferred[name], plain[name], atol=1e-6, rtol=1e-4), name
    assert deferred["decoder.decoder_rnn.weight_hh"].abs().sum() > 0


def test_stopping_rules_are_per_item_and_say_which_fired() -> None:
    from tacotune.model.decoder import Stopping

    mask = torch.tensor([[False] * 4, [False, False, True, True], [False] * 4])  # 4, 2, 4 chars
    stopping = Stopping(mask, torch.tensor([10, 10, 3]), gate_threshold=0.5, end_hold_steps=2)
    on_first = torch.tensor([[1.0, 0, 0, 0]] * 3)
    on_last = torch.tensor([[0.0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0]])  # item 1 ends at index 1
    silent, firing = torch.full((3,), -9.0), torch.tensor([9.0, -9.0, -9.0])
    assert not stopping.update(silent, on_first)
    assert not stopping.update(firing, on_last)  # item 0: gate; item 1: holds the end 1 step
    assert stopping.update(silent, on_last)  # item 1: held 2 steps; item 2: its 3-step limit
    assert stopping.by_gate.tolist() == [True, False, False]
    assert stopping.at_end.tolist() == [False, True, False]
    assert stopping.steps.tolist() == [2, 3, 3]


@pytest.mark.parametrize("ddc", [False, True])
def test_start_at_makes_a_fresh_model_predict_the_given_mean_log_mel(ddc: bool) -> None:
    """Before any training every decoder's frames sit at the mean: (B, n_mels, T) averaged
    over batch and time is the (n_mels,) mean given, not the ~0 of a fresh projection."""
    cfg = tiny(f"model.ddc={str(ddc).lower()}", "model.reduction_factor=2")
    b = batch([9, 6], [20, 14], pad_multiple(cfg.model))
    mean = -5.0 + torch.linspace(-2.0, 2.0, N_MELS)  # (n_mels,), a log-mel's typical level
    model = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)
    model.start_at(mean)
    out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, 2)
    decoders = [out.mel] + ([out.coarse.mel] if out.coarse is not None else [])
    assert len(decoders) == (2 if ddc else 1)
    for mel in decoders:
        per_channel = mel.mean(dim=(0, 2))  # (B, n_mels, T) -> (n_mels,)
        assert (per_channel - mean).abs().max() < 0.5  # fresh: off by the whole mean, ~5
    # the postnet adds nothing yet: its mel is the decoder's (a fresh one adds ~unit noise)
    assert torch.equal(out.mel_postnet, out.mel)
    fresh = Tacotron2(cfg.model, len(SYMBOLS), N_MELS)
    out = fresh(b.text, b.text_lengths, b.mel, b.mel_lengths, 2)
    assert (out.mel_postnet - out.mel).abs().mean() > 0.1
