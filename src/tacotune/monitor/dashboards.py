"""Local dashboards beside `tacotune monitor --dashboards`, bound to 127.0.0.1 only.

A run: TensorBoard on its tensorboard/ (and the MLflow UI if it logged to MLflow).
A study: optuna-dashboard on its storage, TensorBoard over every trial, the MLflow UI.
The caller stops them (`stop_dashboards`); nothing is ever served on 0.0.0.0.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tacotune.config import load_config
from tacotune.errors import ConfigError, TacotuneError
from tacotune.tracking.mlflow import default_uri

log = logging.getLogger(__name__)

WAIT_SECONDS = 20.0  # how long a dashboard may take to answer
PORT = "{port}"  # replaced by a free port in a command


class DashboardError(TacotuneError):
    """A dashboard could not be started, or there is nothing to show."""


@dataclass(frozen=True)
class Dashboard:
    """A started dashboard process and where it serves."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = None  # the process's stderr (an anonymous temporary file)


def start_dashboards(directory: Path, timeout: float = WAIT_SECONDS) -> list[Dashboard]:
    """Every dashboard that fits a run or study directory (see the module docstring)."""
    commands = dashboard_commands(Path(directory))
    if not commands:
        raise DashboardError(
            f"nothing to serve for {directory}: no tensorboard/ directory "
            "(tracking.tensorboard=false?), no MLflow store, and it is not a study"
        )
    started: list[Dashboard] = []
    try:
        for name, command in commands:
            started.append(_start(name, command, timeout))
    except BaseException:  # an error or Ctrl-C: leave no process behind
        stop_dashboards(started)
        raise
    return started


def dashboard_commands(directory: Path) -> list[tuple[str, list[str]]]:
    """(name, command with PORT) for each dashboard this directory has data for."""
    python = sys.executable
    commands: list[tuple[str, list[str]]] = []
    study = directory / "study.json"
    if study.exists():
        storage = json.loads(study.read_text(encoding="utf-8"))["storage"]
        hint = [] if "://" in storage else ["--storage-class", "JournalFileStorage"]
        commands.append(
            (
                "optuna-dashboard",
                [
                    _console_script("optuna-dashboard"),  # the package has no __main__
                    storage,
                    *hint,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    PORT,
                ],
            )
        )
        logdir, mlflow_uri = directory / "trials", _mlflow_uri(directory, directory)
    else:
        logdir, mlflow_uri = directory / "tensorboard", _mlflow_uri(directory, directory.parent)
    if logdir.is_dir():
        commands.append(
            (
                "TensorBoard",
                [
                    python,
                    "-m",
                    "tensorboard.main",
                    "--logdir",
                    str(logdir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    PORT,
                ],
            )
        )
    if mlflow_uri:
        commands.append(
            (
                "MLflow",
                [
                    python,
                    "-m",
                    "mlflow",
                    "ui",
                    "--backend-store-uri",
                    mlflow_uri,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    PORT,
                ],
            )
        )
    return commands


def _console_script(name: str) -> str:
    """The installed command `name`, preferably beside this interpreter (the same venv)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise DashboardError(
            f"{name} is not installed; install it with: pip install 'tacotune[tune]'"
        )
    return found


def _mlflow_uri(directory: Path, default_root: Path) -> str:
    """The MLflow store a run or study logged to, or "" when it did not."""
    try:
        tracking = load_config(directory / "config.yaml").tracking
    except ConfigError as error:
        log.warning("no MLflow UI: %s/config.yaml cannot be read (%s)", directory, error)
        return ""
    study = (directory / "study.json").exists()
    if not (tracking.mlflow or study):
        return ""
    if tracking.mlflow_uri:
        return tracking.mlflow_uri
    return default_uri(default_root) if (default_root / "mlflow.db").exists() else ""


def stop_dashboards(dashboards: list[Dashboard]) -> None:
    """Terminate every dashboard, wait for it, and kill the ones that do not end."""
    for dashboard in dashboards:
        dashboard.process.terminate()  # a no-op once the process has ended
        try:
            dashboard.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            dashboard.process.kill()
            dashboard.process.wait(timeout=5)
        if dashboard.log is not None:
            dashboard.log.close()


def _start(name: str, command: list[str], timeout: float) -> Dashboard:
    port = _free_port()
    command = [str(port) if part == PORT else part for part in command]
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process; closed by stop
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )
    except OSError as error:
        log.close()
        raise DashboardError(f"cannot start {name} ({' '.join(command)}): {error}") from error
    dashboard = Dashboard(name, f"http://127.0.0.1:{port}/", process, log)
    try:
        _wait_until_serving(dashboard, timeout)
    except BaseException:
        stop_dashboards([dashboard])
        raise
    return dashboard


def _wait_until_serving(dashboard: Dashboard, timeout: float) -> None:
    """Poll the URL until it answers 200; DashboardError if it dies or stays silent."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while dashboard.process.poll() is None and time.monotonic() < deadline:
        try:
            with opener.open(dashboard.url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            pass  # not listening yet
        time.sleep(0.2)
    code = dashboard.process.poll()
    why = f"did not answer within {timeout:.0f} s" if code is None else f"exited with code {code}"
    raise DashboardError(
        f"{dashboard.name} {why} at {dashboard.url}; its last output:\n{_tail(dashboard.log)}"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(log: IO[bytes] | None, size: int = 2000) -> str:
    """The end of a log file the child still writes to (pread: the shared offset stays put)."""
    if log is None:
        return ""
    length = os.fstat(log.fileno()).st_size
    data = os.pread(log.fileno(), size, max(length - size, 0))
    return data.decode("utf-8", errors="replace").strip() or "(nothing)"
