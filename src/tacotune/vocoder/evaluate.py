"""Vocoder validation: its audio and Griffin-Lim's, from the same mels, against the recording.

At every evaluation the first `vocoder.eval_utterances` validation utterances are vocoded
whole from the mels the vocoder trains on (the recordings' own, or an acoustic model's
teacher-forced mels). Lengths match exactly (T frames -> T * hop samples = the recording),
so every metric compares frame by frame:

    mel_l1  mean |mel(output) - mel(recording)|, the log-mels of tacotune.audio (the
            generator's own mel loss on whole utterances; lower is better)
    mcd     mel-cepstral distortion of the re-analysed output, dB, frame-aligned
            (supervision.metrics.mcd_frames; lower is better)
    pesq    wideband PESQ (ITU-T P.862.2) at 16 kHz, resampled with soxr (-0.5..4.5)
    stoi    short-time objective intelligibility (0..1)

as `eval/<name>` for the vocoder and `gl/<name>` for Griffin-Lim on the same mels (computed
once per run: it does not train). PESQ and STOI come from the optional `pesq` and `pystoi`
packages (pip install 'tacotune[vocoder]'); without one, its metric is left out with one
warning.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import soxr
import torch
from torch import Tensor

from tacotune.audio import MelSpectrogram, griffin_lim
from tacotune.config.schema import AudioConfig
from tacotune.data.segments import SegmentDataset
from tacotune.plotting import mels_figure
from tacotune.runlog import RunLog
from tacotune.supervision.metrics import mcd_frames
from tacotune.vocoder.hifigan import Generator

log = logging.getLogger(__name__)

PESQ_RATE = 16000  # wideband PESQ is defined at 16 kHz
GRIFFIN_LIM_SEED = 0


@dataclass(frozen=True)
class Clip:
    """One whole validation utterance."""

    id: str
    recording: np.ndarray  # (n_frames * hop,) float32
    mel: Tensor  # (n_mels, n_frames): the vocoder's input
    recorded_mel: Tensor  # (n_mels, n_frames): the recording's own log-mel


@dataclass(frozen=True)
class Vocoded:
    """One clip as a vocoder rendered it."""

    clip: Clip
    audio: np.ndarray  # (n_frames * hop,) float32
    mel: Tensor  # (n_mels, n_frames): the log-mel of `audio`


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one vocoder on every clip, and what it rendered."""

    metrics: dict[str, float]  # <prefix>/mel_l1, /mcd, /pesq, /stoi: means over the clips
    outputs: list[Vocoded]


def validation_clips(dataset: SegmentDataset, count: int, audio: AudioConfig) -> list[Clip]:
    """The first `count` utterances of a whole-clip dataset (segment_size None)."""
    mel_of = MelSpectrogram(audio)
    clips = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        clips.append(
            Clip(dataset.entries[index].id, item.audio.numpy(), item.mel, mel_of(item.audio))
        )
    return clips


@torch.no_grad()
def evaluate_generator(
    generator: Generator, clips: Sequence[Clip], audio: AudioConfig, device: torch.device
) -> Evaluation:
    """The generator (in eval mode for the duration, fp32) on every clip: metrics `eval/...`."""
    was_training = generator.training
    generator.eval()
    try:
        rendered = [
            generator(c.mel.float().to(device).unsqueeze(0))[0, 0].float().cpu().numpy()
            for c in clips
        ]  # (n_frames * hop,) each
    finally:
        generator.train(was_training)
    return score(rendered, clips, audio, "eval")


def evaluate_griffin_lim(clips: Sequence[Clip], audio: AudioConfig) -> Evaluation:
    """Griffin-Lim (tacotune.audio.griffin_lim, a fixed seed) on every clip: `gl/...`."""
    rendered = [griffin_lim(c.mel.float(), audio, GRIFFIN_LIM_SEED).numpy() for c in clips]
    return score(rendered, clips, audio, "gl")


