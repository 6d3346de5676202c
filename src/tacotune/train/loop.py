"""`tacotune train`: one plain PyTorch loop with numbered steps.

1-4. environment, data, model/optimizer/supervision, run directory (session.py)
5.   the loop: forward -> loss -> backward -> unscale -> clip -> guard -> step;
     evaluate -> checkpoint -> early stopping
6.   the end: final event (and `last.pt` on Ctrl-C / kill)

The divergence guard judges every step: bad steps are skipped, a streak of them
rolls back to the last good checkpoint with a lower learning rate, and too many
rollbacks end the run with TrainingDiverged. Every decision is an event in
events.jsonl (and an alert, where alerts are configured).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import TextColumn

from tacotune import progress
from tacotune.config.load import override_config
from tacotune.config.schema import Config
from tacotune.errors import ConfigError
from tacotune.losses import tacotron2_loss
from tacotune.model.tacotron2 import reduction_factor_at
from tacotune.supervision.guard import TrainingDiverged
from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.train.evaluate import Evaluation, evaluate
from tacotune.train.records import write_samples
from tacotune.train.session import Session, open_session
from tacotune.train.setup import Environment

log = logging.getLogger(__name__)

EvalCallback = Callable[[int, Evaluation], None]
# keys that may differ from the checkpoint's config on --resume
RESUME_OVERRIDABLE = {
    "train.max_steps",
    "train.max_minutes",
    "train.eval_every",
    "train.keep_checkpoints",
    "train.data_workers",
    "train.threads",
    "tracking.tensorboard",
    "tracking.log_every",
}
STOP_REASONS = ("", "max_steps", "max_minutes", "patience", "no_alignment")
LOGGED_BAD_STEPS = 5  # bad steps logged one by one; after that every 100th (all are in events)


class StopTraining(Exception):
    """Raise from an `on_eval` callback to end the run now (recorded as event "stopped")."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    stop_reason: str  # one of STOP_REASONS (TrainingDiverged is raised instead)
    best_score: float
    best_step: int


