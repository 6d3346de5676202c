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
so the same scores apply): what a trained voice gives the vocoder is smoother than a
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
from common import demo_prepared, report
from torch import Tensor

from tacotune.audio import griffin_lim
from tacotune.config import load_config
from tacotune.data.dataset import Collate, TextMelDataset
from tacotune.data.manifest import ManifestEntry, load_prepared
from tacotune.data.segments import SegmentDataset
from tacotune.model.tacotron2 import pad_multiple
from tacotune.synthesize import Synthesizer
from tacotune.vocoder.evaluate import GRIFFIN_LIM_SEED, Clip, score, validation_clips


def row(iterations: int, power: float, clips: list[Clip], config: Any) -> dict[str, Any]:
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


@torch.no_grad()
def predicted(
    checkpoint: str, clips: list[Clip], entries: list[ManifestEntry], root: Any
) -> list[Clip]:
    """The clips with the model's teacher-forced postnet mel in place of the recorded one."""
    model = Synthesizer(checkpoint).model
    collate = Collate(pad_multiple(model.config))
    texts = TextMelDataset(entries[: len(clips)], root)
    mels: list[Tensor] = []
    for index, clip in enumerate(clips):
        batch = collate([texts[index]])
        output = model(
            batch.text, batch.text_lengths, batch.mel, batch.mel_lengths,
            model.config.reduction_factor,
        )  # fmt: skip
        mels.append(output.mel_postnet[0, :, : clip.mel.shape[-1]])  # (n_mels, T)
    return [dataclasses.replace(clip, mel=mel) for clip, mel in zip(clips, mels, strict=True)]


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
    dataset = SegmentDataset(entries, prepared.root, config.audio, None)
    clips = validation_clips(dataset, args.clips, config.audio)
    if args.checkpoint:
        clips = predicted(args.checkpoint, clips, entries, prepared.root)
    griffin_lim(clips[0].mel.float(), config.audio)  # the first call pays for set-up: untimed
    rows = [row(n, power, clips, config) for power in args.powers for n in args.iters]
    report("griffin_lim", rows)


if __name__ == "__main__":
    main()
