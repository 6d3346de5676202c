"""What a run writes besides metrics: its state, checkpoints and listenable samples."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tacotune.audio import griffin_lim
from tacotune.checkpoint import prune_step_checkpoints, save_checkpoint
from tacotune.config.schema import Config
from tacotune.plotting import alignment_figure, gate_figure, mel_figure
from tacotune.runlog import RunLog
from tacotune.train.evaluate import Evaluation

log = logging.getLogger(__name__)

LISTENED = 2  # validation utterances rendered as audio (and mel/stop figures) per evaluation


@dataclass
class TrainState:
    """Counters the loop keeps; saved in every checkpoint."""

    # what a rollback leaves as it was (the wall clock; subclasses add the run's best)
    ROLLBACK_KEEPS: ClassVar[tuple[str, ...]] = ("elapsed", "eval_seconds")

    step: int = 0
    elapsed: float = 0.0  # wall seconds so far, evaluations included (resume keeps the budget)
    eval_seconds: float = 0.0  # of which spent evaluating
    sums: dict[str, float] = field(default_factory=dict)  # training scalars since last eval
    count: int = 0

    def accumulate(self, scalars: dict[str, float]) -> None:
        """Add one step's training scalars to the running means."""
        for name, value in scalars.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def train_means(self) -> dict[str, float]:
        """Means since the last call, as `train_mean/<name>` (never `train/<name>`, the
        per-step values' tag: one name, one meaning); resets the sums."""
        means = (
            {f"train_mean/{k}": v / self.count for k, v in self.sums.items()} if self.count else {}
        )
        self.sums, self.count = {}, 0
        return means

    def step_rate(self, elapsed: float) -> float:
        """Steps per second over the whole run."""
        return self.step / elapsed if elapsed > 0 else 0.0

    def kept_on_rollback(self) -> dict[str, Any]:
        """The fields a rollback does not undo (ROLLBACK_KEEPS), for `load` after it."""
        return {name: getattr(self, name) for name in self.ROLLBACK_KEEPS}

    def saved(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    def load(self, saved: dict[str, Any]) -> None:
        """Inverse of `saved`."""
        for name, value in saved.items():
            setattr(self, name, value)


GOOD_CHECKPOINT = "good.pt"  # the rollback target when last.pt is not one (see below)


def write_checkpoints(
    directory: Path,
    payload: dict[str, Any],
    *,
    good: bool,
    is_best: bool,
    step_copy: bool,
    keep: int,
    inference_keys: tuple[str, ...],
) -> None:
    """The checkpoint policy: each file holds the least its purpose needs.

    - last.pt, full training state (resume, and rollback while it is good): always.
    - good.pt, full training state: the newest checkpoint written with no bad step since the
      one before it, kept only while last.pt is not such a one. Writing a checkpoint that is
      not good moves a good last.pt aside to good.pt (a rename, no copy); writing a good one
      removes good.pt. So a healthy run holds one full state, not two.
    - best.pt (when the score improved) and step_N.pt (the newest `keep`): weights, config
      and state only (`inference_keys`): what synthesis, the registry, export and warm
      start read; about a third of a full checkpoint.
    Every file is written atomically; none is a link to another.
    """
    last, aside = directory / "last.pt", directory / GOOD_CHECKPOINT
    if not good and last.exists() and not aside.exists():
        os.replace(last, aside)  # the rollback target moves aside before last.pt is replaced
    save_checkpoint(last, payload)
    if good:
        aside.unlink(missing_ok=True)  # last.pt is the rollback target now
    light = {key: payload[key] for key in inference_keys}
    if is_best:
        save_checkpoint(directory / "best.pt", light)
    if step_copy and keep > 0:
        save_checkpoint(directory / f"step_{payload['state']['step']:07d}.pt", light)
        prune_step_checkpoints(directory, keep)


def rollback_checkpoint(directory: Path) -> Path | None:
    """Where a rollback goes (good.pt, else last.pt), or None before the first checkpoint."""
    for name in (GOOD_CHECKPOINT, "last.pt"):
        if (directory / name).is_file():
            return directory / name
    return None


def write_samples(
    run_dir: Path, run_log: RunLog, evaluation: Evaluation, config: Config, step: int
) -> None:
    """Figures and Griffin-Lim audio of the free-running samples, to samples/ and the
    listeners (TensorBoard): an alignment figure for every sample; the mel, the stop curve
    and a wav for the probes and the first LISTENED validation utterances (Griffin-Lim of
    every decode would cost more than the evaluation itself), cut to the longest clip the
    data may hold (data.max_duration: what runs longer is a decode that failed to stop)."""
    if not run_log.active:
        return
    directory = run_dir / "samples" / f"step_{step:07d}"
    directory.mkdir(parents=True, exist_ok=True)
    validation = 0
    for sample in evaluation.samples:
        name = sample.utterance.name
        m = sample.metrics
        stop = (
            "gate stop"
            if sample.stopped_by_gate
            else "stopped at end (gate silent)"
            if sample.stopped_at_end
            else "HIT MAX STEPS"
        )
        title = f"{name} step {step}: diagonality {m.diagonality:.2f}, focus {m.focus:.2f}, {stop}"
        run_log.figure(
            f"alignment/{name}",
            alignment_figure(sample.alignment, title),
            step,
            directory / f"{name}_alignment.png",
        )
        if sample.utterance.recording is not None:
            validation += 1
            if validation > LISTENED:
                continue
        run_log.figure(
            f"mel/{name}", mel_figure(sample.mel, name), step, directory / f"{name}_mel.png"
        )
        run_log.figure(
            f"gate/{name}",
            gate_figure(sample.gate, config.model.gate_threshold, name),
            step,
            directory / f"{name}_gate.png",
        )
        if sample.mel.shape[1] > 0:
            longest = round(config.data.max_duration * config.audio.sample_rate)
            frames = max(1, longest // config.audio.hop_length)
            audio = griffin_lim(sample.mel[:, :frames], config.audio).numpy()
            run_log.audio(
                f"audio/{name}", audio, config.audio.sample_rate, step, directory / f"{name}.wav"
            )
    results = [
        {
            "name": s.utterance.name,
            "text": s.utterance.text,
            "frames": int(s.mel.shape[1]),
            "expected_frames": round(s.utterance.expected_frames, 1),
            "stopped_by_gate": s.stopped_by_gate,
            "stopped_at_end": s.stopped_at_end,
            "hit_max_steps": s.hit_max_steps,
            "aligned": s.metrics.aligned,
            **asdict(s.metrics),
        }
        for s in evaluation.samples
    ]
    (directory / "results.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8"
    )
