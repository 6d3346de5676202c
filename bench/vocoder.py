"""HiFi-GAN on CPU: inference real-time factor and raw training-step speed per preset.

    python bench/vocoder.py                                  # v1, v2, v3 at 2 threads
    python bench/vocoder.py --presets v3 --train-steps 3 --batch-size 4

Inference: `HifiGanVocoder` (weight norm folded, inference mode, batch 1) on mels of 2, 5
and 10 s; rtf = compute seconds / audio seconds, the median of --repeats calls after one
warm-up. The issue's goals at 2 threads: v3 <= 0.05, v2 <= 0.15. Griffin-Lim (the default
vocoder, `audio.griffin_lim_iters` iterations) is timed the same way for reference.

Training: one step = a discriminator step (MPD + MSD, LSGAN) and a generator step
(adversarial + feature matching + mel L1), each with AdamW as in the paper, on
`vocoder.segment_size`-sample segments at `vocoder.batch_size` (the preset's, or
--batch-size); the first step is a warm-up and not timed. The audio is noise: the
speed of a convolutional network does not depend on what it hears.

Wall time to beat Griffin-Lim (how long training takes until the vocoder's validation
mel L1 is below Griffin-Lim's on the same utterances): NOT MEASURED YET. It needs the
vocoder training loop of the issue's second phase; `wall_time_to_beat_griffin_lim` below
is the place for it.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from common import peak_rss_gib, report

from tacotune.audio import MelSpectrogram
from tacotune.config import AudioConfig, load_config
from tacotune.vocoder import GriffinLim, HifiGanVocoder, vocoder_payload
from tacotune.vocoder.discriminators import Discriminator
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.losses import discriminator_loss, generator_loss

SECONDS = (2.0, 10.0)  # mel lengths timed, in seconds of audio
RTF_GOALS = {"v3": 0.05, "v2": 0.15}  # the CPU goals at 2 threads
Clock = Callable[[], float]
VocoderFn = Callable[[torch.Tensor], np.ndarray]  # (n_mels, T) -> (T * hop,)


def time_vocoder(
    vocoder: VocoderFn,
    audio: AudioConfig,
    seconds: float,
    repeats: int,
    clock: Clock = time.perf_counter,
) -> float:
    """Median real-time factor of `vocoder` on a random mel of `seconds`, by `clock`."""
    frames = round(seconds * audio.sample_rate / audio.hop_length)
    mel = torch.randn(audio.n_mels, frames) - 5.0  # log-mel range of speech
    vocoder(mel)  # warm-up
    times = []
    for _ in range(repeats):
        started = clock()
        vocoder(mel)
        times.append(clock() - started)
    return statistics.median(times) / (frames * audio.hop_length / audio.sample_rate)


class OnnxGenerator:
    """The same folded generator run by onnxruntime (a bench comparison, not a tacotune path)."""

    def __init__(self, vocoder: HifiGanVocoder, threads: int) -> None:
        import onnxruntime

        buffer = io.BytesIO()
        example = torch.randn(1, vocoder.n_mels, 20)
        torch.onnx.export(
            vocoder.generator,
            (example,),
            buffer,
            input_names=["mel"],
            output_names=["audio"],
            dynamic_axes={"mel": {2: "frames"}, "audio": {2: "samples"}},
            dynamo=False,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) -> (T * hop,)"""
        return self.session.run(None, {"mel": mel.numpy()[None]})[0][0, 0]


def rtf_row(
    name: str, backend: str, build: Callable[[int], VocoderFn], threads: int, repeats: int
) -> dict[str, object]:
    """Wall-clock RTF at `threads` threads, and CPU-time RTF of one thread on 10 s."""
    audio = AudioConfig()
    torch.set_num_threads(threads)
    vocoder = build(threads)
    wall = {f"rtf_{s:g}s": time_vocoder(vocoder, audio, s, repeats) for s in SECONDS}
    row: dict[str, object] = {"vocoder": name, "backend": backend, **wall}
    torch.set_num_threads(1)
    # CPU seconds of this process per audio second, one thread: what the work costs,
    # barely affected by other processes competing for the cores (wall time is)
    row["cpu_rtf_1_thread"] = time_vocoder(build(1), audio, 10.0, repeats, time.process_time)
    torch.set_num_threads(threads)
    goal = RTF_GOALS.get(name)
    row["goal"] = "-" if goal is None else goal
    row["goal_met"] = "-" if goal is None else str(max(wall.values()) <= goal)
    return row


