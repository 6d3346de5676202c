"""`tacotune vocoder train`: HiFi-GAN training (Kong et al. 2020) as one plain loop with
numbered steps, on the machinery of the acoustic loop (train/): run directory, checkpoints,
exact resume, divergence guard, listeners, stop requests, AMP and DDP.

1-4. environment, data (+ teacher-forced mels), networks/optimizers, run directory
     (session.py)
5.   the loop: the generator renders a batch of segments; the discriminators step on real
     vs generated audio (first, as in the paper); the generator's loss is judged by the
     guard together with theirs, and it steps; an epoch's last step decays both learning
     rates (ExponentialLR); evaluate -> checkpoint
6.   the end: final event (and last.pt on Ctrl-C / kill, at the next step boundary)

The guard: a non-finite discriminator loss or gradient skips the discriminators' update
at once (the paper updates them before the generator's loss exists); the guard then
judges the step on the sum of both losses and the norm of both gradients together, and
a bad step skips the generator's update; a streak of bad steps rolls both networks back
to the last good checkpoint with lower learning rates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import TextColumn
from torch import Tensor

from tacotune import progress
from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.config.load import override_config
from tacotune.config.schema import Config
from tacotune.errors import ConfigError
from tacotune.names import Event, RunStatus, StopReason
from tacotune.runlog import RunListener, RunLog, StopTraining
from tacotune.signals import StopRequests
from tacotune.supervision.guard import TrainingDiverged
from tacotune.train.ranks import agree, agree_on_interrupt, barrier, mean_over_ranks
from tacotune.train.setup import process_rank
from tacotune.vocoder.discriminators import DiscriminatorOutput, split_batch
from tacotune.vocoder.evaluate import evaluate_generator, write_samples
from tacotune.vocoder.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    discriminator_loss,
    generator_loss,
)
from tacotune.vocoder.session import VocoderSession, open_vocoder_session

log = logging.getLogger(__name__)

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
LOGGED_BAD_STEPS = 5  # bad steps logged one by one; after that every 100th (all are in events)


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
    run_log = RunLog(Path(run_dir), process_rank() == 0, listeners)
    try:
        session = open_vocoder_session(
            config,
            prepared_dir,
            Path(run_dir),
            run_log,
            from_acoustic=from_acoustic,
            warm_start=warm_start,
            checkpoint=checkpoint,
        )
    except BaseException:
        run_log.close(RunStatus.FAILED)
        raise
    with StopRequests() as stop:
        return _run(session, stop)


def _run(session: VocoderSession, stop: StopRequests) -> VocoderResult:
    """5-6: the loop and the end of the run."""
    config, state, env, run_log = session.config, session.state, session.env, session.run_log
    v = config.vocoder
    started = time.monotonic() - state.elapsed
    status = RunStatus.FAILED  # what the listeners hear unless the run ends well
    batches = session.data.stream()
    stop_reason = StopReason.NONE
    bar = progress.make_progress(
        TextColumn("mel {task.fields[mel]:.3f}"), TextColumn("{task.fields[rate]:.2f} steps/s")
    )
    try:
        with bar:
            task = bar.add_task(
                "vocoder", total=v.max_steps, completed=state.step, mel=math.nan, rate=0.0
            )
            while not stop_reason:
                # 5.1 the next batch of random segments
                batch = next(batches)
                real = batch.audio.to(env.device).unsqueeze(1)  # (B, N) -> (B, 1, N)
                mel = batch.mel.to(env.device)  # (B, n_mels, N / hop)
                with _autocast(session):
                    fake = session.wrapped_generator(mel)  # (B, 1, N)
                # 5.2 the discriminators: real vs the detached generated audio, updated first
                d_terms, d_norm = _discriminator_step(session, real, fake)
                # 5.3 the generator: adversarial + feature matching + mel L1 (eq. 5)
                g_terms, g_norm = _generator_backward(session, real, fake)
                # 5.4 the guard judges both halves; a bad step skips the generator's update
                loss = mean_over_ranks(float(g_terms.total.detach() + d_terms.total.detach()), env)
                verdict = session.guard.check(
                    loss, math.hypot(g_norm, d_norm), loss_finite_only=env.precision == "fp16"
                )
                if not verdict.bad:
                    session.scaler.step(session.optim_g)
                session.scaler.update()
                session.follow_epochs()  # an epoch's last step decays both learning rates
                state.step += 1
                if verdict.bad:
                    _report_bad_step(session, verdict.reason, loss, math.hypot(g_norm, d_norm))
                if verdict.roll_back:
                    record = session.roll_back(verdict.reason)
                    run_log.event(state.step, Event.ROLLBACK, **record)
                    continue
                # 5.5 training scalars and progress
                scalars = {
                    **g_terms.scalars(),
                    **d_terms.scalars(),
                    "grad_norm_g": g_norm,
                    "grad_norm_d": d_norm,
                    "learning_rate": float(session.optim_g.param_groups[0]["lr"]),
                }
                state.accumulate(scalars)
                if state.step % config.tracking.log_every == 0:
                    run_log.scalars(state.step, scalars)
                elapsed = time.monotonic() - started
                bar.update(
                    task, completed=state.step, mel=scalars["g_mel"], rate=state.step_rate(elapsed)
                )
                # 5.6 evaluation (with a checkpoint), or a checkpoint alone
                at_end = state.step >= v.max_steps
                out_of_time = 0 < v.max_minutes * 60 <= elapsed
                if state.step % v.eval_every == 0 or at_end or out_of_time:
                    state.elapsed = elapsed
                    _evaluation(session, elapsed)
                elif state.step % v.checkpoint_every == 0 and env.is_main:
                    state.elapsed = elapsed
                    session.save(is_best=False)
                barrier(env.world_size)
                # 5.7 stop? (a signal asks every rank; rank 0 saves and records it)
                if agree_on_interrupt(stop.requested is not None, env):
                    raise KeyboardInterrupt(stop.requested or "another process was interrupted")
                stop_reason = agree(
                    StopReason.MAX_STEPS
                    if at_end
                    else StopReason.MAX_MINUTES
                    if out_of_time
                    else StopReason.NONE,
                    env,
                )
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        if env.is_main:
            state.elapsed = time.monotonic() - started
            session.save(is_best=False, step_copy=False)
            run_log.event(state.step, Event.INTERRUPTED, resume_with=f"--resume {session.run_dir}")
        raise
    except StopTraining as stopped:  # a listener ended the run
        status = RunStatus.KILLED
        run_log.event(state.step, Event.STOPPED, reason=str(stopped), **_best(session))
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
            bad_steps=session.guard.bad_steps,
            rollbacks=len(session.guard.rollbacks),
            **_best(session),
        )
    finally:
        session.close(status)
    return VocoderResult(
        session.run_dir,
        state.step,
        stop_reason,
        state.best_score,
        state.best_step,
        state.beat_griffin_lim_at,
    )


def _autocast(session: VocoderSession) -> torch.autocast:
    env = session.env
    return torch.autocast(
        env.device.type, dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
    )


def _judge(
    session: VocoderSession, audio: Tensor
) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
    """The discriminators on real and generated audio in one pass: (2B, 1, N) in,
    (real, generated) verdicts out."""
    with _autocast(session):
        out = session.wrapped_discriminator(audio)
    return split_batch(out, audio.shape[0] // 2)


def _discriminator_step(
    session: VocoderSession, real: Tensor, fake: Tensor
) -> tuple[DiscriminatorLoss, float]:
    """Backward and (unless non-finite) update of the discriminators; their gradient norm."""
    on_real, on_fake = _judge(session, torch.cat([real, fake.detach()]))
    terms = discriminator_loss(on_real, on_fake)
    session.optim_d.zero_grad(set_to_none=True)  # also clears what the generator left there
    session.scaler.scale(terms.total).backward()
    session.scaler.unscale_(session.optim_d)
    norm = _grad_norm(session.discriminator)
    finite = math.isfinite(float(terms.total.detach())) and math.isfinite(norm)
    if finite or session.env.precision == "fp16":  # fp16: the scaler skips inf gradients
        session.scaler.step(session.optim_d)
    return terms, norm


def _generator_backward(
    session: VocoderSession, real: Tensor, fake: Tensor
) -> tuple[GeneratorLoss, float]:
    """The generator's loss against the updated discriminators, its gradients (unscaled)
    and their norm; the update waits for the guard."""
    on_real, on_fake = _judge(session, torch.cat([real, fake]))
    terms = generator_loss(on_real, on_fake, real, fake, session.mel, session.config.vocoder)
    session.optim_g.zero_grad(set_to_none=True)
    session.scaler.scale(terms.total).backward()
    session.scaler.unscale_(session.optim_g)
    return terms, _grad_norm(session.generator)


def _grad_norm(network: torch.nn.Module) -> float:
    """The global L2 norm of a network's gradients (nothing is clipped: the paper does not)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _evaluation(session: VocoderSession, elapsed: float) -> None:
    """Evaluate (rank 0) the vocoder and Griffin-Lim; write metrics, samples, checkpoints."""
    state, run_log, env = session.state, session.run_log, session.env
    if not env.is_main:
        return
    eval_started = time.monotonic()
    audio = session.config.audio
    ours = evaluate_generator(session.generator, session.data.clips, audio, env.device)
    first = session.reference is None
    theirs = session.griffin_lim()
    score = ours.metrics["eval/mel_l1"]
    improved = score < state.best_score
    if improved:
        state.best_score, state.best_step = score, state.step
    beats = ours.metrics["eval/mcd"] < theirs.metrics["gl/mcd"]
    newly_beats = beats and not state.beat_griffin_lim_at
    if newly_beats:
        state.beat_griffin_lim_at = state.step
    rate = state.step_rate(elapsed)
    metrics = {
        **ours.metrics,
        **theirs.metrics,
        "score": score,
        **state.train_means(),
        "epoch": float(session.data.position.epoch),
        "bad_steps": float(session.guard.bad_steps),
        "rollbacks": float(len(session.guard.rollbacks)),
        "learning_rate_scale": session.guard.lr_scale,
        "time/train_seconds": elapsed - state.eval_seconds,
        "time/eval_seconds": state.eval_seconds,
    }
    write_samples(session.run_dir, run_log, ours, theirs, audio.sample_rate, state.step, first)
    session.save(is_best=improved)  # before any event that names the checkpoint
    if improved:
        run_log.event(state.step, Event.BEST, score=score)
    if newly_beats:
        run_log.event(
            state.step,
            Event.VOCODER_BEATS_GRIFFIN_LIM,
            **{k: metrics[k] for k in ("eval/mcd", "gl/mcd", "eval/mel_l1", "gl/mel_l1")},
            **{k: metrics.get(k) for k in ("eval/pesq", "gl/pesq")},  # MCD is not all
            minutes=elapsed / 60,
        )
    remaining = session.config.vocoder.max_steps - state.step
    run_log.event(
        state.step,
        Event.EVALUATION,
        score=score,
        **{k: metrics.get(k) for k in ("eval/mcd", "gl/mcd", "eval/pesq", "gl/pesq")},
        steps_per_second=rate,
        eta_seconds=remaining / rate if rate > 0 else None,
    )
    run_log.evaluation(state.step, metrics)  # a listener may raise StopTraining here
    state.eval_seconds += time.monotonic() - eval_started


