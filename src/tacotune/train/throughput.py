"""How fast a config trains here: a few real training steps on the real batches, timed.

`tacotune auto` measures before it splits its budget (a rule of thumb per machine would
be wrong on the next machine); bench/train_throughput.py and bench/gpu_throughput.py
report the same numbers. A step here is the training loop's step: autocast forward,
fp32 loss, backward, clipping, the guard's verdict on the device, the masked update,
the host reading the numbers every `train.sync_every` steps, the compiled decoder
step under `train.compile`, the shape buckets of `train.shape_bucket`.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tacotune.config.schema import Config
from tacotune.data.manifest import load_prepared
from tacotune.losses import tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2, reduction_factor_at
from tacotune.supervision.guard import DivergenceGuard
from tacotune.text.symbols import SYMBOLS
from tacotune.train.compiled import compile_decoder_steps
from tacotune.train.inputs import build_training_data
from tacotune.train.readout import Readout, StepRecord, masked_step, poison_non_finite
from tacotune.train.setup import make_optimizer, setup_environment


@dataclass(frozen=True)
class StepRate:
    """Measured training speed of one config on this machine."""

    steps_per_second: float
    mel_frames_per_second: float  # real (unpadded) target frames
    parameters: int
    precision: str  # what train.precision resolved to
    peak_memory_gib: float = 0.0  # CUDA: peak allocated while timed; CPU: peak RSS so far
    losses: tuple[float, ...] = field(default=())  # total loss of every step, warm-up included
    skipped_steps: int = 0  # steps whose update the guard masked out


def measure_step_rate(
    config: Config, prepared_dir: str | Path, steps: int = 5, warmup: int = 2
) -> StepRate:
    """Time `steps` optimizer steps (after `warmup` untimed ones) exactly as the training
    loop runs them; batches from the bucketing sampler in training order."""
    env = setup_environment(config.train)
    data = build_training_data(load_prepared(prepared_dir), config, 0, 1)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels).to(env.device)
    compile_decoder_steps(model, config.train)
    optimizer = make_optimizer(model, config.train)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.precision == "fp16")
    guard = DivergenceGuard(config.supervision)
    readout = Readout(env.sync_every)
    batches = data.stream()
    records: list[StepRecord] = []
    frames, started = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            records += readout.read()
            _synchronize(env.device)
            if env.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(env.device)
            started = time.perf_counter()
        host_batch = next(batches)
        batch = host_batch.to(env.device)
        r = reduction_factor_at(config.model, step)
        with torch.autocast(
            env.device.type, dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
        ):
            out = model(batch.text, host_batch.text_lengths, batch.mel, batch.mel_lengths, r)
        terms = tacotron2_loss(out, batch, config.loss, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(poison_non_finite(terms.total)).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        limits = guard.limits(loss_finite_only=env.precision == "fp16")
        bad = limits.device_verdict(terms.total, grad_norm)
        masked_step(optimizer, scaler, bad)
        scaler.update()
        readout.add(step + 1, terms.total, grad_norm, bad, limits, terms.tensors(), {"r": float(r)})
        if readout.due(step + 1):
            records += readout.read()
        if step >= warmup:
            frames += int(host_batch.mel_lengths.sum())  # on the host: no device read
    records += readout.read()
    _synchronize(env.device)
    seconds = time.perf_counter() - started
    return StepRate(
        steps / seconds,
        frames / seconds,
        sum(p.numel() for p in model.parameters()),
        env.precision,
        _peak_memory_gib(env.device),
        tuple(record.loss for record in records),
        sum(record.skipped for record in records),
    )


def measure_evaluation_seconds(config: Config, prepared_dir: str | Path) -> float:
    """Wall seconds of one evaluation (validation losses, free-running decodes of the
    validation utterances, the voice metric) of the model a run starts from: the weights of
    `train.warm_start` if set (a base voice decodes to its stop token), else random weights
    (which decode to the step limit: the slowest evaluation a run has)."""
    from tacotune.checkpoint import load_checkpoint, warm_start_state
    from tacotune.model.tacotron2 import reduction_factor_at
    from tacotune.train.evaluate import evaluate
    from tacotune.voices import resolve_warm_start

    env = setup_environment(config.train)
    data = build_training_data(load_prepared(prepared_dir), config, 0, 1)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    if config.train.warm_start:
        path = resolve_warm_start(config.train.warm_start, config).path
        model.load_state_dict(warm_start_state(model, load_checkpoint(path)["model"])[0])
    model.to(env.device)
    started = time.perf_counter()
    r = reduction_factor_at(config.model, 0)
    evaluate(model, data.val_batches, data.utterances, config, 0, r, env.device)
    _synchronize(env.device)
    return time.perf_counter() - started


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
