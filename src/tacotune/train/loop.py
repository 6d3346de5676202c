"""`tacotune train`: one plain PyTorch loop with numbered steps.

1-4. environment, data, model/optimizer/supervision, run directory (session.py)
5.   the loop: forward -> loss -> backward -> unscale -> clip -> guard -> step;
     read the numbers -> evaluate -> checkpoint -> early stopping
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

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.progress import TextColumn

from tacotune import progress
from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.config.load import override_config
from tacotune.config.schema import Config
from tacotune.data.dataset import Batch
from tacotune.errors import ConfigError
from tacotune.losses import LossTerms, tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2Output, reduction_factor_at
from tacotune.names import Event, RunStatus, StopReason
from tacotune.runlog import RunListener, RunLog, StopTraining
from tacotune.signals import StopRequests
from tacotune.supervision.guard import TrainingDiverged
from tacotune.train.compiled import compile_decoder_steps
from tacotune.train.evaluate import evaluate
from tacotune.train.ranks import agree as _agree
from tacotune.train.ranks import agree_on_interrupt as _agree_on_interrupt
from tacotune.train.ranks import barrier as _barrier
from tacotune.train.ranks import mean_over_ranks_on_device as _mean_over_ranks
from tacotune.train.readout import Readout, StepRecord, masked_step, poison_non_finite
from tacotune.train.records import write_samples
from tacotune.train.session import Session, open_session
from tacotune.train.setup import process_rank

log = logging.getLogger(__name__)

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
LOGGED_BAD_STEPS = 5  # bad steps logged one by one; after that every 100th (all are in events)


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
    run_log = RunLog(Path(run_dir), process_rank() == 0, listeners)
    try:
        # 1-4. environment, data, model, optimizer, supervision, run directory
        session = open_session(config, prepared_dir, Path(run_dir), warm_start, checkpoint, run_log)
        compile_decoder_steps(session.model, config.train)  # train.compile (off: eager)
    except BaseException:
        run_log.close(RunStatus.FAILED)
        raise
    with StopRequests() as stop:
        return _run(session, stop)


def _run(session: Session, stop: StopRequests) -> TrainResult:
    """5-6: the loop and the end of the run."""
    config, state, env, run_log = session.config, session.state, session.env, session.run_log
    started = time.monotonic() - state.elapsed
    status = RunStatus.FAILED  # what the listeners hear unless the run ends well
    batches = session.data.stream()
    readout = Readout(env.sync_every)
    stop_reason = StopReason.NONE
    bar = progress.make_progress(
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:.2f} steps/s")
    )
    try:
        with bar:
            task = bar.add_task(
                "training",
                total=config.train.max_steps,
                completed=state.step,
                loss=math.nan,
                rate=0.0,
            )
            while not stop_reason:
                # 5.1 forward under autocast; the loss is computed in fp32
                host_batch = next(batches)
                batch = host_batch.to(env.device)
                r = reduction_factor_at(config.model, state.step)
                with torch.autocast(
                    env.device.type,
                    dtype=env.autocast_dtype,
                    enabled=env.autocast_dtype is not None,
                ):
                    out = session.wrapped(  # text lengths from the host: no device read
                        batch.text, host_batch.text_lengths, batch.mel, batch.mel_lengths, r
                    )
                terms = tacotron2_loss(
                    out,
                    batch.mel,
                    batch.mel_lengths,
                    batch.text,
                    batch.text_lengths,
                    config.loss,
                    state.step,
                )
                # 5.2 backward -> unscale -> clip: the norm the guard sees is the real one
                session.optimizer.zero_grad(set_to_none=True)
                session.scaler.scale(poison_non_finite(terms.total)).backward()
                session.scaler.unscale_(session.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    session.model.parameters(), config.train.grad_clip
                )
                # 5.3 the guard judges on the device: a bad step's update is masked out
                loss = _mean_over_ranks(terms.total.detach(), env)
                limits = session.guard.limits(loss_finite_only=env.precision == "fp16")
                bad = limits.device_verdict(loss, grad_norm)
                masked_step(session.optimizer, session.scaler, bad)
                session.scaler.update()
                session.scheduler.step()
                state.step += 1
                host_scalars = {
                    "r": float(r),
                    "learning_rate": float(session.scheduler.get_last_lr()[0]),
                }
                readout.add(state.step, terms, loss, grad_norm, bad, limits, host_scalars)
                # 5.4 read the numbers (every sync_every steps, and whenever they are needed):
                # record skipped steps, roll back after a streak, training scalars, progress
                elapsed = time.monotonic() - started
                at_end = state.step >= config.train.max_steps
                out_of_time = 0 < config.train.max_minutes * 60 <= elapsed
                evaluating = state.step % config.train.eval_every == 0 or at_end or out_of_time
                if (
                    readout.due(state.step)
                    or evaluating
                    or _due(state.step, config.supervision.debug_every)
                    or session.guard.consecutive_bad > 0  # a run in trouble reads every step
                ):
                    latest = _read_steps(session, readout.read(), _Latest(out, batch, terms))
                    if latest is None:
                        continue  # rolled back
                    bar.update(
                        task, completed=state.step, loss=latest, rate=state.step_rate(elapsed)
                    )
                # 5.5 evaluation, checkpoints, early stopping (rank 0 decides, all ranks follow)
                if evaluating:
                    state.elapsed = elapsed
                    stop_reason = _evaluation(session, r, elapsed)
                _barrier(env.world_size)
                # 5.6 stop? (a signal asks every rank; rank 0 saves and records it)
                if _agree_on_interrupt(stop.requested is not None, env):
                    _read_steps(session, readout.read(), _Latest(out, batch, terms))
                    raise KeyboardInterrupt(stop.requested or "another process was interrupted")
                stop_reason = stop_reason or (
                    StopReason.MAX_STEPS
                    if at_end
                    else StopReason.MAX_MINUTES
                    if out_of_time
                    else StopReason.NONE
                )
                stop_reason = _agree(stop_reason, env)
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        if env.is_main:
            state.elapsed = time.monotonic() - started
            session.save(is_best=False, step_copy=False)
            run_log.event(state.step, Event.INTERRUPTED, resume_with=f"--resume {session.run_dir}")
        raise
    except StopTraining as stopped:  # a listener ended the run (e.g. the tuner pruned it)
        status = RunStatus.KILLED
        run_log.event(
            state.step,
            Event.STOPPED,
            reason=str(stopped),
            best_score=session.stopper.best_score,
            best_step=session.stopper.best_step,
        )
        raise
    except TrainingDiverged as diverged:
        run_log.event(
            state.step,
            Event.DIVERGED,
            reason=str(diverged),
            rollbacks=len(diverged.history) - 1,
            history=diverged.history,
        )
        raise
    else:
        # 6. The end
        status = RunStatus.FINISHED
        run_log.event(
            state.step,
            Event.FINISHED,
            reason=str(stop_reason),
            best_score=session.stopper.best_score,
            best_step=session.stopper.best_step,
            bad_steps=session.guard.bad_steps,
            rollbacks=len(session.guard.rollbacks),
        )
    finally:
        session.close(status)
    return TrainResult(
        session.run_dir,
        state.step,
        stop_reason,
        session.stopper.best_score,
        session.stopper.best_step,
    )


def _evaluation(session: Session, r: int, elapsed: float) -> StopReason:
    """Evaluate (rank 0), write metrics, samples and checkpoints; return a stop reason."""
    state, run_log, stopper = session.state, session.run_log, session.stopper
    if not session.env.is_main:
        return StopReason.NONE
    eval_started = time.monotonic()
    evaluation = evaluate(
        session.model,
        session.data.val_batches,
        session.data.utterances,
        session.config,
        state.step,
        r,
        session.env.device,
    )
    update = stopper.update(
        state.step,
        evaluation.score,
        evaluation.metrics["free/aligned_rate"],
        evaluation.metrics.get("free/mcd_ratio", math.inf),
    )
    rate = state.step_rate(elapsed)
    metrics = {
        **evaluation.metrics,
        **state.train_means(),
        "bad_steps": float(session.guard.bad_steps),
        "rollbacks": float(len(session.guard.rollbacks)),
        "learning_rate_scale": session.guard.lr_scale,
        "time/train_seconds": elapsed - state.eval_seconds,
        "time/eval_seconds": state.eval_seconds,
    }
    write_samples(session.run_dir, run_log, evaluation, session.config, state.step)
    session.save(is_best=update.improved)  # before any event that names the checkpoint
    if update.improved:
        run_log.event(state.step, Event.BEST, score=evaluation.score)
    if update.newly_aligned:
        run_log.event(
            state.step, Event.ALIGNED, aligned_rate=evaluation.metrics["free/aligned_rate"]
        )
    if update.newly_voiced:
        run_log.event(
            state.step,
            Event.VOICE_READY,
            mcd_ratio=evaluation.metrics["free/mcd_ratio"],
            level=session.config.supervision.voice_ready_ratio,
        )
    remaining = session.config.train.max_steps - state.step
    run_log.event(
        state.step,
        Event.EVALUATION,
        score=evaluation.score,
        **{
            k: evaluation.metrics.get(k)
            for k in ("free/mcd_ratio", "free/aligned_rate", "val/mel_postnet")
        },
        steps_per_second=rate,
        eta_seconds=remaining / rate if rate > 0 else None,
    )
    run_log.evaluation(state.step, metrics)  # a listener may raise StopTraining here
    if update.stop_reason:
        run_log.event(
            state.step,
            Event.EARLY_STOP,
            reason=str(update.stop_reason),
            detail=update.detail,
            best_score=stopper.best_score,
            best_step=stopper.best_step,
        )
    state.eval_seconds += time.monotonic() - eval_started
    return update.stop_reason


class _Latest(NamedTuple):
    """The newest step's tensors, still alive for a debug report."""

    out: Tacotron2Output
    batch: Batch
    terms: LossTerms


