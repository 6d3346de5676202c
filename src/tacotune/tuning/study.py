"""`tacotune tune PREPARED -o STUDY`: a resumable hyperparameter search.

    STUDY/config.yaml      the base config every trial starts from (the search varies it)
    STUDY/study.json       study name, storage, prepared dataset
    STUDY/journal.log      the Optuna journal (default storage)
    STUDY/mlflow.db        MLflow: one parent run for the study, one nested run per trial
    STUDY/trials/trial_N/  each trial's run directory and log
    STUDY/summary.json/md  every trial: state, score, values, why it failed

Running the same command again continues the study. With `--workers W` the
trials run in W worker processes; more workers may join from other machines by
pointing `--storage` at the same database.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tacotune import progress
from tacotune.config.load import config_to_dict, load_config, save_config
from tacotune.config.schema import Config
from tacotune.errors import ConfigError
from tacotune.files import write_json_atomic
from tacotune.tuning.storage import check_storage_url, load_or_create_study, storage_url
from tacotune.tuning.worker import WorkerSettings, counted_trials, worker_loop

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
# what may change when a study is continued
CONTINUE_OVERRIDABLE = {"trials", "trial_max_minutes"}


@dataclass(frozen=True)
class OpenStudy:
    """A study directory opened: the Optuna study, its study.json and its base config."""

    study: optuna.Study
    meta: dict[str, Any]  # name, storage, prepared_dir
    config: Config  # STUDY/config.yaml


def open_study(study_dir: Path, worker: int = 0) -> OpenStudy:
    """The study of a directory written by `tacotune tune` (or `auto`), sampling for the
    worker with this index."""
    meta = json.loads((study_dir / STUDY_FILE).read_text(encoding="utf-8"))
    config = load_config(study_dir / "config.yaml")
    study = load_or_create_study(meta["name"], meta["storage"], config.tuning, worker)
    return OpenStudy(study, meta, config)


def setting_importances(study_dir: Path) -> tuple[dict[str, float], str]:
    """fANOVA importance of each tuned setting, or ({}, why not)."""
    study = open_study(study_dir).study
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as error:  # too few completed trials to fit fANOVA
        return {}, f"Setting importances need more completed trials ({error})."


@dataclass(frozen=True)
class StudyResult:
    """Where a study stands."""

    study_dir: Path
    name: str
    storage: str
    best_trial: int | None
    best_value: float | None
    best_values: dict[str, Any]  # the best trial's sampled settings
    counts: dict[str, int]  # complete / pruned / fail / running


def run_study(
    config: Config,
    prepared_dir: str | Path,
    study_dir: str | Path,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    timeout: float | None = None,
) -> StudyResult:
    """Run (or continue) the study until it has `trials` finished trials or `timeout` passes.

    `trials` None: the config's tuning.trials; `timeout` None: no limit.
    """
    check_study_arguments(trials, workers, timeout, storage)
    study_dir, prepared_dir = Path(study_dir).resolve(), Path(prepared_dir).resolve()
    # 1. the study directory remembers its base config, data and storage
    _remember(study_dir, config, prepared_dir, storage)
    opened = open_study(study_dir)
    study, meta = opened.study, opened.meta
    # 2. MLflow: one parent run for the whole study (remembered on the study)
    _mlflow_parent(config, study_dir, study)
    # 3. the workers
    target = config.tuning.trials if trials is None else trials
    deadline = time.time() + timeout if timeout is not None else float("inf")
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        worker_loop(study, _worker_settings(opened, study_dir, target, deadline, threads))
    else:
        _run_worker_processes(study, study_dir, workers, target, deadline, threads)
    # 4. the summary
    return write_summary(study, study_dir, meta)


def check_study_arguments(
    trials: int | None, workers: int, timeout: float | None, storage: str | None
) -> None:
    """Refuse impossible arguments before anything is written (ConfigError)."""
    if trials is not None and trials < 1:
        raise ConfigError(
            f"--trials must be at least 1, found {trials}; leave it out to use tuning.trials"
        )
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, found {workers}")
    if timeout is not None and not 0 < timeout < math.inf:
        raise ConfigError(
            f"--timeout must be a positive number of seconds, found {timeout}; "
            "leave it out for no limit"
        )
    if storage is not None:
        check_storage_url(storage)


def _remember(study_dir: Path, config: Config, prepared_dir: Path, storage: str | None) -> None:
    """First run: write config.yaml and study.json. Later runs: refuse a changed search."""
    study_dir.mkdir(parents=True, exist_ok=True)
    config_path, meta_path = study_dir / "config.yaml", study_dir / STUDY_FILE
    if config_path.exists():
        saved = config_to_dict(load_config(config_path))
        ours = config_to_dict(config)
        changed = sorted(
            f"{s}.{k}"
            for s in ours
            for k in ours[s]
            if ours[s][k] != saved[s][k] and not (s == "tuning" and k in CONTINUE_OVERRIDABLE)
        )
        if changed:
            raise ConfigError(
                f"{study_dir} is a study with a different config ({changed}); "
                "continue it with the same config, or start a new study directory"
            )
    save_config(config, config_path)  # new, or with new CONTINUE_OVERRIDABLE values
    if not meta_path.exists():
        meta = {
            "name": study_dir.name,
            "storage": storage_url(storage, study_dir),
            "prepared_dir": str(prepared_dir),
        }
        write_json_atomic(meta_path, meta)


def _run_worker_processes(
    study: optuna.Study, study_dir: Path, workers: int, target: int, deadline: float, threads: int
) -> None:
    """Start `workers` worker processes and follow the study until they are done."""
    command = [
        sys.executable,
        "-m",
        "tacotune.tuning.worker_main",
        str(study_dir),
        "--target",
        str(target),
        "--deadline",
        str(deadline),
        "--threads",
        str(threads),
    ]
    processes = []
    for index in range(workers):
        log_path = study_dir / f"worker_{index}.log"
        with log_path.open("ab") as log_file:
            processes.append(
                subprocess.Popen(
                    [*command, "--index", str(index)], stdout=log_file, stderr=subprocess.STDOUT
                )
            )
    log.info("%d workers started (logs: %s/worker_*.log)", workers, study_dir)
    try:
        _follow(study, processes, target)
    except KeyboardInterrupt:
        for process in processes:  # a worker stops its trial (which saves), then exits
            process.terminate()
        for process in processes:
            process.wait()
        raise
    failed = [p.returncode for p in processes if p.returncode not in (0, None)]
    if failed:
        log.warning(
            "%d worker(s) exited with an error (codes %s); see %s/worker_*.log",
            len(failed),
            failed,
            study_dir,
        )


def _follow(study: optuna.Study, processes: list[subprocess.Popen[bytes]], target: int) -> None:
    """Progress of finished trials while the workers run (a bar, or lines off a terminal)."""
    with progress.meter("trials finished", target) as meter:
        while any(p.poll() is None for p in processes):
            meter.update(_finished(study), **_best_so_far(study))
            time.sleep(2.0)
        meter.update(_finished(study), **_best_so_far(study))


def _best_so_far(study: optuna.Study) -> dict[str, str]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    scores = [t.value for t in trials if t.value is not None]
    return {"best score": f"{min(scores):.4f}"} if scores else {}


def _finished(study: optuna.Study) -> int:
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return counted_trials(study) - running


def write_summary(study: optuna.Study, study_dir: Path, meta: dict[str, Any]) -> StudyResult:
    """Write summary.json and summary.md; return the result."""
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        )
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.values[0]) if complete else None
    rows = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.values[0] if t.values else None,
            "params": t.params,
            "last_step": t.last_step,
            "fail_reason": t.user_attrs.get("fail_reason", ""),
            "run_dir": t.user_attrs.get("run_dir", ""),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id", ""),
        }
        for t in trials
    ]
    result = StudyResult(
        study_dir,
        meta["name"],
        meta["storage"],
        best.number if best else None,
        best.values[0] if best else None,
        dict(best.params) if best else {},
        counts,
    )
    summary = {
        "study": meta["name"],
        "storage": meta["storage"],
        "counts": counts,
        "best_trial": result.best_trial,
        "best_value": result.best_value,
        "best_values": result.best_values,
        "trials": rows,
    }
    (study_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    (study_dir / "summary.md").write_text(_markdown(summary), encoding="utf-8")
    return result


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Study {summary['study']}", "", f"Trials: {summary['counts']}", ""]
    if summary["best_trial"] is not None:
        lines += [
            f"Best: trial {summary['best_trial']}, score {summary['best_value']:.4f}",
            "",
            *[f"- `{k}` = {v}" for k, v in summary["best_values"].items()],
            "",
        ]
    lines += ["| trial | state | score | last step | note |", "|---|---|---|---|---|"]
    for row in summary["trials"]:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        note = row["fail_reason"].splitlines()[0] if row["fail_reason"] else ""
        lines.append(
            f"| {row['number']} | {row['state']} | {value} | {row['last_step'] or ''} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _mlflow_environment(config: Config, study_dir: Path) -> dict[str, str]:
    """What trial processes need to log into the nested runs the worker creates."""
    return {"MLFLOW_TRACKING_URI": _mlflow_uri(config, study_dir)}


def _mlflow_uri(config: Config, study_dir: Path) -> str:
    from tacotune.tracking.mlflow import default_uri

    return config.tracking.mlflow_uri or default_uri(study_dir)


def _mlflow_parent(config: Config, study_dir: Path, study: optuna.Study) -> str:
    """The study's parent run, remembered on the study."""
    from tacotune.tracking.mlflow import study_run

    run_id = study_run(
        _mlflow_uri(config, study_dir), config.tracking.mlflow_experiment, study.study_name
    )
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def _trial_runs(config: Config, study_dir: Path, parent: str) -> Any:
    """A callable making the nested MLflow run of a trial."""
    from tacotune.tracking.mlflow import trial_run

    uri, experiment = _mlflow_uri(config, study_dir), config.tracking.mlflow_experiment
    return lambda number, values: trial_run(uri, experiment, parent, number, values)


def worker_settings(
    study_dir: Path, target: int, deadline: float, threads: int, index: int
) -> tuple[optuna.Study, WorkerSettings]:
    """What worker process number `index` needs, read back from the study directory."""
    opened = open_study(study_dir, worker=index)
    return opened.study, _worker_settings(opened, study_dir, target, deadline, threads)


def _worker_settings(
    opened: OpenStudy, study_dir: Path, target: int, deadline: float, threads: int
) -> WorkerSettings:
    config = opened.config
    return WorkerSettings(
        study_dir=study_dir,
        prepared_dir=Path(opened.meta["prepared_dir"]),
        config=config,
        target=target,
        threads=threads,
        deadline=deadline,
        environment=_mlflow_environment(config, study_dir),
        mlflow=_trial_runs(config, study_dir, opened.study.user_attrs["mlflow_run_id"]),
    )
