"""What one vocoder training process holds, and the operations on all of it at once: build
(fresh, warm-started or resumed), checkpoint, roll back, follow the epochs.

The generic machinery is the acoustic loop's: setup_environment (device, precision,
threads, seeds, process group), TrainState and the checkpoint files (train/records.py),
the divergence guard, RunLog. What differs: two networks with an AdamW each, and learning
rates that decay once per epoch (ExponentialLR, as in the paper), not per step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import ExponentialLR
from torch.utils.data import DataLoader

from tacotune.audio import MelSpectrogram
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
from tacotune.data.dataset import BucketBatchSampler
from tacotune.data.manifest import PreparedDataset, load_prepared
from tacotune.data.segments import SegmentDataset, VocoderItem
from tacotune.errors import CheckpointError, ConfigError, DatasetError
from tacotune.names import Event, RunStatus
from tacotune.runlog import RunLog
from tacotune.supervision.guard import DivergenceGuard
from tacotune.train.inputs import Position, check_compatible, loader_workers
from tacotune.train.ranks import barrier
from tacotune.train.records import TrainState, copy_last, write_checkpoints
from tacotune.train.setup import Environment, setup_environment
from tacotune.vocoder.discriminators import Discriminator
from tacotune.vocoder.evaluate import Clip, Evaluation, evaluate_griffin_lim, validation_clips
from tacotune.vocoder.hifigan import Generator, build_generator
from tacotune.vocoder.neural import PAYLOAD_KEYS, read_payload, vocoder_checkpoint, vocoder_payload
from tacotune.vocoder.teacher import TeacherMels, teacher_forced_mels

log = logging.getLogger(__name__)

GOOD_CHECKPOINT = "good.pt"  # the newest checkpoint with no bad step since the previous one
TEACHER_DIR = "teacher_mels"  # RUN/teacher_mels/<sha>/: an acoustic model's mels, cached
RECORDINGS = {"source": "recordings"}  # the "mels" entry of a run on the prepared mels
# what a vocoder's checkpoints/model.pt keeps of best.pt (see vocoder/neural.py)
INFERENCE_KEYS = (*PAYLOAD_KEYS, "config", "state", "mels", "dataset_fingerprint", "code_version")


@dataclass
class VocoderState(TrainState):
    """The loop's counters (TrainState) and the run's best; saved in every checkpoint."""

    best_score: float = math.inf  # the lowest eval/mel_l1 so far
    best_step: int = 0
    beat_griffin_lim_at: int = 0  # step of the first evaluation with eval/mcd < gl/mcd


@dataclass
class VocoderData:
    """Training segments (a resumable stream) and the whole validation clips."""

    train_set: SegmentDataset
    sampler: BucketBatchSampler  # equal "lengths": a seeded shuffle, sharded across ranks
    workers: int
    clips: list[Clip]
    position: Position = field(default_factory=Position)

    @functools.cached_property
    def batches_per_epoch(self) -> int:
        """This rank's batches in every epoch (the same number each epoch)."""
        return len(self.sampler.batches())

    @property
    def finished_epochs(self) -> int:
        """Epochs whose every batch has been taken from the stream."""
        return self.position.epoch + int(self.position.batch_in_epoch >= self.batches_per_epoch)

    def stream(self) -> Iterator[VocoderItem]:
        """Batches ((B, segment) audio, (B, n_mels, segment / hop) mel) forever, from
        `position`; the windows and the order of every epoch depend only on the seed."""
        while True:
            self.train_set.set_epoch(self.position.epoch)
            self.sampler.set_epoch(self.position.epoch)
            batches = self.sampler.batches()
            if not batches:
                raise DatasetError(
                    "this process gets no batch: the training split has fewer batches than "
                    "there are processes; lower vocoder.batch_size"
                )
            remaining = batches[self.position.batch_in_epoch :]
            loader = DataLoader(
                self.train_set,
                batch_sampler=remaining,
                num_workers=self.workers,
                generator=torch.Generator().manual_seed(self.sampler.seed + self.position.epoch),
            )
            for batch in loader if remaining else ():
                self.position.batch_in_epoch += 1
                yield batch
            self.position = Position(self.position.epoch + 1, 0)