def score(
    rendered: Sequence[np.ndarray], clips: Sequence[Clip], audio: AudioConfig, prefix: str
) -> Evaluation:
    """Metrics of rendered audio (one per clip, the recording's length) as `prefix/...`."""
    mel_of = MelSpectrogram(audio)
    outputs, per_clip = [], []
    for samples, clip in zip(rendered, clips, strict=True):
        if samples.shape != clip.recording.shape:
            raise ValueError(
                f"{clip.id}: rendered {samples.shape[0]} samples, the recording has "
                f"{clip.recording.shape[0]}"
            )
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        mel = mel_of(torch.from_numpy(samples))  # (n_mels, n_frames)
        outputs.append(Vocoded(clip, samples, mel))
        per_clip.append(clip_metrics(samples, mel, clip, audio.sample_rate))
    names = sorted({name for metrics in per_clip for name in metrics})
    means = {f"{prefix}/{name}": _finite_mean([m[name] for m in per_clip]) for name in names}
    return Evaluation(means, outputs)


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite values; NaN (null in metrics.jsonl) when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def clip_metrics(
    samples: np.ndarray, mel: Tensor, clip: Clip, sample_rate: int
) -> dict[str, float]:
    """mel_l1 and mcd always; pesq and stoi when their packages are installed."""
    metrics = {
        "mel_l1": float((mel - clip.recorded_mel).abs().mean()),
        "mcd": mcd_frames(mel, clip.recorded_mel),
    }
    pesq = optional_module("pesq")
    if pesq is not None:
        metrics["pesq"] = _pesq(pesq, clip.recording, samples, sample_rate, clip.id)
    pystoi = optional_module("pystoi")
    if pystoi is not None:
        metrics["stoi"] = float(pystoi.stoi(clip.recording, samples, sample_rate, extended=False))
    return metrics


def _pesq(
    pesq: ModuleType, reference: np.ndarray, degraded: np.ndarray, rate: int, clip_id: str
) -> float:
    """Wideband PESQ at 16 kHz; NaN (with a warning) where PESQ finds no speech to judge."""
    ref = soxr.resample(reference, rate, PESQ_RATE, quality="HQ")
    deg = soxr.resample(degraded, rate, PESQ_RATE, quality="HQ")
    try:
        return float(pesq.pesq(PESQ_RATE, ref, deg, "wb"))
    except pesq.PesqError as error:  # e.g. NoUtterancesError: too short or silent
        log.warning("PESQ of %s cannot be computed (%s); it counts as missing", clip_id, error)
        return math.nan


@functools.cache
def optional_module(name: str) -> ModuleType | None:
    """An optional metric package, or None after one warning that its metric is skipped."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        log.warning(
            "%s cannot be imported (%s): vocoder evaluations skip its metric; "
            "pip install 'tacotune[vocoder]'",
            name,
            error,
        )
        return None


LISTENED = 2  # clips written as wav and figures per evaluation


def write_samples(
    run_dir: Path,
    run_log: RunLog,
    ours: Evaluation,
    griffin_lim: Evaluation,
    sample_rate: int,
    step: int,
    first: bool,
) -> None:
    """RUN/samples/step_N/: the vocoder's wav and a figure of the recording's, the vocoder's
    and Griffin-Lim's log-mels for the first LISTENED clips (also to the listeners);
    Griffin-Lim's wavs once, to RUN/samples/griffin_lim/, at the first evaluation."""
    if not run_log.active:
        return
    directory = run_dir / "samples" / f"step_{step:07d}"
    directory.mkdir(parents=True, exist_ok=True)
    for mine, theirs in list(zip(ours.outputs, griffin_lim.outputs, strict=True))[:LISTENED]:
        name = mine.clip.id
        panels = {
            "recording": mine.clip.recorded_mel,
            "vocoder": mine.mel,
            "Griffin-Lim": theirs.mel,
        }
        title = f"{name} step {step}: log-mels of the recording and of each output"
        figure = mels_figure(panels, title)
        run_log.figure(f"vocoder_mel/{name}", figure, step, directory / f"{name}_mel.png")
        run_log.audio(f"vocoder/{name}", mine.audio, sample_rate, step, directory / f"{name}.wav")
        if first:
            path = run_dir / "samples" / "griffin_lim" / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            run_log.audio(f"griffin_lim/{name}", theirs.audio, sample_rate, step, path)
