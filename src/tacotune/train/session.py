"""Tacotron2's part of a training run (the engine, train/engine.py, owns the lifecycle):
the model, its optimizer and schedule, one training step, evaluation, what a checkpoint
holds, debug reports; and `open_session`, which builds it (fresh, warm-started or resumed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from tacotune.checkpoint import (
    code_version,
    config_payload,
    load_checkpoint,
    rng_state,
    warm_start_state,
)
from tacotune.config.schema import Config
from tacotune.data.dataset import Batch, mean_log_mel
from tacotune.data.manifest import load_prepared
from tacotune.losses import LossTerms, tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2, Tacotron2Output, reduction_factor_at
from tacotune.names import Event
from tacotune.outputs import Kind, check_output
from tacotune.runlog import RunLog
from tacotune.supervision.debug import debug_report, write_debug_report
from tacotune.supervision.early_stopping import EarlyStopping
from tacotune.supervision.guard import DivergenceGuard
from tacotune.text.symbols import SYMBOLS
from tacotune.train.engine import Evaluated, RunLimits, RunSession, StepNumbers
from tacotune.train.evaluate import evaluate
from tacotune.train.inputs import TrainingData, build_training_data
from tacotune.train.readout import masked_step, poison_non_finite
from tacotune.train.records import TrainState, write_samples
from tacotune.train.setup import (
    Environment,
    check_ctc_feasible,
    make_optimizer,
    make_scheduler,
    setup_environment,
)
from tacotune.voices import resolve_warm_start

log = logging.getLogger(__name__)

HEADLINE = ("free/mcd_ratio", "free/aligned_rate", "val/mel_postnet")  # in "evaluation" events


class _Latest(NamedTuple):
    """The newest step's tensors, kept alive for a debug report."""

    out: Tacotron2Output
    batch: Batch
    terms: LossTerms


