"""The MLflow mirror on a real SQLite tracking store: a training run, a study's parent and
nested trial runs (logged from a subprocess, as trials are), params once, the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tacotune.config import all_keys
from tacotune.names import Event, RunStatus
from tacotune.runlog import RunLog
from tacotune.tracking import MlflowListener
from tacotune.tracking.mlflow import (
    PARAM_VALUE_LIMIT,
    MlflowRun,
    TrackingError,
    default_uri,
    flat_params,
    mlflow_run_for,
    register_model,
    study_run,
    trial_run,
)

from conftest import tiny_train

pytestmark = pytest.mark.slow  # trains a tiny model, starts MLflow and two subprocesses

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module (creating its tables takes seconds)."""
    return default_uri(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def client(uri: str, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    """A client that reads back what tacotune wrote; no run is handed over by the environment."""
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_training_run_is_mirrored(
    prepared: Path,
    tmp_path: Path,
    uri: str,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tacotune.tracking import run_listeners
    from tacotune.train import train

    config = tiny_train(
        "tracking.mlflow=true", f"tracking.mlflow_uri={uri}", "tracking.mlflow_experiment=train"
    )
    run_dir = tmp_path / "voice_run"
    train(config, prepared, run_dir, listeners=run_listeners(config, run_dir))

    experiment = client.get_experiment_by_name("train")
    (found,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'voice_run'")
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.data.params == flat_params(config)
    assert [m.step for m in client.get_metric_history(run_id, "score")] == [3, 6]
    assert found.data.metrics["val/mel_postnet"] > 0
    assert found.data.tags["tacotune.outcome"] == "finished"
    assert found.data.tags["tacotune.stop_reason"] == "max_steps"
    assert {"config.yaml", "metrics.jsonl", "events.jsonl", "samples", "model"} <= _artifacts(
        client, run_id
    )
    assert {
        "samples/step_0000006/probe_0.wav",
        "samples/step_0000006/probe_0_alignment.png",
    } <= _artifacts(client, run_id, "samples/step_0000006")
    assert _artifacts(client, run_id, "model") == {"model/model.pt"}  # no optimizer state
    copy = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    assert copy.read_text() == (run_dir / "config.yaml").read_text()
    database = Path(uri.removeprefix("sqlite:///"))  # artifacts beside it, not in the cwd
    assert experiment.artifact_location == (database.parent / "mlartifacts").as_uri()


def test_tracker_outcome_and_files_by_hand(
    tmp_path: Path, uri: str, client: mlflow.MlflowClient
) -> None:
    run_dir = tmp_path / "by_hand"
    for name in ("samples/step_0000003", "samples/step_0000012", "checkpoints"):
        (run_dir / name).mkdir(parents=True)
    (run_dir / "samples/step_0000003/probe_0.wav").write_bytes(b"old")
    (run_dir / "samples/step_0000012/probe_0.wav").write_bytes(b"new")
    (run_dir / "config.yaml").write_text("train: {}\n")
    run = MlflowRun(uri, "by_hand", run_name="by_hand")
    run_log = RunLog(run_dir, listeners=[MlflowListener(run, run_dir, {"train.lr": 0.001})])
    run_log.evaluation(3, {"score": 2.0, "val/gate": float("nan")})
    run_log.evaluation(12, {"score": 1.0, "val/gate": 0.5})
    run_log.event(12, Event.EARLY_STOP, reason="patience")
    run_log.event(12, Event.FINISHED, reason="patience")
    run_log.close(RunStatus.KILLED)
    run_log.close(RunStatus.FINISHED)  # a second close does nothing

    done = client.get_run(run.run_id)
    assert done.info.status == "KILLED"
    assert done.data.tags["tacotune.outcome"] == "early_stop"
    assert done.data.tags["tacotune.stop_reason"] == "patience"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val/gate")] == [
        (12, 0.5)
    ]
    assert _artifacts(client, run.run_id) == {
        "config.yaml",
        "metrics.jsonl",
        "events.jsonl",
        "samples",
    }
    assert _artifacts(client, run.run_id, "samples") == {"samples/step_0000012"}
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["early_stop", "finished"]

    assert done.data.params == {"train.lr": "0.001"}

    idle = MlflowRun(uri, "by_hand", run_name="rank1")  # another rank's log tells nobody
    other_rank = RunLog(
        tmp_path / "rank1", active=False, listeners=[MlflowListener(idle, run_dir, {})]
    )
    other_rank.evaluation(3, {"score": 1.0})
    other_rank.close(RunStatus.FINISHED)
    untouched = client.get_run(idle.run_id)
    assert untouched.data.metrics == {} and untouched.info.status == "RUNNING"


def test_study_trials_and_a_trial_process(
    tmp_path: Path, uri: str, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = study_run(uri, "study", "ruslan-v1")
    assert study_run(uri, "study", "ruslan-v1") == parent
    assert study_run(uri, "study", "ruslan-v2") != parent
    sampled = [{"train.learning_rate": 0.001, "model.ddc": True}, {"train.batch_size": 16}]
    trials = [trial_run(uri, "study", parent, n, values) for n, values in enumerate(sampled)]
    assert len(set(trials)) == 2
    for number, (run_id, values) in enumerate(zip(trials, sampled, strict=True)):
        run = client.get_run(run_id)
        assert run.info.run_name == f"trial_{number}"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["tacotune.trial"] == str(number)
        assert run.data.params == {k: str(v) for k, v in values.items()}

    script = (
        "from tacotune.tracking.mlflow import MlflowRun, run_from_environment\n"
        "uri, run_id = run_from_environment()\n"
        "run = MlflowRun(uri, 'study', run_id=run_id)\n"
        "run.log_params({'train.learning_rate': 0.001, 'train.max_steps': 5000})\n"
        "run.log_metrics(3, {'score': 1.5, 'val/mel_postnet': float('nan')})\n"
        "run.log_metrics(6, {'score': 1.25})\n"
        "run.end('FINISHED')\n"
    )
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": trials[0]}
    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    history = client.get_metric_history(trials[0], "score")
    assert [(m.step, m.value) for m in history] == [(3, 1.5), (6, 1.25)]
    run = client.get_run(trials[0])
    assert run.info.status == "FINISHED" and "val/mel_postnet" not in run.data.metrics
    assert run.data.params["train.max_steps"] == "5000"
    experiment = client.get_experiment_by_name("study").experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {r.info.run_id for r in children} == set(trials)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # a trial's training session, in process
    monkeypatch.setenv("MLFLOW_RUN_ID", trials[1])
    handed = mlflow_run_for(tiny_train(), tmp_path / "run")  # even with tracking.mlflow off
    assert handed is not None and handed.run_id == trials[1]


def test_params_are_logged_once(uri: str, client: mlflow.MlflowClient) -> None:
    run = MlflowRun(uri, "params")
    run.log_params({"train.warmup_steps": 500, "model.ddc": False})
    run.log_params({"train.warmup_steps": 500.0, "model.ddc": False})  # the same values
    with pytest.raises(TrackingError, match=r"train\.warmup_steps: '500' -> '800'"):
        run.log_params({"train.warmup_steps": 800})
    with pytest.raises(TrackingError, match="logged once"):  # from another process, too
        MlflowRun(uri, "params", run_id=run.run_id).log_params({"model.ddc": True})
    assert client.get_run(run.run_id).data.params == {
        "train.warmup_steps": "500",
        "model.ddc": "False",
    }


def test_flat_params_cover_every_setting() -> None:
    config = tiny_train("train.probe_sentences=['" + "а" * 7000 + "']")
    params = flat_params(config)
    assert sorted(params) == sorted(all_keys())
    assert params["train.batch_size"] == "4" and params["tracking.tensorboard"] == "False"
    assert params["tuning.space"].startswith(
        "[key=train.learning_rate low=0.0003 high=0.003 log=True; "
        "key=train.batch_size choices=(16, 32); "
    )
    assert len(params["train.probe_sentences"]) == PARAM_VALUE_LIMIT
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    assert PARAM_VALUE_LIMIT == MAX_PARAM_VAL_LENGTH


def test_register_model(tmp_path: Path, uri: str, client: mlflow.MlflowClient) -> None:
    run = MlflowRun(uri, "registry", run_name="best")
    (tmp_path / "best.pt").write_bytes(b"weights")
    run.log_artifact(tmp_path / "best.pt", "model")
    run.end()
    assert register_model(uri, "tiny-voice", run.run_id, "model") == "1"
    assert register_model(uri, "tiny-voice", run.run_id, "model/best.pt") == "2"
    assert register_model(uri, "tiny-voice", run.run_id, "nothing") is None
    version = client.get_model_version("tiny-voice", "1")
    assert version.run_id == run.run_id
    assert version.source.endswith(f"{run.run_id}/artifacts/model")
    target = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "d")))
    assert (target / "best.pt").read_bytes() == b"weights"


def test_missing_mlflow_says_how_to_install(
    tmp_path: Path, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(TrackingError, match=r"pip install 'tacotune\[tune\]'.*tracking\.mlflow"):
        MlflowRun(uri, "missing")
    with pytest.raises(TrackingError, match="mlflow package"):
        mlflow_run_for(tiny_train("tracking.mlflow=true"), tmp_path / "run")
    assert mlflow_run_for(tiny_train(), tmp_path / "run") is None


def test_tracking_does_not_import_mlflow() -> None:
    script = (
        "import sys, tacotune.tracking, tacotune.tracking.mlflow, tacotune.train\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["train", "tune", "auto"])
def test_mlflow_uri_option_turns_tracking_on(command: str) -> None:
    from tacotune.cli import build_parser
    from tacotune.cli.commands import config_from_args

    args = build_parser().parse_args(
        [command, "data", "-o", "out", "--mlflow-uri", "http://127.0.0.1:5000"]
    )
    tracking = config_from_args(args).tracking
    assert tracking.mlflow and tracking.mlflow_uri == "http://127.0.0.1:5000"


def test_resume_refuses_a_new_mlflow_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    code = main(["train", "data", "--resume", str(tmp_path), "--mlflow-uri", "http://x"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "its MLflow settings included" in errors[0]


def test_registry_add_registers_in_mlflow_where_the_run_tracked(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run trained with tracking.mlflow on: `registry add` also creates the version, with
    its model card, in MLflow's Model Registry beside the run's own store (a Cyrillic name
    included), and the registry remembers how much speech it heard."""
    from tacotune.cli import main
    from tacotune.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "runs" / "run"
    train(tiny_train("tracking.mlflow=true"), prepared, run)  # no listener: only its config
    root = tmp_path / "registry"
    assert main(["-q", "registry", "add", str(run), "--root", str(root), "--name", "анна"]) == 0
    uri = default_uri(tmp_path / "runs")  # the run's default store: beside the run
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name='анна'")
    directory = root / "анна" / "v1"
    assert version.source == directory.resolve().as_uri()
    assert version.description == (directory / "README.md").read_text(encoding="utf-8")
    assert version.tags == {"tacotune.ref": "анна:1"}
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    assert 0 < meta["data_hours"] < 0.01  # 12 short utterances, 10 in the training split
    assert f"{meta['data_hours']:.2f} h of speech (its training split)" in version.description


def test_registry_add_keeps_its_version_when_mlflow_fails(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main
    from tacotune.train import train

    run = tmp_path / "run"
    train(tiny_train(), prepared, run)  # tracking.mlflow off: only --mlflow-uri asks for it
    root = tmp_path / "registry"
    bad = "sqlite:////proc/tacotune/mlflow.db"  # its folder cannot be made
    argv = ["registry", "add", str(run / "checkpoints" / "model.pt"), "--root", str(root)]
    assert main(["-q", *argv, "--name", "x", "--mlflow-uri", bad]) == 0
    err = capsys.readouterr().err
    assert "x:1 is registered here but not in MLflow: cannot make /proc/tacotune" in err
    assert "Traceback" not in err and (root / "x" / "v1" / "model.pt").is_file()
    assert main(["-q", *argv, "--name", "y"]) == 0  # no run config, no flag: no MLflow at all
    assert "MLflow" not in capsys.readouterr().err
