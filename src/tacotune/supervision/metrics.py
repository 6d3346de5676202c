"""Evaluation metrics: the voice itself, and the attention that produced it.

The voice metric compares what the model says with what the speaker said. For a
validation utterance decoded free-running, its predicted log-mel P and the recording R
of the same text are turned into mel-cepstra (c1..c13: the DCT of the log-mel over the
mel axis, without c0, the loudness), aligned with DTW, and their mel-cepstral distortion
MCD(P, R) = 10 sqrt(2) / ln 10 * mean over the warping path of |c_P - c_R| (dB) is set
against the same distance to a recording of a DIFFERENT text of similar length
(MCD(P, R'), chance level):

    mcd_ratio = MCD(P, R) / MCD(P, R')   ~0 the same speech; ~1 says nothing right

Attention metrics saturate long before the speech is right (a model can attend in a
perfect diagonal while mumbling); the ratio does not, so it drives the score.

Attention: A is one utterance's attention, cropped to its real size: S decoder steps (rows)
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

import numpy as np
import torch
from torch import Tensor

BAND_FRACTION = 0.15  # band half-width as a share of the text length
BAND_MIN_CHARS = 3.0  # ... but never narrower (pauses at punctuation in short texts)
END_MIN_CHARS = 3  # the end window: at least the last letter, final punctuation and EOS
END_FRACTION = 0.1  # ... or the last tenth of the text
ALIGNED_DIAGONALITY = 0.7
ALIGNED_LENGTH_RATIO = (0.8, 1.25)
CEPSTRA = 13  # mel-cepstra c1..c13 describe the spectral envelope (c0 is loudness)
MCD_DB = 10.0 * math.sqrt(2.0) / math.log(10.0)  # cepstral distance -> dB (Kubichek 1993)


@dataclass(frozen=True)
class VoiceMetrics:
    """How close one free-running utterance is to its recording."""

    mcd: float  # dB, after DTW, to the recording of the same text
    mcd_chance: float  # dB, after DTW, to a recording of another text (chance level)
    duration_ratio: float  # predicted frames / recorded frames

    @property
    def mcd_ratio(self) -> float:
        """mcd / mcd_chance: ~0 the right speech; ~1 or more says nothing right."""
        return self.mcd / self.mcd_chance if self.mcd_chance > 0 else math.inf


def mel_cepstra(log_mel: Tensor | np.ndarray) -> np.ndarray:
    """(n_mels, T) natural-log mel -> (CEPSTRA, T) mel-cepstra c1..c13 (orthonormal DCT-II)."""
    import scipy.fft

    values = np.asarray(log_mel.detach().float().cpu() if isinstance(log_mel, Tensor) else log_mel)
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"expected a (n_mels, frames) mel with frames, found {values.shape}")
    return scipy.fft.dct(values.astype(np.float64), type=2, norm="ortho", axis=0)[1 : CEPSTRA + 1]


def mcd_dtw(predicted: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    """Mel-cepstral distortion (dB) between two log-mels of any lengths, after DTW."""
    import librosa

    a, b = mel_cepstra(predicted), mel_cepstra(reference)
    _, path = librosa.sequence.dtw(X=a, Y=b, metric="euclidean")
    distances = np.linalg.norm(a[:, path[:, 0]] - b[:, path[:, 1]], axis=0)
    return MCD_DB * float(distances.mean())


def mcd_frames(predicted: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    """Mel-cepstral distortion (dB) between two log-mels of the same length, frame by frame:
    for audio re-analysed from the mel it was made from (a vocoder's output against the
    recording), where DTW would only hide timing errors."""
    a, b = mel_cepstra(predicted), mel_cepstra(reference)
    if a.shape != b.shape:
        raise ValueError(f"mcd_frames needs equal lengths, found {a.shape[1]} and {b.shape[1]}")
    return MCD_DB * float(np.linalg.norm(a - b, axis=0).mean())


def voice_metrics(predicted: Tensor, reference: Tensor, other: Tensor) -> VoiceMetrics:
    """A free-running mel vs the recording of its text and a recording of another text."""
    return VoiceMetrics(
        mcd=mcd_dtw(predicted, reference),
        mcd_chance=mcd_dtw(predicted, other),
        duration_ratio=predicted.shape[-1] / reference.shape[-1],
    )


def summarize_voice(metrics: Sequence[VoiceMetrics], prefix: str) -> dict[str, float]:
    """Means over utterances as `prefix/mcd`, `/mcd_chance`, `/mcd_ratio`, `/duration_ratio`."""
    if not metrics:
        return {}
    count = len(metrics)
    return {
        f"{prefix}/mcd": sum(m.mcd for m in metrics) / count,
        f"{prefix}/mcd_chance": sum(m.mcd_chance for m in metrics) / count,
        f"{prefix}/mcd_ratio": sum(m.mcd_ratio for m in metrics) / count,
        f"{prefix}/duration_ratio": sum(m.duration_ratio for m in metrics) / count,
    }


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


def summarize_alignment(metrics: Sequence[AlignmentMetrics], prefix: str) -> dict[str, float]:
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

        score = free/mcd_ratio + alignment_weight * (1 - free/quality)

    i.e. the voice metric of the free-running validation utterances (0 for the recorded
    speech, ~1 at chance), plus a penalty for attention that fails on the probe and
    validation texts (free/quality is the mean `AlignmentMetrics.quality`, 1 for perfect;
    it halves for a text whose end is never reached). Perfect attention cannot make up
    for the wrong speech: its penalty is 0 at best. Missing or non-finite inputs give +inf.
    """
    voice = metrics.get("free/mcd_ratio", math.inf)
    quality = metrics.get("free/quality", math.nan)
    if not (math.isfinite(voice) and math.isfinite(quality)):
        return math.inf
    return voice + alignment_weight * (1.0 - quality)
