"""Where a run's numbers and events go: one funnel for files, TensorBoard and friends.

The run-directory contract (users and later stages rely on it):
    metrics.jsonl  one JSON object per evaluation: step, wall_time, every named metric
    events.jsonl   one JSON object per event: time, step, event, details
    tensorboard/   scalars every few steps, figures and audio at evaluations

Optionally an MLflow run mirrors it (`attach_mlflow`, see tracking/mlflow.py): params once,
every evaluation, the outcome as a tag, and at the end the run's files as artifacts.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy/matplotlib/torch stay unimported for readers (monitor, report)
    import numpy as np
    from matplotlib.figure import Figure

    from tacotune.tracking.mlflow import MlflowRun

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"

EventListener = Callable[[dict[str, Any]], None]
FINAL_EVENTS = ("finished", "diverged", "interrupted", "stopped")  # the last event of a run
OUTCOME_TAG = "tacotune.outcome"  # finished | early_stop | diverged | interrupted | stopped
STOP_REASON_TAG = "tacotune.stop_reason"  # the final event's reason, where it has one


class RunTracker:
    """Writes a run's metrics, events, figures and audio (a no-op on non-zero ranks)."""

    def __init__(self, run_dir: Path, active: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.active = active
        self.listeners: list[EventListener] = []
        self._tb: Any = None
        self._mlflow: MlflowRun | None = None
        self._early_stopped = False
        if active and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener(event)` for every event (alerts, tuning, tests)."""
        self.listeners.append(listener)

    def attach_mlflow(self, run: MlflowRun, params: Mapping[str, Any]) -> None:
        """Mirror this run into an MLflow run: `params` now (once), every evaluation, the
        outcome tag; `close()` uploads the run's files and ends it. A no-op on other ranks."""
        if not self.active:
            return
        if self._mlflow is not None:
            raise RuntimeError(f"this run already mirrors into MLflow run {self._mlflow.run_id}")
        run.log_params(params)
        self._mlflow = run

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
        if self._mlflow is not None:
            self._mlflow.log_metrics(step, metrics)

    def event(self, step: int, name: str, **details: Any) -> None:
        """One line of events.jsonl; listeners are told too."""
        record = {"time": time.time(), "step": step, "event": name, **details}
        if self.active:
            _append(self.run_dir / EVENTS_FILE, record)
        if self._mlflow is not None:
            self._mirror_outcome(self._mlflow, name, details)
        for listener in self.listeners:
            listener(record)

    def figure(self, tag: str, fig: Figure, step: int, path: Path | None = None) -> None:
        """A figure to TensorBoard and optionally to a PNG file (the figure is closed)."""
        if not self.active:
            return
        if self._tb is not None:
            self._tb.add_figure(tag, fig, step, close=False)
        if path is not None:
            from tacotune.plotting import save_figure

            save_figure(fig, path)

    def audio(self, tag: str, samples: np.ndarray, sample_rate: int, step: int) -> None:
        """A clip to TensorBoard."""
        if self._tb is not None:
            from tacotune.audio import fit_full_scale

            self._tb.add_audio(tag, fit_full_scale(samples)[None, :], step, sample_rate=sample_rate)

    def close(self, status: str = "FINISHED") -> None:
        """Flush everything; an MLflow run gets the run's files and ends with `status`
        (FINISHED, FAILED or KILLED)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        run, self._mlflow = self._mlflow, None
        if run is not None:
            try:
                self._upload_files(run)
            finally:
                run.end(status)

    def _mirror_outcome(self, run: MlflowRun, name: str, details: dict[str, Any]) -> None:
        """The final event becomes the tag tacotune.outcome (a finished run that stopped
        early reads early_stop); its reason becomes tacotune.stop_reason."""
        if name == "early_stop":
            self._early_stopped = True
        if name not in FINAL_EVENTS:
            return
        outcome = "early_stop" if name == "finished" and self._early_stopped else name
        tags = {OUTCOME_TAG: outcome}
        if details.get("reason"):
            tags[STOP_REASON_TAG] = str(details["reason"])
        run.set_tags(tags)

    def _upload_files(self, run: MlflowRun) -> None:
        """config.yaml, metrics, events, the newest samples and the inference checkpoint
        (checkpoints/model.pt, as model/model.pt: weights without optimizer state)."""
        for name in ("config.yaml", METRICS_FILE, EVENTS_FILE):
            if (self.run_dir / name).is_file():
                run.log_artifact(self.run_dir / name)
        samples = newest_samples(self.run_dir)
        if samples is not None:
            run.log_artifact(samples, "samples")
        model = self.run_dir / "checkpoints" / "model.pt"
        if model.is_file():
            run.log_artifact(model, "model")


def newest_samples(run_dir: Path) -> Path | None:
    """RUN/samples/step_N/ with the largest N, if any."""
    steps = [
        p
        for p in (run_dir / "samples").glob("step_*")
        if p.is_dir() and p.name.removeprefix("step_").isdigit()
    ]
    return max(steps, key=lambda p: int(p.name.removeprefix("step_")), default=None)


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
