"""The run engine: one lifecycle for every model tacotune trains (Tacotron2 in
train/session.py, HiFi-GAN in vocoder/session.py).

The engine owns what every run does the same way: stop requests (Ctrl-C, SIGTERM, at a
step boundary, agreed by every rank), the run log and its listeners, the divergence
guard's verdicts (taken on the device; the host reads the numbers every `sync_every`
steps, and every step while the guard counts bad steps), debug reports, rollback to
good.pt or last.pt, the checkpoint policy (full state in last.pt, and in good.pt only after
bad steps; weights only in best.pt and step copies: train/records.py), evaluation
cadence and its common metrics and events, the end of run events, and exact resume
(checkpoint read once, overrides applied before anything is built: train/resuming.py).

A model supplies only what is its own, by subclassing `RunSession`:

    class Tiny(RunSession):                     # a dataclass with config, env, run_dir,
        ...                                     # fingerprint, data, guard, run_log, state
        @property
        def limits(self) -> RunLimits:          # steps, minutes, cadences, meter label
            return RunLimits(max_steps=100, max_minutes=0, eval_every=10)

        def train_step(self, batch) -> StepNumbers:
            loss = self.net(batch).mean()       # forward, loss
            self.optimizer.zero_grad(); loss.backward()
            grad_norm = torch.nn.utils.get_total_norm(...)
            judged = self.judge(loss, grad_norm)    # the guard's verdict, on the device
            masked_step(self.optimizer, self.scaler, judged.bad)  # (or: if not judged.bad)
            return StepNumbers(judged, {"total": loss}, {})

        def evaluate(self, elapsed) -> Evaluated: ...        # validation: score, metrics
        def payload(self) -> dict: ...                       # what a checkpoint holds
        def load_training_state(self, checkpoint) -> None: ...   # weights, optimizers
        def after_rollback(self) -> None: ...                # learning rates after a rollback

    session, stop_reason = run(lambda run_log: open_tiny(..., run_log), run_dir, listeners)

A step that reads its verdict on the host (`bool(judged.bad)`) runs with sync_every=1;
one that masks the update on the device (`readout.masked_step`) lets the host read
every `sync_every` steps. tests/test_engine.py runs such a model through the engine.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

from torch import Tensor

from tacotune import progress
from tacotune.checkpoint import (
    INFERENCE_KEYS,
    load_checkpoint,
    restore_rng_state,
    write_inference_checkpoint,
)
from tacotune.config.load import save_config
from tacotune.config.schema import Config
from tacotune.errors import CheckpointError
from tacotune.names import Event, RunStatus, StopReason
from tacotune.runlog import RunListener, RunLog, StopTraining
from tacotune.signals import StopRequests
from tacotune.supervision.guard import DivergenceGuard, Limits, TrainingDiverged
from tacotune.supervision.report import write_run_report
from tacotune.train.inputs import Position
from tacotune.train.ranks import agree, agree_on_interrupt, barrier, mean_over_ranks_on_device
from tacotune.train.readout import Readout, StepRecord, report_bad_step
from tacotune.train.records import TrainState, rollback_checkpoint, write_checkpoints
from tacotune.train.setup import Environment, process_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    """How long a run goes and how often it evaluates, checkpoints and reads the host."""

    max_steps: int
    max_minutes: float
    eval_every: int  # an evaluation writes a checkpoint too
    checkpoint_every: int = 0  # checkpoints between evaluations (0: none)
    sync_every: int = 1  # steps between host reads of the step numbers
    debug_every: int = 0  # steps between periodic debug reports (0: none)
    label: str = "training"  # the progress meter's


class Judged(NamedTuple):
    """The guard's verdict on one step, taken on the device."""

    loss: Tensor  # the total the guard judges (mean over processes)
    grad_norm: Tensor
    bad: Tensor  # () bool: the update must be (or was) skipped
    limits: Limits  # what the step was judged by


class StepNumbers(NamedTuple):
    """What one training step hands the engine; nothing of it is read on the host yet."""

    judged: Judged
    terms: dict[str, Tensor]  # the loss terms, training scalars once read
    host_scalars: dict[str, float]  # numbers the host already knows (learning rate...)


@dataclass
class Evaluated:
    """A model's evaluation; the engine adds the common metrics, checkpoints, events."""

    score: float  # lower is better
    improved: bool  # a new best: best.pt is written
    metrics: dict[str, float]
    headline: dict[str, Any]  # the "evaluation" event's fields besides score and rate
    summary: str  # the tail of the "step N evaluated in S s: ..." log line
    milestones: list[tuple[Event, dict[str, Any]]] = field(default_factory=list)
    stop_reason: StopReason = StopReason.NONE  # early stopping
    stop_detail: dict[str, Any] = field(default_factory=dict)  # the early_stop event's


