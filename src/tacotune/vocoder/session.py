"""HiFi-GAN's part of a vocoder training run (the engine, train/engine.py, owns the
lifecycle: checkpoints, rollback, resume, events): two networks with an AdamW each,
learning rates that decay once per epoch (ExponentialLR, as in the paper), not per step;
what a checkpoint holds; and `open_vocoder_session`, which builds it (fresh, warm-started
or resumed). The training step and the evaluation are in vocoder/train.py.
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
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import ExponentialLR
from torch.utils.data import DataLoader

from tacotune.audio import MelSpectrogram
from tacotune.checkpoint import (
    code_version,
    config_payload,
    load_checkpoint,
    rng_state,
    warm_start_state,
)
from tacotune.config.schema import Config
from tacotune.data.dataset import BucketBatchSampler
from tacotune.data.manifest import PreparedDataset, load_prepared
from tacotune.data.segments import SegmentDataset, VocoderItem
from tacotune.errors import CheckpointError, DatasetError
from tacotune.names import Event
from tacotune.outputs import Kind, check_output
from tacotune.runlog import RunLog
from tacotune.supervision.guard import DivergenceGuard
from tacotune.train.engine import Evaluated, RunLimits, RunSession, StepNumbers
from tacotune.train.inputs import Position, check_compatible, loader_workers
from tacotune.train.ranks import barrier
from tacotune.train.records import TrainState
from tacotune.train.setup import Environment, setup_environment
from tacotune.vocoder.discriminators import Discriminator, DiscriminatorOutput, split_batch
from tacotune.vocoder.evaluate import (
    Clip,
    Evaluation,
    evaluate_generator,
    evaluate_griffin_lim,
    validation_clips,
    write_samples,
)
from tacotune.vocoder.hifigan import Generator, build_generator
from tacotune.vocoder.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    discriminator_loss,
    generator_loss,
)
from tacotune.vocoder.neural import PAYLOAD_KEYS, read_payload, vocoder_checkpoint, vocoder_payload
from tacotune.vocoder.teacher import TeacherMels, teacher_forced_mels

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher_mels"  # RUN/teacher_mels/<sha>/: an acoustic model's mels, cached
# the numbers of the "vocoder_beats_griffin_lim" event (PESQ, where measured, too)
BEATEN = ("eval/mcd", "gl/mcd", "eval/mel_l1", "gl/mel_l1")
RECORDINGS = {"source": "recordings"}  # the "mels" entry of a run on the prepared mels
# what a vocoder's best.pt, step copies and model.pt hold (see vocoder/neural.py)
INFERENCE_KEYS = (*PAYLOAD_KEYS, "config", "state", "mels", "dataset_fingerprint", "code_version")


@dataclass
class VocoderState(TrainState):
    """The loop's counters (TrainState) and the run's best; saved in every checkpoint."""

    ROLLBACK_KEEPS = (*TrainState.ROLLBACK_KEEPS, "best_score", "best_step", "beat_griffin_lim_at")

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
class VocoderSession(RunSession):
    """One vocoder training process's networks, optimizers, data, counters and outputs
    (the step and the evaluation: vocoder/train.py's VocoderRun)."""

    KIND = "vocoder run"
    INFERENCE_KEYS = INFERENCE_KEYS
    VOCODER_REPORT = True

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

    def train_step(self, batch: VocoderItem) -> StepNumbers:
        """The generator renders a batch of segments; the discriminators step on real vs
        generated audio (first, as in the paper); the guard judges both halves together and
        a bad step skips the generator's update; an epoch's last step decays both learning
        rates. The verdict is read on the host at once (the update waits for it)."""
        real = batch.audio.to(self.env.device).unsqueeze(1)  # (B, N) -> (B, 1, N)
        mel = batch.mel.to(self.env.device)  # (B, n_mels, N / hop)
        with self._autocast():
            fake = self.wrapped_generator(mel)  # (B, 1, N)
        d_terms, d_norm = self._discriminator_step(real, fake)
        g_terms, g_norm = self._generator_backward(real, fake)
        norm = torch.tensor(math.hypot(g_norm, d_norm), device=self.env.device)
        judged = self.judge(g_terms.total.detach().float() + d_terms.total.detach().float(), norm)
        if not bool(judged.bad):
            self.scaler.step(self.optim_g)
        self.scaler.update()
        self.follow_epochs()  # an epoch's last step decays both learning rates
        terms = {f"g_{k}": v for k, v in g_terms._asdict().items()}
        terms.update({f"d_{k}": v for k, v in d_terms._asdict().items()})
        host = {
            "grad_norm_g": g_norm,
            "grad_norm_d": d_norm,
            "learning_rate": float(self.optim_g.param_groups[0]["lr"]),
        }
        return StepNumbers(judged, terms, host)

    def _autocast(self) -> torch.autocast:
        env = self.env
        return torch.autocast(
            env.device.type, dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
        )

    def _judge_audio(self, audio: Tensor) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
        """The discriminators on real and generated audio in one pass: (2B, 1, N) in,
        (real, generated) verdicts out."""
        with self._autocast():
            out = self.wrapped_discriminator(audio)
        return split_batch(out, audio.shape[0] // 2)

    def _discriminator_step(self, real: Tensor, fake: Tensor) -> tuple[DiscriminatorLoss, float]:
        """Backward and (unless non-finite) update of the discriminators; their gradient norm."""
        on_real, on_fake = self._judge_audio(torch.cat([real, fake.detach()]))
        terms = discriminator_loss(on_real, on_fake)
        self.optim_d.zero_grad(set_to_none=True)  # also clears what the generator left there
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optim_d)
        norm = _grad_norm(self.discriminator)
        finite = math.isfinite(float(terms.total.detach())) and math.isfinite(norm)
        if finite or self.env.precision == "fp16":  # fp16: the scaler skips inf gradients
            self.scaler.step(self.optim_d)
        return terms, norm

    def _generator_backward(self, real: Tensor, fake: Tensor) -> tuple[GeneratorLoss, float]:
        """The generator's loss against the updated discriminators, its gradients (unscaled)
        and their norm; the update waits for the guard."""
        on_real, on_fake = self._judge_audio(torch.cat([real, fake]))
        terms = generator_loss(on_real, on_fake, real, fake, self.mel, self.config.vocoder)
        self.optim_g.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optim_g)
        return terms, _grad_norm(self.generator)

    def evaluate(self, elapsed: float) -> Evaluated:
        """The vocoder and Griffin-Lim on the validation clips; samples; the run's best."""
        state = self.state
        ours = evaluate_generator(
            self.generator, self.data.clips, self.config.audio, self.env.device
        )
        first = self.reference is None
        theirs = self.griffin_lim()
        score = ours.metrics["eval/mel_l1"]
        improved = score < state.best_score
        if improved:
            state.best_score, state.best_step = score, state.step
        metrics = {
            **ours.metrics,
            **theirs.metrics,
            "score": score,
            "epoch": float(self.data.position.epoch),
        }
        milestones: list[tuple[Event, dict[str, Any]]] = []
        if metrics["eval/mcd"] < metrics["gl/mcd"] and not state.beat_griffin_lim_at:
            state.beat_griffin_lim_at = state.step
            beaten: dict[str, float | None] = {
                k: metrics[k] for k in ("eval/mcd", "gl/mcd", "eval/mel_l1", "gl/mel_l1")
            }
            beaten.update({k: metrics.get(k) for k in ("eval/pesq", "gl/pesq")})  # MCD is not all
            milestones.append(
                (Event.VOCODER_BEATS_GRIFFIN_LIM, {**beaten, "minutes": elapsed / 60})
            )
        rate = self.config.audio.sample_rate
        write_samples(self.run_dir, self.run_log, ours, theirs, rate, state.step, first)
        return Evaluated(
            score=score,
            improved=improved,
            metrics=metrics,
            headline={k: metrics.get(k) for k in ("eval/mcd", "gl/mcd", "eval/pesq", "gl/pesq")},
            summary=(
                f"mel L1 {score:.3f} (best {state.best_score:.3f} at step {state.best_step}), "
                f"MCD {metrics['eval/mcd']:.2f} dB (Griffin-Lim {metrics['gl/mcd']:.2f} dB)"
            ),
            milestones=milestones,
        )

    @property
    def limits(self) -> RunLimits:
        """vocoder.max_steps, max_minutes, eval_every, checkpoint_every; the host reads
        every step (the discriminators' update is decided there)."""
        v = self.config.vocoder
        return RunLimits(
            max_steps=v.max_steps,
            max_minutes=v.max_minutes,
            eval_every=v.eval_every,
            checkpoint_every=v.checkpoint_every,
            label="vocoder",
        )

    def after_rollback(self) -> None:
        """The epoch's decayed learning rates, times the guard's lowered scale."""
        epoch = self.data.finished_epochs
        for optimizer, scheduler in ((self.optim_g, self.sched_g), (self.optim_d, self.sched_d)):
            scheduler.last_epoch = epoch
            for group in optimizer.param_groups:  # the scale applies from the next step on
                group["lr"] = group["initial_lr"] * scheduler.gamma**epoch * self.guard.lr_scale

    def load_training_state(self, checkpoint: dict[str, Any]) -> None:
        self.generator.load_state_dict(checkpoint["generator"])
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        for name in ("optim_g", "optim_d", "sched_g", "sched_d", "scaler"):
            getattr(self, name).load_state_dict(checkpoint[name])

    def best(self) -> dict[str, Any]:
        state = self.state
        return {
            "best_score": state.best_score,
            "best_step": state.best_step,
            "beat_griffin_lim_at": state.beat_griffin_lim_at,
        }

    def progress_info(self, scalars: dict[str, float]) -> dict[str, str]:
        """The generator's mel L1."""
        return {"mel L1": f"{scalars['g_mel']:.3f}"}


def _grad_norm(network: torch.nn.Module) -> float:
    """The global L2 norm of a network's gradients (nothing is clipped: the paper does not)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


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
    if checkpoint is None:  # a new run: only into a directory of its own (outputs.py)
        check_output(run_dir, Kind.VOCODER_RUN)
    # 1. environment: threads, device, processes, precision, seeds
    env = setup_environment(config.train)
    # 2. data: the prepared audio, with its own mels or an acoustic model's (the run
    # directory is made only once they are known to fit: a refusal leaves none behind)
    prepared = load_prepared(prepared_dir)
    check_compatible(config, prepared, sections=("audio",))
    run_dir.mkdir(parents=True, exist_ok=True)
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
    session.announce(
        checkpoint is not None,
        parameters=sum(p.numel() for p in session.generator.parameters()),
        discriminator_parameters=sum(p.numel() for p in session.discriminator.parameters()),
        dataset=prepared.fingerprint,
        mels=mels.facts() if mels else RECORDINGS,
        warm_start_skipped=skipped,
    )
    for line in skipped:
        log.warning("warm start skipped %s", line)
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
