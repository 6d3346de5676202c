"""Early stopping on the composite score, and the "aligned by step N" gate.

Called once per evaluation. Its state is saved in every checkpoint, so a resumed
run keeps counting where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tacotune.config.schema import SupervisionConfig
from tacotune.names import StopReason


@dataclass(frozen=True)
class EarlyStopUpdate:
    """What one evaluation changed."""

    improved: bool  # a new best score (any decrease): write best.pt
    newly_aligned: bool  # the first evaluation at which the run counts as aligned
    newly_voiced: bool  # the first evaluation whose voice metric reached voice_ready_ratio
    stop_reason: StopReason  # NONE to go on; PATIENCE or NO_ALIGNMENT to stop
    detail: str  # human-readable explanation of the stop


@dataclass
class EarlyStopping:
    """Patience with min_delta on a score to minimize, plus an alignment deadline."""

    patience: int
    min_delta: float
    aligned_share: float
    align_by_step: int
    voice_ready_ratio: float
    best_score: float = math.inf
    best_step: int = -1
    reference: float = math.inf  # the score an improvement of min_delta is measured against
    evaluations_without_improvement: int = 0
    aligned_step: int = -1  # first step at which the run was aligned; -1: not yet
    voice_ready_step: int = -1  # first step whose voice metric reached voice_ready_ratio
    last_voice_ratio: float = math.inf  # the newest evaluation's voice metric (progress lines)
    last_step: int = -1  # the newest evaluation's step

    @classmethod
    def from_config(cls, config: SupervisionConfig) -> EarlyStopping:
        """Built from the supervision section."""
        return cls(
            config.patience,
            config.min_delta,
            config.aligned_share,
            config.align_by_step,
            config.voice_ready_ratio,
        )

    def update(
        self, step: int, score: float, aligned_rate: float, voice_ratio: float
    ) -> EarlyStopUpdate:
        """Account for one evaluation."""
        self.last_voice_ratio, self.last_step = voice_ratio, step
        improved = score < self.best_score
        if improved:
            self.best_score, self.best_step = score, step
        if score < self.reference - self.min_delta:
            self.reference = score
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        newly_aligned = self.aligned_step < 0 and aligned_rate >= self.aligned_share
        if newly_aligned:
            self.aligned_step = step
        newly_voiced = self.voice_ready_step < 0 and voice_ratio <= self.voice_ready_ratio
        if newly_voiced:
            self.voice_ready_step = step
        reason, detail = self._stop(step)
        return EarlyStopUpdate(improved, newly_aligned, newly_voiced, reason, detail)

    def _stop(self, step: int) -> tuple[StopReason, str]:
        if self.patience and self.evaluations_without_improvement >= self.patience:
            return StopReason.PATIENCE, (
                f"the score has not improved by {self.min_delta:g} for {self.patience} "
                f"evaluations (best {self.best_score:.4f} at step {self.best_step})"
            )
        if self.align_by_step and self.aligned_step < 0 and step >= self.align_by_step:
            return StopReason.NO_ALIGNMENT, (
                f"free-running attention is not aligned by step {step} (needed: "
                f"{self.aligned_share:.0%} of the utterances by step {self.align_by_step})"
            )
        return StopReason.NONE, ""

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue counting from a checkpoint (the configured thresholds stay as they are)."""
        for name in (
            "best_score",
            "best_step",
            "reference",
            "evaluations_without_improvement",
            "aligned_step",
            "voice_ready_step",
            "last_voice_ratio",
            "last_step",
        ):
            setattr(self, name, state.get(name, getattr(self, name)))  # older runs lack some