class Resumable(Protocol):
    """A model's training data: a batch stream that continues from `position`."""

    position: Position

    def stream(self) -> Iterator[Any]: ...


class RunSession(ABC):
    """One training process: what the engine needs of every model, and the lifecycle
    operations on all of it at once (save, restore, roll back, announce, close).

    Subclasses are dataclasses holding these attributes plus their networks and optimizers.
    """

    KIND: ClassVar[str] = "run"  # "this <KIND> started" in messages
    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = INFERENCE_KEYS  # best.pt, step copies, model.pt
    VOCODER_REPORT: ClassVar[bool] = False  # report.md's layout

    config: Config
    env: Environment
    run_dir: Path
    fingerprint: str  # of the prepared dataset
    data: Resumable
    guard: DivergenceGuard
    run_log: RunLog  # metrics.jsonl, events.jsonl and the caller's listeners (rank 0)
    state: TrainState

    # what each model supplies
    @property
    @abstractmethod
    def limits(self) -> RunLimits:
        """Steps, minutes and cadences of this run."""

    @abstractmethod
    def train_step(self, batch: Any) -> StepNumbers:
        """One optimizer step on `batch` (state.step counts the steps before it); judge it
        with `judge` and skip a bad step's update."""

    @abstractmethod
    def evaluate(self, elapsed: float) -> Evaluated:
        """Validate (rank 0 only); write samples; update the run's best."""

    @abstractmethod
    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds."""

    @abstractmethod
    def load_training_state(self, checkpoint: dict[str, Any]) -> None:
        """Weights, optimizers, schedules and scaler from a checkpoint."""

    @abstractmethod
    def after_rollback(self) -> None:
        """Set the learning rates the guard's lowered scale asks for."""

    def best(self) -> dict[str, Any]:
        """The run's best so far, for the end-of-run events."""
        return {}

    def progress_info(self, scalars: dict[str, float]) -> dict[str, str]:
        """What a progress line shows beside the step count."""
        return {"loss": f"{scalars['total']:.3f}"} if "total" in scalars else {}

    def debug(self, reason: str, grad_norm: float) -> None:
        """Write a debug report of the newest step (rank 0); a model without one: nothing."""
        return None

    def restore_run_state(self, checkpoint: dict[str, Any]) -> None:
        """More of a checkpoint to restore on resume (early stopping...): nothing."""
        return None

    # the lifecycle, shared
    @property
    def checkpoints(self) -> Path:
        """RUN/checkpoints."""
        return self.run_dir / "checkpoints"

    def judge(self, loss: Tensor, grad_norm: Tensor) -> Judged:
        """The guard's verdict on a step, on the device, the same on every rank."""
        loss = mean_over_ranks_on_device(loss.detach().float(), self.env)
        limits = self.guard.limits(loss_finite_only=self.env.precision == "fp16")
        return Judged(loss, grad_norm, limits.device_verdict(loss, grad_norm), limits)

    def save(self, is_best: bool, step_copy: bool = True) -> None:
        """Write last.pt (+ best.pt, step copy); it is a rollback target if no step was bad
        since the last checkpoint (train/records.py: the policy)."""
        payload = self.payload()
        write_checkpoints(
            self.checkpoints,
            payload,
            good=self.guard.checkpoint_is_good(),
            is_best=is_best,
            step_copy=step_copy,
            keep=self.config.train.keep_checkpoints,
            inference_keys=self.INFERENCE_KEYS,
        )

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue exactly from a checkpoint of this run."""
        if checkpoint["dataset_fingerprint"] != self.fingerprint:
            raise CheckpointError(
                f"the prepared dataset changed since this {self.KIND} started (fingerprint "
                f"{checkpoint['dataset_fingerprint']} -> {self.fingerprint}); an exact resume "
                "needs the same data: start a new run with --warm-start instead"
            )
        self.load_training_state(checkpoint)
        self.state.load(checkpoint["state"])
        self.guard.load_state_dict(checkpoint["guard"])
        self.restore_run_state(checkpoint)
        self.data.position = Position(checkpoint["epoch"], checkpoint["batch_in_epoch"])
        restore_rng_state(checkpoint["rng"])

    def roll_back(self, reason: str) -> dict[str, Any]:
        """Back to the last good checkpoint with lower learning rates (or TrainingDiverged).

        The data position keeps moving forward (the batches that hurt are not replayed);
        the rollback history, the wall clock and the run's best are not rolled back.
        """
        target = rollback_checkpoint(self.checkpoints)
        if target is None:  # announce() writes one before the first step; it was removed
            raise CheckpointError(f"no checkpoint to roll back to in {self.checkpoints}")
        good = load_checkpoint(target)
        record = self.guard.rolled_back(self.state.step, good["state"]["step"], reason)
        self.load_training_state(good)
        kept = self.state.kept_on_rollback()
        self.state.load(good["state"])
        self.state.load(kept)
        self.after_rollback()
        return record

    def announce(self, resumed: bool, **facts: Any) -> None:
        """Step 4 of every run: the resolved config, a first rollback target, the
        started/resumed event; then every rank waits (all may need it from now on)."""
        if self.env.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            if rollback_checkpoint(self.checkpoints) is None:
                self.save(is_best=False, step_copy=False)
            self.run_log.event(
                self.state.step,
                Event.RESUMED if resumed else Event.STARTED,
                world_size=self.env.world_size,
                device=str(self.env.device),
                precision=self.env.precision,
                **facts,
            )
        barrier(self.env.world_size)

    def close(self, status: RunStatus) -> None:
        """Write checkpoints/model.pt (best.pt without training state), then tell the
        listeners the run is over (they flush, upload, deliver), even if that failed."""
        best = self.checkpoints / "best.pt"
        try:
            if self.env.is_main and best.exists():
                write_inference_checkpoint(best, self.checkpoints / "model.pt", self.INFERENCE_KEYS)
        finally:
            self.run_log.close(status)
            if self.env.is_main:
                write_run_report(self.run_dir, vocoder=self.VOCODER_REPORT)


S = TypeVar("S", bound=RunSession)


def run(
    open_session: Callable[[RunLog], S], run_dir: Path, listeners: Sequence[RunListener]
) -> tuple[S, StopReason]:
    """Open a session (steps 1-4) with a run log for `listeners`, and train it to the end.

    Every listener's `on_close` is called exactly once, however the run ends. Ctrl-C or
    SIGTERM stop the run at the next step boundary: last.pt is saved, then
    KeyboardInterrupt is raised; TrainingDiverged and StopTraining raise too.
    """
    run_log = RunLog(run_dir, process_rank() == 0, listeners)
    try:
        session = open_session(run_log)
    except BaseException:
        run_log.close(RunStatus.FAILED)
        raise
    with StopRequests() as stop:
        return session, _drive(session, stop)


def _drive(session: RunSession, stop: StopRequests) -> StopReason:
    """5-6: the loop and the end of the run."""
    state, env, run_log, guard, limits = (
        session.state,
        session.env,
        session.run_log,
        session.guard,
        session.limits,
    )
    started = time.monotonic() - state.elapsed
    status = RunStatus.FAILED  # what the listeners hear unless the run ends well
    batches = session.data.stream()
    readout = Readout(limits.sync_every)
    stop_reason = StopReason.NONE
    try:
        with progress.meter(limits.label, limits.max_steps, state.step) as meter:
            while not stop_reason:
                # 5.1 one step of the model's (judged on the device, bad updates skipped)
                numbers = session.train_step(next(batches))
                state.step += 1
                readout.add(state.step, *numbers.judged, numbers.terms, numbers.host_scalars)
                # 5.2 read the numbers (every sync_every steps, and whenever they are needed):
                # record skipped steps, roll back after a streak, training scalars, progress
                elapsed = time.monotonic() - started
                at_end = state.step >= limits.max_steps
                out_of_time = 0 < limits.max_minutes * 60 <= elapsed
                evaluating = state.step % limits.eval_every == 0 or at_end or out_of_time
                if (
                    readout.due(state.step)
                    or evaluating
                    or _due(state.step, limits.debug_every)
                    or guard.consecutive_bad > 0  # a run in trouble reads every step
                ):
                    latest = _read_steps(session, readout.read())
                    if latest is None:
                        continue  # rolled back
                    meter.update(state.step, **session.progress_info(latest))
                # 5.3 evaluation (with a checkpoint), or a checkpoint alone (rank 0)
                if evaluating:
                    state.elapsed = elapsed
                    stop_reason = _evaluation(session, elapsed)
                elif _due(state.step, limits.checkpoint_every) and env.is_main:
                    state.elapsed = elapsed
                    session.save(is_best=False)
                barrier(env.world_size)
                # 5.4 stop? (a signal asks every rank; rank 0 saves and records it)
                if agree_on_interrupt(stop.requested is not None, env):
                    _read_steps(session, readout.read())
                    raise KeyboardInterrupt(stop.requested or "another process was interrupted")
                stop_reason = agree(
                    stop_reason
                    or (
                        StopReason.MAX_STEPS
                        if at_end
                        else StopReason.MAX_MINUTES
                        if out_of_time
                        else StopReason.NONE
                    ),
                    env,
                )
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        if env.is_main:
            state.elapsed = time.monotonic() - started
            session.save(is_best=False, step_copy=False)
            run_log.event(state.step, Event.INTERRUPTED, resume_with=f"--resume {session.run_dir}")
        raise
    except StopTraining as stopped:  # a listener ended the run (e.g. the tuner pruned it)
        status = RunStatus.KILLED
        run_log.event(state.step, Event.STOPPED, reason=str(stopped), **session.best())
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
            bad_steps=guard.bad_steps,
            rollbacks=len(guard.rollbacks),
            **session.best(),
        )
    finally:
        session.close(status)
    return stop_reason


def _evaluation(session: RunSession, elapsed: float) -> StopReason:
    """Evaluate (rank 0), write metrics, checkpoints and events; return a stop reason."""
    state, run_log, guard = session.state, session.run_log, session.guard
    if not session.env.is_main:
        return StopReason.NONE
    eval_started = time.monotonic()
    log.info("step %d: evaluating", state.step)  # a sign of life: it takes a while
    evaluated = session.evaluate(elapsed)
    metrics = {
        **evaluated.metrics,
        **state.train_means(),
        "bad_steps": float(guard.bad_steps),
        "rollbacks": float(len(guard.rollbacks)),
        "learning_rate_scale": guard.lr_scale,
        "time/train_seconds": elapsed - state.eval_seconds,
        "time/eval_seconds": state.eval_seconds,
    }
    session.save(is_best=evaluated.improved)  # before any event that names the checkpoint
    if evaluated.improved:
        run_log.event(state.step, Event.BEST, score=evaluated.score)
    for event, fields in evaluated.milestones:
        run_log.event(state.step, event, **fields)
    rate = state.step_rate(elapsed)
    remaining = session.limits.max_steps - state.step
    run_log.event(
        state.step,
        Event.EVALUATION,
        score=evaluated.score,
        **evaluated.headline,
        steps_per_second=rate,
        eta_seconds=remaining / rate if rate > 0 else None,
    )
    run_log.evaluation(state.step, metrics)  # a listener may raise StopTraining here
    if evaluated.stop_reason:
        run_log.event(
            state.step,
            Event.EARLY_STOP,
            reason=str(evaluated.stop_reason),
            **evaluated.stop_detail,
        )
    seconds = time.monotonic() - eval_started
    state.eval_seconds += seconds
    log.info("step %d evaluated in %.0f s: %s", state.step, seconds, evaluated.summary)
    return evaluated.stop_reason


def _read_steps(session: RunSession, records: list[StepRecord]) -> dict[str, float] | None:
    """Account for the steps just read: the guard's verdicts (the device already skipped the
    bad ones), debug reports, a rollback, the training scalars. Returns the newest step's
    scalars, or None after a rollback (the remaining steps are undone with it)."""
    state, run_log, guard = session.state, session.run_log, session.guard
    debug_every, log_every = session.limits.debug_every, session.config.tracking.log_every
    scalars: dict[str, float] = {}
    for record in records:
        verdict = guard.check(record.loss, record.grad_norm, limits=record.limits)
        if verdict.bad != record.skipped:  # the same rules on the same numbers: cannot differ
            raise RuntimeError(
                f"step {record.step}: the device {'skipped' if record.skipped else 'applied'} "
                f"the update but the guard says {verdict.reason or 'it was good'}"
            )
        if verdict.bad or _due(record.step, debug_every):
            reason = verdict.reason or "periodic"
            if record.step != state.step:  # its tensors are gone: report the newest step's
                reason += f" (step {record.step}, read at step {state.step})"
            session.debug(reason, record.grad_norm)
        if verdict.bad:
            report_bad_step(run_log, guard, session.limits.label, record, verdict.reason)
        if verdict.roll_back:
            rollback = session.roll_back(verdict.reason)
            run_log.event(state.step, Event.ROLLBACK, **rollback)
            return None
        state.accumulate(record.scalars)
        if record.step % log_every == 0:
            run_log.scalars(record.step, record.scalars)
        scalars = record.scalars
    return scalars


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


__all__ = [
    "Evaluated",
    "Judged",
    "RunLimits",
    "RunSession",
    "StepNumbers",
    "run",
]
