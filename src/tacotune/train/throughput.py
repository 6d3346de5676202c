"""How fast a config trains here: a few real training steps on the real batches, timed.

`tacotune auto` measures before it splits its budget (a rule of thumb per machine would
be wrong on the next machine), and bench/train_throughput.py reports the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tacotune.config.schema import Config
from tacotune.data.manifest import load_prepared
from tacotune.losses import tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2, reduction_factor_at
from tacotune.text.symbols import SYMBOLS
from tacotune.train.inputs import build_training_data
from tacotune.train.setup import make_optimizer, setup_environment


@dataclass(frozen=True)
class StepRate:
    """Measured training speed of one config on this machine."""

    steps_per_second: float
    mel_frames_per_second: float  # real (unpadded) target frames
    parameters: int
    precision: str  # what train.precision resolved to


def measure_step_rate(
    config: Config, prepared_dir: str | Path, steps: int = 5, warmup: int = 2
) -> StepRate:
    """Time `steps` optimizer steps (after `warmup` untimed ones) exactly as the training
    loop runs them: batches from the bucketing sampler, autocast, fp32 loss, clipping."""
    env = setup_environment(config.train)
    data = build_training_data(load_prepared(prepared_dir), config, 0, 1)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels).to(env.device)
    optimizer = make_optimizer(model, config.train)
    batches = data.stream()
    r = reduction_factor_at(config.model, 0)
    frames, started = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _synchronize(env.device)
            started = time.perf_counter()
        batch = next(batches).to(env.device)
        with torch.autocast(
            env.device.type, dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
        ):
            out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, r)
        loss = tacotron2_loss(
            out, batch.mel, batch.mel_lengths, batch.text, batch.text_lengths, config.loss, step
        ).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        if step >= warmup:
            frames += int(batch.mel_lengths.sum())
    _synchronize(env.device)
    seconds = time.perf_counter() - started
    return StepRate(
        steps / seconds,
        frames / seconds,
        sum(p.numel() for p in model.parameters()),
        env.precision,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