@dataclass
class Session(RunSession):
    """One training process's model, optimizer, data, counters and outputs."""

    config: Config
    env: Environment
    run_dir: Path
    fingerprint: str  # of the prepared dataset
    data: TrainingData
    model: Tacotron2
    wrapped: torch.nn.Module  # what the forward pass calls: `model`, in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    guard: DivergenceGuard
    stopper: EarlyStopping
    run_log: RunLog  # metrics.jsonl, events.jsonl and the caller's listeners (rank 0)
    state: TrainState = field(default_factory=TrainState)
    latest: _Latest | None = None

    @property
    def limits(self) -> RunLimits:
        """train.max_steps, max_minutes, eval_every, sync_every; supervision.debug_every."""
        t = self.config.train
        return RunLimits(
            max_steps=t.max_steps,
            max_minutes=t.max_minutes,
            eval_every=t.eval_every,
            sync_every=self.env.sync_every,
            debug_every=self.config.supervision.debug_every,
        )

    def train_step(self, batch: Batch) -> StepNumbers:
        """forward (autocast; the loss in fp32) -> backward -> unscale -> clip -> judge on
        the device -> step, a bad step's update masked out there: nothing is read."""
        config, env, step = self.config, self.env, self.state.step
        host_batch, batch = batch, batch.to(env.device)
        r = reduction_factor_at(config.model, step)
        with torch.autocast(
            env.device.type, dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
        ):
            out = self.wrapped(  # text lengths from the host: no device read
                batch.text, host_batch.text_lengths, batch.mel, batch.mel_lengths, r
            )
        terms = tacotron2_loss(out, batch, config.loss, step)
        self.latest = _Latest(out, batch, terms)
        # the norm the guard sees is the real one: unscaled, before clipping
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(poison_non_finite(terms.total)).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.train.grad_clip)
        judged = self.judge(terms.total, grad_norm)
        masked_step(self.optimizer, self.scaler, judged.bad)
        self.scaler.update()
        self.scheduler.step()
        host = {"r": float(r), "learning_rate": float(self.scheduler.get_last_lr()[0])}
        if terms.guided_attn is not None:
            host["guided_attn_weight"] = terms.guided_attn_weight
        return StepNumbers(judged, terms.tensors(), host)

    def evaluate(self, elapsed: float) -> Evaluated:
        """Validation losses, free-running decodes, the voice metric; samples; early stopping."""
        state, stopper, config = self.state, self.stopper, self.config
        r = reduction_factor_at(config.model, max(state.step - 1, 0))
        evaluation = evaluate(
            self.model,
            self.data.val_batches,
            self.data.utterances,
            config,
            state.step,
            r,
            self.env.device,
        )
        metrics = evaluation.metrics
        update = stopper.update(
            state.step,
            evaluation.score,
            metrics["free/aligned_rate"],
            metrics.get("free/mcd_ratio", math.inf),
        )
        write_samples(self.run_dir, self.run_log, evaluation, config, state.step)
        milestones: list[tuple[Event, dict[str, Any]]] = []
        if update.newly_aligned:
            milestones.append((Event.ALIGNED, {"aligned_rate": metrics["free/aligned_rate"]}))
        if update.newly_voiced:
            level = config.supervision.voice_ready_ratio
            milestones.append(
                (Event.VOICE_READY, {"mcd_ratio": metrics["free/mcd_ratio"], "level": level})
            )
        return Evaluated(
            score=evaluation.score,
            improved=update.improved,
            metrics=metrics,
            headline={k: metrics.get(k) for k in HEADLINE},
            summary=(
                f"voice metric {metrics.get('free/mcd_ratio', math.nan):.3f}, score "
                f"{evaluation.score:.4f} (best {stopper.best_score:.4f} at step "
                f"{stopper.best_step})"
            ),
            milestones=milestones,
            stop_reason=update.stop_reason,
            stop_detail={"detail": update.detail, **self.best()},
        )

    def best(self) -> dict[str, Any]:
        return {"best_score": self.stopper.best_score, "best_step": self.stopper.best_step}

    def progress_info(self, scalars: dict[str, float]) -> dict[str, str]:
        """The loss and the newest voice metric."""
        info = super().progress_info(scalars)
        stopper = self.stopper
        if stopper.last_step >= 0 and math.isfinite(stopper.last_voice_ratio):
            info["voice metric"] = f"{stopper.last_voice_ratio:.2f} (step {stopper.last_step})"
        return info

    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see tacotune/checkpoint.py)."""
        return {
            "config": config_payload(self.config),
            "text_frontend": self.data.frontend.state(),
            "n_symbols": len(SYMBOLS),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.saved(),
            "guard": self.guard.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "epoch": self.data.position.epoch,
            "batch_in_epoch": self.data.position.batch_in_epoch,
            "rng": rng_state(),
            "dataset_fingerprint": self.fingerprint,
            "code_version": code_version(),
        }

    def restore_run_state(self, checkpoint: dict[str, Any]) -> None:
        self.stopper.load_state_dict(checkpoint["early_stopping"])

    def after_rollback(self) -> None:
        for group in self.optimizer.param_groups:  # the new scale applies from the next step on
            group["lr"] = group["initial_lr"] * self.scheduler.lr_lambdas[0](self.state.step)

    def load_training_state(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])

    def debug(self, reason: str, grad_norm: float) -> None:
        """Write a debug report of the newest step (rank 0), while its gradients are there."""
        if not self.env.is_main or self.latest is None:
            return
        out, batch, terms = self.latest
        context = {
            "step": self.state.step,
            "reason": reason,
            "losses": terms.scalars(),
            "grad_norm": grad_norm,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "lr_scale": self.guard.lr_scale,
            "bad_steps": self.guard.bad_steps,
            "rollbacks": len(self.guard.rollbacks),
            "steps_per_second": self.state.step_rate(self.state.elapsed),
            "batch": {
                "utterances": len(batch.mel_lengths),
                "frames": int(batch.mel_lengths.sum()),
                "ids": batch.ids,
            },
        }
        report = debug_report(self.model, out, batch.mel_lengths, batch.text_lengths, context)
        path = write_debug_report(self.run_dir, report)
        self.run_log.event(self.state.step, Event.DEBUG_REPORT, reason=reason, path=str(path))


def open_session(
    config: Config,
    prepared_dir: str | Path,
    run_dir: Path,
    warm_start: str | Path | None,
    checkpoint: dict[str, Any] | None,
    run_log: RunLog,
) -> Session:
    """Steps 1-4 of training: environment, data, model and optimizer, run directory."""
    source = warm_start if warm_start is not None else (config.train.warm_start or None)
    if checkpoint is None:  # a new run: only into a directory of its own (outputs.py)
        check_output(run_dir, Kind.TRAINING_RUN)
    # a name that is no base voice, a base that does not fit: refused before any work
    start = resolve_warm_start(source, config) if checkpoint is None and source else None
    # 1. environment: threads, device, processes, precision, seeds
    env = setup_environment(config.train)
    # 2. data: the prepared dataset, bucketed batches, validation, probes
    prepared = load_prepared(prepared_dir)
    data = build_training_data(prepared, config, env.rank, env.world_size)
    check_ctc_feasible(
        config, list(zip(map(len, data.train_set.texts), data.train_set.frames, strict=True))
    )
    # 3. model, optimizer, schedule (scaled by the guard after rollbacks), scaler, supervision
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels).to(env.device)
    if checkpoint is None and start is None and config.train.mel_mean_init:
        mean = mean_log_mel(data.train_set)  # (n_mels,); before DDP copies the weights
        model.start_at(mean)
        log.info("random weights: mel frames start at the training mels' mean log-mel")
    optimizer = make_optimizer(model, config.train)
    guard = DivergenceGuard(config.supervision)
    session = Session(
        config,
        env,
        run_dir,
        prepared.fingerprint,
        data,
        model,
        DistributedDataParallel(model) if env.world_size > 1 else model,
        optimizer,
        make_scheduler(optimizer, config.train, lambda: guard.lr_scale),
        torch.amp.GradScaler(env.device.type, enabled=env.precision == "fp16"),
        guard,
        EarlyStopping.from_config(config.supervision),
        run_log,
    )
    skipped: list[str] = []
    if checkpoint is not None:
        session.restore(checkpoint)
    elif start is not None:
        merged, skipped = warm_start_state(model, load_checkpoint(start.path)["model"])
        model.load_state_dict(merged)
    # 4. run directory (made only now: data that cannot be read leaves none behind): resolved
    # config, a first rollback target, the "started" event
    run_dir.mkdir(parents=True, exist_ok=True)
    session.announce(
        checkpoint is not None,
        parameters=sum(p.numel() for p in model.parameters()),
        dataset=prepared.fingerprint,
        data_hours=round(sum(e.duration for e in prepared.split("train")) / 3600, 4),
        warm_start=str(start.path) if start is not None else None,
        base_voice=start.voice.name if start is not None and start.voice else None,
        warm_start_skipped=skipped,
    )
    for line in skipped:
        log.warning("warm start skipped %s", line)
    return session
