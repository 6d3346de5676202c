"""Where a run's numbers and events go: one funnel for files, TensorBoard and friends.

The run-directory contract (users and later stages rely on it):
    metrics.jsonl  one JSON object per evaluation: step, wall_time, every named metric
    events.jsonl   one JSON object per event: time, step, event, details
    tensorboard/   scalars every few steps, figures and audio at evaluations
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tacotune.audio import fit_full_scale
from tacotune.plotting import save_figure

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"

EventListener = Callable[[dict[str, Any]], None]


class RunTracker:
    """Writes a run's metrics, events, figures and audio (a no-op on non-zero ranks)."""

    def __init__(self, run_dir: Path, active: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.active = active
        self.listeners: list[EventListener] = []
        self._tb: Any = None
        if active and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener(event)` for every event (alerts, tuning, tests)."""
        self.listeners.append(listener)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        """Frequent scalars: TensorBoard only."""
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{prefix}/{name}", value, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """One line of metrics.jsonl, mirrored to TensorBoard."""
        if not self.active:
            return
        record = {"step": step, "wall_time": time.time(), **_finite_or_none(metrics)}
        _append(self.run_dir / METRICS_FILE, record)
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def event(self, step: int, name: str, **details: Any) -> None:
        """One line of events.jsonl; listeners are told too."""
        record = {"time": time.time(), "step": step, "event": name, **details}
        if self.active:
            _append(self.run_dir / EVENTS_FILE, record)
        for listener in self.listeners:
            listener(record)

    def figure(self, tag: str, fig: Figure, step: int, path: Path | None = None) -> None:
        """A figure to TensorBoard and optionally to a PNG file (the figure is closed)."""
        if not self.active:
            return
        if self._tb is not None:
            self._tb.add_figure(tag, fig, step, close=False)
        if path is not None:
            save_figure(fig, path)

    def audio(self, tag: str, samples: np.ndarray, sample_rate: int, step: int) -> None:
        """A clip to TensorBoard."""
        if self._tb is not None:
            self._tb.add_audio(tag, fit_full_scale(samples)[None, :], step, sample_rate=sample_rate)

    def close(self) -> None:
        """Flush everything."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a JSONL file. The last line may be being written right now (cut
    mid-record, even mid-character): it is skipped quietly; a broken earlier line is
    skipped with a warning."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    records = []
    for number, raw in enumerate(lines, start=1):
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number < len(lines):
                log.warning("skipping unreadable line %d of %s", number, path)
    return records


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN/inf: non-finite values are written as null."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
