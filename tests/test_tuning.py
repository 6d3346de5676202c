"""Self-tuning: every tunable setting is wired; sampling; studies with pruning, failures,
parallel workers, a killed worker, resumption."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tacotune.checkpoint import load_checkpoint
from tacotune.config import Config, load_config
from tacotune.config.schema import TUNABLE, SearchDimension
from tacotune.data.dataset import Collate, Item
from tacotune.errors import ConfigError
from tacotune.losses import tacotron2_loss
from tacotune.model import Tacotron2, pad_multiple
from tacotune.text.symbols import SYMBOLS
from tacotune.train.setup import learning_rate_factor, make_optimizer
from tacotune.tuning import run_study
from tacotune.tuning.space import apply, current_value, sample
from tacotune.tuning.storage import load_or_create_study, make_sampler, sampler_seed, storage_url

from conftest import TINY_TRAIN, tiny_train

# --- every tunable setting changes something real ---------------------------------------------


def _batch(multiple: int) -> Any:
    g = torch.Generator().manual_seed(0)
    items = [
        Item(
            f"u{n}",
            torch.randint(4, len(SYMBOLS), (n,), generator=g),
            torch.randn(80, t, generator=g),
        )
        for n, t in ((9, 40), (6, 28))
    ]
    return Collate(multiple)(items)


def _forward(config: Config, step: int = 500) -> dict[str, Any]:
    """Everything a trial's settings can influence, computed by the production code."""
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(SYMBOLS), 80)
    b = _batch(pad_multiple(config.model))
    out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, config.model.reduction_factor)
    terms = tacotron2_loss(out, b, config.loss, step)
    terms.total.backward()
    optimizer = make_optimizer(model, config.train)
    return {
        "loss": float(terms.total.detach()),
        "mel": out.mel.detach(),
        "steps": out.gate.shape[1],
        "coarse": out.coarse is not None,
        "optimizer": [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups],
        "schedule": [learning_rate_factor(s, config.train) for s in (10, 3000, 60000)],
    }


