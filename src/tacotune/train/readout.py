"""Skip bad steps on the device; read the step numbers on the host only every few steps.

Every float(loss) is a device->host synchronisation: the host waits for the GPU to
finish, and the GPU then idles while the host launches the next step's kernels. So
the loop judges each step on the device, with the divergence guard's current limits
(`Limits.device_verdict`), and masks a bad step's update out there (`masked_step`):
no bad update is ever applied, whenever its numbers are read. Every
`train.sync_every` steps (and before anything that needs them: an evaluation, a debug
report, the end) `Readout.read` copies the buffered numbers of all steps since the
last read in one transfer; the loop then hands each step to the guard with the
limits it was judged by, so host and device reach the same verdicts, and records
the skipped ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from tacotune.names import Event
from tacotune.runlog import RunLog
from tacotune.supervision.guard import DivergenceGuard, Limits

log = logging.getLogger(__name__)

LOGGED_BAD_STEPS = 5  # bad steps logged one by one; after that every 100th (all are in events)


def poison_non_finite(total: Tensor) -> Tensor:
    """`total`, or NaN times it when it is not finite: every gradient of a non-finite loss
    is then NaN, which makes fp16's GradScaler skip the update (and lower its scale). The
    value and gradients of a finite loss are unchanged (times exactly 1)."""
    return total * torch.where(torch.isfinite(total.detach()), 1.0, math.nan)


def masked_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, bad: Tensor
) -> None:
    """`optimizer.step()`, skipped on the device where `bad` (a () bool tensor) is true.

    The fused AdamW skips a step whose `found_inf` is 1, moments and step count
    included: the flag GradScaler hands a fused optimizer. That hand-off is private to
    torch (no public API skips a step on the device); tests/test_speed.py pins it for the
    torch ./run installs (2.13.0). With fp16 the scaler hands
    its own flag, and a bad fp16 step (a non-finite loss) has NaN gradients
    (`poison_non_finite`), so the scaler skips it.
    """
    if scaler.is_enabled():
        scaler.step(optimizer)
        return
    if not all(group.get("fused") for group in optimizer.param_groups):
        raise TypeError(
            "masked_step needs a fused optimizer (torch.optim.AdamW(..., fused=True)); "
            f"found {type(optimizer).__name__} without fused=True"
        )
    optimizer.grad_scale = None  # type: ignore[attr-defined]
    optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]


class StepRecord(NamedTuple):
    """One step's numbers, read back on the host."""

    step: int  # the step count after this step
    loss: float  # the total the guard judges (mean over processes)
    grad_norm: float  # unscaled, before clipping
    skipped: bool  # the device masked this step's update out
    limits: Limits  # what the device judged the step by
    scalars: dict[str, float]  # the training scalars: loss terms, grad_norm, r, learning_rate


@dataclass
class _Pending:
    step: int
    values: Tensor  # (3 + terms,) loss, grad norm, skipped, loss terms; on the device
    names: tuple[str, ...]  # names of the loss terms in values[3:]
    limits: Limits
    host_scalars: dict[str, float]  # numbers the host already knows (r, learning rate...)


class Readout:
    """The numbers of the steps since the last read, still on the device."""

    def __init__(self, every: int) -> None:
        self.every = every  # read at least every this many steps
        self.pending: list[_Pending] = []

    def add(
        self,
        step: int,
        loss: Tensor,
        grad_norm: Tensor,
        bad: Tensor,
        limits: Limits,
        terms: Mapping[str, Tensor],
        host_scalars: dict[str, float],
    ) -> None:
        """Buffer one step: its numbers are stacked on the device, nothing is read."""
        device = loss.device
        values = [loss.detach(), grad_norm.to(device), bad.to(device), *terms.values()]
        stacked = torch.stack([value.detach().float().to(device) for value in values])
        self.pending.append(_Pending(step, stacked, tuple(terms), limits, host_scalars))

    def due(self, step: int) -> bool:
        """Whether the regular read is due after `step`."""
        return bool(self.pending) and step % self.every == 0

    def read(self) -> list[StepRecord]:
        """Every buffered step, oldest first, in one device->host copy; empties the buffer."""
        if not self.pending:
            return []
        flat = torch.cat([p.values for p in self.pending]).cpu().tolist()
        records, start = [], 0
        for pending in self.pending:
            end = start + len(pending.values)
            loss, grad_norm, skipped, *terms = flat[start:end]
            start = end
            records.append(
                StepRecord(
                    pending.step,
                    loss,
                    grad_norm,
                    skipped > 0,
                    pending.limits,
                    {
                        **dict(zip(pending.names, terms, strict=True)),
                        **pending.host_scalars,
                        "grad_norm": grad_norm,
                    },
                )
            )
        self.pending = []
        return records


def report_bad_step(
    run_log: RunLog, guard: DivergenceGuard, label: str, record: StepRecord, reason: str
) -> None:
    """Record a step the guard judged bad (its update was skipped): an event always, a log
    line for the first LOGGED_BAD_STEPS and every 100th after them. `label`: the model's."""
    run_log.event(
        record.step,
        Event.STEP_SKIPPED,
        reason=reason,
        loss=record.loss,
        grad_norm=record.grad_norm,
        consecutive=guard.consecutive_bad,
        total=guard.bad_steps,
    )
    if guard.bad_steps <= LOGGED_BAD_STEPS or guard.bad_steps % 100 == 0:
        log.warning(
            "%s step %d skipped (%s); %d bad steps so far",
            label,
            record.step,
            reason,
            guard.bad_steps,
        )