def _read_steps(session: Session, records: list[StepRecord], latest: _Latest) -> float | None:
    """Account for the steps just read: the guard's verdicts (the device already skipped the
    bad ones), debug reports, a rollback, the training scalars. Returns the newest total
    loss, or None after a rollback (the remaining steps are undone with it)."""
    config, state, run_log, guard = session.config, session.state, session.run_log, session.guard
    total = math.nan
    for record in records:
        verdict = guard.check(record.loss, record.grad_norm, limits=record.limits)
        if verdict.bad != record.skipped:  # the same rules on the same numbers: cannot differ
            raise RuntimeError(
                f"step {record.step}: the device {'skipped' if record.skipped else 'applied'} "
                f"the update but the guard says {verdict.reason or 'it was good'}"
            )
        if verdict.bad or _due(record.step, config.supervision.debug_every):
            reason = verdict.reason or "periodic"
            if record.step != state.step:  # its tensors are gone: report the newest step's
                reason += f" (step {record.step}, read at step {state.step})"
            session.debug(reason, latest.out, latest.batch, latest.terms, record.grad_norm)
        if verdict.bad:
            _report_bad_step(session, record, verdict.reason)
        if verdict.roll_back:
            rollback = session.roll_back(verdict.reason)
            run_log.event(state.step, Event.ROLLBACK, **rollback)
            return None
        state.accumulate(record.scalars)
        if record.step % config.tracking.log_every == 0:
            run_log.scalars(record.step, record.scalars)
        total = record.scalars["total"]
    return total


