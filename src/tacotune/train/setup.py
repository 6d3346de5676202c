"""What the training loop needs before its first step: device, precision, processes, optimizer.

Precision (`choose_precision`; the run's `started` event and the log say what was chosen
and why). `auto` is:
  - tf32 on CUDA GPUs of compute capability 8.0+ (Ampere and newer): fp32 tensors with TF32
    matmuls and convolutions. Measured on an H200 (paper-size model, r=2, batch 32):
    20,665 mel frames/s with TF32, 18,389 fp32, 15,068 bf16 autocast: the decoder is
    bound by kernel launches, and autocast only adds casts. bench/gpu_throughput.py
    measures fp32/tf32/bf16/fp16 per model; where bf16 wins, set train.precision=bf16;
  - fp32 on older CUDA GPUs (no TF32);
  - bf16 autocast on CPUs that compute bf16 natively (AVX512-BF16/AMX: 2.4x faster
    paper-size steps here); fp32 on other CPUs (emulated bf16 is slower).
fp16 is GPU-only and always comes with a GradScaler (scale -> backward -> unscale ->
clip -> step -> update), so clipping and the logged norm see real gradients.

The optimizer is the fused AdamW: one kernel for all parameters, and it can skip a
step on the device (`found_inf`), which lets the loop skip bad steps without reading
the loss on the host every step (see train/readout.py).
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
    precision: str  # "fp32", "tf32", "bf16" or "fp16"
    rank: int
    world_size: int
    precision_reason: str = ""  # why `precision` was chosen (for `auto`)
    sync_every: int = 1  # steps between reading the loss and gradient norm on the host

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
    if config.compile == "reduce-overhead" and device.type != "cuda":
        raise ConfigError(
            "train.compile=reduce-overhead captures CUDA graphs, but this run trains on "
            f"{device}; use train.compile=default (or off) without a CUDA device"
        )
    seed_everything(config.seed + rank)
    choice = choose_precision(config.precision, DeviceFacts.of(device))
    enable_tf32(device, choice.precision == "tf32")
    log.info("precision %s: %s", choice.precision, choice.reason)
    return Environment(
        device,
        choice.precision,
        rank,
        world_size,
        choice.reason,
        sync_every=_sync_every(config.sync_every, device.type == "cuda", world_size),
    )


def _sync_every(requested: int | str, cuda: bool, world_size: int) -> int:
    """auto: 16 on CUDA (a read stalls the GPU), 1 on the CPU (where it costs nothing and
    every step's numbers come at once). Under torchrun every step is read: the ranks must
    agree on stopping every step anyway, which already waits for the device."""
    every = (16 if cuda else 1) if requested == "auto" else int(requested)
    if world_size > 1 and every > 1:
        log.info("train.sync_every=%d ignored: %d processes read every step", every, world_size)
        return 1
    return every


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


@dataclass(frozen=True)
class DeviceFacts:
    """What the precision rule looks at (tests fake them)."""

    type: str  # "cuda" or "cpu"
    capability: tuple[int, int] | None  # CUDA compute capability; None on the CPU
    native_bf16: bool  # the device computes bf16 natively

    @classmethod
    def of(cls, device: torch.device) -> DeviceFacts:
        """The facts of a real device."""
        if device.type == "cuda":
            return cls(
                "cuda",
                torch.cuda.get_device_capability(device),
                torch.cuda.is_bf16_supported(),
            )
        return cls(device.type, None, native_cpu_bf16())


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved train.precision and why."""

    precision: str  # "fp32", "tf32", "bf16" or "fp16"
    reason: str


AMPERE = (8, 0)  # the first compute capability with TF32


def choose_precision(requested: str, facts: DeviceFacts) -> PrecisionChoice:
    """The rule in the module docstring; explicit requests are checked against the device."""
    cuda = facts.type == "cuda"
    tf32_ok = cuda and facts.capability is not None and facts.capability >= AMPERE
    if requested == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    if requested == "tf32" and not tf32_ok:
        found = f"compute capability {facts.capability}" if cuda else "no CUDA device"
        raise ConfigError(
            f"train.precision=tf32 needs a CUDA GPU of compute capability 8.0 or newer; "
            f"found {found}; use fp32 (or auto)"
        )
    if requested != "auto":
        return PrecisionChoice(requested, "train.precision asks for it")
    if tf32_ok:
        return PrecisionChoice(
            "tf32",
            f"CUDA compute capability {facts.capability} >= 8.0: fp32 with TF32 matmuls "
            "(faster than bf16 autocast for this launch-bound decoder)",
        )
    if cuda:
        return PrecisionChoice(
            "fp32", f"CUDA compute capability {facts.capability} < 8.0 has no TF32"
        )
    if facts.native_bf16:
        return PrecisionChoice("bf16", "this CPU computes bf16 natively (AVX512-BF16/AMX)")
    return PrecisionChoice("fp32", "this CPU has no native bf16 (emulated bf16 is slower)")


def enable_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide torch settings:
    torch leaves cuDNN's on and matmul's off by default)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32. (torch only exposes this check under a private name.)"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW; biases and normalization weights get no weight decay."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.dim() < 2 or "norm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-6, fused=True
    )


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
