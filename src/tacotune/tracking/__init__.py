"""Where a run's numbers go besides its own files: TensorBoard and MLflow, as run listeners.

The run writes metrics.jsonl and events.jsonl itself (tacotune.runlog); this package
attaches from outside:
    TensorBoardListener  RUN/tensorboard/: scalars every few steps, figures and audio at
                         evaluations
    MlflowListener       an MLflow run mirroring the run (tracking/mlflow.py): params once,
                         every evaluation, the outcome as a tag, and at the end the run's
                         files as artifacts
`run_listeners` builds what a config asks for, plus alerts; the CLI, `auto` and the
tuner's trial process pass its result to `train(..., listeners=...)`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tacotune.names import FINAL_EVENTS, Event, RunStatus
from tacotune.runlog import EVENTS_FILE, METRICS_FILE, RunListener, newest_samples

if TYPE_CHECKING:  # numpy/matplotlib/torch/mlflow stay unimported until a listener is used
    import numpy as np
    from matplotlib.figure import Figure

    from tacotune.config.schema import Config
    from tacotune.tracking.mlflow import MlflowRun

log = logging.getLogger(__name__)

OUTCOME_TAG = "tacotune.outcome"  # finished | early_stop | diverged | interrupted | stopped
STOP_REASON_TAG = "tacotune.stop_reason"  # the final event's reason, where it has one


class TensorBoardListener(RunListener):
    """RUN/tensorboard/ for `tensorboard --logdir RUN/tensorboard` (opened on first use)."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = run_dir / "tensorboard"
        self._writer: Any = None

    def on_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Training scalars as train/<name>."""
        for name, value in values.items():
            self._tb.add_scalar(f"train/{name}", value, step)

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every finite evaluation metric under its own name."""
        for name, value in metrics.items():
            if math.isfinite(value):
                self._tb.add_scalar(name, value, step)

    def on_figure(self, tag: str, figure: Figure, step: int) -> None:
        """An evaluation figure."""
        self._tb.add_figure(tag, figure, step, close=False)

    def on_audio(self, tag: str, samples: np.ndarray, sample_rate: int, step: int) -> None:
        """An evaluation clip."""
        from tacotune.audio import fit_full_scale

        self._tb.add_audio(tag, fit_full_scale(samples)[None, :], step, sample_rate=sample_rate)

    def on_close(self, status: RunStatus) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def _tb(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory))
        return self._writer


class MlflowListener(RunListener):
    """Mirrors a run into one MLflow run: params now (once), every evaluation, the outcome
    tag; at the end the run's files are uploaded and the MLflow run ends with the status."""

    def __init__(self, run: MlflowRun, run_dir: Path, params: Mapping[str, Any]) -> None:
        run.log_params(params)
        self.run = run
        self.run_dir = run_dir
        self._early_stopped = False
        self._ended = False

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every finite metric at `step`."""
        self.run.log_metrics(step, metrics)

    def on_event(self, record: Mapping[str, Any]) -> None:
        """The final event becomes the tag tacotune.outcome (a finished run that stopped
        early reads early_stop); its reason becomes tacotune.stop_reason."""
        name = record.get("event")
        if name == Event.EARLY_STOP:
            self._early_stopped = True
        if name not in FINAL_EVENTS:
            return
        outcome = "early_stop" if name == Event.FINISHED and self._early_stopped else str(name)
        tags = {OUTCOME_TAG: outcome}
        if record.get("reason"):
            tags[STOP_REASON_TAG] = str(record["reason"])
        self.run.set_tags(tags)

    def on_close(self, status: RunStatus) -> None:
        """Upload the run's files, then end the MLflow run with `status` (once)."""
        if self._ended:
            return
        self._ended = True
        try:
            self._upload_files()
        finally:
            self.run.end(str(status))

    def _upload_files(self) -> None:
        """config.yaml, metrics, events, the newest samples and the inference checkpoint
        (checkpoints/model.pt, as model/model.pt: weights without optimizer state)."""
        for name in ("config.yaml", METRICS_FILE, EVENTS_FILE):
            if (self.run_dir / name).is_file():
                self.run.log_artifact(self.run_dir / name)
        samples = newest_samples(self.run_dir)
        if samples is not None:
            self.run.log_artifact(samples, "samples")
        model = self.run_dir / "checkpoints" / "model.pt"
        if model.is_file():
            self.run.log_artifact(model, "model")


def run_listeners(
    config: Config, run_dir: Path, mlflow_run: MlflowRun | None = None
) -> list[RunListener]:
    """What a training run started from the command line reports to: TensorBoard
    (`tracking.tensorboard`), MLflow (`mlflow_run`, else the run handed over in
    MLFLOW_RUN_ID, else a new one when `tracking.mlflow` is on) and the alerts.

    Empty on every process but the first under torchrun (rank 0 reports for all).
    """
    from tacotune.alerts import build_dispatcher
    from tacotune.train.setup import process_rank

    if process_rank() != 0:
        return []
    listeners: list[RunListener] = []
    if config.tracking.tensorboard:
        listeners.append(TensorBoardListener(run_dir))
    if mlflow_run is None and (config.tracking.mlflow or "MLFLOW_RUN_ID" in os.environ):
        from tacotune.tracking.mlflow import mlflow_run_for

        mlflow_run = mlflow_run_for(config, run_dir)
    if mlflow_run is not None:
        from tacotune.tracking.mlflow import flat_params

        listeners.append(MlflowListener(mlflow_run, run_dir, flat_params(config)))
    listeners.append(build_dispatcher(config.alerts, run_dir))
    return listeners