def train(
    config: Config,
    prepared_dir: str | Path,
    run_dir: str | Path,
    *,
    warm_start: str | Path | None = None,
    on_eval: EvalCallback | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a Tacotron2 on a prepared dataset (use `resume` to continue a run)."""
    # 1-4. environment, data, model, optimizer, supervision, run directory
    s = open_session(config, prepared_dir, Path(run_dir), warm_start, checkpoint)
    state, env, tracker = s.state, s.env, s.tracker
    started = time.monotonic() - state.elapsed
    status = "FAILED"  # what the run's MLflow mirror ends with unless the run ends well
    batches = s.data.stream()
    stop_reason = ""
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
                batch = next(batches).to(env.device)
                r = reduction_factor_at(config.model, state.step)
                with torch.autocast(
                    env.device.type,
                    dtype=env.autocast_dtype,
                    enabled=env.autocast_dtype is not None,
                ):
                    out = s.net(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, r)
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
                s.optimizer.zero_grad(set_to_none=True)
                s.scaler.scale(terms.total).backward()
                s.scaler.unscale_(s.optimizer)
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(s.model.parameters(), config.train.grad_clip)
                )
                # 5.3 the guard: a bad step is skipped; a streak of them rolls back
                loss = _mean_over_ranks(float(terms.total.detach()), env)
                verdict = s.guard.check(loss, grad_norm, loss_finite_only=env.precision == "fp16")
                if not verdict.bad:
                    s.scaler.step(s.optimizer)  # (fp16: the scaler still skips inf gradients)
                s.scaler.update()
                s.scheduler.step()
                state.step += 1
                if verdict.bad or _due(state.step, config.supervision.debug_every):
                    s.debug(verdict.reason or "periodic", out, batch, terms, grad_norm)
                if verdict.bad:
                    _report_bad_step(s, verdict.reason, loss, grad_norm)
                if verdict.roll_back:
                    record = s.roll_back(verdict.reason)
                    tracker.event(state.step, "rollback", **record)
                    continue
                # 5.4 training scalars and progress
                scalars = {
                    **terms.scalars(),
                    "grad_norm": grad_norm,
                    "r": float(r),
                    "learning_rate": float(s.scheduler.get_last_lr()[0]),
                }
                state.accumulate(scalars)
                if state.step % config.tracking.log_every == 0:
                    tracker.scalars(state.step, scalars)
                elapsed = time.monotonic() - started
                bar.update(
                    task, completed=state.step, loss=scalars["total"], rate=state.step_rate(elapsed)
                )
                # 5.5 evaluation, checkpoints, early stopping (rank 0 decides, all ranks follow)
                at_end = state.step >= config.train.max_steps
                out_of_time = 0 < config.train.max_minutes * 60 <= elapsed
                if state.step % config.train.eval_every == 0 or at_end or out_of_time:
                    state.elapsed = elapsed
                    stop_reason = _evaluation(s, r, elapsed, on_eval)
                _barrier(env.world_size)
                # 5.6 stop?
                stop_reason = stop_reason or (
                    "max_steps" if at_end else "max_minutes" if out_of_time else ""
                )
                stop_reason = _agree(stop_reason, env)
    except KeyboardInterrupt:
        status = "KILLED"
        if env.is_main:
            state.elapsed = time.monotonic() - started
            s.save(is_best=False, step_copy=False)
            tracker.event(state.step, "interrupted", resume_with=f"--resume {s.run_dir}")
        raise
    except StopTraining as stop:  # a callback ended the run (e.g. the tuner pruned it)
        status = "KILLED"
        tracker.event(
            state.step,
            "stopped",
            reason=str(stop),
            best_score=s.stopper.best_score,
            best_step=s.stopper.best_step,
        )
        raise
    except TrainingDiverged as diverged:
        tracker.event(
            state.step,
            "diverged",
            reason=str(diverged),
            rollbacks=len(diverged.history) - 1,
            history=diverged.history,
        )
        raise
    else:
        # 6. The end
        status = "FINISHED"
        tracker.event(
            state.step,
            "finished",
            reason=stop_reason,
            best_score=s.stopper.best_score,
            best_step=s.stopper.best_step,
            bad_steps=s.guard.bad_steps,
            rollbacks=len(s.guard.rollbacks),
        )
    finally:
        s.close(status)
    return TrainResult(
        s.run_dir, state.step, stop_reason, s.stopper.best_score, s.stopper.best_step
    )


def _evaluation(s: Session, r: int, elapsed: float, on_eval: EvalCallback | None) -> str:
    """Evaluate (rank 0), write metrics, samples and checkpoints; return a stop reason or ""."""
    state, tracker = s.state, s.tracker
    if not s.env.is_main:
        return ""
    eval_started = time.monotonic()
    evaluation = evaluate(
        s.model, s.data.val_batches, s.data.utterances, s.config, state.step, r, s.env.device
    )
    update = s.stopper.update(state.step, evaluation.score, evaluation.metrics["free/aligned_rate"])
    rate = state.step_rate(elapsed)
    metrics = {
        **evaluation.metrics,
        **state.train_means(),
        "bad_steps": float(s.guard.bad_steps),
        "rollbacks": float(len(s.guard.rollbacks)),
        "learning_rate_scale": s.guard.lr_scale,
        "time/train_seconds": elapsed - state.eval_seconds,
        "time/eval_seconds": state.eval_seconds,
    }
    tracker.evaluation(state.step, metrics)
    write_samples(s.run_dir, tracker, evaluation, s.config, state.step)
    if update.improved:
        tracker.event(state.step, "best", score=evaluation.score)
    if update.newly_aligned:
        tracker.event(state.step, "aligned", aligned_rate=evaluation.metrics["free/aligned_rate"])
    s.save(is_best=update.improved)
    remaining = s.config.train.max_steps - state.step
    tracker.event(
        state.step,
        "evaluation",
        score=evaluation.score,
        **{k: evaluation.metrics[k] for k in ("free/aligned_rate", "val/mel_postnet")},
        steps_per_second=rate,
        eta_seconds=remaining / rate if rate > 0 else None,
    )
    if on_eval is not None:
        on_eval(state.step, evaluation)
    if update.stop_reason:
        tracker.event(
            state.step,
            "early_stop",
            reason=update.stop_reason,
            detail=update.detail,
            best_score=s.stopper.best_score,
            best_step=s.stopper.best_step,
        )
    state.eval_seconds += time.monotonic() - eval_started
    return update.stop_reason


def _report_bad_step(s: Session, reason: str, loss: float, grad_norm: float) -> None:
    s.tracker.event(
        s.state.step,
        "step_skipped",
        reason=reason,
        loss=loss,
        grad_norm=grad_norm,
        consecutive=s.guard.consecutive_bad,
        total=s.guard.bad_steps,
    )
    if s.guard.bad_steps <= LOGGED_BAD_STEPS or s.guard.bad_steps % 100 == 0:
        log.warning(
            "step %d skipped (%s); %d bad steps so far", s.state.step, reason, s.guard.bad_steps
        )


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def resume(
    run_dir: str | Path,
    prepared_dir: str | Path,
    overrides: Sequence[str] = (),
    on_eval: EvalCallback | None = None,
) -> TrainResult:
    """Continue `run_dir` exactly from its last checkpoint, with its own config.

    Only RESUME_OVERRIDABLE keys may be overridden (e.g. to train for more steps).
    """
    checkpoint = load_checkpoint(run_dir)
    refused = sorted({item.partition("=")[0].strip() for item in overrides} - RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"--resume continues with the run's own config; {refused} cannot "
            f"change. Only {sorted(RESUME_OVERRIDABLE)} may."
        )
    config = override_config(checkpoint_config(checkpoint), overrides)
    return train(config, prepared_dir, run_dir, on_eval=on_eval, checkpoint=checkpoint)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def _agree(stop_reason: str, env: Environment) -> str:
    """Rank 0's stop decision, shared with every rank."""
    if env.world_size == 1:
        return stop_reason
    code = torch.tensor([STOP_REASONS.index(stop_reason)], device=env.device)
    dist.broadcast(code, src=0)
    return STOP_REASONS[int(code.item())]


def _mean_over_ranks(value: float, env: Environment) -> float:
    """The same number on every rank, so that every rank's guard reaches the same verdict."""
    if env.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size