def inference_rows(
    presets: list[str], threads: int, repeats: int, onnx: bool
) -> list[dict[str, object]]:
    rows = []
    for name in presets:
        config = load_config(f"hifigan_{name}")
        generator = build_generator(name, config.audio.n_mels, config.audio.hop_length)
        vocoder = HifiGanVocoder.from_payload(vocoder_payload(generator, config))
        rows.append(rtf_row(name, "torch", lambda _, v=vocoder: v, threads, repeats))
        if onnx:
            onnx_at = functools.partial(OnnxGenerator, vocoder)
            rows.append(rtf_row(name, "onnxruntime", onnx_at, threads, repeats))
    griffin = GriffinLim(AudioConfig())
    rows.append(rtf_row("griffin_lim", "torch", lambda _: griffin, threads, 1))
    return rows


def train_step_row(name: str, batch_size: int | None, steps: int) -> dict[str, object]:
    """Steps/s of generator + discriminator training for one preset."""
    config = load_config(f"hifigan_{name}")
    v, audio_config = config.vocoder, config.audio
    batch = batch_size or v.batch_size
    torch.manual_seed(0)
    generator = build_generator(name, audio_config.n_mels, audio_config.hop_length)
    discriminator = Discriminator()
    mel = MelSpectrogram(audio_config)
    adam = {"lr": v.learning_rate, "betas": v.adam_betas, "weight_decay": v.weight_decay}
    optim_g = torch.optim.AdamW(generator.parameters(), **adam)
    optim_d = torch.optim.AdamW(discriminator.parameters(), **adam)
    real = torch.randn(batch, 1, v.segment_size) * 0.1  # (B, 1, N)
    mel_in = mel(real.squeeze(1))  # (B, n_mels, N / hop)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        fake = generator(mel_in)
        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        optim_d.zero_grad(set_to_none=True)
        d_loss.total.backward()
        optim_d.step()
        g_loss = generator_loss(discriminator(real), discriminator(fake), real, fake, mel, v)
        optim_g.zero_grad(set_to_none=True)
        g_loss.total.backward()
        optim_g.step()
    seconds = time.perf_counter() - started
    return {
        "generator": name,
        "batch": batch,
        "segment": v.segment_size,
        "s_per_step": seconds / steps,
        "steps_per_s": steps / seconds,
        "segments_per_s": steps * batch / seconds,
        "audio_s_per_s": steps * batch * v.segment_size / audio_config.sample_rate / seconds,
        "peak_rss_GiB": peak_rss_gib(),
    }


def wall_time_to_beat_griffin_lim() -> None:
    """Phase 2: train a preset on the demo corpus with the vocoder training loop, evaluate
    every `vocoder.eval_every` steps, and report the wall time and step at which the
    validation mel L1 of the vocoder's audio first drops below Griffin-Lim's."""
    raise NotImplementedError("needs the vocoder training loop (the issue's second phase)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["v1", "v2", "v3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference calls")
    parser.add_argument("--train-steps", type=int, default=2, help="timed steps; 0: skip")
    parser.add_argument("--batch-size", type=int, help="default: the preset's batch size")
    parser.add_argument(
        "--onnxruntime", action="store_true", help="also time the generator under onnxruntime"
    )
    parser.add_argument("--skip-inference", action="store_true", help="only the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_inference:
        rows = inference_rows(args.presets, args.threads, args.repeats, args.onnxruntime)
        report("vocoder_inference", rows)
    if args.train_steps:
        rows = [train_step_row(p, args.batch_size, args.train_steps) for p in args.presets]
        report("vocoder_train_step", rows)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