def _differs(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    changed = []
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            same = x.shape == y.shape and torch.equal(x, y)
        else:
            same = x == y
        changed += [] if same else [key]
    return changed


SECOND_VALUE = {  # a value different from the tiny config's for every tunable key
    "train.learning_rate": 3e-3,
    "train.batch_size": 8,
    "train.warmup_steps": 50,
    "train.grad_clip": 1e-3,
    "train.weight_decay": 0.1,
    "train.lr_half_life": 100,
    "loss.guided_attn_weight": 40.0,
    "loss.guided_attn_sigma": 0.05,
    "loss.guided_attn_half_life": 50,
    "loss.gate_pos_weight": 20.0,
    "loss.ddc_weight": 5.0,
    "model.reduction_factor": 3,
    "model.prenet_dropout": 0.1,
    "model.attention_dropout": 0.4,
    "model.decoder_dropout": 0.4,
    "model.ddc": True,
}


# settings whose effect only a real training step shows (the data builder, the clipping)
REAL_STEP_KEYS = ("train.batch_size", "train.grad_clip")


@pytest.mark.parametrize("key", sorted(TUNABLE - set(REAL_STEP_KEYS)))
def test_every_tunable_setting_changes_the_model_loss_optimizer_or_data(key: str) -> None:
    base = tiny_train("model.ddc_reduction_factor=6")
    if key == "loss.ddc_weight":
        base = apply(base, {"model.ddc": True})  # the weight only exists with a coarse decoder
    changed = _differs(_forward(base), _forward(apply(base, {key: SECOND_VALUE[key]})))
    assert changed, f"{key} changed nothing the model, loss, optimizer or data depend on"


@pytest.mark.slow
@pytest.mark.parametrize("key", REAL_STEP_KEYS)
def test_batch_size_and_grad_clip_change_a_real_training_step(
    key: str, prepared: Path, tmp_path: Path
) -> None:
    from tacotune.data.manifest import load_prepared
    from tacotune.train import train
    from tacotune.train.inputs import build_training_data

    base = tiny_train("train.max_steps=2", "train.eval_every=2", "train.grad_clip=5.0")
    changed = apply(base, {key: SECOND_VALUE[key]})
    largest = [  # the largest batch of the first epoch, as the loop will get them
        max(map(len, build_training_data(load_prepared(prepared), config, 0, 1).sampler.batches()))
        for config in (base, changed)
    ]
    weights = []
    for name, config in (("base", base), ("changed", changed)):
        train(config, prepared, tmp_path / name)
        weights.append(load_checkpoint(tmp_path / name)["model"])
    moved = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    if key == "train.batch_size":
        assert largest == [4, 8]
    assert moved, f"{key} left the weights after two real steps unchanged"


def test_the_table_above_covers_every_tunable_key() -> None:
    assert set(SECOND_VALUE) == set(TUNABLE)


# --- the space -------------------------------------------------------------------------------


def test_sampling_respects_types_ranges_and_conditions() -> None:
    config = load_config(None)  # base.yaml: the default search space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen_ddc = set()
    for _ in range(12):
        trial = study.ask()
        values = sample(trial, config)
        seen_ddc.add(values["model.ddc"])
        assert ("loss.ddc_weight" in values) == values["model.ddc"]
        assert isinstance(values["train.warmup_steps"], int)
        assert 3e-4 <= values["train.learning_rate"] <= 3e-3
        apply(config, values)  # every sampled combination is a valid config
        study.tell(trial, 1.0)
    assert seen_ddc == {False, True}


def _first_trials(config: Config, seed: int, workers: int) -> list[dict[str, Any]]:
    """The first settings the samplers of `workers` parallel workers suggest for `seed`."""
    tuning = dataclasses.replace(config.tuning, seed=seed)
    studies = [optuna.create_study(sampler=make_sampler(tuning, w)) for w in range(workers)]
    return [sample(study.ask(), config) for study in studies]


def _float_ranges(config: Config) -> list[SearchDimension]:
    return [
        d
        for d in config.tuning.space
        if not d.choices and not d.when and isinstance(current_value(config, d.key), float)
    ]


def _distance(a: dict[str, Any], b: dict[str, Any], dim: SearchDimension) -> float:
    """How far apart two values of a range are, as a share of the range (log-scaled ranges
    on the log scale)."""
    scale = math.log if dim.log else float
    low, high = scale(dim.low), scale(dim.high)  # type: ignore[arg-type]
    return abs(scale(a[dim.key]) - scale(b[dim.key])) / (high - low)


def test_parallel_workers_first_trials_differ_in_every_float_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The probe: the demo preset, seed 0, two workers on a machine called vm. seed + worker
    # gave MT19937 adjacent seeds there, whose first draws put both trials at learning
    # rates 0.0014839969 and 0.0014839806.
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    demo = load_config("demo.yaml")
    first, second = _first_trials(demo, 0, workers=2)
    assert len(_float_ranges(demo)) >= 2
    for dim in _float_ranges(demo):
        assert _distance(first, second, dim) > 0.03, (dim.key, first, second)
    # Over many seeds: two independent draws come within 3% of their range in ~6% of the
    # seeds, in every float setting of the default space; 20% would be a correlation.
    config = load_config(None)
    seeds = range(60)
    close = dict.fromkeys((d.key for d in _float_ranges(config)), 0)
    for seed in seeds:
        first, second = _first_trials(config, seed, workers=2)
        for dim in _float_ranges(config):
            close[dim.key] += _distance(first, second, dim) < 0.03
    assert len(close) >= 5 and max(close.values()) <= 0.2 * len(seeds), close


def test_worker_streams_are_reproducible_for_a_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None)
    trials = _first_trials(config, 7, workers=3)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    assert _first_trials(config, 7, workers=3) == trials  # the machine's name does not count
    assert _first_trials(config, 8, workers=1) != trials[:1]
    tuning = [dataclasses.replace(config.tuning, seed=s) for s in (0, 1)]
    seeds = {sampler_seed(t, w) for t in tuning for w in range(16)}
    assert len(seeds) == 32  # every (seed, worker) its own stream
    # machines sharing a study on a database server: each its own streams
    assert sampler_seed(tuning[0], 0, "a") != sampler_seed(tuning[0], 0, "b")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("[{key: audio.n_mels, choices: [40, 80]}]", "not tunable"),
        ("[{key: train.learning_rate, low: 0.001, high: 0.01, choices: [0.1]}]", "either low"),
        ("[{key: train.learning_rate, low: 0.0, high: 0.01, log: true}]", "log-scaled range"),
        ("[{key: loss.ddc_weight, low: 0.1, high: 1.0, when: model.ddc}]", "not in the space"),
        (
            "[{key: train.learning_rate, low: 0.1, hgih: 0.3}]",
            r"did you mean 'tuning\.space\[0\]\.high'",
        ),
    ],
)
def test_invalid_spaces_are_rejected(space: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"tuning.space={space}"])


