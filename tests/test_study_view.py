"""`tacotune monitor STUDY_DIR`: the study view on a hand-made study, and its dashboards."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from tacotune.config import load_config, save_config
from tacotune.monitor import monitor
from tacotune.monitor.dashboards import (
    DashboardError,
    dashboard_commands,
    start_dashboards,
    stop_dashboards,
)
from tacotune.tuning.storage import load_or_create_study, storage_url
from tacotune.tuning.view import render_study, snapshot_study, study_active


def make_study(tmp_path: Path) -> tuple[Path, optuna.Study, optuna.Trial]:
    """A study with two complete trials, a pruned one, a failed one and a running one."""
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    config = load_config("demo.yaml")
    save_config(config, study_dir / "config.yaml")
    url = storage_url(None, study_dir)
    (study_dir / "study.json").write_text(
        json.dumps({"name": "study", "storage": url, "prepared_dir": str(tmp_path)})
    )
    study = load_or_create_study("study", url, config.tuning)
    for learning_rate, state, value in (
        (0.002, TrialState.COMPLETE, 2.0),
        (0.003, TrialState.COMPLETE, 1.5),
        (0.0001, TrialState.PRUNED, 4.0),
        (1000.0, TrialState.FAIL, None),
    ):
        study.enqueue_trial({"train.learning_rate": learning_rate})
        trial = study.ask()
        trial.suggest_float("train.learning_rate", 1e-5, 1e4, log=True)
        if value is not None:
            trial.report(value, 200)
        if state == TrialState.FAIL:
            trial.set_user_attr("fail_reason", "training diverged after 2 rollbacks\ndetails")
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    running = study.ask()
    running.report(3.0, 100)
    return study_dir, study, running


def test_snapshot_counts_states_and_finds_the_best(tmp_path: Path) -> None:
    study_dir, _, _ = make_study(tmp_path)
    snap = snapshot_study(study_dir)
    assert snap.counts == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 1}
    assert snap.best == (1, 1.5)
    rows = {row["number"]: row for row in snap.trials}
    assert rows[2]["state"] == "PRUNED" and rows[2]["score"] == 4.0  # its last report
    assert rows[2]["step"] == 200
    assert rows[3]["note"].startswith("training diverged")
    assert rows[4]["state"] == "RUNNING" and rows[4]["score"] == 3.0


def test_render_shows_counts_best_and_the_first_line_of_a_failure(tmp_path: Path) -> None:
    study_dir, _, _ = make_study(tmp_path)
    console = Console(record=True, width=160)
    console.print(render_study(snapshot_study(study_dir)))
    text = console.export_text()
    assert "complete 2, pruned 1, fail 1, running 1" in text
    assert "best: trial 1, score 1.5000" in text
    assert "training diverged after 2 rollbacks" in text and "details" not in text


def test_the_view_is_live_while_a_trial_runs(tmp_path: Path) -> None:
    study_dir, study, running = make_study(tmp_path)
    assert study_active(snapshot_study(study_dir))
    study.tell(running, 3.0)
    snap = snapshot_study(study_dir)
    assert not study_active(snap) and snap.best == (1, 1.5)


def test_monitor_once_dispatches_on_a_study_directory(tmp_path: Path) -> None:
    study_dir, study, running = make_study(tmp_path)
    study.tell(running, 3.0)
    console = Console(record=True, width=160)
    assert monitor(study_dir, once=True, console=console) == 0
    assert "study study" in console.export_text()


def test_dashboards_of_a_study(tmp_path: Path) -> None:
    study_dir, _, _ = make_study(tmp_path)
    (study_dir / "trials").mkdir()
    names = {name: command for name, command in dashboard_commands(study_dir)}
    assert list(names) == ["optuna-dashboard", "TensorBoard"]  # no mlflow.db yet
    board = names["optuna-dashboard"]
    assert board[board.index("--host") + 1] == "127.0.0.1"
    assert "JournalFileStorage" in board  # a journal path is not an SQLAlchemy URL


@pytest.mark.slow
def test_every_dashboard_of_a_study_serves_on_localhost(tmp_path: Path) -> None:
    from tacotune.tracking.mlflow import default_uri, study_run

    study_dir, _, _ = make_study(tmp_path)
    (study_dir / "trials").mkdir()
    study_run(default_uri(study_dir), "tacotune", "study")  # creates STUDY/mlflow.db
    dashboards = start_dashboards(study_dir, timeout=90)
    try:
        assert [d.name for d in dashboards] == ["optuna-dashboard", "TensorBoard", "MLflow"]
        assert all(d.url.startswith("http://127.0.0.1:") for d in dashboards)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(dashboards[0].url + "api/studies", timeout=10) as response:
            studies = json.loads(response.read())
        assert [s["study_name"] for s in studies["study_summaries"]] == ["study"]
    finally:
        stop_dashboards(dashboards)
    assert all(d.process.poll() is not None for d in dashboards)


def test_a_missing_optuna_dashboard_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_dir, _, _ = make_study(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        DashboardError, match=r"optuna-dashboard is not installed.*tacotune\[tune\]"
    ):
        dashboard_commands(study_dir)