def _report_bad_step(session: Session, record: StepRecord, reason: str) -> None:
    guard = session.guard
    session.run_log.event(
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
            "step %d skipped (%s); %d bad steps so far", record.step, reason, guard.bad_steps
        )


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def resume(
    run_dir: str | Path,
    prepared_dir: str | Path,
    overrides: Sequence[str] = (),
    listeners: Sequence[RunListener] = (),
) -> TrainResult:
    """Continue `run_dir` exactly from its last checkpoint, with its own config.

    Only RESUME_OVERRIDABLE keys may be overridden (e.g. to train for more steps). A run
    that already reached its `train.max_steps` is refused unless the override raises it.
    """
    checkpoint = load_checkpoint(run_dir)
    refused = sorted({item.partition("=")[0].strip() for item in overrides} - RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"--resume continues with the run's own config; {refused} cannot "
            f"change. Only {sorted(RESUME_OVERRIDABLE)} may."
        )
    config = override_config(checkpoint_config(checkpoint), overrides)
    step = int(checkpoint["state"]["step"])
    if step >= config.train.max_steps:
        raise ConfigError(
            f"{run_dir} already trained {step} steps, its train.max_steps is "
            f"{config.train.max_steps}: nothing is left to do. To train on, resume with "
            f"--set train.max_steps=N (N > {step})"
        )
    return train(config, prepared_dir, run_dir, listeners=listeners, checkpoint=checkpoint)
