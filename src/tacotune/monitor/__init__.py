"""`tacotune monitor`: watch a run or a study from its files, with dashboards beside it.

live.py        the run view and the refresh loop (`monitor`)
dashboards.py  TensorBoard, optuna-dashboard and the MLflow UI on 127.0.0.1
"""

from tacotune.monitor.live import (
    MonitorError,
    RunSnapshot,
    View,
    monitor,
    render,
    render_run,
    run_active,
    snapshot,
    snapshot_run,
)

__all__ = [
    "MonitorError",
    "RunSnapshot",
    "View",
    "monitor",
    "render",
    "render_run",
    "run_active",
    "snapshot",
    "snapshot_run",
]
