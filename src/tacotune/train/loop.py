"""`tacotune train`: one plain PyTorch loop with numbered steps.

1. environment (threads, device, processes, precision, seeds)
2. data (prepared dataset, bucketed sampler, validation batches, probes)
3. model, optimizer, schedule, scaler (fresh, warm-started or resumed)
4. run directory (config, metrics, events, TensorBoard)
5. the loop: forward -> loss -> backward -> unscale -> clip -> step; evaluate; checkpoint
6. the end: last checkpoint, final event
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
from torch.nn.parallel import DistributedDataParallel

from tacotune import progress
from tacotune.config.load import override_config, save_config
from tacotune.config.schema import Config
from tacotune.data.manifest import load_prepared
from tacotune.errors import CheckpointError, ConfigError
from tacotune.losses import tacotron2_loss
from tacotune.model.tacotron2 import Tacotron2, reduction_factor_at
from tacotune.text.symbols import SYMBOLS
from tacotune.tracking import RunTracker
from tacotune.train.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    restore_rng_state,
    warm_start_state,
)
from tacotune.train.data import Position, build_training_data
from tacotune.train.evaluate import Evaluation, evaluate
from tacotune.train.records import TrainState, checkpoint_payload, write_checkpoints, write_samples
from tacotune.train.setup import (
    check_ctc_feasible,
    make_optimizer,
    make_scheduler,
    setup_environment,
)

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


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    stop_reason: str  # max_steps | max_minutes
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
    run_dir = Path(run_dir)
    resuming = checkpoint is not None
    if not resuming and (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a training run; continue it with "
            f"--resume {run_dir}, or train into a new directory"
        )
    # 1. Environment
    env = setup_environment(config.train)
    # 2. Data
    prepared = load_prepared(prepared_dir)
    data = build_training_data(prepared, config, env.rank, env.world_size)
    check_ctc_feasible(
        config,
        [(len(t), f) for t, f in zip(data.train_set.texts, data.train_set.frames, strict=True)],
    )
    # 3. Model, optimizer, schedule, scaler
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels).to(env.device)
    optimizer = make_optimizer(model, config.train)
    scheduler = make_scheduler(optimizer, config.train)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.precision == "fp16")
    state = TrainState()
    skipped_layers: list[str] = []
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler, scaler, state, prepared.fingerprint)
        data.position = Position(checkpoint["epoch"], checkpoint["batch_in_epoch"])
    elif warm_start is not None:
        merged, skipped_layers = warm_start_state(model, load_checkpoint(warm_start)["model"])
        model.load_state_dict(merged)
    net = DistributedDataParallel(model) if env.world_size > 1 else model
    # 4. Run directory
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = RunTracker(run_dir, env.is_main, config.tracking.tensorboard)
    if env.is_main:
        save_config(config, run_dir / "config.yaml")
        tracker.event(
            state.step,
            "resumed" if resuming else "started",
            world_size=env.world_size,
            device=str(env.device),
            precision=env.precision,
            parameters=sum(p.numel() for p in model.parameters()),
            dataset=prepared.fingerprint,
            warm_start_skipped=skipped_layers,
        )
    for line in skipped_layers:
        log.warning("warm start skipped %s", line)

    def payload() -> dict[str, Any]:
        return checkpoint_payload(
            config, data, model, optimizer, scheduler, scaler, state, prepared.fingerprint
        )

    # 5. The loop
    started = time.monotonic() - state.elapsed
    batches = data.stream()
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
                    out = net(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, r)
                terms = tacotron2_loss(
                    out,
                    batch.mel,
                    batch.mel_lengths,
                    batch.text,
                    batch.text_lengths,
                    config.loss,
                    state.step,
                )
                # 5.2 backward -> unscale -> clip (the logged norm is the real one) -> step
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), config.train.grad_clip
                )
                finite = bool(torch.isfinite(terms.total) & torch.isfinite(grad_norm))
                if finite:
                    scaler.step(optimizer)
                else:
                    state.skipped_steps += 1
                    tracker.event(
                        state.step,
                        "step_skipped",
                        reason="non-finite loss or gradient",
                        loss=float(terms.total),
                        grad_norm=float(grad_norm),
                    )
                scaler.update()
                scheduler.step()
                state.step += 1
                # 5.3 training scalars
                scalars = {
                    **terms.scalars(),
                    "grad_norm": float(grad_norm),
                    "r": float(r),
                    "learning_rate": float(scheduler.get_last_lr()[0]),
                }
                state.accumulate(scalars)
                if state.step % config.tracking.log_every == 0:
                    tracker.scalars(state.step, scalars)
                elapsed = time.monotonic() - started
                bar.update(
                    task, completed=state.step, loss=scalars["total"], rate=state.step_rate(elapsed)
                )
                # 5.4 evaluation, samples, checkpoints (rank 0; the others wait)
                at_end = state.step >= config.train.max_steps
                out_of_time = 0 < config.train.max_minutes * 60 <= elapsed
                if state.step % config.train.eval_every == 0 or at_end or out_of_time:
                    state.elapsed = elapsed
                    eval_started = time.monotonic()
                    if env.is_main:
                        evaluation = evaluate(
                            model,
                            data.val_batches,
                            data.utterances,
                            config,
                            state.step,
                            r,
                            env.device,
                        )
                        metrics = {
                            **evaluation.metrics,
                            **state.train_means(),
                            "skipped_steps": float(state.skipped_steps),
                            "time/train_seconds": elapsed - state.eval_seconds,
                            "time/eval_seconds": state.eval_seconds,
                        }
                        tracker.evaluation(state.step, metrics)
                        write_samples(run_dir, tracker, evaluation, config, state.step)
                        improved = evaluation.score < state.best_score
                        if improved:
                            state.best_score, state.best_step = evaluation.score, state.step
                            tracker.event(state.step, "best", score=evaluation.score)
                        write_checkpoints(run_dir, payload(), improved, config.train)
                        if on_eval is not None:
                            on_eval(state.step, evaluation)
                    _barrier(env.world_size)
                    state.eval_seconds += time.monotonic() - eval_started
                # 5.5 stop?
                if at_end:
                    stop_reason = "max_steps"
                elif _agree(out_of_time, env.world_size):
                    stop_reason = "max_minutes"
    except KeyboardInterrupt:
        if env.is_main:
            state.elapsed = time.monotonic() - started
            write_checkpoints(run_dir, payload(), False, config.train, step_copy=False)
            tracker.event(state.step, "interrupted", resume_with=f"--resume {run_dir}")
            tracker.close()
        raise
    # 6. The end
    if env.is_main:
        tracker.event(
            state.step,
            "finished",
            reason=stop_reason,
            best_score=state.best_score,
            best_step=state.best_step,
            skipped_steps=state.skipped_steps,
        )
        tracker.close()
    return TrainResult(run_dir, state.step, stop_reason, state.best_score, state.best_step)


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


def _restore(
    checkpoint: dict[str, Any],
    model: Tacotron2,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    fingerprint: str,
) -> None:
    if checkpoint["dataset_fingerprint"] != fingerprint:
        raise CheckpointError(
            "the prepared dataset changed since this run started (fingerprint "
            f"{checkpoint['dataset_fingerprint']} -> {fingerprint}); an exact resume needs the "
            "same data: start a new run with --warm-start instead"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    state.load(checkpoint["state"])
    restore_rng_state(checkpoint["rng"])


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def _agree(flag: bool, world_size: int) -> bool:
    """Rank 0's decision, shared with every rank."""
    if world_size == 1:
        return flag
    tensor = torch.tensor([float(flag)])
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
