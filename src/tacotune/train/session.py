"""What one training process holds while it runs, and the operations on all of it at once:
build (fresh, warm-started or resumed), checkpoint, roll back, report.

The loop in loop.py reads as the training algorithm; this module keeps the
bookkeeping that every step of it shares out of its way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from tacotune.checkpoint import (
    code_version,
    config_payload,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    warm_start_state,
    write_inference_checkpoint,
)
from tacotune.config.load import save_config
from tacotune.config.schema import Config
from tacotune.data.dataset import Batch
from tacotune.data.manifest import load_prepared
from tacotune.errors import CheckpointError, ConfigError
from tacotune.losses import LossTerms
from tacotune.model.tacotron2 import Tacotron2, Tacotron2Output
from tacotune.names import Event, RunStatus
from tacotune.runlog import RunLog
from tacotune.supervision.debug import debug_report, write_debug_report
from tacotune.supervision.early_stopping import EarlyStopping
from tacotune.supervision.guard import DivergenceGuard
from tacotune.text.symbols import SYMBOLS
from tacotune.train.inputs import Position, TrainingData, build_training_data
from tacotune.train.records import TrainState, copy_last, write_checkpoints
from tacotune.train.setup import (
    Environment,
    check_ctc_feasible,
    make_optimizer,
    make_scheduler,
    setup_environment,
)
from tacotune.voices import resolve_warm_start

log = logging.getLogger(__name__)

GOOD_CHECKPOINT = "good.pt"  # the newest checkpoint written with no bad step since the previous


@dataclass
class Session:
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

    @property
    def checkpoints(self) -> Path:
        """RUN/checkpoints."""
        return self.run_dir / "checkpoints"

    def close(self, status: RunStatus) -> None:
        """Write the inference checkpoint model.pt (from best.pt), then tell the listeners
        the run is over (they flush, upload, deliver), even if writing model.pt failed."""
        best = self.checkpoints / "best.pt"
        try:
            if self.env.is_main and best.exists():
                write_inference_checkpoint(best, self.checkpoints / "model.pt")
        finally:
            self.run_log.close(status)

    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see train/checkpoint.py)."""
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

    def save(self, is_best: bool, step_copy: bool = True) -> None:
        """Write last.pt (+ best.pt, step copy); mark it good if no step was bad since the last."""
        write_checkpoints(self.run_dir, self.payload(), is_best, self.config.train, step_copy)
        if self.guard.checkpoint_is_good():
            copy_last(self.checkpoints, GOOD_CHECKPOINT)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue exactly from a checkpoint of this run."""
        if checkpoint["dataset_fingerprint"] != self.fingerprint:
            raise CheckpointError(
                "the prepared dataset changed since this run started (fingerprint "
                f"{checkpoint['dataset_fingerprint']} -> {self.fingerprint}); an exact resume "
                "needs the same data: start a new run with --warm-start instead"
            )
        self._load_training_state(checkpoint)
        self.state.load(checkpoint["state"])
        self.guard.load_state_dict(checkpoint["guard"])
        self.stopper.load_state_dict(checkpoint["early_stopping"])
        self.data.position = Position(checkpoint["epoch"], checkpoint["batch_in_epoch"])
        restore_rng_state(checkpoint["rng"])

    def roll_back(self, reason: str) -> dict[str, Any]:
        """Back to the last good checkpoint with a lower learning rate (or TrainingDiverged).

        The data position keeps moving forward (the batches that hurt are not replayed);
        the rollback history and the wall clock are not rolled back.
        """
        good = load_checkpoint(self.checkpoints / GOOD_CHECKPOINT)
        record = self.guard.rolled_back(self.state.step, good["state"]["step"], reason)
        self._load_training_state(good)
        elapsed, eval_seconds = self.state.elapsed, self.state.eval_seconds
        self.state.load(good["state"])
        self.state.elapsed, self.state.eval_seconds = elapsed, eval_seconds
        for group in self.optimizer.param_groups:  # the new scale applies from the next step on
            group["lr"] = group["initial_lr"] * self.scheduler.lr_lambdas[0](self.state.step)
        return record

    def _load_training_state(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])

    def debug(
        self, reason: str, out: Tacotron2Output, batch: Batch, terms: LossTerms, grad_norm: float
    ) -> None:
        """Write a debug report (rank 0), while this step's gradients are still there."""
        if not self.env.is_main:
            return
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


# what a run directory holds (loop.py, records.py, runlog.py, debug.py, TensorBoard)
RUN_ENTRIES = frozenset(
    {
        "config.yaml",
        "events.jsonl",
        "metrics.jsonl",
        "checkpoints",
        "samples",
        "debug",
        "tensorboard",
    }
)


def check_new_run_dir(run_dir: Path) -> None:
    """A new run needs a new or empty directory: training must never write its config.yaml,
    checkpoints and logs into a prepared dataset or any other directory. A directory that
    holds only what a run writes but no last.pt (a run that failed before its first
    checkpoint) may be used again."""
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a training run; continue it with "
            f"--resume {run_dir}, or train into a new directory"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file; a run needs a new or empty directory")
    foreign = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    foreign = [name for name in foreign if name not in RUN_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ConfigError(
            f"{run_dir} is not empty and holds no training run ({shown}); a run writes "
            "config.yaml, checkpoints and logs into its directory, so it needs a new or empty "
            "one: give another -o"
        )


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
    if checkpoint is None:
        check_new_run_dir(run_dir)
    # a name that is no base voice, a base that does not fit: refused before any work
    start = resolve_warm_start(source, config) if checkpoint is None and source else None
    # 1. environment: threads, device, processes, precision, seeds
    env = setup_environment(config.train)
    run_dir.mkdir(parents=True, exist_ok=True)
    # 2. data: the prepared dataset, bucketed batches, validation, probes
    prepared = load_prepared(prepared_dir)
    data = build_training_data(prepared, config, env.rank, env.world_size)
    check_ctc_feasible(
        config, list(zip(map(len, data.train_set.texts), data.train_set.frames, strict=True))
    )
    # 3. model, optimizer, schedule (scaled by the guard after rollbacks), scaler, supervision
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels).to(env.device)
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
    # 4. run directory: resolved config, a first rollback target, the "started" event
    if env.is_main:
        save_config(config, run_dir / "config.yaml")
        if not (session.checkpoints / GOOD_CHECKPOINT).exists():
            session.save(is_best=False, step_copy=False)
        run_log.event(
            session.state.step,
            Event.RESUMED if checkpoint is not None else Event.STARTED,
            world_size=env.world_size,
            device=str(env.device),
            precision=env.precision,
            parameters=sum(p.numel() for p in model.parameters()),
            dataset=prepared.fingerprint,
            warm_start=str(start.path) if start is not None else None,
            base_voice=start.voice.name if start is not None and start.voice else None,
            warm_start_skipped=skipped,
        )
    for line in skipped:
        log.warning("warm start skipped %s", line)
    if env.world_size > 1:
        torch.distributed.barrier()  # every rank may need good.pt from now on
    return session
