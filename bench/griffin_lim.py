"""Griffin-Lim iterations: what each costs and what it buys, on real recordings.

    python bench/griffin_lim.py [--iters 16 24 32 48 60 100] [--powers 1.2] [--clips 40]
                                [--threads 2] [--checkpoint RUN_OR_CHECKPOINT]

For each iteration count and magnitude power (`audio.griffin_lim_power`),
tacotune.audio.griffin_lim (fast Griffin-Lim, the fixed seed the vocoder evaluation uses)
renders the recorded mels of --clips utterances of the demo corpus (its validation split
first, then training utterances: Griffin-Lim learns nothing), scored against the
recordings exactly as a neural vocoder is (tacotune.vocoder.evaluate.score: mel L1, MCD,
wideband PESQ and STOI where installed), and timed (seconds of compute per second of audio,
the median over the clips). With --checkpoint, Griffin-Lim renders instead what that
model predicts for each clip, teacher-forced (postnet mel, time-aligned with the recording,
so the same scores apply; tacotune.vocoder.teacher makes them once, under
runs/bench/teacher_mels/): what a trained voice gives the vocoder is smoother than a
recording's mel, and the best power may differ. Griffin-Lim's cost is linear in its
iterations (two STFTs each); the question is where its quality stops rising. Results: a
table on stdout and runs/bench/griffin_lim.json (machine: its threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import torch
from common import OUT, demo_prepared, report

from tacotune.audio import griffin_lim
from tacotune.config import load_config
from tacotune.config.schema import Config
from tacotune.data.manifest import load_prepared
from tacotune.data.segments import SegmentDataset
from tacotune.vocoder.evaluate import GRIFFIN_LIM_SEED, Clip, score, validation_clips
from tacotune.vocoder.teacher import teacher_forced_mels


def row(iterations: int, power: float, clips: list[Clip], config: Config) -> dict[str, Any]:
    """Griffin-Lim at `iterations` and `power` on every clip: its metrics and compute per
    audio second."""
    audio = dataclasses.replace(config.audio, griffin_lim_iters=iterations, griffin_lim_power=power)
    rendered, rtfs = [], []
    for clip in clips:
        started = time.perf_counter()
        rendered.append(griffin_lim(clip.mel.float(), audio, GRIFFIN_LIM_SEED).numpy())
        rtfs.append((time.perf_counter() - started) / (len(clip.recording) / audio.sample_rate))
    metrics = score(rendered, clips, audio, "gl").metrics
    return {"iterations": iterations, "power": power, "rtf": statistics.median(rtfs), **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[16, 24, 32, 48, 60, 100])
    parser.add_argument("--powers", type=float, nargs="+", default=[1.2])
    parser.add_argument("--clips", type=int, default=40, help="utterances")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="render this model's teacher-forced mels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config("demo.yaml")
    prepared = load_prepared(demo_prepared())
    entries = [*prepared.split("val"), *prepared.split("train")]  # nothing here trains
    mel_dir = None  # the recordings' mels; with --checkpoint the model's, as a vocoder gets
    if args.checkpoint:
        cpu = torch.device("cpu")
        mel_dir = teacher_forced_mels(
            args.checkpoint, prepared, OUT / "teacher_mels", cpu
        ).directory
    dataset = SegmentDataset(entries, prepared.root, config.audio, None, mel_dir=mel_dir)
    clips = validation_clips(dataset, args.clips, config.audio)
    griffin_lim(clips[0].mel.float(), config.audio)  # the first call pays for set-up: untimed
    rows = [row(n, power, clips, config) for power in args.powers for n in args.iters]
    report("griffin_lim", rows)


if __name__ == "__main__":
    main()
