"""What the training loop needs before its first step: device, precision, processes, optimizer.

Precision: `auto` is bf16 autocast on GPUs and CPUs that compute bf16 natively
(AVX512-BF16/AMX: 2.4x faster paper-size steps here), else fp32. fp16 is
GPU-only and always comes with a GradScaler (scale -> backward -> unscale ->
clip -> step -> update), so clipping and the logged norm see real gradients.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tacotune.config.schema import Config, TrainConfig
from tacotune.device import resolve_device
from tacotune.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Environment:
    """Where and how this process trains."""

    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """dtype for torch.autocast, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)


def process_rank() -> int:
    """This process's rank under torchrun (RANK), 0 when run alone."""
    return int(os.environ.get("RANK", "0"))


def setup_environment(config: TrainConfig) -> Environment:
    """Threads, device, distributed process group (under torchrun), precision and seeds."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    rank, world_size = process_rank(), int(os.environ.get("WORLD_SIZE", 1))
    device = _device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        log.info("process %d of %d (%s)", rank, world_size, dist.get_backend())
    seed_everything(config.seed + rank)
    return Environment(device, _precision(config.precision, device), rank, world_size)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(requested: str, local_rank: int) -> torch.device:
    device = resolve_device(requested, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    return device


def _precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else native_cpu_bf16()
        return "bf16" if native else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    return requested


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32. (torch only exposes this check under a private name.)"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and normalization weights get no weight decay."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.dim() < 2 or "norm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-6)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR: linear warmup, then halving every `lr_half_life` steps,
    floored at min_learning_rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decayed = 0.5 ** ((step - config.warmup_steps) / max(config.lr_half_life, 1))
    return max(decayed, config.min_learning_rate / config.learning_rate)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, scale: Callable[[], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR (its state is the step count), times `scale()` (the
    divergence guard lowers it at every rollback)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config) * scale()
    )


def check_ctc_feasible(config: Config, chars_and_frames: list[tuple[int, int]]) -> None:
    """CTC needs >= as many decoder steps as characters for every utterance, at every r."""
    if not config.model.ctc:
        return
    from tacotune.config.schema import reduction_factors

    r = max(reduction_factors(config.model))
    bad = sum(math.ceil(frames / r) < chars for chars, frames in chars_and_frames)
    if bad:
        raise ConfigError(
            f"model.ctc is on but {bad} training utterances have fewer decoder steps than "
            f"characters at r={r}; lower model.reduction_factor or switch model.ctc off"
        )
