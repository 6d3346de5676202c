"""HiFi-GAN on CPU: inference real-time factor, training speed, and the wall time the
vocoder needs to beat Griffin-Lim on the demo corpus.

    python bench/vocoder.py                                  # v1, v2, v3 at 2 threads
    python bench/vocoder.py --presets v3 --train-steps 3 --batch-size 4
    python bench/vocoder.py --skip-inference --train-steps 0 --beat-griffin-lim 60 \
        --set vocoder.discriminator_divisor=8 --set vocoder.segment_size=2048 \
        --set vocoder.batch_size=4 --threads 1

Inference: `HifiGanVocoder` (weight norm folded, inference mode, batch 1) on mels of 2 and
10 s; rtf = compute seconds / audio seconds, the median of --repeats calls after one
warm-up. The issue's goals at 2 threads: v3 <= 0.05, v2 <= 0.15. Griffin-Lim (the default
vocoder, `audio.griffin_lim_iters` iterations) is timed the same way for reference.

Training: `tacotune.vocoder.throughput.measure_vocoder_rate`, the training loop's step
(discriminators on real vs generated audio, then the generator, AdamW each) on
`vocoder.segment_size`-sample segments at `vocoder.batch_size` (the preset's, or
--batch-size); the first step is a warm-up and not timed.

Beating Griffin-Lim (--beat-griffin-lim MINUTES): `tacotune vocoder train` on the prepared
demo corpus with the preset (and any --set), from scratch, evaluating every
`vocoder.eval_every` steps. Reported: the step and minutes of training of the first
evaluation with eval/mcd < gl/mcd (the event vocoder_beats_griffin_lim), and of the first
that also has eval/pesq > gl/pesq (the run stops there), or that it did not happen within
MINUTES of wall clock (vocoder.max_minutes), with the last evaluation's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import OUT, demo_prepared, peak_rss_gib, report

from tacotune.config import AudioConfig, load_config
from tacotune.names import Event
from tacotune.runlog import RunListener, StopTraining
from tacotune.vocoder.griffin_lim import GriffinLim
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.neural import HifiGanVocoder, vocoder_payload
from tacotune.vocoder.throughput import measure_vocoder_rate
from tacotune.vocoder.train import train_vocoder

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
    """Steps/s of generator + discriminator training for one preset (the loop's step)."""
    config = load_config(f"hifigan_{name}")
    v = config.vocoder
    rate = measure_vocoder_rate(config, torch.device("cpu"), steps, batch_size)
    return {
        "generator": name,
        "batch": batch_size or v.batch_size,
        "segment": v.segment_size,
        "s_per_step": 1 / rate.steps_per_second,
        "steps_per_s": rate.steps_per_second,
        "segments_per_s": rate.segments_per_second,
        "audio_s_per_s": rate.audio_seconds_per_second,
        "peak_rss_GiB": peak_rss_gib(),
    }


class StopWhenBeaten(RunListener):
    """Notes the first evaluation where the vocoder beats Griffin-Lim on MCD (the event
    vocoder_beats_griffin_lim), and ends the run at the first where it also beats it on
    PESQ: MCD alone overrates the vocoder (README, "Neural vocoder")."""

    def __init__(self) -> None:
        self.on_mcd: dict[str, Any] | None = None
        self.on_both: dict[str, Any] | None = None
        self.last: dict[str, Any] = {}

    def on_event(self, record: Mapping[str, Any]) -> None:
        if record["event"] == Event.VOCODER_BEATS_GRIFFIN_LIM:
            self.on_mcd = dict(record)

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        self.last = {"step": step, "minutes": metrics["time/train_seconds"] / 60, **metrics}
        print(
            f"step {step}: mcd {metrics['eval/mcd']:.2f} dB (Griffin-Lim {metrics['gl/mcd']:.2f}),"
            f" pesq {metrics['eval/pesq']:.2f} ({metrics['gl/pesq']:.2f}),"
            f" mel L1 {metrics['eval/mel_l1']:.3f} ({metrics['gl/mel_l1']:.3f}),"
            f" {self.last['minutes']:.1f} min of training",
            flush=True,
        )
        if self.on_mcd is not None and metrics["eval/pesq"] > metrics["gl/pesq"]:
            self.on_both = self.last
            raise StopTraining("the vocoder beat Griffin-Lim on MCD and PESQ")


def wall_time_to_beat_griffin_lim(
    preset: str, overrides: list[str], minutes: float, out: Path
) -> dict[str, object]:
    """Train `preset` (with `overrides`) on the demo corpus until it beats Griffin-Lim on
    MCD and PESQ, or `minutes` of wall clock; the row says when (minutes of training,
    evaluations excluded), or that it did not, with the last evaluation's numbers."""
    config = load_config(
        f"hifigan_{preset}",
        [
            "train.precision=fp32",
            "tracking.tensorboard=false",
            "vocoder.max_steps=10000000",
            f"vocoder.max_minutes={minutes}",
            *overrides,
        ],
    )
    listener = StopWhenBeaten()
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    with contextlib.suppress(StopTraining):  # how the listener ends a run that beat it
        train_vocoder(config, demo_prepared(), out, listeners=[listener])
    v, last = config.vocoder, listener.last
    row: dict[str, object] = {
        "generator": preset,
        "setting": " ".join(overrides) or "the preset's",
        "batch": v.batch_size,
        "segment": v.segment_size,
        "cap_minutes": minutes,
        "wall_minutes": (time.monotonic() - started) / 60,
        "mcd_beaten_at_step": listener.on_mcd["step"] if listener.on_mcd else "no",
        "mcd_beaten_at_minutes": listener.on_mcd["minutes"] if listener.on_mcd else "-",
        "pesq_too_at_step": listener.on_both["step"] if listener.on_both else "no",
        "pesq_too_at_minutes": listener.on_both["minutes"] if listener.on_both else "-",
    }
    names = ("mcd", "pesq", "stoi", "mel_l1")
    row["last_step"] = last.get("step", "-")
    row.update({f"{p}/{n}": last.get(f"{p}/{n}", math.nan) for n in names for p in ("eval", "gl")})
    return row


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
    parser.add_argument(
        "--beat-griffin-lim",
        type=float,
        metavar="MINUTES",
        help="train the first preset on the demo corpus until it beats Griffin-Lim or MINUTES",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="config override for --beat-griffin-lim"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_inference:
        rows = inference_rows(args.presets, args.threads, args.repeats, args.onnxruntime)
        report("vocoder_inference", rows)
    if args.train_steps:
        rows = [train_step_row(p, args.batch_size, args.train_steps) for p in args.presets]
        report("vocoder_train_step", rows)
    if args.beat_griffin_lim:
        out = OUT / "vocoder_vs_griffin_lim"
        row = wall_time_to_beat_griffin_lim(args.presets[0], args.set, args.beat_griffin_lim, out)
        report("vocoder_vs_griffin_lim", [row])
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
