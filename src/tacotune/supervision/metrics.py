"""Attention-alignment quality, computed on each utterance's valid crop.

A is one utterance's attention, cropped to its real size: S decoder steps (rows)
by N characters (columns); each row sums to 1. Definitions (all in [0, 1]):

- diagonality: attention mass inside a band around the straight diagonal,
      mean_s sum_{|n - c_s| <= w} A[s, n],   c_s = (s + 0.5) N / S - 0.5,
      w = max(BAND_MIN_CHARS, BAND_FRACTION * N)
  ~1 for a clean alignment; ~2w/N for uniform attention; ~w/N when stuck.
- focus: mean_s max_n A[s, n] (sharpness; 1/N for uniform attention).
- monotonicity: share of argmax moves that go forward (1 when the argmax never moves;
  a stuck alignment is therefore monotonic, which is why no metric is used alone).
- coverage: share of characters that receive at least half a step's worth of the
  mass a uniform reading would give them: sum_s A[s, n] >= 0.5 * min(1, S / N).
- reached_end: the argmax reaches one of the last max(END_MIN_CHARS, END_FRACTION * N)
  characters at some step (final punctuation and EOS get almost no frames after
  silence trimming, so demanding the very last symbol would fail good alignments).
- length_ratio: predicted frames / expected frames (free-running only).

An utterance is *aligned* when diagonality >= ALIGNED_DIAGONALITY, the end is
reached, and the length ratio is within ALIGNED_LENGTH_RATIO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

BAND_FRACTION = 0.15  # band half-width as a share of the text length
BAND_MIN_CHARS = 3.0  # ... but never narrower (pauses at punctuation in short texts)
END_MIN_CHARS = 3  # the end window: at least the last letter, final punctuation and EOS
END_FRACTION = 0.1  # ... or the last tenth of the text
ALIGNED_DIAGONALITY = 0.7
ALIGNED_LENGTH_RATIO = (0.8, 1.25)


@dataclass(frozen=True)
class AlignmentMetrics:
    """Quality of one utterance's attention."""

    diagonality: float
    focus: float
    monotonicity: float
    coverage: float
    reached_end: bool
    length_ratio: float  # nan when no expected length is known

    @property
    def aligned(self) -> bool:
        """The free-running definition of a usable alignment."""
        low, high = ALIGNED_LENGTH_RATIO
        ratio_ok = math.isnan(self.length_ratio) or low <= self.length_ratio <= high
        return self.diagonality >= ALIGNED_DIAGONALITY and self.reached_end and ratio_ok

    @property
    def quality(self) -> float:
        """One number in [0, 1]: diagonality x coverage, scaled down for a wrong length
        (by min(ratio, 1/ratio)) and halved when the end is never reached."""
        ratio = (
            1.0
            if math.isnan(self.length_ratio) or self.length_ratio <= 0
            else min(self.length_ratio, 1.0 / self.length_ratio)
        )
        end = 1.0 if self.reached_end else 0.5
        return self.diagonality * self.coverage * ratio * end


def alignment_metrics(attention: Tensor, expected_steps: float | None = None) -> AlignmentMetrics:
    """Metrics of one cropped (S, N) attention matrix; `expected_steps` gives the length ratio."""
    a = attention.detach().float()
    if a.dim() != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected a non-empty (steps, chars) matrix, found {tuple(a.shape)}")
    steps, chars = a.shape
    s = torch.arange(steps, dtype=torch.float32)[:, None]
    n = torch.arange(chars, dtype=torch.float32)[None, :]
    centre = (s + 0.5) * chars / steps - 0.5
    width = max(BAND_MIN_CHARS, BAND_FRACTION * chars)
    diagonality = float((a * ((n - centre).abs() <= width)).sum(dim=1).mean())
    peak = a.argmax(dim=1)
    moves = peak[1:] - peak[:-1]
    moved = moves != 0
    monotonicity = float((moves[moved] > 0).float().mean()) if bool(moved.any()) else 1.0
    received = a.sum(dim=0)
    coverage = float((received >= 0.5 * min(1.0, steps / chars)).float().mean())
    ratio = steps / expected_steps if expected_steps else math.nan
    return AlignmentMetrics(
        diagonality=min(diagonality, 1.0),
        focus=float(a.max(dim=1).values.mean()),
        monotonicity=monotonicity,
        coverage=coverage,
        reached_end=bool((peak >= chars - end_window(chars)).any()),
        length_ratio=ratio,
    )


def end_window(chars: int) -> int:
    """How many final characters count as "the end" of a text of `chars` characters."""
    return max(END_MIN_CHARS, round(END_FRACTION * chars))


def batch_alignment_metrics(
    alignments: Tensor, steps: Tensor, chars: Tensor, expected_steps: Tensor | None = None
) -> list[AlignmentMetrics]:
    """Metrics for every item of a padded (B, S, N) batch, each on its own crop."""
    out = []
    for i in range(alignments.shape[0]):
        crop = alignments[i, : int(steps[i]), : int(chars[i])]
        expected = None if expected_steps is None else float(expected_steps[i])
        out.append(alignment_metrics(crop, expected))
    return out


def summarize(metrics: Sequence[AlignmentMetrics], prefix: str) -> dict[str, float]:
    """Means over utterances, plus the aligned share, as flat `prefix/name` floats."""
    if not metrics:
        return {}
    summary: dict[str, float] = {}
    for key in asdict(metrics[0]):
        values = [float(getattr(m, key)) for m in metrics]
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            summary[f"{prefix}/{key}"] = sum(finite) / len(finite)
    summary[f"{prefix}/aligned_rate"] = sum(m.aligned for m in metrics) / len(metrics)
    summary[f"{prefix}/quality"] = sum(m.quality for m in metrics) / len(metrics)
    return summary


def gate_balanced_accuracy(gate_logits: Tensor, steps: Tensor) -> float:
    """Mean of the stop and the continue accuracy over valid steps (B, S), (B,)."""
    index = torch.arange(gate_logits.shape[1], device=gate_logits.device)[None, :]
    valid = index < steps[:, None]
    target = index == (steps - 1)[:, None]
    predicted = torch.sigmoid(gate_logits.float()) > 0.5
    stop = (predicted & target & valid).sum() / (target & valid).sum().clamp(min=1)
    go = (~predicted & ~target & valid).sum() / (~target & valid).sum().clamp(min=1)
    return float((stop + go) / 2)


def composite_score(metrics: dict[str, float], alignment_weight: float) -> float:
    """The one number early stopping, best-checkpoint selection and the tuner minimize:

        score = val/mel_postnet + alignment_weight * (1 - free/quality)

    i.e. the teacher-forced validation mel loss plus a penalty for poor free-running
    attention (free/quality is the mean `AlignmentMetrics.quality` of the free-running
    utterances, 1 for perfect). Missing or non-finite inputs give +inf.
    """
    mel = metrics.get("val/mel_postnet", math.inf)
    quality = metrics.get("free/quality", math.nan)
    if not (math.isfinite(mel) and math.isfinite(quality)):
        return math.inf
    return mel + alignment_weight * (1.0 - quality)
