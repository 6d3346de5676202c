"""An optional MLflow mirror of a run, through explicit run ids (`MlflowClient`, never the
fluent global "active run").

One owner per run: `tacotune train` creates its run (or logs into the one named by
MLFLOW_RUN_ID); the tuner keeps one parent run per study (`study_run`) and creates one
nested run per trial (`trial_run`) that the trial's own process logs into. Params are
logged once per run: a later value that differs is an error, never a silent overwrite.

mlflow is an optional dependency (`tacotune[tune]`) and slow to import: it is imported
inside the functions here, and this module only where MLflow is on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tacotune.errors import TacotuneError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tacotune.config.schema import Config

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install 'tacotune[tune]'`, or set `tracking.mlflow: false`"
PARAM_VALUE_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
TAG_VALUE_LIMIT = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "tacotune.study"
TRIAL_TAG = "tacotune.trial"


class TrackingError(TacotuneError):
    """MLflow is unavailable, refused a request, or would overwrite a logged value."""


def default_uri(root: Path) -> str:
    """The SQLite tracking URI of `root/mlflow.db` (works offline, with the model registry)."""
    return "sqlite:///" + str((root / "mlflow.db").absolute())


class MlflowRun:
    """One MLflow run, which an MlflowListener (tracking/__init__.py) mirrors a run into."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        run_id: str | None = None,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log into the existing run `run_id`, or create a run in `experiment` (created if
        needed), nested under `parent_run_id` when given."""
        self.uri = uri
        self._client = _connect(uri)
        self._ended = False
        tags = dict(tags or {})
        with _calling("open the run", uri):
            if run_id is not None:
                self.run_id = self._client.get_run(run_id).info.run_id
                if tags:
                    self.set_tags(tags)
                return
            experiment_id = _experiment_id(self._client, uri, experiment)
            if parent_run_id is not None:
                parent = self._client.get_run(parent_run_id)
                if parent.info.experiment_id != experiment_id:
                    raise TrackingError(
                        f"the parent run {parent_run_id} is not in experiment {experiment!r}"
                    )
                tags[PARENT_TAG] = parent_run_id
            run = self._client.create_run(experiment_id, run_name=run_name or None, tags=tags)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) at %s", self.run_id, run.info.run_name, _display(uri))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params once: values already logged must agree (numerically equal counts as
        equal, "2" == "2.0"); a different value raises TrackingError."""
        from mlflow.entities import Param

        rendered = {key: _param_value(value) for key, value in params.items()}
        with _calling("log params", self.uri):
            logged = self._client.get_run(self.run_id).data.params
            changed = [k for k, v in rendered.items() if k in logged and not _same(logged[k], v)]
            if changed:
                details = ", ".join(f"{k}: {logged[k]!r} -> {rendered[k]!r}" for k in changed)
                raise TrackingError(
                    f"MLflow run {self.run_id} already has other values for {details}; "
                    "params are logged once per run (start a new run for new values)"
                )
            new = [Param(k, v) for k, v in rendered.items() if k not in logged]
            for start in range(0, len(new), PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=new[start : start + PARAMS_PER_BATCH])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the finite values at `step` (NaN and inf are skipped) in one batched call."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        with _calling("log metrics", self.uri):
            for start in range(0, len(batch), METRICS_PER_BATCH):
                self._client.log_batch(
                    self.run_id, metrics=batch[start : start + METRICS_PER_BATCH]
                )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder with everything in it, as `artifact_path/<its name>`."""
        with _calling(f"upload {path}", self.uri):
            if path.is_dir():
                inside = f"{artifact_path}/{path.name}" if artifact_path else path.name
                self._client.log_artifacts(self.run_id, str(path), inside)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags (values cut to MLflow's tag length limit)."""
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()]
        with _calling("set tags", self.uri):
            for start in range(0, len(batch), PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=batch[start : start + PARAMS_PER_BATCH])

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (once; later calls do nothing)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, found {status!r}")
        if self._ended:
            return
        with _calling("end the run", self.uri):
            self._client.set_terminated(self.run_id, status)
        self._ended = True


def flat_params(config: Config) -> dict[str, str]:
    """Every setting as `section.key` -> its value as text (cut to MLflow's param limit)."""
    params = {}
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for item in dataclasses.fields(values):
            params[f"{section.name}.{item.name}"] = _param_value(getattr(values, item.name))
    return params


def study_run(uri: str, experiment: str, study_name: str) -> str:
    """The id of a study's parent run (tag tacotune.study=<study_name>), created if needed."""
    client = _connect(uri)
    with _calling("find the study's run", uri):
        experiment_id = _experiment_id(client, uri, experiment)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = {_quoted(study_name)}",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
    if found:
        return str(found[0].info.run_id)
    return MlflowRun(uri, experiment, run_name=study_name, tags={STUDY_TAG: study_name}).run_id


def trial_run(
    uri: str, experiment: str, parent_run_id: str, trial_number: int, params: Mapping[str, Any]
) -> str:
    """Create the nested run `trial_<n>` under a study's run with the trial's sampled params;
    returns its id (the trial's process logs into it through MLFLOW_RUN_ID)."""
    run = MlflowRun(
        uri,
        experiment,
        run_name=f"trial_{trial_number}",
        parent_run_id=parent_run_id,
        tags={TRIAL_TAG: str(trial_number)},
    )
    run.log_params(params)
    return run.run_id


