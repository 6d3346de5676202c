"""A tuning worker: ask a trial, run it in a subprocess, relay its reports, tell the outcome.

Several workers may serve one study (processes here, or on other machines sharing
a database). Each running trial carries its worker's host, pid and a heartbeat;
a trial whose worker died (same host and the pid is gone, or no heartbeat for
`tuning.grace_seconds`) is failed with that reason and queued again, up to
`tuning.retries` times, so a killed worker never leaves a trial RUNNING forever.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState

from tacotune.config.schema import Config
from tacotune.names import TrialOutcome
from tacotune.tuning import space

log = logging.getLogger(__name__)

STOP_WAIT_SECONDS = 60.0  # a trial asked to stop gets this long to save a checkpoint
MIN_TRIAL_SHARE = 0.25  # no trial starts with less than this share of its minutes left
MIN_TRIAL_MINUTES = 0.5  # ... nor with less than this before the deadline


@dataclass(frozen=True)
class WorkerSettings:
    """What every trial of this worker shares."""

    study_dir: Path
    prepared_dir: Path
    config: Config  # the study's base config (STUDY/config.yaml)
    target: int  # finished trials the study aims for
    threads: int  # torch threads per trial
    deadline: float = math.inf  # time.time() after which no new trial starts
    environment: dict[str, str] = field(default_factory=dict)  # extra variables for trials
    mlflow: Any = None  # callable(trial number, values) -> run id, or None


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, as its process reported it (or as its exit showed)."""

    state: TrialOutcome  # complete | pruned | fail | interrupted | lost (no outcome reported)
    value: float | None = None
    reason: str = ""


def worker_loop(study: optuna.Study, settings: WorkerSettings) -> int:
    """Run trials until the study has `target` finished ones or the deadline passes;
    returns how many trials this worker ran."""
    ran = 0
    while (minutes := trial_minutes(settings)) is not None:
        reclaim_stale_trials(study, settings.config, settings.study_dir)
        if counted_trials(study) >= settings.target:
            break
        trial = study.ask()
        try:
            values = space.sample(trial, settings.config)
        except optuna.exceptions.OptunaError as error:
            trial.set_user_attr("fail_reason", f"cannot sample: {error}")
            study.tell(trial, state=TrialState.FAIL)
            continue
        outcome = run_trial(study, trial, values, settings, minutes)
        _tell(study, trial, outcome)
        ran += 1
        if outcome.state == TrialOutcome.INTERRUPTED:
            raise KeyboardInterrupt
    return ran


def trial_minutes(settings: WorkerSettings, now: float | None = None) -> float | None:
    """The wall-clock budget of the next trial (0: none), or None when too little time is
    left before the study's deadline to start one.

    A trial never outlives the deadline: its budget is cut to the minutes left. It is not
    started at all when less than MIN_TRIAL_SHARE of its own budget (or MIN_TRIAL_MINUTES)
    remains, since a trial stopped that early says little about its settings.
    """
    own = settings.config.tuning.trial_max_minutes
    if math.isinf(settings.deadline):
        return own
    left = (settings.deadline - (time.time() if now is None else now)) / 60
    if left < max(MIN_TRIAL_MINUTES, MIN_TRIAL_SHARE * own):
        return None
    return min(own, left) if own > 0 else left


