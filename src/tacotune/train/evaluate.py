"""Evaluation during training: teacher-forced validation losses and free-running synthesis.

Teacher forcing hides broken attention (keithito/tacotron#141), so the model is judged
on free-running decoding of the probe sentences and a few validation utterances: the
attention of all of them, and the voice itself where a recording exists (the validation
utterances: supervision/metrics.py, `voice_metrics`). Evaluation runs on a forked RNG:
it never changes the training run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tacotune.config.schema import Config
from tacotune.data.dataset import Batch, pad_ids
from tacotune.losses import tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2, decoder_steps
from tacotune.supervision.metrics import (
    AlignmentMetrics,
    VoiceMetrics,
    batch_alignment_metrics,
    composite_score,
    gate_balanced_accuracy,
    summarize_alignment,
    summarize_voice,
    voice_metrics,
)


@dataclass(frozen=True)
class Utterance:
    """Something to decode free-running."""

    name: str
    text: str
    ids: Sequence[int]
    expected_frames: float  # from the real audio, or estimated from the corpus speech rate
    recording: Tensor | None = None  # (n_mels, T) the recorded mel of this text, if any
    other_recording: Tensor | None = None  # (n_mels, T') a recording of another text


@dataclass(frozen=True)
class Sample:
    """One free-running result, cropped to its real size."""

    utterance: Utterance
    mel: Tensor  # (n_mels, T)
    alignment: Tensor  # (S, N)
    gate: Tensor  # (S,)
    metrics: AlignmentMetrics
    voice: VoiceMetrics | None  # for utterances with a recording
    stopped_by_gate: bool
    stopped_at_end: bool
    hit_max_steps: bool


@dataclass(frozen=True)
class Evaluation:
    """Every metric by name, the composite score, and the probe samples."""

    metrics: dict[str, float]
    score: float
    samples: list[Sample]


@torch.no_grad()
def evaluate(
    model: Tacotron2,
    val_batches: Iterable[Batch],
    utterances: Sequence[Utterance],
    config: Config,
    step: int,
    r: int,
    device: torch.device,
) -> Evaluation:
    """Validation losses, the voice metric, teacher-forced and free-running attention
    metrics, the score."""
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.train.seed)
        metrics = _teacher_forced(model, val_batches, config, step, r, device)
        samples = _free_running(model, utterances, device, config.train.seed)
    model.train(was_training)
    free = [s.metrics for s in samples]
    metrics.update(summarize_alignment(free, "free"))
    metrics.update(summarize_voice([s.voice for s in samples if s.voice is not None], "free"))
    metrics["free/max_steps_rate"] = sum(s.hit_max_steps for s in samples) / len(samples)
    metrics["free/stopped_by_gate_rate"] = sum(s.stopped_by_gate for s in samples) / len(samples)
    metrics["free/stopped_at_end_rate"] = sum(s.stopped_at_end for s in samples) / len(samples)
    score = composite_score(metrics, config.supervision.score_alignment_weight)
    metrics["score"] = score
    return Evaluation(metrics, score, samples)


def _teacher_forced(
    model: Tacotron2,
    batches: Iterable[Batch],
    config: Config,
    step: int,
    r: int,
    device: torch.device,
) -> dict[str, float]:
    sums: dict[str, float] = {}
    tf_metrics: list[AlignmentMetrics] = []
    count = 0
    for batch in batches:
        b = batch.to(device)
        out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, r)
        terms = tacotron2_loss(out, b, config.loss, step)
        steps = decoder_steps(b.mel_lengths, r)
        n = len(b.text_lengths)
        values = terms.scalars()
        values["gate_accuracy"] = gate_balanced_accuracy(out.gate, steps)
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value * n
        tf_metrics += batch_alignment_metrics(
            out.alignments.cpu(), steps.cpu(), b.text_lengths.cpu()
        )
        count += n
    metrics = {f"val/{k}": v / count for k, v in sums.items()} if count else {}
    metrics.update(summarize_alignment(tf_metrics, "val_tf"))
    return metrics


FREE_RUNNING_CHECK_EVERY = 8  # on CUDA: decoder steps between host checks for "all done"


def _free_running(
    model: Tacotron2, utterances: Sequence[Utterance], device: torch.device, seed: int
) -> list[Sample]:
    """Every utterance decoded in one batch on the device; nothing moves to the host
    inside the decoding loop except the "all done?" check, every few steps on CUDA."""
    text, lengths = pad_ids([u.ids for u in utterances])
    generator = torch.Generator(device=device).manual_seed(seed)
    check_every = FREE_RUNNING_CHECK_EVERY if device.type == "cuda" else 1
    out = model.infer(
        text.to(device), lengths.to(device), generator=generator, check_every=check_every
    )
    r = out.reduction_factor
    mels, gates = out.mel_postnet.float().cpu(), out.gate.cpu()  # one copy each
    alignments, frames = out.alignments.cpu(), out.lengths.cpu()
    by_gate, at_end, hit_max = (
        out.stopped_by_gate.cpu(),
        out.stopped_at_end.cpu(),
        out.hit_max_steps.cpu(),
    )
    steps = frames // r
    expected = torch.tensor([u.expected_frames / r for u in utterances])
    alignment_metrics = batch_alignment_metrics(alignments, steps, lengths, expected)
    samples = []
    for i, u in enumerate(utterances):
        mel = mels[i, :, : int(frames[i])]
        samples.append(
            Sample(
                utterance=u,
                mel=mel,
                alignment=alignments[i, : int(steps[i]), : int(lengths[i])],
                gate=gates[i, : int(steps[i])],
                metrics=alignment_metrics[i],
                voice=None
                if u.recording is None or u.other_recording is None
                else voice_metrics(mel, u.recording, u.other_recording),
                stopped_by_gate=bool(by_gate[i]),
                stopped_at_end=bool(at_end[i]),
                hit_max_steps=bool(hit_max[i]),
            )
        )
    return samples
