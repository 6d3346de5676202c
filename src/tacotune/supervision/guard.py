"""The divergence guard: judge every step, skip bad ones, decide rollbacks, give up.

A step is bad when its loss or (unscaled) gradient norm is not finite, when the
gradient norm is above an absolute ceiling or far above its running median, or
when the loss spikes far above its running median. A bad step is skipped (no
optimizer update) and counted. After `max_bad_steps` bad steps in a row the loop
rolls back to the last good checkpoint with a lower learning rate; after
`max_rollbacks` rollbacks the next one raises `TrainingDiverged` with the history.
Only good steps enter the running medians.

The relative checks are thresholds (`Limits`) derived from the medians. A loop that
reads the loss on the host only every few steps takes the limits once, judges the
steps in between on the device with them (train/readout.py) and later passes the same
limits to `check`, so that host and device reach the same verdicts.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tacotune.config.schema import SupervisionConfig
from tacotune.errors import TacotuneError


class TrainingDiverged(TacotuneError):
    """Training kept diverging after every allowed rollback."""

    def __init__(self, message: str, history: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.history = history


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one step."""

    bad: bool
    reason: str  # why the step is bad ("" when it is not)
    roll_back: bool  # enough bad steps in a row: roll back now


@dataclass(frozen=True)
class Limits:
    """The largest loss and gradient norm a step may have, from the history so far."""

    grad_norm: float  # the absolute ceiling, or grad_norm_factor x the median if lower
    loss: float  # loss_spike_factor x the median loss; inf before guard_warmup steps
    grad_median: float  # the running medians the limits came from (nan: no history yet)
    loss_median: float
    loss_finite_only: bool = False  # fp16: the GradScaler owns non-finite gradients

    def device_verdict(self, loss: Tensor, grad_norm: Tensor) -> Tensor:
        """() bool on the device: whether `DivergenceGuard.check` with these limits will call
        the step bad. Compared in float64, as the host compares the same values."""
        loss64, grad64 = loss.detach().double(), grad_norm.detach().double()
        bad = ~torch.isfinite(loss64)
        if not self.loss_finite_only:
            bad = bad | ~torch.isfinite(grad64) | (grad64 > self.grad_norm) | (loss64 > self.loss)
        return bad


class DivergenceGuard:
    """Tracks recent healthy steps and bad-step streaks; see the module docstring."""

    def __init__(self, config: SupervisionConfig) -> None:
        self.config = config
        self.losses: deque[float] = deque(maxlen=config.guard_window)
        self.grad_norms: deque[float] = deque(maxlen=config.guard_window)
        self.consecutive_bad = 0
        self.bad_steps = 0  # over the whole run
        self.bad_since_checkpoint = 0  # since the last checkpoint was written
        self.rollbacks: list[dict[str, Any]] = []

    @property
    def lr_scale(self) -> float:
        """Learning-rate multiplier after the rollbacks so far."""
        return float(self.config.rollback_lr_factor ** len(self.rollbacks))

    def limits(self, loss_finite_only: bool = False) -> Limits:
        """The thresholds of the relative checks now; with `loss_finite_only` (fp16: the
        GradScaler owns inf gradients) only the loss is examined for finiteness."""
        c = self.config
        grad_limit, loss_limit = c.grad_norm_ceiling, math.inf
        grad_median = loss_median = math.nan
        if len(self.losses) >= c.guard_warmup and self.losses:
            grad_median = statistics.median(self.grad_norms)
            loss_median = statistics.median(self.losses)
            if grad_median > 0:
                grad_limit = min(grad_limit, c.grad_norm_factor * grad_median)
            if loss_median > 0:
                loss_limit = c.loss_spike_factor * loss_median
        return Limits(grad_limit, loss_limit, grad_median, loss_median, loss_finite_only)

    def check(
        self,
        loss: float,
        grad_norm: float,
        loss_finite_only: bool = False,
        limits: Limits | None = None,
    ) -> Verdict:
        """Judge a step against `limits` (default: the limits now)."""
        reason = self._problem(loss, grad_norm, limits or self.limits(loss_finite_only))
        if not reason:
            self.consecutive_bad = 0
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
            return Verdict(False, "", False)
        self.consecutive_bad += 1
        self.bad_steps += 1
        self.bad_since_checkpoint += 1
        return Verdict(True, reason, self.consecutive_bad >= self.config.max_bad_steps)

    def _problem(self, loss: float, grad_norm: float, limits: Limits) -> str:
        ceiling = self.config.grad_norm_ceiling
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if limits.loss_finite_only:
            return ""
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if grad_norm > limits.grad_norm:
            if grad_norm > ceiling:
                return f"gradient norm {grad_norm:.3g} above the ceiling {ceiling:.3g}"
            median = limits.grad_median
            return (
                f"gradient norm {grad_norm:.3g} is {grad_norm / median:.0f}x its "
                f"running median {median:.3g}"
            )
        if loss > limits.loss:
            median = limits.loss_median
            return f"loss {loss:.3g} is {loss / median:.1f}x its running median {median:.3g}"
        return ""

    def checkpoint_is_good(self) -> bool:
        """A checkpoint written now is a rollback target if no step was bad since the last one.
        Resets the count for the next checkpoint."""
        good = self.bad_since_checkpoint == 0
        self.bad_since_checkpoint = 0
        return good

    def rolled_back(self, from_step: int, to_step: int, reason: str) -> dict[str, Any]:
        """Record a rollback (returns its record); raises TrainingDiverged past the limit."""
        record = {
            "attempt": len(self.rollbacks) + 1,
            "from_step": from_step,
            "to_step": to_step,
            "reason": reason,
        }
        if len(self.rollbacks) >= self.config.max_rollbacks:
            history = [*self.rollbacks, record]
            raise TrainingDiverged(
                f"training diverged: {reason} at step {from_step}, after "
                f"{len(self.rollbacks)} rollbacks (supervision.max_rollbacks="
                f"{self.config.max_rollbacks}); lower train.learning_rate or train.grad_clip",
                history,
            )
        self.rollbacks.append(record)
        self.consecutive_bad = 0
        self.losses.clear()
        self.grad_norms.clear()
        record["lr_scale"] = self.lr_scale
        return record

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "consecutive_bad": self.consecutive_bad,
            "bad_steps": self.bad_steps,
            "bad_since_checkpoint": self.bad_since_checkpoint,
            "rollbacks": list(self.rollbacks),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        self.losses.extend(state["losses"])
        self.grad_norms.extend(state["grad_norms"])
        self.consecutive_bad = state["consecutive_bad"]
        self.bad_steps = state["bad_steps"]
        self.bad_since_checkpoint = state["bad_since_checkpoint"]
        self.rollbacks = list(state["rollbacks"])