def counted_trials(study: optuna.Study) -> int:
    """Trials that count toward the target: finished ones (except failures queued again for
    a retry) and running ones."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if not t.user_attrs.get("requeued")
    )


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    values: dict[str, Any],
    settings: WorkerSettings,
    minutes: float,
) -> Outcome:
    """Train one trial in a subprocess (at most `minutes` of wall clock; 0: no limit),
    relaying its evaluations to Optuna."""
    trial_dir = settings.study_dir / "trials" / f"trial_{trial.number:04d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    trial.set_user_attr("heartbeat", time.time())
    trial.set_user_attr("run_dir", str(trial_dir / "run"))
    environment = {**os.environ, **settings.environment}
    if settings.mlflow is not None:
        run_id = settings.mlflow(trial.number, values)
        trial.set_user_attr("mlflow_run_id", run_id)
        environment["MLFLOW_RUN_ID"] = run_id
    report_read, report_write = os.pipe()
    verdict_read, verdict_write = os.pipe()
    command = _trial_command(settings, trial_dir, values, minutes, report_write, verdict_read)
    with (trial_dir / "trial.log").open("ab") as log_file:
        process = subprocess.Popen(
            command,
            pass_fds=(report_write, verdict_read),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    os.close(report_write)
    os.close(verdict_read)
    log.info("trial %d started: %s", trial.number, space.short_values(values))
    beating = _Heartbeat(trial, settings.config.tuning.heartbeat_seconds)
    try:
        with (
            os.fdopen(report_read, encoding="utf-8") as reports,
            os.fdopen(verdict_write, "w", buffering=1, encoding="utf-8") as verdicts,
        ):
            outcome = _relay(trial, reports, verdicts)
        process.wait()
    except KeyboardInterrupt:
        _stop(process)
        outcome = Outcome(TrialOutcome.INTERRUPTED, reason="interrupted; the trial is queued again")
    finally:
        beating.stop()
    if outcome.state == TrialOutcome.LOST:
        outcome = Outcome(
            TrialOutcome.FAIL,
            reason=f"the trial process exited with code "
            f"{process.returncode} without an outcome; see "
            f"{trial_dir / 'trial.log'}:\n{_tail(trial_dir)}",
        )
    return outcome


def _trial_command(
    settings: WorkerSettings,
    trial_dir: Path,
    values: dict[str, Any],
    minutes: float,
    report_fd: int,
    verdict_fd: int,
) -> list[str]:
    """`python -m tacotune.tuning.trial ...` for one trial (see trial.py)."""
    return [
        sys.executable,
        "-m",
        "tacotune.tuning.trial",
        "--config",
        str(settings.study_dir / "config.yaml"),
        "--prepared",
        str(settings.prepared_dir),
        "--run-dir",
        str(trial_dir / "run"),
        "--values",
        json.dumps(values),
        "--threads",
        str(settings.threads),
        "--max-minutes",
        str(minutes),
        "--report-fd",
        str(report_fd),
        "--verdict-fd",
        str(verdict_fd),
    ]


def _relay(trial: optuna.Trial, reports: IO[str], verdicts: IO[str]) -> Outcome:
    """Answer every evaluation with a pruning verdict; return the trial's last word.

    The pruner sees the best score so far, not the latest: early scores are noisy, and a
    trial must not be pruned for one unlucky evaluation after a good one."""
    best = math.inf
    for line in reports:
        message = json.loads(line)
        if message["type"] == "evaluation":
            score = message["score"]
            best = min(best, math.inf if score is None else score)
            trial.report(best, message["step"])
            verdicts.write("prune\n" if trial.should_prune() else "continue\n")
        else:
            state = TrialOutcome(message["state"])
            return Outcome(state, message.get("value"), message.get("reason", ""))
    return Outcome(TrialOutcome.LOST)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    if outcome.state == TrialOutcome.COMPLETE:
        study.tell(trial, outcome.value)
        log.info("trial %d complete: score %.4f", trial.number, outcome.value)
    elif outcome.state == TrialOutcome.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned (%s)", trial.number, outcome.reason)
    else:
        trial.set_user_attr("fail_reason", outcome.reason)
        if outcome.state == TrialOutcome.INTERRUPTED:
            trial.set_user_attr("requeued", True)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, outcome.reason)


def reclaim_stale_trials(study: optuna.Study, config: Config, study_dir: Path) -> list[int]:
    """Fail RUNNING trials whose worker died, and queue them again (bounded retries).

    Workers on one machine take turns (a file lock); a worker elsewhere that reclaims
    the same trial first makes our tell fail, and that trial is simply skipped.
    """
    with (study_dir / ".reclaim.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _reclaim(study, config)


def _reclaim(study: optuna.Study, config: Config) -> list[int]:
    host, now = socket.gethostname(), time.time()
    reclaimed = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker: dict[str, Any] = frozen.user_attrs.get("worker") or {}
        heartbeat = frozen.user_attrs.get(
            "heartbeat", frozen.datetime_start.timestamp() if frozen.datetime_start else now
        )
        dead_here = worker.get("host") == host and not _alive(worker["pid"])
        silent = now - heartbeat > config.tuning.grace_seconds
        if not (dead_here or silent):
            continue
        reason = (
            f"its worker (pid {worker['pid']}) died"
            if dead_here
            else f"no heartbeat for {now - heartbeat:.0f} s"
        )
        # Optuna exposes no public way to address another process's running trial
        orphan = optuna.trial.Trial(study, frozen._trial_id)
        retries = frozen.user_attrs.get("retries", 0)
        requeue = retries < config.tuning.retries
        try:
            orphan.set_user_attr("fail_reason", reason)
            orphan.set_user_attr("requeued", requeue)
            study.tell(frozen.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another machine was first
            continue
        except ValueError as error:  # ... and finished it before we read it again
            if not str(error).startswith("Cannot tell a "):
                raise
            continue
        if requeue:
            study.enqueue_trial(
                frozen.params, user_attrs={"retry_of": frozen.number, "retries": retries + 1}
            )
        log.warning("trial %d failed: %s", frozen.number, reason)
        reclaimed.append(frozen.number)
    return reclaimed


class _Heartbeat:
    """Records `time.time()` on the trial every `interval` seconds until stopped."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial, self._interval = trial, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tacotune-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval):
            self._trial.set_user_attr("heartbeat", time.time())

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ask a trial to stop (it saves last.pt), then insist."""
    process.terminate()
    try:
        process.wait(STOP_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _tail(trial_dir: Path, lines: int = 15) -> str:
    text = (trial_dir / "trial.log").read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