# --- studies ---------------------------------------------------------------------------------

STUDY = [
    *TINY_TRAIN,  # evaluates every 3 steps
    "tuning.trial_max_steps=9",
    "tuning.startup_trials=1",
    "tuning.prune_after_step=3",
    "tuning.sampler=random",
    "tuning.heartbeat_seconds=1",
    "tuning.space=[{key: train.learning_rate, choices: [0.003, 1.0e-5]}]",
]


def study_config(*extra: str) -> Config:
    return load_config(None, [*STUDY, *extra])


def trials_of(study_dir: Path) -> list[dict[str, Any]]:
    return json.loads((study_dir / "summary.json").read_text())["trials"]


def enqueue(study_dir: Path, config: Config, *values: dict[str, Any]) -> None:
    study = load_or_create_study(study_dir.name, storage_url(None, study_dir), config.tuning)
    for params in values:
        study.enqueue_trial(params)


def test_a_weak_trial_is_pruned_and_the_best_is_reported(prepared: Path, tmp_path: Path) -> None:
    config, study_dir = study_config(), tmp_path / "study"
    good, hopeless = {"train.learning_rate": 0.003}, {"train.learning_rate": 1e-5}
    enqueue(study_dir, config, good, good, hopeless)
    result = run_study(config, prepared, study_dir, trials=3)
    states = [t["state"] for t in trials_of(study_dir)]
    assert states == ["complete", "complete", "pruned"]
    assert result.best_values == good and result.best_value is not None
    pruned = trials_of(study_dir)[2]
    assert pruned["last_step"] < 9  # stopped before its step budget
    assert (study_dir / "trials" / "trial_0002" / "run" / "metrics.jsonl").exists()


def test_a_diverging_trial_fails_with_its_reason(prepared: Path, tmp_path: Path) -> None:
    config = study_config(
        "tuning.space=[{key: train.learning_rate, choices: [1000.0]}]",
        "supervision.grad_norm_ceiling=1e3",
        "supervision.max_bad_steps=2",
        "supervision.max_rollbacks=1",
        "train.warmup_steps=1",
    )
    run_study(config, prepared, tmp_path / "study", trials=1)
    trial = trials_of(tmp_path / "study")[0]
    assert trial["state"] == "fail" and "training diverged" in trial["fail_reason"]


def test_two_workers_share_the_journal(prepared: Path, tmp_path: Path) -> None:
    result = run_study(
        study_config("tuning.trial_max_steps=3"), prepared, tmp_path / "study", trials=4, workers=2
    )
    assert result.counts["complete"] + result.counts["pruned"] == 4
    assert result.counts["running"] == 0
    study = load_or_create_study(
        "study", storage_url(None, tmp_path / "study"), study_config().tuning
    )
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 2  # both workers ran trials


def test_parallel_workers_do_not_sample_the_same_settings(prepared: Path, tmp_path: Path) -> None:
    config = study_config(
        "tuning.trial_max_steps=3",
        "tuning.space=[{key: train.learning_rate, low: 0.001, high: 0.01, log: true}]",
    )
    run_study(config, prepared, tmp_path / "study", trials=2, workers=2)
    rates = [t["params"]["train.learning_rate"] for t in trials_of(tmp_path / "study")]
    assert len(rates) == 2 and rates[0] != rates[1]  # the same seed gave both the same value


def test_the_pruner_sees_the_best_score_so_far() -> None:
    import io

    from tacotune.tuning.worker import _relay

    study = optuna.create_study()
    trial = study.ask()
    scores = [2.0, 1.0, 3.0, None, 0.5]
    reports = io.StringIO(
        "".join(json.dumps({"type": "evaluation", "step": s, "score": v}) + "\n"
                for s, v in zip((3, 6, 9, 12, 15), scores, strict=True))
        + json.dumps({"type": "outcome", "state": "complete", "value": 0.5}) + "\n"
    )  # fmt: skip
    _relay(trial, reports, io.StringIO())
    assert list(study.trials[0].intermediate_values.values()) == [2.0, 1.0, 1.0, 1.0, 0.5]