def register_model(uri: str, name: str, run_id: str, artifact_path: str) -> str | None:
    """Register the run's artifact `artifact_path` as a new version of model `name`;
    returns the version, or None (with a warning) when the run holds no such artifact."""
    client = _connect(uri)
    artifact_path = artifact_path.strip("/")
    with _calling(f"register model {name!r}", uri):
        parent = os.path.dirname(artifact_path) or None
        if not any(f.path == artifact_path for f in client.list_artifacts(run_id, parent)):
            log.warning("MLflow run %s has no artifact %s to register", run_id, artifact_path)
            return None
        _registered_model(client, name)
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path
        version = client.create_model_version(name, source, run_id=run_id)
    log.info("registered %s version %s from run %s", name, version.version, run_id)
    return str(version.version)


def register_directory(uri: str, name: str, directory: Path, card: str, ref: str) -> str:
    """Register a tacotune registry version (its directory, with its model card as the
    description) as a new version of model `name` in MLflow's Model Registry; the version."""
    client = _connect(uri)
    with _calling(f"register model {name!r}", uri):
        _registered_model(client, name)
        version = client.create_model_version(
            name, directory.resolve().as_uri(), description=card, tags={"tacotune.ref": ref}
        )
    log.info("registered %s as MLflow model %s version %s", ref, name, version.version)
    return str(version.version)


def _registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model `name` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def run_from_environment() -> tuple[str, str] | None:
    """(MLFLOW_TRACKING_URI, MLFLOW_RUN_ID) when both are set: a run handed to this process."""
    uri, run_id = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_RUN_ID")
    if uri and run_id:
        return uri, run_id
    if run_id:
        log.warning("MLFLOW_RUN_ID is set without MLFLOW_TRACKING_URI; it is ignored")
    return None


def mlflow_run_for(config: Config, run_dir: Path) -> MlflowRun | None:
    """The run a training run mirrors into: the one handed over in the environment, else a
    new one when `tracking.mlflow` is on (default URI: `run_dir/../mlflow.db`), else None."""
    handed = run_from_environment()
    if handed is not None:
        uri, run_id = handed
        return MlflowRun(uri, config.tracking.mlflow_experiment, run_id=run_id)
    if not config.tracking.mlflow:
        return None
    uri = tracking_uri(config, run_dir)
    return MlflowRun(uri, config.tracking.mlflow_experiment, run_name=run_dir.name)


def tracking_uri(config: Config, run_dir: Path) -> str:
    """Where a run with tracking.mlflow on logs: tracking.mlflow_uri, else
    `run_dir/../mlflow.db`."""
    return config.tracking.mlflow_uri or default_uri(run_dir.parent)


def _connect(uri: str) -> MlflowClient:
    """A client for `uri` (tracking and registry); a SQLite database's folder is created."""
    try:
        from mlflow import MlflowClient
    except ImportError as error:
        raise TrackingError(f"MLflow tracking needs the mlflow package: {INSTALL_HINT}") from error
    database = _sqlite_path(uri)
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"cannot make {database.parent} for the MLflow database {database.name} "
                f"({error.strerror or error}): give a tracking URI in a folder you can write"
            ) from error
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created if needed (a SQLite store keeps its artifacts
    in `mlartifacts/` beside the database, not in the current directory)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        database = _sqlite_path(uri)
        location = (database.parent / "mlartifacts").as_uri() if database else None
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException as error:  # another process created it first
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it, or choose another "
            "tracking.mlflow_experiment"
        )
    return str(experiment.experiment_id)


@contextmanager
def _calling(what: str, uri: str) -> Iterator[None]:
    """Turn MLflow's errors into a TrackingError that says what was being done, and where."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        message = f"MLflow could not {what} at {_display(uri)}: {error.message}"
        raise TrackingError(message) from error


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (relative to the current directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0]).absolute()


def _display(uri: str) -> str:
    """The URI without credentials (user:password@)."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname or ""))


def _quoted(value: str) -> str:
    """A string literal for an MLflow search filter."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise TrackingError(f"a study name cannot hold both kinds of quotes: {value!r}")


def _param_value(value: Any) -> str:
    """A param as text; a tuple of dataclasses reads `[key=... low=...; ...]` (defaults left
    out); cut to MLflow's limit."""
    if isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
        text = "[" + "; ".join(_compact(v) for v in value) + "]"
    else:
        text = str(value)
    return text[:PARAM_VALUE_LIMIT]


def _compact(value: Any) -> str:
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return str(value)
    shown = []
    for item in dataclasses.fields(value):
        current = getattr(value, item.name)
        if item.default_factory is not dataclasses.MISSING:
            default: Any = item.default_factory()
        else:
            default = item.default
        if default is dataclasses.MISSING or current != default:
            shown.append(f"{item.name}={current}")
    return " ".join(shown)


def _same(logged: str, value: str) -> bool:
    """Equal text, or equal numbers ("500" from a sampler, "500.0" from the config)."""
    if logged == value:
        return True
    try:
        return float(logged) == float(value)
    except ValueError:
        return False