@dataclass
class VocoderSession:
    """One vocoder training process's networks, optimizers, data, counters and outputs."""

    config: Config
    env: Environment
    run_dir: Path
    fingerprint: str  # of the prepared dataset
    mels: TeacherMels | None  # None: the prepared (recorded) mels
    data: VocoderData
    generator: Generator
    discriminator: Discriminator
    wrapped_generator: torch.nn.Module  # what the step calls (DDP under torchrun)
    wrapped_discriminator: torch.nn.Module
    optim_g: torch.optim.AdamW
    optim_d: torch.optim.AdamW
    sched_g: ExponentialLR
    sched_d: ExponentialLR
    scaler: torch.amp.GradScaler
    guard: DivergenceGuard
    run_log: RunLog
    mel: MelSpectrogram  # the acoustic model's mel extractor (the mel loss)
    state: VocoderState = field(default_factory=VocoderState)
    reference: Evaluation | None = None  # Griffin-Lim on the validation clips (computed once)

    @property
    def checkpoints(self) -> Path:
        """RUN/checkpoints."""
        return self.run_dir / "checkpoints"

    def griffin_lim(self) -> Evaluation:
        """Griffin-Lim's numbers on the validation clips (the first call computes them)."""
        if self.reference is None:
            self.reference = evaluate_griffin_lim(self.data.clips, self.config.audio)
        return self.reference

    def follow_epochs(self) -> None:
        """Decay both learning rates once per finished epoch (call after the optimizer steps:
        the paper decays after an epoch's last step)."""
        while self.sched_g.last_epoch < self.data.finished_epochs:
            self.sched_g.step()
            self.sched_d.step()

    def close(self, status: RunStatus) -> None:
        """Write checkpoints/model.pt (best.pt without optimizer state), then tell the
        listeners the run is over, even if writing model.pt failed."""
        best = self.checkpoints / "best.pt"
        try:
            if self.env.is_main and best.exists():
                write_inference_checkpoint(best, self.checkpoints / "model.pt", INFERENCE_KEYS)
        finally:
            self.run_log.close(status)

    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds (vocoder/neural.py's keys first)."""
        return {
            **vocoder_payload(self.generator, self.config),
            "config": config_payload(self.config),
            "discriminator": self.discriminator.state_dict(),
            "optim_g": self.optim_g.state_dict(),
            "optim_d": self.optim_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.saved(),
            "guard": self.guard.state_dict(),
            "epoch": self.data.position.epoch,
            "batch_in_epoch": self.data.position.batch_in_epoch,
            "rng": rng_state(),
            "mels": self.mels.facts() if self.mels else RECORDINGS,
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
                "the prepared dataset changed since this vocoder run started (fingerprint "
                f"{checkpoint['dataset_fingerprint']} -> {self.fingerprint}); an exact resume "
                "needs the same data: start a new run with --warm-start instead"
            )
        self._load_training_state(checkpoint)
        self.state.load(checkpoint["state"])
        self.guard.load_state_dict(checkpoint["guard"])
        self.data.position = Position(checkpoint["epoch"], checkpoint["batch_in_epoch"])
        restore_rng_state(checkpoint["rng"])

    def warm_start(self, path: str | Path) -> list[str]:
        """Start from another vocoder's weights (the generator; the discriminators too when
        the checkpoint holds them); returns what was skipped for a differing shape."""
        file = vocoder_checkpoint(path)
        payload = load_checkpoint(file)
        read_payload(payload, self.config.audio, f"warm-start vocoder {file}")
        skipped = []
        for name, network in (("generator", self.generator), ("discriminator", self.discriminator)):
            if name in payload:
                merged, missed = warm_start_state(network, payload[name])
                network.load_state_dict(merged)
                skipped += [f"{name}.{line}" for line in missed]
        return skipped

    def roll_back(self, reason: str) -> dict[str, Any]:
        """Back to the last good checkpoint with lower learning rates (or TrainingDiverged).

        The data position keeps moving forward (the batches that hurt are not replayed);
        the rollback history and the wall clock are not rolled back.
        """
        good = load_checkpoint(self.checkpoints / GOOD_CHECKPOINT)
        record = self.guard.rolled_back(self.state.step, good["state"]["step"], reason)
        self._load_training_state(good)
        elapsed, eval_seconds = self.state.elapsed, self.state.eval_seconds
        best = self.state.best_score, self.state.best_step, self.state.beat_griffin_lim_at
        self.state.load(good["state"])
        self.state.elapsed, self.state.eval_seconds = elapsed, eval_seconds
        self.state.best_score, self.state.best_step, self.state.beat_griffin_lim_at = best
        epoch = self.data.finished_epochs
        for optimizer, scheduler in ((self.optim_g, self.sched_g), (self.optim_d, self.sched_d)):
            scheduler.last_epoch = epoch
            for group in optimizer.param_groups:  # the scale applies from the next step on
                group["lr"] = group["initial_lr"] * scheduler.gamma**epoch * self.guard.lr_scale
        return record

    def _load_training_state(self, checkpoint: dict[str, Any]) -> None:
        self.generator.load_state_dict(checkpoint["generator"])
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        for name in ("optim_g", "optim_d", "sched_g", "sched_d", "scaler"):
            getattr(self, name).load_state_dict(checkpoint[name])


def build_vocoder_data(
    prepared: PreparedDataset, config: Config, env: Environment, mel_dir: Path | None
) -> VocoderData:
    """Random training segments (rank-sharded) and the first validation utterances, whole."""
    v, seed = config.vocoder, config.train.seed
    train_set = SegmentDataset(
        prepared.split("train"), prepared.root, config.audio, v.segment_size, seed, mel_dir
    )
    val_set = SegmentDataset(
        prepared.split("val"), prepared.root, config.audio, None, seed, mel_dir
    )
    sampler = BucketBatchSampler([1] * len(train_set), v.batch_size, seed, env.rank, env.world_size)
    clips = validation_clips(val_set, v.eval_utterances, config.audio) if env.is_main else []
    workers = loader_workers(config.train.data_workers, env.device.type == "cuda")
    return VocoderData(train_set, sampler, workers, clips)


def open_vocoder_session(
    config: Config,
    prepared_dir: str | Path,
    run_dir: Path,
    run_log: RunLog,
    *,
    from_acoustic: str | Path | None = None,
    warm_start: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> VocoderSession:
    """Steps 1-4 of vocoder training: environment, data (and teacher-forced mels), networks
    and optimizers, run directory."""
    if checkpoint is None and (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a vocoder training run; continue it with "
            f"--resume {run_dir}, or train into a new directory"
        )
    # 1. environment: threads, device, processes, precision, seeds
    env = setup_environment(config.train)
    run_dir.mkdir(parents=True, exist_ok=True)
    # 2. data: the prepared audio, with its own mels or an acoustic model's
    prepared = load_prepared(prepared_dir)
    check_compatible(config, prepared, sections=("audio",))
    mels = _teacher_mels(from_acoustic, prepared, run_dir, env, checkpoint)
    data = build_vocoder_data(prepared, config, env, mels.directory if mels else None)
    # 3. networks, optimizers (AdamW each), per-epoch decay, scaler, guard
    session = _build(config, env, run_dir, prepared.fingerprint, mels, data, run_log)
    skipped: list[str] = []
    if checkpoint is not None:
        session.restore(checkpoint)
    elif warm_start is not None:
        skipped = session.warm_start(warm_start)
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
            parameters=sum(p.numel() for p in session.generator.parameters()),
            discriminator_parameters=sum(p.numel() for p in session.discriminator.parameters()),
            dataset=prepared.fingerprint,
            mels=mels.facts() if mels else RECORDINGS,
            warm_start_skipped=skipped,
        )
    for line in skipped:
        log.warning("warm start skipped %s", line)
    barrier(env.world_size)  # every rank may need good.pt from now on
    return session


def _teacher_mels(
    acoustic: str | Path | None,
    prepared: PreparedDataset,
    run_dir: Path,
    env: Environment,
    checkpoint: dict[str, Any] | None,
) -> TeacherMels | None:
    """The acoustic model's mels (rank 0 makes them, the others then read them); a resumed
    run must find the very checkpoint it started with."""
    if acoustic is None:
        return None
    if env.is_main:
        mels = teacher_forced_mels(acoustic, prepared, run_dir / TEACHER_DIR, env.device)
    barrier(env.world_size)
    if not env.is_main:
        mels = teacher_forced_mels(acoustic, prepared, run_dir / TEACHER_DIR, env.device)
    recorded = checkpoint["mels"].get("sha256") if checkpoint is not None else None
    if recorded is not None and recorded != mels.sha256:
        raise CheckpointError(
            f"the acoustic checkpoint {mels.checkpoint} changed since this vocoder run started "
            f"(sha256 {recorded[:16]}... -> {mels.sha256[:16]}...); an exact resume needs the "
            "same mels: restore it, or start a new run with --warm-start"
        )
    return mels


def _build(
    config: Config,
    env: Environment,
    run_dir: Path,
    fingerprint: str,
    mels: TeacherMels | None,
    data: VocoderData,
    run_log: RunLog,
) -> VocoderSession:
    v, a = config.vocoder, config.audio
    generator = build_generator(v.generator, a.n_mels, a.hop_length, v.generator_channels)
    generator = generator.to(env.device)
    discriminator = Discriminator(v.discriminator_divisor).to(env.device)
    optim_g, optim_d = (
        torch.optim.AdamW(
            network.parameters(),
            lr=v.learning_rate,
            betas=v.adam_betas,
            weight_decay=v.weight_decay,
        )
        for network in (generator, discriminator)
    )
    ddp = env.world_size > 1
    return VocoderSession(
        config=config,
        env=env,
        run_dir=run_dir,
        fingerprint=fingerprint,
        mels=mels,
        data=data,
        generator=generator,
        discriminator=discriminator,
        wrapped_generator=DistributedDataParallel(generator) if ddp else generator,
        wrapped_discriminator=DistributedDataParallel(discriminator) if ddp else discriminator,
        optim_g=optim_g,
        optim_d=optim_d,
        sched_g=ExponentialLR(optim_g, gamma=v.lr_decay),
        sched_d=ExponentialLR(optim_d, gamma=v.lr_decay),
        scaler=torch.amp.GradScaler(env.device.type, enabled=env.precision == "fp16"),
        guard=DivergenceGuard(
            dataclasses.replace(config.supervision, grad_norm_ceiling=v.grad_norm_ceiling)
        ),
        run_log=run_log,
        mel=MelSpectrogram(a),
    )
