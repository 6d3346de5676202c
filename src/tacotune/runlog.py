"""A run's log files and the listeners that hear everything a run reports.

The run-directory contract (users, the monitor, `auto` and later stages rely on it):
    metrics.jsonl  one JSON object per evaluation: step, wall_time, every named metric
    events.jsonl   one JSON object per event: time, step, event (names.Event), details

`RunLog` writes both files (on rank 0) and passes every event, evaluation, training
scalar, figure and audio clip on to its `RunListener`s. The core trains without knowing
who listens; the operations layer attaches TensorBoard, MLflow, alerts and the tuner's
pruning callback from outside (tracking/, alerts/, tuning/trial.py). A listener may end
the run by raising `StopTraining` from `on_evaluation`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tacotune.names import Event, RunStatus

if TYPE_CHECKING:  # numpy/matplotlib stay unimported for readers (monitor, report)
    import numpy as np
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


class StopTraining(Exception):
    """Raise from `RunListener.on_evaluation` to end the run now (recorded as event
    "stopped" with the exception's text as the reason)."""


class RunListener:
    """Hears what a run reports (rank 0 only). Every method is a no-op: override what you need.

    A listener must not slow training down: do slow work (network) elsewhere, as the
    alert dispatcher does. Exceptions other than `StopTraining` end the run as a failure.
    """

    def on_event(self, record: Mapping[str, Any]) -> None:
        """One line of events.jsonl: {"time", "step", "event", ...details}."""

    def on_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Training scalars of one step (every `tracking.log_every` steps)."""

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """One evaluation's metrics (also a line of metrics.jsonl); may raise StopTraining."""

    def on_figure(self, tag: str, figure: Figure, step: int) -> None:
        """A figure of an evaluation (already saved as PNG in the run directory; do not close)."""

    def on_audio(self, tag: str, samples: np.ndarray, sample_rate: int, step: int) -> None:
        """An audio clip of an evaluation (already saved as wav in the run directory)."""

    def on_close(self, status: RunStatus) -> None:
        """The run is over (its files are complete): flush, upload, deliver."""


class RunLog:
    """Writes metrics.jsonl and events.jsonl and tells the listeners (a no-op off rank 0)."""

    def __init__(
        self, run_dir: Path, active: bool = True, listeners: Sequence[RunListener] = ()
    ) -> None:
        self.run_dir = run_dir
        self.active = active
        self.listeners = list(listeners) if active else []
        self._closed = False

    def event(self, step: int, name: Event, **details: Any) -> None:
        """One line of events.jsonl; listeners are told too."""
        if not self.active:
            return
        record = {"time": time.time(), "step": step, "event": str(name), **details}
        append_jsonl(self.run_dir / EVENTS_FILE, record)
        for listener in self.listeners:
            listener.on_event(record)

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """One line of metrics.jsonl; then every listener (one may raise StopTraining)."""
        if not self.active:
            return
        record = {"step": step, "wall_time": time.time(), **finite_or_none(metrics)}
        append_jsonl(self.run_dir / METRICS_FILE, record)
        for listener in self.listeners:
            listener.on_evaluation(step, metrics)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Training scalars: listeners only (metrics.jsonl holds evaluations)."""
        for listener in self.listeners:
            listener.on_scalars(step, values)

    def figure(self, tag: str, figure: Figure, step: int, path: Path) -> None:
        """Save a figure as PNG, show it to the listeners, close it."""
        if not self.active:
            return
        from tacotune.plotting import close_figure, save_figure

        save_figure(figure, path, close=False)
        for listener in self.listeners:
            listener.on_figure(tag, figure, step)
        close_figure(figure)

    def audio(self, tag: str, samples: np.ndarray, sample_rate: int, step: int, path: Path) -> None:
        """Save a clip as wav and hand it to the listeners."""
        if not self.active:
            return
        from tacotune.audio import save_wav

        save_wav(path, samples, sample_rate)
        for listener in self.listeners:
            listener.on_audio(tag, samples, sample_rate, step)

    def close(self, status: RunStatus) -> None:
        """Tell every listener the run is over (once), in order; every listener is closed
        even if an earlier one raises, and the error is raised afterwards."""
        if self._closed:
            return
        self._closed = True
        with contextlib.ExitStack() as closing:  # runs every callback, then re-raises
            for listener in reversed(self.listeners):  # (callbacks run last-in first-out)
                closing.callback(listener.on_close, status)


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


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (a reader skips a line cut by a crash, see `read_jsonl`)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def finite_or_none(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN/inf: non-finite values are written as null."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def newest_samples(run_dir: Path) -> Path | None:
    """RUN/samples/step_N/ with the largest N, if any."""
    steps = [
        p
        for p in (run_dir / "samples").glob("step_*")
        if p.is_dir() and p.name.removeprefix("step_").isdigit()
    ]
    return max(steps, key=lambda p: int(p.name.removeprefix("step_")), default=None)
