"""Where a study lives and how it samples and prunes.

Storage: a journal file in the study directory by default (safe for several worker
processes on one machine, no server); any SQLAlchemy URL otherwise: SQLite for one
worker, PostgreSQL/MySQL for workers on several machines. Optuna's own heartbeat
works only inside `study.optimize`, so tacotune's workers keep their own (see
worker.py) and it works the same on every storage.
"""

from __future__ import annotations

import socket
import warnings
import zlib
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from tacotune.config.schema import TuningConfig
from tacotune.errors import ConfigError, short_repr

JOURNAL_FILE = "journal.log"
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql")  # SQLAlchemy dialects Optuna's RDB supports


def check_storage_url(url: str) -> None:
    """A journal file path, or an SQLAlchemy URL of a supported dialect (``sqlite:///FILE``,
    ``postgresql[+driver]://...``, ``mysql[+driver]://...``); anything else is a ConfigError
    before a study is created. Only the scheme is echoed: the URL may hold a password."""
    if "://" not in url:
        return
    scheme = url.partition("://")[0]
    if scheme.partition("+")[0].lower() not in STORAGE_DIALECTS:
        raise ConfigError(
            f"--storage: unknown URL scheme {short_repr(scheme)}; give a path (a journal file), "
            "sqlite:///FILE, postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
        )


def storage_url(url: str | None, study_dir: Path) -> str:
    """The storage a study uses: `url`, or the journal file inside the study directory."""
    return url or str((study_dir / JOURNAL_FILE).resolve())


def open_storage(url: str) -> BaseStorage:
    """A journal file (a path) or an RDB storage (an SQLAlchemy URL)."""
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:"):
        # concurrent SQLite writers wait instead of failing with "database is locked"
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def sampler_seed(config: TuningConfig, worker: int, machine: str = "") -> int:
    """The sampler seed of worker `worker`: its own stream, spawned from tuning.seed by
    numpy's SeedSequence (the recommended way to parallel streams; adjacent seeds such as
    seed + worker can give MT19937 near-equal first draws, and two workers started at
    learning rates equal to 5 digits). The same seed in every worker would make their
    first trials one trial W times. `machine` (a host name) separates the machines that
    share a study on a database server; "" on one machine, where a seed gives the same
    streams whatever the machine is called."""
    entropy = [config.seed % 2**64, *([zlib.crc32(machine.encode())] if machine else [])]
    stream = np.random.SeedSequence(entropy).spawn(worker + 1)[worker]
    return int(stream.generate_state(1)[0])


def make_sampler(
    config: TuningConfig, worker: int = 0, machine: str = ""
) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped for conditional dimensions), CMA-ES or random, seeded
    for `worker` on `machine` (see sampler_seed)."""
    seed = sampler_seed(config, worker, machine)
    if config.sampler == "tpe":
        with warnings.catch_warnings():  # `group` has been "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                multivariate=True,
                group=True,
                seed=seed,
                n_startup_trials=config.startup_trials,
            )
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=config.startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: TuningConfig) -> optuna.pruners.BasePruner:
    """Median, patient-median or Hyperband; none of them prunes before prune_after_step."""
    median = optuna.pruners.MedianPruner(
        n_startup_trials=config.startup_trials, n_warmup_steps=config.prune_after_step
    )
    if config.pruner == "median":
        return median
    if config.pruner == "patient":
        return optuna.pruners.PatientPruner(median, patience=config.patience)
    if config.pruner == "hyperband":  # (rules.validate() checked its budgets)
        return optuna.pruners.HyperbandPruner(
            min_resource=config.prune_after_step, max_resource=config.trial_max_steps
        )
    return optuna.pruners.NopPruner()


def load_or_create_study(
    name: str, url: str, config: TuningConfig, worker: int = 0
) -> optuna.Study:
    """The study `name` in the storage, created on first use (minimizing the score), with
    the sampler of `worker` (on a database server, of `worker` on this machine)."""
    server = "://" in url and not url.startswith("sqlite:")  # other machines may join
    return optuna.create_study(
        study_name=name,
        storage=open_storage(url),
        sampler=make_sampler(config, worker, socket.gethostname() if server else ""),
        pruner=make_pruner(config),
        direction="minimize",
        load_if_exists=True,
    )