def _best(session: VocoderSession) -> dict[str, Any]:
    state = session.state
    return {
        "best_score": state.best_score,
        "best_step": state.best_step,
        "beat_griffin_lim_at": state.beat_griffin_lim_at,
    }


def _report_bad_step(session: VocoderSession, reason: str, loss: float, grad_norm: float) -> None:
    guard = session.guard
    session.run_log.event(
        session.state.step,
        Event.STEP_SKIPPED,
        reason=reason,
        loss=loss,
        grad_norm=grad_norm,
        consecutive=guard.consecutive_bad,
        total=guard.bad_steps,
    )
    if guard.bad_steps <= LOGGED_BAD_STEPS or guard.bad_steps % 100 == 0:
        log.warning(
            "vocoder step %d skipped (%s); %d bad steps so far",
            session.state.step,
            reason,
            guard.bad_steps,
        )


def resume_vocoder(
    run_dir: str | Path,
    prepared_dir: str | Path,
    overrides: Sequence[str] = (),
    listeners: Sequence[RunListener] = (),
) -> VocoderResult:
    """Continue a vocoder run exactly from its last checkpoint, with its own config and
    mels (the same acoustic checkpoint's, if it was fine-tuned on them).

    Only RESUME_OVERRIDABLE keys may be overridden (e.g. to train for more steps).
    """
    checkpoint = load_checkpoint(run_dir)
    if "discriminator" not in checkpoint or "config" not in checkpoint:
        raise ConfigError(
            f"{run_dir} is not a vocoder training run (its last.pt holds no discriminator); "
            "resume an acoustic run with `tacotune train --resume`"
        )
    refused = sorted({item.partition("=")[0].strip() for item in overrides} - RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"--resume continues with the run's own config; {refused} cannot "
            f"change. Only {sorted(RESUME_OVERRIDABLE)} may."
        )
    config = override_config(checkpoint_config(checkpoint), overrides)
    step = int(checkpoint["state"]["step"])
    if step >= config.vocoder.max_steps:
        raise ConfigError(
            f"{run_dir} already trained {step} steps, its vocoder.max_steps is "
            f"{config.vocoder.max_steps}: nothing is left to do. To train on, resume with "
            f"--set vocoder.max_steps=N (N > {step})"
        )
    return train_vocoder(
        config,
        prepared_dir,
        run_dir,
        from_acoustic=checkpoint["mels"].get("checkpoint"),
        listeners=listeners,
        checkpoint=checkpoint,
    )