def test_a_killed_worker_leaves_no_running_trial_and_the_study_resumes(
    prepared: Path, tmp_path: Path
) -> None:
    study_dir = tmp_path / "study"
    # a trial process needs seconds to start: the kill lands while its trial is RUNNING
    overrides = [a for item in STUDY for a in ("--set", item)]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tacotune",
            "-q",
            "tune",
            str(prepared),
            "-o",
            str(study_dir),
            "--trials",
            "2",
            *overrides,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = study_config()
    _wait_for(lambda: (study_dir / "journal.log").exists() and _running(study_dir, config))
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = _running(study_dir, config)[0]
    result = run_study(config, prepared, study_dir, trials=2)  # the same command, again
    trials = {t["number"]: t for t in trials_of(study_dir)}
    assert trials[killed]["state"] == "fail" and "died" in trials[killed]["fail_reason"]
    assert result.counts["running"] == 0
    assert result.counts["complete"] + result.counts["pruned"] == 2
    study = load_or_create_study("study", storage_url(None, study_dir), config.tuning)
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert len(retried) == 1 and retried[0].params == study.trials[killed].params


def _running(study_dir: Path, config: Config) -> list[int]:
    study = load_or_create_study("study", storage_url(None, study_dir), config.tuning)
    return [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_continuing_a_study_with_another_search_is_refused(prepared: Path, tmp_path: Path) -> None:
    run_study(study_config("tuning.trial_max_steps=3"), prepared, tmp_path / "study", trials=1)
    other = study_config("tuning.trial_max_steps=3", "train.batch_size=2")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        run_study(other, prepared, tmp_path / "study", trials=2)


@pytest.mark.parametrize(
    ("own", "left", "expected"),
    [
        (4.0, None, 4.0),  # no deadline: the trial's own budget
        (0.0, None, 0.0),  # ... which may be none
        (4.0, 10.0, 4.0),  # plenty of time left
        (4.0, 2.0, 2.0),  # cut to the deadline
        (4.0, 0.9, None),  # under a quarter of the trial's budget left: do not start
        (0.0, 3.0, 3.0),  # no own budget: the deadline is the budget
        (0.0, 0.2, None),  # under MIN_TRIAL_MINUTES left
    ],
)
def test_no_trial_outlives_the_study_deadline(
    own: float, left: float | None, expected: float | None, tmp_path: Path
) -> None:
    from tacotune.tuning.worker import WorkerSettings, trial_minutes

    config = study_config(f"tuning.trial_max_minutes={own}")
    now = 1_000_000.0
    deadline = float("inf") if left is None else now + left * 60
    settings = WorkerSettings(tmp_path, tmp_path, config, target=1, threads=1, deadline=deadline)
    assert trial_minutes(settings, now) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tuning.sampler=cmaes"], "continuous ranges only"),
        (["tuning.pruner=hyperband", "tuning.trial_max_steps=100"], "hyperband needs"),
    ],
)
def test_tuning_combinations_are_refused_by_tacotune_config(
    overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    # before any study starts: `tacotune config` already rejects them
    arguments = [item for override in overrides for item in ("--set", override)]
    assert main(["config", "--config", "demo", *arguments]) == 1
    assert message in capsys.readouterr().err


POSTGRES = os.environ.get("TACOTUNE_TEST_POSTGRES", "")


@pytest.mark.skipif(
    not POSTGRES,
    reason="no PostgreSQL server: set TACOTUNE_TEST_POSTGRES="
    "postgresql://user:password@127.0.0.1:5432/db (.ci/run starts one when it "
    "can install it)",
)
def test_workers_share_a_postgresql_study(prepared: Path, tmp_path: Path) -> None:
    import sqlalchemy

    config = study_config("tuning.trial_max_steps=3")
    study_dir = tmp_path / f"pg_study_{os.getpid()}_{int(time.time())}"  # a fresh study name
    result = run_study(config, prepared, study_dir, trials=3, workers=2, storage=POSTGRES)
    assert result.counts["complete"] + result.counts["pruned"] == 3
    assert result.counts["running"] == 0
    with sqlalchemy.create_engine(POSTGRES).connect() as connection:  # really in PostgreSQL
        names = connection.execute(sqlalchemy.text("SELECT study_name FROM studies")).scalars()
        assert study_dir.name in set(names)
