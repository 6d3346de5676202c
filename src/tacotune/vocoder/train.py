"""`tacotune vocoder train`: HiFi-GAN training (Kong et al. 2020) on the run engine
(train/engine.py): run directory, checkpoints, exact resume, divergence guard, listeners,
stop requests, AMP and DDP are the engine's, as for the acoustic model.

1-4. environment, data (+ teacher-forced mels), networks/optimizers, run directory
     (session.py)
5.   the loop (engine.py) around the vocoder's step (session.py): the generator renders a
     batch of segments; the discriminators step on real vs generated audio (first, as in
     the paper); the generator's loss is judged by the guard together with theirs, and it
     steps; an epoch's last step decays both learning rates (ExponentialLR); evaluate ->
     checkpoint
6.   the end: final event (and last.pt on Ctrl-C / kill, at the next step boundary)

The guard: a non-finite discriminator loss or gradient skips the discriminators' update
at once (the paper updates them before the generator's loss exists); the guard then
judges the step on the sum of both losses and the norm of both gradients together, and
a bad step skips the generator's update; a streak of bad steps rolls both networks back
to the last good checkpoint with lower learning rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.config.schema import Config
from tacotune.errors import ConfigError
from tacotune.names import StopReason
from tacotune.runlog import RunListener, RunLog
from tacotune.train.engine import run
from tacotune.train.resuming import ResumePoint, read_resume
from tacotune.vocoder.session import VocoderSession, open_vocoder_session

# keys that may differ from the checkpoint's config on --resume
RESUME_OVERRIDABLE = {
    "vocoder.max_steps",
    "vocoder.max_minutes",
    "vocoder.eval_every",
    "vocoder.checkpoint_every",
    "train.keep_checkpoints",
    "train.data_workers",
    "train.threads",
    "tracking.tensorboard",
    "tracking.log_every",
}


@dataclass(frozen=True)
class VocoderResult:
    """How a vocoder run ended."""

    run_dir: Path
    step: int
    stop_reason: StopReason  # TrainingDiverged, StopTraining and KeyboardInterrupt raise instead
    best_score: float  # the lowest eval/mel_l1
    best_step: int
    beat_griffin_lim_at: int  # the first step with eval/mcd < gl/mcd; 0: never


def train_vocoder(
    config: Config,
    prepared_dir: str | Path,
    run_dir: str | Path,
    *,
    from_acoustic: str | Path | None = None,
    warm_start: str | Path | None = None,
    listeners: Sequence[RunListener] = (),
    checkpoint: dict[str, Any] | None = None,
) -> VocoderResult:
    """Train a HiFi-GAN vocoder on a prepared dataset (use `resume_vocoder` to continue).

    `from_acoustic`: an acoustic checkpoint or run directory whose teacher-forced mels the
    vocoder learns from instead of the recordings' (fine-tuning, usually with `warm_start`:
    another vocoder's checkpoint or run directory). Listeners, Ctrl-C and SIGTERM behave
    as in `tacotune.train.train`.
    """

    def opened(run_log: RunLog) -> VocoderSession:
        return open_vocoder_session(
            config,
            prepared_dir,
            Path(run_dir),
            run_log,
            from_acoustic=from_acoustic,
            warm_start=warm_start,
            checkpoint=checkpoint,
        )

    session, stop_reason = run(opened, Path(run_dir), listeners)
    state = session.state
    return VocoderResult(
        session.run_dir,
        state.step,
        stop_reason,
        state.best_score,
        state.best_step,
        state.beat_griffin_lim_at,
    )


def read_vocoder_resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> ResumePoint:
    """A vocoder run's last checkpoint, read once, and its config with `overrides` applied
    (only RESUME_OVERRIDABLE keys): build the listeners from its config, then resume it."""

    def check(checkpoint: dict[str, Any]) -> None:
        if "discriminator" not in checkpoint or "config" not in checkpoint:
            raise ConfigError(
                f"{run_dir} is not a vocoder training run (its last.pt holds no "
                "discriminator); resume an acoustic run with `tacotune train --resume`"
            )

    return read_resume(
        run_dir,
        overrides,
        RESUME_OVERRIDABLE,
        lambda c: c.vocoder.max_steps,
        "vocoder.max_steps",
        check,
    )


def resume_vocoder(
    run_dir: str | Path | ResumePoint,
    prepared_dir: str | Path,
    overrides: Sequence[str] = (),
    listeners: Sequence[RunListener] = (),
) -> VocoderResult:
    """Continue a vocoder run exactly from its last checkpoint, with its own config and
    mels (the same acoustic checkpoint's, if it was fine-tuned on them).

    `run_dir`: the run directory, or what `read_vocoder_resume` read of it (`overrides`
    then are already applied). Only RESUME_OVERRIDABLE keys may be overridden.
    """
    point = run_dir if isinstance(run_dir, ResumePoint) else read_vocoder_resume(run_dir, overrides)
    return train_vocoder(
        point.config,
        prepared_dir,
        point.run_dir,
        from_acoustic=point.checkpoint["mels"].get("checkpoint"),
        listeners=listeners,
        checkpoint=point.checkpoint,
    )
