"""`tacotune train`: Tacotron2 on the run engine.

1-4. environment, data, model/optimizer/supervision, run directory (session.py)
5.   the loop (engine.py): one step of the model's: forward -> loss -> backward ->
     unscale -> clip -> guard -> step (session.py); read the numbers -> evaluate ->
     checkpoint -> early stopping
6.   the end: final event (and `last.pt` on Ctrl-C / kill, at the next step boundary)

The divergence guard judges every step: bad steps are skipped, a streak of them
rolls back to the last good checkpoint with a lower learning rate, and too many
rollbacks end the run with TrainingDiverged. The verdict is taken on the device and a
bad update is masked out there; the host reads the numbers every `train.sync_every`
steps (train/readout.py), so a GPU is not stopped for a float() at every step. Every
decision is an event in events.jsonl, and reaches the listeners the caller attached
(alerts, TensorBoard, MLflow, the tuner: see tacotune.runlog).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.config.schema import Config
from tacotune.names import StopReason
from tacotune.runlog import RunListener, RunLog
from tacotune.train.compiled import compile_decoder_steps
from tacotune.train.engine import run
from tacotune.train.resuming import ResumePoint, read_resume
from tacotune.train.session import Session, open_session

# keys that may differ from the checkpoint's config on --resume
RESUME_OVERRIDABLE = {
    "train.max_steps",
    "train.max_minutes",
    "train.eval_every",
    "train.keep_checkpoints",
    "train.data_workers",
    "train.threads",
    "train.compile",
    "train.sync_every",
    "train.shape_bucket",
    "tracking.tensorboard",
    "tracking.log_every",
}


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    stop_reason: StopReason  # TrainingDiverged, StopTraining and KeyboardInterrupt raise instead
    best_score: float
    best_step: int


def train(
    config: Config,
    prepared_dir: str | Path,
    run_dir: str | Path,
    *,
    warm_start: str | Path | None = None,
    listeners: Sequence[RunListener] = (),
    checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a Tacotron2 on a prepared dataset (use `resume` to continue a run).

    `listeners` hear every event, evaluation, scalar and sample (on rank 0); each one's
    `on_close` is called exactly once, however the run ends. Ctrl-C or SIGTERM stop the
    run at the next step boundary: last.pt is saved, then KeyboardInterrupt is raised.
    """

    def opened(run_log: RunLog) -> Session:
        # 1-4. environment, data, model, optimizer, supervision, run directory
        session = open_session(config, prepared_dir, Path(run_dir), warm_start, checkpoint, run_log)
        compile_decoder_steps(session.model, config.train)  # train.compile (off: eager)
        return session

    session, stop_reason = run(opened, Path(run_dir), listeners)
    return TrainResult(
        session.run_dir,
        session.state.step,
        stop_reason,
        session.stopper.best_score,
        session.stopper.best_step,
    )


def read_train_resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> ResumePoint:
    """`run_dir`'s last checkpoint, read once, and its config with `overrides` applied
    (only RESUME_OVERRIDABLE keys): build the listeners from its config, then `resume` it."""
    return read_resume(
        run_dir, overrides, RESUME_OVERRIDABLE, lambda c: c.train.max_steps, "train.max_steps"
    )


def resume(
    run_dir: str | Path | ResumePoint,
    prepared_dir: str | Path,
    overrides: Sequence[str] = (),
    listeners: Sequence[RunListener] = (),
) -> TrainResult:
    """Continue a run exactly from its last checkpoint, with its own config.

    `run_dir`: the run directory, or what `read_train_resume` read of it (`overrides` then
    are already applied). Only RESUME_OVERRIDABLE keys may be overridden (e.g. to train for
    more steps). A run that already reached its `train.max_steps` is refused unless the
    override raises it.
    """
    point = run_dir if isinstance(run_dir, ResumePoint) else read_train_resume(run_dir, overrides)
    return train(
        point.config,
        prepared_dir,
        point.run_dir,
        listeners=listeners,
        checkpoint=point.checkpoint,
    )
