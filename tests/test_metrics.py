"""Attention metrics on synthetic alignments with known quality."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tacotune.supervision.metrics import (
    alignment_metrics,
    composite_score,
    gate_balanced_accuracy,
    mcd_dtw,
    summarize_alignment,
    summarize_voice,
    voice_metrics,
)

S, N = 120, 40


def hard(path: list[int], chars: int = N) -> torch.Tensor:
    """One-hot attention following `path` (a character per step)."""
    a = torch.zeros(len(path), chars)
    a[torch.arange(len(path)), torch.tensor(path)] = 1.0
    return a


DIAGONAL = hard([s * N // S for s in range(S)])
SOFT = torch.softmax(
    -((torch.arange(N)[None] - (torch.arange(S)[:, None] + 0.5) * N / S) ** 2) / 4, dim=1
)
STUCK = hard([0] * S)
UNIFORM = torch.full((S, N), 1.0 / N)
REVERSED = DIAGONAL.flip(1)
SKIPS_HALF = hard([min(s * N // S, N // 2) if s < S // 2 else N - 1 for s in range(S)])
STOPS_EARLY = DIAGONAL[: S // 2]  # the decoder stopped half-way through the text
PAUSED = hard(
    [min(N - 1, s * N // S) if s < 40 else min(N - 1, (s - 6) * N // S) for s in range(S)]
)  # a 6-step pause, as at a comma


@pytest.mark.parametrize(
    ("name", "attention", "aligned", "quality"),
    [
        ("diagonal", DIAGONAL, True, (0.95, 1.0)),
        ("soft diagonal", SOFT, True, (0.95, 1.0)),
        ("paused", PAUSED, True, (0.9, 1.0)),
        ("stuck", STUCK, False, (0.0, 0.05)),
        ("uniform", UNIFORM, False, (0.0, 0.2)),
        ("reversed", REVERSED, False, (0.0, 0.2)),
        ("skips half", SKIPS_HALF, False, (0.0, 0.5)),
        ("stops early", STOPS_EARLY, False, (0.0, 0.2)),
    ],
)
def test_quality_ranks_alignments(
    name: str, attention: torch.Tensor, aligned: bool, quality: tuple[float, float]
) -> None:
    m = alignment_metrics(attention)
    assert m.aligned is aligned, m
    assert quality[0] <= m.quality <= quality[1], m


def test_individual_metrics_behave_as_documented() -> None:
    perfect, stuck, uniform = (alignment_metrics(a) for a in (DIAGONAL, STUCK, UNIFORM))
    assert perfect.diagonality == 1.0 and perfect.focus == 1.0 and perfect.coverage == 1.0
    assert stuck.diagonality < 0.2 and stuck.coverage == pytest.approx(1 / N)
    assert not stuck.reached_end
    assert uniform.focus == pytest.approx(1 / N) and uniform.diagonality < 0.35
    assert alignment_metrics(REVERSED).monotonicity == 0.0
    assert alignment_metrics(SKIPS_HALF).coverage < 0.6


def test_length_ratio_against_an_expected_length() -> None:
    assert alignment_metrics(DIAGONAL, expected_steps=S).length_ratio == 1.0
    slow = alignment_metrics(DIAGONAL, expected_steps=S / 2)
    assert slow.length_ratio == 2.0 and not slow.aligned


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (2, 2)])
def test_degenerate_sizes_give_finite_values_without_warnings(shape: tuple[int, int]) -> None:
    attention = torch.full(shape, 1.0 / shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = alignment_metrics(attention)
    values = [m.diagonality, m.focus, m.monotonicity, m.coverage, m.quality]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)


def test_empty_attention_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        alignment_metrics(torch.zeros(0, 5))


def test_summary_and_composite_score() -> None:
    summary = summarize_alignment([alignment_metrics(DIAGONAL), alignment_metrics(STUCK)], "free")
    assert summary["free/aligned_rate"] == 0.5
    good = composite_score({"free/mcd_ratio": 0.5, "free/quality": 1.0}, 1.0)
    bad = composite_score({"free/mcd_ratio": 0.5, "free/quality": 0.1}, 1.0)
    assert good == 0.5 and bad == pytest.approx(1.4)
    assert composite_score({"free/mcd_ratio": math.nan, "free/quality": 1.0}, 1.0) == math.inf
    assert composite_score({"free/quality": 1.0}, 1.0) == math.inf  # no voice metric


def test_gate_accuracy_is_balanced() -> None:
    steps = torch.tensor([4])
    perfect = torch.tensor([[-5.0, -5.0, -5.0, 5.0, 5.0]])  # the padded 5th step is ignored
    never = torch.full((1, 5), -5.0)
    assert gate_balanced_accuracy(perfect, steps) == 1.0
    assert gate_balanced_accuracy(never, steps) == 0.5  # all "continue" right, the stop missed


# --- the voice metric, on recordings of the bundled corpus ----------------------------------

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "wavs"


@functools.cache
def recording(name: str) -> torch.Tensor:
    """(80, T) log-mel of a bundled demo utterance, trimmed as `prepare` does."""
    from tacotune.audio import MelSpectrogram, load_audio, trim_silence
    from tacotune.config import AudioConfig

    config = AudioConfig()
    samples = load_audio(DEMO / f"{name}.flac", config.sample_rate).samples
    samples, _, _ = trim_silence(samples, config.trim_top_db, config.n_fft, config.hop_length)
    return MelSpectrogram(config)(torch.from_numpy(samples))


def stretched(mel: torch.Tensor, factor: float) -> torch.Tensor:
    """The same speech at another pace."""
    frames = round(mel.shape[1] * factor)
    return F.interpolate(mel[None], size=frames, mode="linear", align_corners=True)[0]


def test_the_same_speech_has_no_distortion() -> None:
    mel = recording("demo_0001")
    assert mcd_dtw(mel, mel) == 0.0


def test_a_slower_shifted_copy_is_close_and_other_words_or_silence_are_far() -> None:
    reference, other = recording("demo_0001"), recording("demo_0003")
    silence_level = reference.min()
    slower = torch.cat([torch.full((80, 8), float(silence_level)), stretched(reference, 1.25)], 1)
    silence = torch.full_like(reference, float(silence_level))
    close, far, mute = (
        mcd_dtw(slower, reference),
        mcd_dtw(other, reference),
        mcd_dtw(silence, reference),
    )
    assert close < 0.5 * far and close < 0.5 * mute
    assert voice_metrics(slower, reference, other).mcd_ratio < 0.5
    wrong_words = voice_metrics(recording("demo_0004"), reference, other)
    assert wrong_words.mcd_ratio > 0.8  # about chance: it says something else
    assert voice_metrics(silence, reference, other).mcd_ratio > 0.8
    assert voice_metrics(slower, reference, other).duration_ratio == pytest.approx(
        (reference.shape[1] * 1.25 + 8) / reference.shape[1], abs=0.01
    )


def test_perfect_attention_cannot_make_up_for_the_wrong_words() -> None:
    reference, other = recording("demo_0001"), recording("demo_0003")
    mumbling = {  # a perfect diagonal over speech that says something else
        **summarize_alignment([alignment_metrics(DIAGONAL)], "free"),
        **summarize_voice([voice_metrics(recording("demo_0004"), reference, other)], "free"),
    }
    reading = {  # the right words, at another pace, with a pause in the attention
        **summarize_alignment([alignment_metrics(PAUSED)], "free"),
        **summarize_voice([voice_metrics(stretched(reference, 0.9), reference, other)], "free"),
    }
    assert mumbling["free/quality"] >= reading["free/quality"]
    assert composite_score(mumbling, 0.5) > composite_score(reading, 0.5)
    never_ends = {**reading, **summarize_alignment([alignment_metrics(STOPS_EARLY)], "free")}
    assert composite_score(never_ends, 0.5) > composite_score(reading, 0.5)
