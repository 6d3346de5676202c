"""Exact resume: a run's last checkpoint read once, with the overrides applied before
anything (the listeners included) is built from its config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.config.load import override_config
from tacotune.config.schema import Config
from tacotune.errors import ConfigError
from tacotune.train.records import GOOD_CHECKPOINT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """A run's last checkpoint, read once, and its config with the overrides applied:
    what the caller builds listeners from and what the run continues with."""

    run_dir: Path
    checkpoint: dict[str, Any]
    config: Config


def read_resume(
    run_dir: str | Path,
    overrides: Sequence[str],
    overridable: set[str],
    max_steps: Callable[[Config], int],
    steps_key: str,
    check: Callable[[dict[str, Any]], None] = lambda checkpoint: None,
) -> ResumePoint:
    """Read `run_dir`'s last checkpoint, `check` that it is of the right kind, and apply
    `overrides` (only `overridable` keys); refuse a run that already reached its step
    limit (`steps_key`) unless an override raises it."""
    checkpoint = load_checkpoint(_resume_file(Path(run_dir)))
    check(checkpoint)
    refused = sorted({item.partition("=")[0].strip() for item in overrides} - overridable)
    if refused:
        raise ConfigError(
            f"--resume continues with the run's own config; {refused} cannot "
            f"change. Only {sorted(overridable)} may."
        )
    config = override_config(checkpoint_config(checkpoint), overrides)
    step = int(checkpoint["state"]["step"])
    if step >= max_steps(config):
        raise ConfigError(
            f"{run_dir} already trained {step} steps, its {steps_key} is "
            f"{max_steps(config)}: nothing is left to do. To train on, resume with "
            f"--set {steps_key}=N (N > {step})"
        )
    return ResumePoint(Path(run_dir), checkpoint, config)


def _resume_file(run_dir: Path) -> Path:
    """checkpoints/last.pt; good.pt when a run stopped between moving a good last.pt aside
    and writing the next one (train/records.py), with a warning."""
    if not run_dir.is_dir():
        return run_dir  # load_checkpoint says what is wrong with it
    last, aside = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / GOOD_CHECKPOINT
    if not last.exists() and aside.is_file():
        log.warning(
            "%s has no last.pt (the run stopped while writing it): resuming from %s", run_dir, aside
        )
        return aside
    return last
