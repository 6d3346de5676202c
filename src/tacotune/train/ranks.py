"""What every process of a torchrun job must agree on, generic to any training loop (the
acoustic loop in loop.py and the vocoder's in tacotune.vocoder.train). With one process
each function returns its input without touching torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from tacotune.names import StopReason
from tacotune.train.setup import Environment

_STOP_CODES = list(StopReason)


def barrier(world_size: int) -> None:
    """Wait for every process (no-op alone)."""
    if world_size > 1:
        dist.barrier()


def agree(stop_reason: StopReason, env: Environment) -> StopReason:
    """Rank 0's stop decision, shared with every rank."""
    if env.world_size == 1:
        return stop_reason
    code = torch.tensor([_STOP_CODES.index(stop_reason)], device=env.device)
    dist.broadcast(code, src=0)
    return _STOP_CODES[int(code.item())]


def agree_on_interrupt(requested: bool, env: Environment) -> bool:
    """Whether any rank was asked to stop (torchrun signals every process, but not at the
    same step boundary): all ranks then stop together."""
    if env.world_size == 1:
        return requested
    flag = torch.tensor([int(requested)], device=env.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean_over_ranks(value: float, env: Environment) -> float:
    """The same number on every rank, so that every rank's guard reaches the same verdict."""
    if env.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size


def mean_over_ranks_on_device(value: Tensor, env: Environment) -> Tensor:
    """`mean_over_ranks` without leaving the device: no host read (the acoustic loop reads
    its numbers only every train.sync_every steps)."""
    if env.world_size == 1:
        return value
    total = value.detach().double()
    dist.all_reduce(total)
    return (total / env.world_size).float()
